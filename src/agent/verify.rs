//! Done-when checks (`[[checks]]`): what decides that an answer completes the execution.
//! (An agent with an `[output]` schema has its answer validated first: `output.rs`.)
//!
//! When the model answers (no tool calls, within the budgets), every check runs in turn
//! in the workspace, exactly as a declared command runs (`Toolbox::run_check`). All
//! pass: the answer completes the execution. Any fails: the output of every failing
//! check goes back to the model as one user line (tagged [`Feedback::Check`]) and the
//! loop goes on, within the execution's limits, until `max_check_rounds` rounds have
//! failed: the execution then fails with `checks_failed`, the last round not sent back.
//!
//! A round leaves nothing in the state until it ends: the feedback line and the count
//! of failed rounds are one checkpoint (the line carries the state). A round cut short
//! (a shutdown, a crash) is run again, whole, by the worker that resumes the execution;
//! a resumed execution whose answer settled runs its round again too. So checks must be
//! idempotent. Every stop is honoured while a check runs: a cancel or the time limit
//! kill its process group and end the execution, a shutdown kills it and suspends.

use std::ops::ControlFlow;
use std::time::Instant;

use super::{Loop, LoopEnd, Outcome, Stop, elapsed_ms, shut_down_meanwhile, stop_now};
use crate::definition::CheckDef;
use crate::domain::event::{CheckCompleted, CheckStarted, EventPayload};
use crate::domain::execution::{CheckResult, StopReason};
use crate::domain::transcript::{Feedback, Message};
use crate::tools::command::CommandRun;

/// Characters of a check's output its `agent.check.completed` event keeps.
const SUMMARY_CHARS: usize = 200;

/// One check of a round, run to its end.
struct Checked {
    result: CheckResult,
    /// What the model is told of it when it failed.
    feedback: String,
    /// How it failed, for the execution's error: `exit code: 1 (2s)`, `timed out…`.
    failure: String,
    /// The end of its output, for its event.
    summary: String,
}

impl Loop<'_> {
    /// Runs a round of checks on `answer`, the model's settled answer. `Break` with how
    /// the execution ends (completed, failed, or stopped while a check ran); `Continue`
    /// when the failures went back to the model for another step.
    pub(super) async fn verify(&mut self, answer: String) -> anyhow::Result<ControlFlow<LoopEnd>> {
        let run = self.run;
        // The answer's shape first: it is cheap and changes nothing, and the checks
        // only ever judge an answer the agent could return.
        let structured = match self.check_output(&answer)? {
            Ok(structured) => structured,
            Err(flow) => return Ok(flow),
        };
        let checks = &run.def.checks;
        if checks.is_empty() {
            return Ok(ControlFlow::Break(LoopEnd::Settled(Outcome {
                structured,
                ..Outcome::completed(answer)
            })));
        }
        let round = self.current()?.failed_check_rounds + 1;
        let mut results = Vec::with_capacity(checks.len());
        let mut failed = Vec::new();
        for check in checks {
            let checked = match self.run_check(check, round).await? {
                Ok(checked) => checked,
                Err(end) => return Ok(ControlFlow::Break(end)),
            };
            results.push(checked.result.clone());
            if !checked.result.success {
                failed.push(checked);
            }
        }
        let step = self.current()?.steps;
        let max_rounds = run.def.limits.max_check_rounds;
        if failed.is_empty() {
            return Ok(ControlFlow::Break(LoopEnd::Settled(Outcome {
                checks: results,
                structured,
                ..Outcome::completed(answer)
            })));
        }
        if round >= max_rounds {
            return Ok(ControlFlow::Break(LoopEnd::Settled(Outcome {
                checks: results,
                ..checks_failed(&failed, round, step)
            })));
        }
        let content = feedback(&failed, round, max_rounds);
        let mut line = self.transcript_line(step, Message::User { content });
        line.feedback = Some(Feedback::Check);
        self.history.push(line.message.clone());
        super::current_mut(self.state)?.failed_check_rounds = round;
        // The line carries the state: the round is counted if and only if the model
        // is told of it.
        self.sink.checkpoint(vec![line], self.state)?;
        Ok(ControlFlow::Continue(()))
    }

    /// Runs one check, between its two events. `Err(end)` when a stop came before it
    /// or while it ran (its process group is then killed).
    async fn run_check(
        &mut self,
        check: &CheckDef,
        round: u32,
    ) -> anyhow::Result<Result<Checked, LoopEnd>> {
        if let Some(stop) = self.stop_now() {
            return Ok(Err(stop.into()));
        }
        self.sink.emit(EventPayload::CheckStarted(CheckStarted {
            name: check.name.clone(),
            round,
        }))?;
        let (run, deadline) = (self.run, self.deadline);
        let started = Instant::now();
        let mut cut = None;
        let sink = &mut *self.sink;
        let mut stop = || {
            cut = cut.or_else(|| stop_now(&mut *sink, deadline));
            cut.is_some()
        };
        let ran = run.tools.run_check(check, &mut stop).await;
        let cut = cut.or_else(|| shut_down_meanwhile(&mut *self.sink));
        let duration_ms = elapsed_ms(started);
        let completed = |success, exit_code, output_summary| {
            EventPayload::CheckCompleted(CheckCompleted {
                name: check.name.clone(),
                round,
                success,
                exit_code,
                duration_ms,
                output_summary,
            })
        };
        if let Some(stop) = cut {
            self.sink
                .emit(completed(false, None, stopped(stop).to_owned()))?;
            return Ok(Err(stop.into()));
        }
        let program = check.argv.join(" ");
        let checked = match ran {
            Ok(ran) => Checked {
                result: CheckResult {
                    name: check.name.clone(),
                    success: ran.success(),
                    exit_code: ran.exit_code(),
                    duration_ms,
                },
                summary: output_summary(&ran),
                feedback: format!(
                    "The check `{}` (`{program}`) failed: {}",
                    check.name,
                    ran.report()
                ),
                failure: ran.status_line(),
            },
            Err(why) => Checked {
                result: CheckResult {
                    name: check.name.clone(),
                    success: false,
                    exit_code: None,
                    duration_ms,
                },
                summary: tail(&why, SUMMARY_CHARS),
                feedback: format!(
                    "The check `{}` (`{program}`) could not run: {why}",
                    check.name
                ),
                failure: why,
            },
        };
        self.sink.emit(completed(
            checked.result.success,
            checked.result.exit_code,
            checked.summary.clone(),
        ))?;
        Ok(Ok(checked))
    }
}

/// The end of an execution whose checks failed in its last allowed round: the error
/// names each failing check and how it ended.
fn checks_failed(failed: &[Checked], round: u32, step: u32) -> Outcome {
    let which: Vec<String> = failed
        .iter()
        .map(|c| format!("`{}` ({})", c.result.name, c.failure))
        .collect();
    let message = format!(
        "{} still failed after {} (max_check_rounds): {}",
        crate::plural::count(which.len() as u64, "check", "checks"),
        crate::plural::count(u64::from(round), "round", "rounds"),
        which.join(", ")
    );
    Outcome::failed(
        StopReason::ChecksFailed,
        message,
        Some(format!("step {step}")),
    )
}

/// The user line that sends a failed round back to the model: every failing check
/// with its whole (capped) output, and what to do.
fn feedback(failed: &[Checked], round: u32, max_rounds: u32) -> String {
    let reports: Vec<&str> = failed.iter().map(|c| c.feedback.as_str()).collect();
    format!(
        "Your answer is not accepted yet (round {round} of {max_rounds}): {} failed.\n\n{}\n\nFix what failed, then answer again.",
        crate::plural::count(reports.len() as u64, "check", "checks"),
        reports.join("\n\n")
    )
}

/// What a check's event says when a stop cut it.
fn stopped(stop: Stop) -> &'static str {
    match stop {
        Stop::Cancel => "stopped: the execution was cancelled",
        Stop::TimeLimit => "stopped: the execution ran out of time",
        Stop::Shutdown => "stopped: the worker is shutting down; the check runs again on resume",
    }
}

/// The end of what a check wrote, where its verdict usually is (`test result: FAILED`,
/// the compiler's last error): its stderr, else its stdout, else how it ended.
fn output_summary(ran: &CommandRun) -> String {
    [&ran.stderr, &ran.stdout]
        .into_iter()
        .find(|text| !text.trim().is_empty())
        .map_or_else(|| ran.status_line(), |text| tail(text, SUMMARY_CHARS))
}

/// The last `max` characters of a text on one line, after an ellipsis if cut.
fn tail(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let count = flat.chars().count();
    if count <= max {
        return flat;
    }
    let kept: String = flat.chars().skip(count - max.saturating_sub(1)).collect();
    format!("…{kept}")
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn a_summary_keeps_the_end_of_the_output_on_one_line() {
        assert_eq!(tail("a\n  b\n", 10), "a b");
        assert_eq!(tail("0123456789abc", 5), "…9abc");
        assert_eq!(tail("0123456789abc", 5).chars().count(), 5);
    }
}
