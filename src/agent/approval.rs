//! The gate before a call of a tool with `approval = "required"`: the call runs only
//! once a person approved it (`agentq approve`), is answered with an error the model
//! sees when they denied it (or `[limits] approval_timeout` passed), and otherwise
//! the execution parks on it.
//!
//! The gate sits before the call's start-mark ([`Loop::run_side_effecting`]), so an
//! approved call is then run exactly as any side-effecting call is: at most once, a
//! crash after the mark answering it "interrupted". What lets it through is the
//! sink's word that a decision entry names this execution, step and call; the park
//! itself ([`Awaiting`] in the open step) is bookkeeping: were it lost, the resumed
//! step would reach the gate again and park again.
//!
//! Parking checkpoints the state naming the call, then reports `approval.requested`
//! (once: a re-park, when the session was claimed again for a message that is not a
//! decision, reports nothing new), and ends the loop with [`LoopEnd::Parked`]. The
//! wait counts against no limit: the time parked is kept out of `[limits] timeout`
//! ([`clock_start`]).

use super::{Loop, current_mut};
use crate::domain::approval::{
    ApprovalDecided, ApprovalRequested, Awaiting, AwaitingApproval, DecidedBy, Decision,
    DecisionRef, Verdict, capped_arguments,
};
use crate::domain::event::EventPayload;
use crate::domain::state::CurrentExecution;
use crate::domain::transcript::ToolCall;
use crate::time::Timestamp;
use crate::tools::ToolOutput;

/// What the gate lets happen to a call.
pub(super) enum Gate {
    /// Approved: run it.
    Run,
    /// Denied: this is its result.
    Answer(ToolOutput),
    /// Nothing decided yet: the execution parks on it.
    Park(AwaitingApproval),
}

impl Loop<'_> {
    /// Decides whether `call`, of a tool that needs approval, runs now.
    pub(super) fn gate(&mut self, call: &ToolCall) -> anyhow::Result<Gate> {
        let step = self.current()?.steps + 1;
        let asked = DecisionRef {
            execution_id: self.run.execution_id,
            step,
            tool_call_id: call.id.clone(),
        };
        let now = self.sink.now();
        let waiting = self
            .current()?
            .open_step
            .as_ref()
            .and_then(|open| open.awaiting.clone())
            .filter(|awaiting| awaiting.tool_call_id == call.id);
        let decision = match self.sink.decision(&asked)? {
            Decision::Pending { .. }
                if waiting
                    .as_ref()
                    .and_then(|w| w.deny_at)
                    .is_some_and(|deny_at| now >= deny_at) =>
            {
                self.timed_out(&asked)?
            }
            decision => decision,
        };
        Ok(match decision {
            Decision::Pending { seen_through } => {
                Gate::Park(self.park(call, step, waiting, seen_through, now)?)
            }
            Decision::Approved { .. } => {
                // Carried by the start-mark's checkpoint, which comes next: the call
                // stops waiting and is marked as started in one write.
                self.stop_waiting(now)?;
                Gate::Run
            }
            Decision::Denied { by, reason } => {
                // Carried by the checkpoint of the call's result.
                self.stop_waiting(now)?;
                Gate::Answer(ToolOutput::error(denied(
                    &call.name,
                    &by,
                    reason.as_deref(),
                )))
            }
        })
    }

    /// Parks on `call`: the state names it (durably: a checkpoint without lines), and
    /// the first park of it reports it, or the next one if a crash came in between.
    fn park(
        &mut self,
        call: &ToolCall,
        step: u32,
        waiting: Option<Awaiting>,
        seen_through: u64,
        now: Timestamp,
    ) -> anyhow::Result<AwaitingApproval> {
        let timeout = self.run.def.limits.approval_timeout;
        let awaiting = match waiting {
            Some(waiting) => Awaiting {
                seen_through,
                ..waiting
            },
            None => Awaiting {
                tool_call_id: call.id.clone(),
                tool_name: call.name.clone(),
                requested_at: now,
                deny_at: timeout.map(|t| plus(now, t.as_millis())),
                seen_through,
                unreported: true,
            },
        };
        let report = awaiting.unreported;
        let parked = AwaitingApproval {
            tool_call_id: call.id.clone(),
            tool_name: call.name.clone(),
            server: self.run.tools.server_of(&call.name).map(str::to_owned),
            step,
            arguments: call.arguments.clone(),
            requested_at: awaiting.requested_at,
            deny_at: awaiting.deny_at,
        };
        if let Some(open) = current_mut(self.state)?.open_step.as_mut() {
            open.awaiting = Some(awaiting);
        }
        // Before the event: whoever acts on `approval.requested` finds the call waiting.
        self.sink.checkpoint(Vec::new(), self.state)?;
        if report {
            let (arguments, arguments_truncated) = capped_arguments(&call.arguments);
            self.sink
                .emit(EventPayload::ApprovalRequested(ApprovalRequested {
                    tool_call_id: parked.tool_call_id.clone(),
                    tool_name: parked.tool_name.clone(),
                    server: parked.server.clone(),
                    step,
                    arguments,
                    arguments_truncated,
                    requested_at: parked.requested_at,
                    deny_at: parked.deny_at,
                }))?;
            // A crash before this checkpoint writes the event again at the next park:
            // twice in the log rather than never.
            let open = current_mut(self.state)?.open_step.as_mut();
            if let Some(awaiting) = open.and_then(|open| open.awaiting.as_mut()) {
                awaiting.unreported = false;
            }
            self.sink.checkpoint(Vec::new(), self.state)?;
        }
        Ok(parked)
    }

    /// The call no longer waits: the time it waited is kept out of the time limit.
    fn stop_waiting(&mut self, now: Timestamp) -> anyhow::Result<()> {
        let current = current_mut(self.state)?;
        if let Some(awaiting) = current.open_step.as_mut().and_then(|o| o.awaiting.take()) {
            current.parked_ms = current
                .parked_ms
                .saturating_add(now.millis_since(awaiting.requested_at));
        }
        Ok(())
    }

    /// `approval_timeout` passed with nothing decided: the worker denies the call, and
    /// says so in the log as a person's decision is said.
    fn timed_out(&mut self, call: &DecisionRef) -> anyhow::Result<Decision> {
        let by = DecidedBy::timeout();
        let timeout = self.run.def.limits.approval_timeout.unwrap_or_default();
        let reason = format!(
            "no approval within {} (approval_timeout)",
            crate::time::human_duration(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
        );
        self.sink
            .emit(EventPayload::ApprovalDecided(ApprovalDecided {
                execution_id: call.execution_id,
                tool_call_id: call.tool_call_id.clone(),
                decision: Verdict::Denied,
                reason: Some(reason.clone()),
                by: by.clone(),
            }))?;
        Ok(Decision::Denied {
            by,
            reason: Some(reason),
        })
    }
}

/// Where the execution's `[limits] timeout` counts from: its start, moved on by the
/// time it spent parked (decided waits, and the one going on now).
pub(super) fn clock_start(current: &CurrentExecution, now: Timestamp) -> Timestamp {
    let waiting = current
        .open_step
        .as_ref()
        .and_then(|open| open.awaiting.as_ref())
        .map_or(0, |awaiting| now.millis_since(awaiting.requested_at));
    plus(
        current.started_at,
        u128::from(current.parked_ms.saturating_add(waiting)),
    )
}

fn plus(t: Timestamp, ms: u128) -> Timestamp {
    Timestamp(t.0.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)))
}

/// What the model is told of a call that was denied.
fn denied(tool: &str, by: &DecidedBy, reason: Option<&str>) -> String {
    let reason = reason.map_or_else(|| " (no reason given)".to_owned(), |r| format!(": {r}"));
    format!(
        "not run: the call of `{tool}` was denied by {}{reason}",
        by.user
    )
}
