//! The agent loop: inference, tool calls, tool results back to the model, until the
//! model answers without tool calls (and the agent's `[[checks]]` pass: `verify.rs`) or
//! a limit stops it.
//!
//! The loop does no I/O of its own. It talks to a [`Sink`] that records events and
//! checkpoints, so the worker backs it with the store and tests with memory. After
//! every settled step the new transcript lines and the state go to
//! [`Sink::checkpoint`]; a step that did not settle leaves no trace in the state, and a
//! resumed execution repeats it from its inference, never re-running a settled tool call.

mod approval;
pub mod budget;
pub mod compact;
mod output;
mod verify;

use std::ops::ControlFlow;
use std::time::Instant;

use uuid::Uuid;

use crate::definition::{AgentDef, ToolChoice};
use crate::domain::Usage;
use crate::domain::approval::{AwaitingApproval, Decision, DecisionRef};
use crate::domain::event::{
    ContextCompacted, Continuation, EventPayload, ProviderRetry, StepCompleted, StepStarted,
    StreamChunk, ToolCompleted, ToolStarted,
};
use crate::domain::execution::{CheckResult, ErrorInfo, ExecStatus, StopReason};
use crate::domain::session::EventsPreset;
use crate::domain::state::{AgentState, Compaction, CurrentExecution, OpenStep};
use crate::domain::transcript::{Message, ToolCall, TranscriptLine};
use crate::provider::{
    Interrupt, ModelRequest, ModelTurn, Provider, ProviderError, RetryNotice, StreamObserver,
    ToolSpec,
};
use crate::text::summarize_args;
use crate::time::Timestamp;
use crate::tools::{ToolContext, ToolOutput, Toolbox};
pub use budget::Budgets;
use budget::StepFacts;

/// Why the loop was asked to stop early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `agentq cancel`: the execution ends `cancelled`.
    Cancel,
    /// The worker is shutting down: the execution stays resumable.
    Shutdown,
    /// The execution's `timeout` passed: it ends `stopped`, `time_limit`.
    TimeLimit,
}

/// Where the loop's effects go.
pub trait Sink: Send {
    /// Records an event of this execution.
    fn emit(&mut self, payload: EventPayload) -> anyhow::Result<()>;
    /// Persists a settled step: appends `lines` to the transcript, then stores `state`
    /// (whose transcript mark the sink advances).
    fn checkpoint(
        &mut self,
        lines: Vec<TranscriptLine>,
        state: &mut AgentState,
    ) -> anyhow::Result<()>;
    /// Whether to stop (cancel or shutdown), asked between text chunks, tool calls and
    /// steps.
    fn stop_requested(&mut self) -> Option<Stop>;
    /// Whether the worker is shutting down, whatever else is asked: a cancel queued
    /// beside it must not hide it (see [`shut_down_meanwhile`]).
    fn shutting_down(&mut self) -> bool {
        self.stop_requested() == Some(Stop::Shutdown)
    }
    /// Whether the session was paused, asked between steps: the execution then waits,
    /// at its checkpoint, for `session resume`.
    fn paused(&mut self) -> bool {
        false
    }
    /// What was decided of a call that waits for approval (`approval.rs`): asked
    /// before such a call runs, it runs only once this says `Approved`.
    fn decision(&mut self, call: &DecisionRef) -> anyhow::Result<Decision> {
        let _ = call;
        Ok(Decision::Pending { seen_through: 0 })
    }
    fn now(&self) -> Timestamp;
}

/// The execution in hand and what it may use.
pub struct Run<'a> {
    pub def: &'a AgentDef,
    pub provider: &'a dyn Provider,
    pub tools: &'a Toolbox,
    pub preset: EventsPreset,
    pub execution_id: Uuid,
    /// Session usage before this execution, for `session_max_tokens`.
    pub session_usage: Usage,
    pub budgets: Budgets,
}

/// How a settled execution ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: ExecStatus,
    pub stop_reason: StopReason,
    pub response: Option<String>,
    pub error: Option<ErrorInfo>,
    /// The agent's `[[checks]]` as their last round left them (none ran: empty).
    pub checks: Vec<CheckResult>,
    /// The answer as JSON, valid against the agent's `[output]` schema (none: `None`).
    pub structured: Option<serde_json::Value>,
}

impl Outcome {
    /// A failure for `reason`, with its error message and where it happened.
    pub fn failed(reason: StopReason, message: String, context: Option<String>) -> Outcome {
        Outcome {
            status: ExecStatus::Failed,
            stop_reason: reason,
            response: None,
            error: Some(ErrorInfo { message, context }),
            checks: Vec::new(),
            structured: None,
        }
    }

    fn completed(response: String) -> Outcome {
        Outcome {
            status: ExecStatus::Completed,
            stop_reason: StopReason::Completed,
            response: Some(response),
            error: None,
            checks: Vec::new(),
            structured: None,
        }
    }

    fn stopped(reason: StopReason) -> Outcome {
        Outcome {
            status: ExecStatus::Stopped,
            stop_reason: reason,
            response: None,
            error: None,
            checks: Vec::new(),
            structured: None,
        }
    }

    /// How the execution ends when the decision after step `step` stops it: `answer`
    /// is the step's text, `error` why a tool failure ended it.
    fn decided(reason: StopReason, answer: String, error: Option<String>, step: u32) -> Outcome {
        match reason {
            // `agent.message.completed` is written by whoever settles the execution,
            // together with its last events.
            StopReason::Completed => Outcome::completed(answer),
            StopReason::Error => Outcome::failed(
                StopReason::Error,
                error.unwrap_or_else(|| "a tool failed".to_owned()),
                Some(format!("step {step}")),
            ),
            limit => Outcome::stopped(limit),
        }
    }
}

/// The loop either settles the execution or leaves it to be resumed.
#[derive(Debug, Clone, PartialEq)]
pub enum LoopEnd {
    Settled(Outcome),
    /// Stopped for shutdown at a safe point; the last checkpoint is where to resume.
    Suspended,
    /// Parked on a call that waits for approval; the checkpoint names it, and the
    /// execution resumes there once a decision is queued.
    Parked(AwaitingApproval),
}

impl From<Stop> for LoopEnd {
    fn from(stop: Stop) -> LoopEnd {
        match stop {
            Stop::Cancel => LoopEnd::Settled(cancelled()),
            Stop::Shutdown => LoopEnd::Suspended,
            Stop::TimeLimit => LoopEnd::Settled(Outcome::stopped(StopReason::TimeLimit)),
        }
    }
}

/// Cancellation and shutdown from the sink, else the execution's deadline.
fn stop_now(sink: &mut dyn Sink, deadline: Option<Timestamp>) -> Option<Stop> {
    sink.stop_requested().or_else(|| {
        deadline
            .filter(|d| sink.now() >= *d)
            .map(|_| Stop::TimeLimit)
    })
}

/// A shutdown asked for while tools ran, even if no stop check saw it: a second signal
/// kills the commands itself (`tools::process::kill_all`), and a command that ends so
/// must not be taken for one that failed by itself (its result would be kept, and the
/// resumed step would not answer it as interrupted).
fn shut_down_meanwhile(sink: &mut dyn Sink) -> Option<Stop> {
    sink.shutting_down().then_some(Stop::Shutdown)
}

/// Runs steps until the execution settles. `history` holds the settled transcript
/// messages, `state.current` the execution (its settled steps and usage, and a step
/// left open by a crash). Errors are failures to record (disk), not failures of the
/// agent.
///
/// A step is persisted in pieces: the model's answer (with its tool calls) once the
/// stream ends, then each tool result as it comes. A side-effecting tool is marked as
/// started in the state before it runs; a worker that resumes a step finds which calls
/// have results, runs the rest, and answers a call that was running when the previous
/// worker died with an error instead of running it again.
pub async fn run(
    run: &Run<'_>,
    history: &mut Vec<Message>,
    state: &mut AgentState,
    sink: &mut dyn Sink,
) -> anyhow::Result<LoopEnd> {
    let specs = run.tools.specs();
    let tool_names = run.tools.names();
    let deadline = run
        .budgets
        .deadline(approval::clock_start(current(state)?, sink.now()));
    let resumed_answer = settled_answer(history, current(state)?);
    let mut execution = Loop {
        run,
        specs,
        tool_names,
        deadline,
        history,
        state,
        sink,
    };
    if let Some(answer) = resumed_answer {
        // Resumed after the final step settled but before the execution did: the
        // answer is there, no model call is needed, but its checks (if any) run
        // again: whether they passed was never recorded.
        if let ControlFlow::Break(end) = execution.verify(answer).await? {
            return Ok(end);
        }
    }
    loop {
        if let ControlFlow::Break(end) = execution.step().await? {
            return Ok(end);
        }
    }
}

/// What the steps of one execution share: what the loop was given, what is fixed once
/// it starts, and the history, state and sink the steps change.
struct Loop<'a> {
    run: &'a Run<'a>,
    /// The tools as the model is told of them, and their names for `step.started`.
    specs: Vec<ToolSpec>,
    tool_names: Vec<String>,
    /// When the execution's `timeout` runs out.
    deadline: Option<Timestamp>,
    history: &'a mut Vec<Message>,
    state: &'a mut AgentState,
    sink: &'a mut dyn Sink,
}

/// A step under way.
struct Step {
    number: u32,
    started: Instant,
    /// What `step.completed` reports of the answer: its finish reason and usage.
    answer: Option<OpenStep>,
}

impl Loop<'_> {
    /// One step: the model's answer (unless the step was left open with it), its tool
    /// calls, and whether to run another. `Break` with how the loop ends.
    async fn step(&mut self) -> anyhow::Result<ControlFlow<LoopEnd>> {
        let resuming = self.current()?.open_step.is_some();
        // A step left open goes to its tool calls even after a stop: they are answered
        // there (`not run: …`), so the transcript stays a valid conversation (a cancel
        // of an execution parked on an approval, for one).
        if !resuming && let Some(stop) = self.stop_now() {
            return Ok(ControlFlow::Break(stop.into()));
        }
        if !resuming && let Some(end) = self.held_before_step()? {
            return Ok(ControlFlow::Break(end));
        }
        let mut step = Step {
            number: self.current()?.steps + 1,
            started: Instant::now(),
            answer: self.current()?.open_step.clone(),
        };
        if !resuming {
            match self.answer(step.number).await? {
                Ok(open) => step.answer = Some(open),
                Err(end) => return Ok(ControlFlow::Break(end)),
            }
        }
        let (content, tool_calls) = last_answer(self.history, step.number)?;
        let ran = self.run_tools(&tool_calls, step.number).await?;
        if let Some(end) = self.settle_step(&step, &tool_calls, &ran)? {
            return Ok(ControlFlow::Break(end));
        }
        match self.decide(step.number, content, &tool_calls, &ran)? {
            // The answer is settled and the budgets were judged: the checks decide.
            ControlFlow::Break(LoopEnd::Settled(Outcome {
                stop_reason: StopReason::Completed,
                response: Some(answer),
                ..
            })) => self.verify(answer).await,
            flow => Ok(flow),
        }
    }

    /// What keeps a new step from starting: a paused session waits at its checkpoint,
    /// and a limit reached already ends the execution without a model call.
    fn held_before_step(&mut self) -> anyhow::Result<Option<LoopEnd>> {
        if self.sink.paused() {
            return Ok(Some(LoopEnd::Suspended));
        }
        let limit = budget::exhausted(&self.run.budgets, self.current()?, self.run.session_usage);
        Ok(limit.map(|limit| LoopEnd::Settled(Outcome::stopped(limit))))
    }

    /// A new step's answer, settled: older turns are compacted first when the prompt
    /// would not fit. `Err(end)` when no answer came (interrupted, provider failure).
    async fn answer(&mut self, step: u32) -> anyhow::Result<Result<OpenStep, LoopEnd>> {
        if let Some(window) = self.run.def.model.context_window
            && let Some(stop) = self.compact_if_needed(window).await?
        {
            return Ok(Err(stop.into()));
        }
        match self.infer(step).await? {
            Ok(turn) => self.settle_answer(step, turn).map(Ok),
            Err(end) => Ok(Err(end)),
        }
    }

    /// One inference: the step's first event, the streamed answer, its accounting.
    /// `Err(end)` when the call did not produce an answer (interrupted, provider failure).
    async fn infer(&mut self, step: u32) -> anyhow::Result<Result<ModelTurn, LoopEnd>> {
        let view = compact::view(self.history, self.state.compaction.as_ref());
        self.sink.emit(EventPayload::StepStarted(StepStarted {
            step_number: step,
            message_count: view.len(),
            available_tools: self.tool_names.clone(),
        }))?;
        let request = ModelRequest {
            system: &self.run.def.system,
            messages: &view,
            tools: &self.specs,
            tool_choice: tool_choice(self.run.def, self.history),
            output_schema: self
                .run
                .def
                .output
                .as_ref()
                .filter(|output| output.constrain)
                .map(|output| &output.resolved),
            call_index: self.state.model_calls,
        };
        let observer =
            StepObserver::new(self.sink, self.run.preset.streams_chunks(), self.deadline);
        let streamed = observer.stream(self.run.provider, request).await;
        if let Some(err) = streamed.record_error {
            return Err(err);
        }
        Ok(match streamed.result {
            Ok(turn) => {
                self.state.model_calls += 1;
                Ok(turn)
            }
            Err(ProviderError::Interrupted) => {
                let stop = streamed.stop.unwrap_or(Stop::Shutdown);
                if stop != Stop::Shutdown {
                    // The call was made and abandoned; a suspended one is made again.
                    self.state.model_calls += 1;
                }
                Err(stop.into())
            }
            Err(err) => {
                // The call was made: a script entry was used up, a real API billed it.
                self.state.model_calls += 1;
                Err(LoopEnd::Settled(provider_failure(&err, step)))
            }
        })
    }

    /// Records the model's answer: a crash from here on resumes the step with its tool
    /// calls. An answer without tool calls settles the step with it.
    fn settle_answer(&mut self, step: u32, turn: ModelTurn) -> anyhow::Result<OpenStep> {
        let ModelTurn {
            text,
            tool_calls,
            usage,
            finish_reason,
        } = turn;
        let settles_the_step = tool_calls.is_empty();
        let line = self.transcript_line(
            step,
            Message::Assistant {
                content: text,
                tool_calls,
            },
        );
        self.history.push(line.message.clone());
        let current = current_mut(self.state)?;
        current.usage.add(usage);
        let open = OpenStep {
            finish_reason,
            usage,
            tool_started: None,
            awaiting: None,
        };
        current.open_step = Some(open.clone());
        if settles_the_step {
            close_step(self.state, step)?;
        }
        self.sink.checkpoint(vec![line], self.state)?;
        Ok(open)
    }

    /// Compacts older turns when the next prompt would pass the threshold. Returns a
    /// stop if one was requested during the summarising call.
    async fn compact_if_needed(&mut self, window: u64) -> anyhow::Result<Option<Stop>> {
        let threshold = self
            .run
            .def
            .model
            .compact_threshold
            .unwrap_or(compact::DEFAULT_THRESHOLD);
        let Some(plan) = compact::plan(
            &self.run.def.system,
            self.history,
            &self.specs,
            self.state.compaction.as_ref(),
            window,
            threshold,
        ) else {
            return Ok(None);
        };
        let previous = self
            .state
            .compaction
            .as_ref()
            .and_then(|c| c.summary.clone());
        let summary = match self.summarize(&plan, previous.as_deref()).await? {
            Ok(summary) => summary,
            Err(stop) => return Ok(Some(stop)),
        };
        self.record_compaction(&plan, summary, previous)?;
        Ok(None)
    }

    /// Asks the model to summarise the turns `plan` drops. `Ok(None)` when it could not
    /// (the turns are then dropped without a summary), `Err(stop)` when a stop
    /// interrupted the call.
    async fn summarize(
        &mut self,
        plan: &compact::Plan,
        previous: Option<&str>,
    ) -> anyhow::Result<Result<Option<String>, Stop>> {
        let input = compact::summary_input(self.history, plan, previous);
        let messages = [Message::User { content: input }];
        let request = ModelRequest {
            system: compact::PROMPT,
            messages: &messages,
            tools: &[],
            tool_choice: None,
            output_schema: None,
            call_index: self.state.model_calls,
        };
        // The summary is not part of the answer: its text is not streamed as chunks.
        let observer = StepObserver::new(self.sink, false, self.deadline);
        let streamed = observer.stream(self.run.provider, request).await;
        if let Some(err) = streamed.record_error {
            return Err(err);
        }
        Ok(match streamed.result {
            Err(ProviderError::Interrupted) => Err(streamed.stop.unwrap_or(Stop::Shutdown)),
            Ok(turn) if !turn.text.trim().is_empty() => {
                self.state.model_calls += 1;
                if let Some(current) = self.state.current.as_mut() {
                    current.usage.add(turn.usage);
                }
                Ok(Some(turn.text))
            }
            // Summarising failed: the oldest turns are dropped instead, with any earlier
            // summary kept.
            _ => {
                self.state.model_calls += 1;
                Ok(None)
            }
        })
    }

    /// Moves the cut to where `plan` says, with the new summary (or the earlier one),
    /// and reports what it saved.
    fn record_compaction(
        &mut self,
        plan: &compact::Plan,
        summary: Option<String>,
        previous: Option<String>,
    ) -> anyhow::Result<()> {
        let summarized = summary.is_some();
        self.state.compaction = Some(Compaction {
            through: plan.cut as u64,
            summary: summary.or(previous),
        });
        let after = compact::estimate(
            &self.run.def.system,
            &compact::view(self.history, self.state.compaction.as_ref()),
            &self.specs,
        );
        self.sink
            .emit(EventPayload::ContextCompacted(ContextCompacted {
                before_tokens: plan.before_tokens,
                after_tokens: after,
                dropped_messages: (plan.cut - plan.from) as u64,
                summarized,
            }))
    }

    /// Runs the step's tool calls that have no result yet, persisting results as they
    /// come. Consecutive read-only calls run at the same time and are persisted
    /// together, in the order of the calls (a crash before that runs them again, which
    /// changes nothing); a side-effecting call runs alone, marked as started first. A
    /// cancel or the time limit between calls answers the remaining calls with errors
    /// (so the transcript stays a valid conversation); a shutdown stops at once, leaving
    /// the step open for the next worker: a running command is killed, and one that may
    /// have had effects stays marked as started, so that the resumed step answers it as
    /// interrupted.
    async fn run_tools(&mut self, calls: &[ToolCall], step: u32) -> anyhow::Result<ToolRun> {
        let mut next = self
            .history
            .iter()
            .rev()
            .take_while(|m| matches!(m, Message::Tool { .. }))
            .count();
        let mut ran = ToolRun::default();
        while next < calls.len() {
            if ran.stop.is_none() {
                ran.stop = self.stop_now();
                if ran.stop == Some(Stop::Shutdown) {
                    return Ok(ran);
                }
            }
            let outputs = match self.next_outputs(&calls[next..], ran.stop).await? {
                Outputs::Ran(outputs) => outputs,
                Outputs::Cut => {
                    ran.stop = Some(Stop::Shutdown);
                    return Ok(ran);
                }
                Outputs::Parked(parked) => {
                    ran.parked = Some(parked);
                    return Ok(ran);
                }
            };
            let answered = &calls[next..next + outputs.len()];
            next += outputs.len();
            let lines = self.answer_calls(step, answered, outputs, &mut ran);
            if let Some(open) = current_mut(self.state)?.open_step.as_mut() {
                open.tool_started = None;
            }
            if next == calls.len() && ran.stop.is_none() {
                self.complete_step(step, calls.len())?;
            }
            self.sink.checkpoint(lines, self.state)?;
        }
        if ran.stop.is_none() {
            ran.stop = self.stop_now().filter(|s| *s != Stop::Shutdown);
        }
        Ok(ran)
    }

    /// The outputs of the first of the `pending` calls, or of the read-only calls it
    /// starts, run together. After a stop nothing runs, and a call the previous worker
    /// was running when it died is not run again. A call that needs approval runs only
    /// once it is approved ([`Loop::gate`]).
    async fn next_outputs(
        &mut self,
        pending: &[ToolCall],
        stop: Option<Stop>,
    ) -> anyhow::Result<Outputs> {
        let call = &pending[0];
        let interrupted = self
            .current()?
            .open_step
            .as_ref()
            .and_then(|o| o.tool_started.as_deref())
            == Some(call.id.as_str());
        let output = match stop {
            Some(Stop::TimeLimit) => ToolOutput::error("not run: the execution ran out of time"),
            Some(_) => ToolOutput::error("not run: the execution was cancelled"),
            // Never run twice: its effects may or may not have happened.
            None if interrupted => ToolOutput::error(
                "interrupted: the worker running this tool stopped before it finished; it may or may not have taken effect",
            ),
            None if self.run.tools.is_read_only(&call.name) => {
                let batch = pending
                    .iter()
                    .take_while(|c| self.run.tools.is_read_only(&c.name))
                    .count();
                // Cut by a shutdown: they have no results, and run again on resume.
                let ran = self.run_read_only(&pending[..batch]).await?;
                return Ok(ran.map_or(Outputs::Cut, Outputs::Ran));
            }
            // Before the start-mark: an approved call then runs as any other does,
            // at most once.
            None if self.run.tools.needs_approval(&call.name) => match self.gate(call)? {
                approval::Gate::Run => return self.run_side_effecting_outputs(call).await,
                approval::Gate::Answer(output) => output,
                approval::Gate::Park(parked) => return Ok(Outputs::Parked(parked)),
            },
            // Cut by a shutdown: the call stays marked as started, so the resumed step
            // answers it as interrupted instead of running it again.
            None => return self.run_side_effecting_outputs(call).await,
        };
        Ok(Outputs::Ran(vec![output]))
    }

    /// [`Loop::run_side_effecting`], as [`Loop::next_outputs`] answers.
    async fn run_side_effecting_outputs(&mut self, call: &ToolCall) -> anyhow::Result<Outputs> {
        let output = self.run_side_effecting(call).await?;
        Ok(output.map_or(Outputs::Cut, |output| Outputs::Ran(vec![output])))
    }

    /// Runs read-only calls at the same time. Their events keep the calls' order: every
    /// start, then every completion. Any stop (a cancel, the deadline, a shutdown) stops
    /// them: a command's process group is killed. `None` when a shutdown did: the calls
    /// changed nothing and have no results, so the resumed step runs them again.
    async fn run_read_only(
        &mut self,
        calls: &[ToolCall],
    ) -> anyhow::Result<Option<Vec<ToolOutput>>> {
        let run = self.run;
        for call in calls {
            self.sink.emit(tool_started(run, call))?;
        }
        let stopping = std::sync::atomic::AtomicBool::new(false);
        let work = futures_util::future::join_all(calls.iter().map(|call| {
            let stopping = &stopping;
            async move {
                let started = Instant::now();
                // Read-only tools never touch the task list.
                let mut todos = Vec::new();
                let mut stop = || stopping.load(std::sync::atomic::Ordering::Relaxed);
                let output = invoke(run, call, &mut todos, &mut stop).await;
                (output, elapsed_ms(started))
            }
        }));
        tokio::pin!(work);
        let mut cut = None;
        let results = loop {
            tokio::select! {
                results = &mut work => break results,
                () = tokio::time::sleep(STOP_CHECK), if cut.is_none() => {
                    cut = self.stop_now();
                    if cut.is_some() {
                        stopping.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        };
        let cut = cut.or_else(|| shut_down_meanwhile(&mut *self.sink));
        let shutdown = cut == Some(Stop::Shutdown);
        let mut outputs = Vec::with_capacity(results.len());
        for (call, (output, duration_ms)) in calls.iter().zip(results) {
            let output = if shutdown {
                ToolOutput::error(CUT_BY_SHUTDOWN)
            } else {
                output
            };
            self.sink
                .emit(tool_completed(run, call, &output, duration_ms))?;
            outputs.push(output);
        }
        Ok((!shutdown).then_some(outputs))
    }

    /// Runs one call that may change something, alone, marked as started in the
    /// persisted state first. Any stop (a cancel, the deadline, a shutdown) cuts a long
    /// tool (a command: its process group is killed). `None` when a shutdown did: the
    /// call may or may not have taken effect, and has no result.
    async fn run_side_effecting(&mut self, call: &ToolCall) -> anyhow::Result<Option<ToolOutput>> {
        if let Some(open) = current_mut(self.state)?.open_step.as_mut() {
            open.tool_started = Some(call.id.clone());
        }
        self.sink.checkpoint(Vec::new(), self.state)?;
        let (run, deadline) = (self.run, self.deadline);
        self.sink.emit(tool_started(run, call))?;
        let started = Instant::now();
        let mut cut = None;
        let sink = &mut *self.sink;
        let mut stop = || {
            cut = cut.or_else(|| stop_now(&mut *sink, deadline));
            cut.is_some()
        };
        let output = invoke(run, call, &mut self.state.todos, &mut stop).await;
        let cut = cut.or_else(|| shut_down_meanwhile(&mut *self.sink));
        let output = match cut {
            Some(Stop::Shutdown) => None,
            _ => Some(output),
        };
        let shown = output
            .clone()
            .unwrap_or_else(|| ToolOutput::error(CUT_BY_SHUTDOWN));
        self.sink
            .emit(tool_completed(run, call, &shown, elapsed_ms(started)))?;
        Ok(output)
    }

    /// Puts the calls' results in the history, counting the errors; returns their
    /// transcript lines.
    fn answer_calls(
        &mut self,
        step: u32,
        calls: &[ToolCall],
        outputs: Vec<ToolOutput>,
        ran: &mut ToolRun,
    ) -> Vec<TranscriptLine> {
        let mut lines = Vec::with_capacity(outputs.len());
        for (call, output) in calls.iter().zip(outputs) {
            if output.is_error {
                ran.errors += 1;
                ran.last_error = Some(output.content.clone());
            }
            let line = self.transcript_line(
                step,
                Message::Tool {
                    tool_call_id: call.id.clone(),
                    name: call.name.clone(),
                    content: output.content,
                    is_error: output.is_error,
                },
            );
            self.history.push(line.message.clone());
            lines.push(line);
        }
        lines
    }

    /// Closes a step whose `calls` all have results. It counts as failed when every one
    /// of its calls failed, including those answered before a resume.
    fn complete_step(&mut self, step: u32, calls: usize) -> anyhow::Result<()> {
        let failed = self
            .history
            .iter()
            .rev()
            .take(calls)
            .all(|m| matches!(m, Message::Tool { is_error: true, .. }));
        let current = current_mut(self.state)?;
        current.failed_steps_in_a_row = if failed {
            current.failed_steps_in_a_row + 1
        } else {
            0
        };
        close_step(self.state, step)
    }

    /// Closes the step once its tools ran, and reports it. `Some(end)` when a stop cut
    /// it: a shutdown leaves it open (and unreported) for the next worker; after a
    /// cancel or the time limit the calls not run were answered as such, and the step
    /// is closed.
    fn settle_step(
        &mut self,
        step: &Step,
        tool_calls: &[ToolCall],
        ran: &ToolRun,
    ) -> anyhow::Result<Option<LoopEnd>> {
        if let Some(parked) = &ran.parked {
            // Left open, as for a shutdown: the resumed step goes on from the gate.
            return Ok(Some(LoopEnd::Parked(parked.clone())));
        }
        match ran.stop {
            Some(Stop::Shutdown) => return Ok(Some(LoopEnd::Suspended)),
            Some(_) => self.close_and_checkpoint(step.number)?,
            None if self.current()?.open_step.is_some() => {
                self.close_and_checkpoint(step.number)?
            }
            None => {}
        }
        self.sink.emit(step_completed(step, tool_calls, ran))?;
        Ok(ran.stop.map(LoopEnd::from))
    }

    /// After a settled step: whether to run another (traced for the debug preset), and
    /// if not, how the execution ends. `answer` is the step's text.
    fn decide(
        &mut self,
        step: u32,
        answer: String,
        tool_calls: &[ToolCall],
        ran: &ToolRun,
    ) -> anyhow::Result<ControlFlow<LoopEnd>> {
        let facts = StepFacts {
            step,
            tool_calls: tool_calls.len(),
            errors: ran.errors,
            last_error: ran.last_error.as_deref(),
        };
        let decision = budget::evaluate(
            &self.run.budgets,
            self.current()?,
            self.run.session_usage,
            &facts,
            self.sink.now(),
        );
        if self.run.preset.traces_continuation() {
            self.sink.emit(EventPayload::Continuation(Continuation {
                step_number: step,
                should_continue: decision.stop_reason.is_none(),
                stop_reason: decision.stop_reason,
                evaluations: decision.evaluations,
            }))?;
        }
        Ok(match decision.stop_reason {
            None => ControlFlow::Continue(()),
            Some(reason) => ControlFlow::Break(LoopEnd::Settled(Outcome::decided(
                reason,
                answer,
                decision.error,
                step,
            ))),
        })
    }

    fn current(&self) -> anyhow::Result<&CurrentExecution> {
        current(self.state)
    }

    fn stop_now(&mut self) -> Option<Stop> {
        stop_now(self.sink, self.deadline)
    }

    fn close_and_checkpoint(&mut self, step: u32) -> anyhow::Result<()> {
        close_step(self.state, step)?;
        self.sink.checkpoint(Vec::new(), self.state)
    }

    fn transcript_line(&self, step: u32, message: Message) -> TranscriptLine {
        TranscriptLine {
            message,
            message_id: None,
            execution_id: Some(self.run.execution_id),
            step: Some(step),
            feedback: None,
            timestamp: self.sink.now(),
            state: None,
        }
    }
}

/// The answer of an execution whose last settled step had no tool calls.
fn settled_answer(history: &[Message], current: &CurrentExecution) -> Option<String> {
    if current.steps == 0 || current.open_step.is_some() {
        return None;
    }
    match history.last() {
        Some(Message::Assistant {
            content,
            tool_calls,
        }) if tool_calls.is_empty() => Some(content.clone()),
        _ => None,
    }
}

/// The step's answer: just settled, or left by the worker that opened the step.
fn last_answer(history: &[Message], step: u32) -> anyhow::Result<(String, Vec<ToolCall>)> {
    match history
        .iter()
        .rev()
        .find(|m| matches!(m, Message::Assistant { .. }))
    {
        Some(Message::Assistant {
            content,
            tool_calls,
        }) => Ok((content.clone(), tool_calls.clone())),
        _ => Err(anyhow::anyhow!(
            "step {step} has no answer of the model in the transcript"
        )),
    }
}

fn current(state: &AgentState) -> anyhow::Result<&CurrentExecution> {
    state
        .current
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no execution in progress"))
}

fn current_mut(state: &mut AgentState) -> anyhow::Result<&mut CurrentExecution> {
    state
        .current
        .as_mut()
        .ok_or_else(|| anyhow::anyhow!("no execution in progress"))
}

/// Marks step `step` as settled.
fn close_step(state: &mut AgentState, step: u32) -> anyhow::Result<()> {
    let current = current_mut(state)?;
    current.steps = step;
    current.open_step = None;
    Ok(())
}

fn step_completed(step: &Step, tool_calls: &[ToolCall], ran: &ToolRun) -> EventPayload {
    let answer = step.answer.as_ref();
    EventPayload::StepCompleted(StepCompleted {
        step_number: step.number,
        has_tool_calls: !tool_calls.is_empty(),
        errors: ran.errors,
        finish_reason: answer.and_then(|o| o.finish_reason.clone()),
        usage: answer.map(|o| o.usage).unwrap_or_default(),
        duration_ms: elapsed_ms(step.started),
    })
}

/// The definition's `tool_choice` for the next step. One that forces a call holds only
/// until the execution has called a tool (a tool result follows the user message that
/// started it): after that the model must be free to answer.
fn tool_choice<'d>(def: &'d AgentDef, history: &[Message]) -> Option<&'d ToolChoice> {
    let choice = def.model.tool_choice.as_ref()?;
    let called = history
        .iter()
        .rev()
        .take_while(|m| !matches!(m, Message::User { .. }))
        .any(|m| matches!(m, Message::Tool { .. }));
    (!(choice.forces_a_call() && called)).then_some(choice)
}

/// Sees a model call's stream on behalf of the loop: text deltas become chunk events
/// (when `streams`), retries `provider.retry` events, and a stop or a failure to record
/// an event interrupts the call.
struct StepObserver<'s> {
    sink: &'s mut dyn Sink,
    streams: bool,
    chunk_index: u64,
    stop: Option<Stop>,
    record_error: Option<anyhow::Error>,
    deadline: Option<Timestamp>,
}

/// What a model call came to: the provider's result, why it was interrupted (if it
/// was), and any failure to record an event.
struct Streamed {
    result: Result<ModelTurn, ProviderError>,
    stop: Option<Stop>,
    record_error: Option<anyhow::Error>,
}

impl<'s> StepObserver<'s> {
    fn new(sink: &'s mut dyn Sink, streams: bool, deadline: Option<Timestamp>) -> Self {
        StepObserver {
            sink,
            streams,
            chunk_index: 0,
            stop: None,
            record_error: None,
            deadline,
        }
    }

    async fn stream(mut self, provider: &dyn Provider, request: ModelRequest<'_>) -> Streamed {
        let result = provider.stream(request, &mut self).await;
        Streamed {
            result,
            stop: self.stop,
            record_error: self.record_error,
        }
    }

    fn record(&mut self, payload: EventPayload) -> Result<(), Interrupt> {
        if self.interrupted() {
            return Err(Interrupt);
        }
        self.sink.emit(payload).map_err(|err| {
            self.record_error = Some(err);
            Interrupt
        })
    }
}

impl StreamObserver for StepObserver<'_> {
    fn text(&mut self, delta: &str) -> Result<(), Interrupt> {
        if !self.streams || delta.is_empty() {
            return if self.interrupted() {
                Err(Interrupt)
            } else {
                Ok(())
            };
        }
        let chunk = StreamChunk {
            content: delta.to_owned(),
            chunk_index: self.chunk_index,
        };
        self.chunk_index += 1;
        self.record(EventPayload::StreamChunk(chunk))
    }

    fn retry(&mut self, notice: &RetryNotice) -> Result<(), Interrupt> {
        self.record(EventPayload::ProviderRetry(ProviderRetry {
            attempt: notice.attempt,
            delay_ms: notice.delay_ms,
            http_status: notice.http_status,
            error: notice.error.clone(),
        }))
    }

    fn interrupted(&mut self) -> bool {
        if self.stop.is_none() {
            self.stop = stop_now(self.sink, self.deadline);
        }
        self.stop.is_some() || self.record_error.is_some()
    }
}

/// What running a step's tool calls produced.
#[derive(Default)]
struct ToolRun {
    errors: u32,
    last_error: Option<String>,
    stop: Option<Stop>,
    /// The call the step stopped at to wait for approval.
    parked: Option<AwaitingApproval>,
}

/// What the next of a step's calls came to ([`Loop::next_outputs`]).
enum Outputs {
    /// Their results, in the order of the calls.
    Ran(Vec<ToolOutput>),
    /// A shutdown cut them short: they have no results.
    Cut,
    /// The call waits for approval: the execution parks on it.
    Parked(AwaitingApproval),
}

/// How often running tools look whether the execution should stop.
const STOP_CHECK: std::time::Duration = std::time::Duration::from_millis(10);

/// The answer recorded for a call a shutdown cut short (in its `agent.tool.completed`
/// event; the transcript gets the resumed step's answer).
const CUT_BY_SHUTDOWN: &str = "interrupted: the worker stopped while this tool ran";

/// Calls the tool, unless the model's arguments were not valid JSON.
async fn invoke(
    run: &Run<'_>,
    call: &ToolCall,
    todos: &mut Vec<crate::domain::state::Todo>,
    stop: &mut (dyn FnMut() -> bool + Send),
) -> ToolOutput {
    if let Some(reason) = &call.invalid_arguments {
        return ToolOutput::error(format!(
            "the arguments of `{}` are not valid JSON ({reason}); call it again with a JSON object",
            call.name
        ));
    }
    let mut ctx = ToolContext { todos, stop };
    run.tools.call(&call.name, &call.arguments, &mut ctx).await
}

fn tool_started(run: &Run<'_>, call: &ToolCall) -> EventPayload {
    let (args_summary, args) = match run.preset {
        EventsPreset::Debug => {
            let full = call.arguments.to_string();
            if full.chars().count() <= 500 {
                (None, Some(call.arguments.clone()))
            } else {
                (Some(summarize_args(&call.arguments, 500)), None)
            }
        }
        _ => (Some(summarize_args(&call.arguments, 100)), None),
    };
    EventPayload::ToolStarted(ToolStarted {
        tool_name: call.name.clone(),
        tool_call_id: call.id.clone(),
        server: run.tools.server_of(&call.name).map(str::to_owned),
        args_summary,
        args,
    })
}

fn tool_completed(
    run: &Run<'_>,
    call: &ToolCall,
    output: &ToolOutput,
    duration_ms: u64,
) -> EventPayload {
    EventPayload::ToolCompleted(ToolCompleted {
        tool_name: call.name.clone(),
        tool_call_id: call.id.clone(),
        server: run.tools.server_of(&call.name).map(str::to_owned),
        success: !output.is_error,
        error: output.is_error.then(|| output.content.clone()),
        duration_ms,
    })
}

fn cancelled() -> Outcome {
    Outcome {
        status: ExecStatus::Cancelled,
        stop_reason: StopReason::UserRequested,
        response: None,
        error: None,
        checks: Vec::new(),
        structured: None,
    }
}

fn provider_failure(err: &ProviderError, step: u32) -> Outcome {
    let (reason, status) = match err {
        ProviderError::Transient { status, .. } => (StopReason::ProviderUnavailable, *status),
        ProviderError::Fatal { status, .. } => (StopReason::Error, *status),
        ProviderError::Interrupted => (StopReason::Error, None),
    };
    let status_text = status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
    Outcome::failed(
        reason,
        format!("model provider error{status_text}: {err}"),
        Some(format!("step {step}")),
    )
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
