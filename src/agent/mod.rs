//! The agent loop: inference, tool calls, tool results back to the model, until the
//! model answers without tool calls or a limit stops it.
//!
//! The loop does no I/O of its own. It talks to a [`Sink`] that records events and
//! checkpoints, so the worker backs it with the store and tests with memory. After
//! every settled step the new transcript lines and the state go to
//! [`Sink::checkpoint`]; a step that did not settle leaves no trace in the state, and a
//! resumed execution repeats it from its inference, never re-running a settled tool call.

pub mod budget;
pub mod compact;

use std::time::Instant;

use uuid::Uuid;

use crate::definition::{AgentDef, ToolChoice};
use crate::domain::Usage;
use crate::domain::event::{
    ContextCompacted, Continuation, EventPayload, ProviderRetry, StepCompleted, StepStarted,
    StreamChunk, ToolCompleted, ToolStarted,
};
use crate::domain::execution::{ErrorInfo, ExecStatus, StopReason};
use crate::domain::session::EventsPreset;
use crate::domain::state::{AgentState, Compaction, CurrentExecution, OpenStep};
use crate::domain::transcript::{Message, ToolCall, TranscriptLine};
use crate::provider::{
    Interrupt, ModelRequest, ModelTurn, Provider, ProviderError, RetryNotice, StreamObserver,
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
    /// Whether the session was paused, asked between steps: the execution then waits,
    /// at its checkpoint, for `session resume`.
    fn paused(&mut self) -> bool {
        false
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
    pub message_id: Uuid,
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
}

impl Outcome {
    fn stopped(reason: StopReason) -> Outcome {
        Outcome {
            status: ExecStatus::Stopped,
            stop_reason: reason,
            response: None,
            error: None,
        }
    }
}

/// The loop either settles the execution or leaves it to be resumed.
#[derive(Debug, Clone, PartialEq)]
pub enum LoopEnd {
    Settled(Outcome),
    /// Stopped for shutdown at a safe point; the last checkpoint is where to resume.
    Suspended,
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
    let started_at = current(state)?.started_at;
    let deadline = run.budgets.deadline(started_at);
    if let Some(answer) = settled_answer(history, current(state)?) {
        // Resumed after the final step settled but before the execution did: the
        // answer is there, no model call is needed.
        return Ok(LoopEnd::Settled(Outcome {
            status: ExecStatus::Completed,
            stop_reason: StopReason::Completed,
            response: Some(answer),
            error: None,
        }));
    }
    loop {
        if let Some(stop) = stop_now(sink, deadline) {
            return Ok(stop.into());
        }
        let resuming_step = current(state)?.open_step.is_some();
        if !resuming_step {
            if sink.paused() {
                return Ok(LoopEnd::Suspended);
            }
            if let Some(limit) = budget::exhausted(&run.budgets, current(state)?, run.session_usage)
            {
                return Ok(LoopEnd::Settled(Outcome::stopped(limit)));
            }
        }
        let step = current(state)?.steps + 1;
        let step_started = Instant::now();
        // What step.completed reports: the answer's finish reason and usage.
        let mut info = current(state)?.open_step.clone();
        if !resuming_step {
            if let Some(window) = run.def.model.context_window
                && let Some(stop) =
                    compact_if_needed(run, history, state, sink, window, &specs, deadline).await?
            {
                return Ok(stop.into());
            }
            let turn = match infer(
                run,
                history,
                state,
                sink,
                &specs,
                &tool_names,
                step,
                deadline,
            )
            .await?
            {
                Ok(turn) => turn,
                Err(end) => return Ok(end),
            };
            // The answer is settled: a crash from here on resumes with the tool calls.
            let line = transcript_line(
                run,
                step,
                sink.now(),
                Message::Assistant {
                    content: turn.text.clone(),
                    tool_calls: turn.tool_calls.clone(),
                },
            );
            history.push(line.message.clone());
            let current = current_mut(state)?;
            current.usage.add(turn.usage);
            let open = OpenStep {
                finish_reason: turn.finish_reason.clone(),
                usage: turn.usage,
                tool_started: None,
            };
            info = Some(open.clone());
            current.open_step = Some(open);
            if turn.tool_calls.is_empty() {
                close_step(state, step)?;
            }
            sink.checkpoint(vec![line], state)?;
        }
        // The step's answer: just settled, or left by the worker that opened the step.
        let answer = history
            .iter()
            .rev()
            .find(|m| matches!(m, Message::Assistant { .. }))
            .cloned();
        let Some(Message::Assistant {
            content,
            tool_calls,
        }) = answer
        else {
            return Err(anyhow::anyhow!(
                "step {step} has no answer of the model in the transcript"
            ));
        };
        let ran = run_tools(run, history, state, sink, &tool_calls, step, deadline).await?;
        if let Some(stop) = ran.stop {
            if stop == Stop::Shutdown {
                return Ok(LoopEnd::Suspended);
            }
            // The remaining calls were answered as not run; the step is closed.
            close_step(state, step)?;
            sink.checkpoint(Vec::new(), state)?;
            emit_step_completed(sink, step, &tool_calls, &ran, info.as_ref(), step_started)?;
            return Ok(stop.into());
        }
        if current(state)?.open_step.is_some() {
            close_step(state, step)?;
            sink.checkpoint(Vec::new(), state)?;
        }
        emit_step_completed(sink, step, &tool_calls, &ran, info.as_ref(), step_started)?;

        let facts = StepFacts {
            step,
            tool_calls: tool_calls.len(),
            errors: ran.errors,
            last_error: ran.last_error.as_deref(),
        };
        let decision = budget::evaluate(
            &run.budgets,
            current(state)?,
            run.session_usage,
            &facts,
            sink.now(),
        );
        if run.preset.traces_continuation() {
            sink.emit(EventPayload::Continuation(Continuation {
                step_number: step,
                should_continue: decision.stop_reason.is_none(),
                stop_reason: decision.stop_reason,
                evaluations: decision.evaluations,
            }))?;
        }
        match decision.stop_reason {
            None => continue,
            Some(StopReason::Completed) => {
                // `agent.message.completed` is written by whoever settles the
                // execution, together with its last events.
                return Ok(LoopEnd::Settled(Outcome {
                    status: ExecStatus::Completed,
                    stop_reason: StopReason::Completed,
                    response: Some(content),
                    error: None,
                }));
            }
            Some(StopReason::Error) => {
                return Ok(LoopEnd::Settled(Outcome {
                    status: ExecStatus::Failed,
                    stop_reason: StopReason::Error,
                    response: None,
                    error: Some(ErrorInfo {
                        message: decision.error.unwrap_or_else(|| "a tool failed".to_owned()),
                        context: Some(format!("step {step}")),
                    }),
                }));
            }
            Some(limit) => return Ok(LoopEnd::Settled(Outcome::stopped(limit))),
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

fn transcript_line(run: &Run<'_>, step: u32, now: Timestamp, message: Message) -> TranscriptLine {
    TranscriptLine {
        message,
        message_id: None,
        execution_id: Some(run.execution_id),
        step: Some(step),
        timestamp: now,
        state: None,
    }
}

fn emit_step_completed(
    sink: &mut dyn Sink,
    step: u32,
    tool_calls: &[ToolCall],
    ran: &ToolRun,
    open: Option<&OpenStep>,
    started: Instant,
) -> anyhow::Result<()> {
    sink.emit(EventPayload::StepCompleted(StepCompleted {
        step_number: step,
        has_tool_calls: !tool_calls.is_empty(),
        errors: ran.errors,
        finish_reason: open.and_then(|o| o.finish_reason.clone()),
        usage: open.map(|o| o.usage).unwrap_or_default(),
        duration_ms: elapsed_ms(started),
    }))
}

/// One inference: the step's first event, the streamed answer, its accounting.
/// `Err(end)` when the call did not produce an answer (interrupted, provider failure).
#[allow(clippy::too_many_arguments)]
async fn infer(
    run: &Run<'_>,
    history: &[Message],
    state: &mut AgentState,
    sink: &mut dyn Sink,
    specs: &[crate::provider::ToolSpec],
    tool_names: &[String],
    step: u32,
    deadline: Option<Timestamp>,
) -> anyhow::Result<Result<ModelTurn, LoopEnd>> {
    let view = compact::view(history, state.compaction.as_ref());
    sink.emit(EventPayload::StepStarted(StepStarted {
        step_number: step,
        message_count: view.len(),
        available_tools: tool_names.to_vec(),
    }))?;
    let request = ModelRequest {
        system: &run.def.system,
        messages: &view,
        tools: specs,
        tool_choice: tool_choice(run.def, history),
        call_index: state.model_calls,
    };
    let (result, stop, record_error) = stream_step(run, request, sink, deadline).await;
    if let Some(err) = record_error {
        return Err(err);
    }
    Ok(match result {
        Ok(turn) => {
            state.model_calls += 1;
            Ok(turn)
        }
        Err(ProviderError::Interrupted) => {
            let stop = stop.unwrap_or(Stop::Shutdown);
            if stop != Stop::Shutdown {
                // The call was made and abandoned; a suspended one is made again.
                state.model_calls += 1;
            }
            Err(stop.into())
        }
        Err(err) => {
            // The call was made: a script entry was used up, a real API billed it.
            state.model_calls += 1;
            Err(LoopEnd::Settled(provider_failure(&err, step)))
        }
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

/// Compacts older turns when the next prompt would pass the threshold. Returns a stop
/// if one was requested during the summarising call.
async fn compact_if_needed(
    run: &Run<'_>,
    history: &[Message],
    state: &mut AgentState,
    sink: &mut dyn Sink,
    window: u64,
    specs: &[crate::provider::ToolSpec],
    deadline: Option<Timestamp>,
) -> anyhow::Result<Option<Stop>> {
    let threshold = run
        .def
        .model
        .compact_threshold
        .unwrap_or(compact::DEFAULT_THRESHOLD);
    let Some(plan) = compact::plan(
        &run.def.system,
        history,
        specs,
        state.compaction.as_ref(),
        window,
        threshold,
    ) else {
        return Ok(None);
    };
    let previous = state.compaction.as_ref().and_then(|c| c.summary.clone());
    let input = compact::summary_input(history, &plan, previous.as_deref());
    let messages = [Message::User { content: input }];
    let request = ModelRequest {
        system: compact::PROMPT,
        messages: &messages,
        tools: &[],
        tool_choice: None,
        call_index: state.model_calls,
    };
    // The summary is not part of the answer: its text is not streamed as chunks.
    let mut observer = StepObserver {
        sink,
        streams: false,
        chunk_index: 0,
        stop: None,
        record_error: None,
        deadline,
    };
    let result = run.provider.stream(request, &mut observer).await;
    let (stop, record_error) = (observer.stop, observer.record_error);
    if let Some(err) = record_error {
        return Err(err);
    }
    let summary = match result {
        Err(ProviderError::Interrupted) => return Ok(Some(stop.unwrap_or(Stop::Shutdown))),
        Ok(turn) if !turn.text.trim().is_empty() => {
            state.model_calls += 1;
            if let Some(current) = state.current.as_mut() {
                current.usage.add(turn.usage);
            }
            Some(turn.text)
        }
        // Summarising failed: the oldest turns are dropped instead, with any earlier
        // summary kept.
        _ => {
            state.model_calls += 1;
            None
        }
    };
    let summarized = summary.is_some();
    state.compaction = Some(Compaction {
        through: plan.cut as u64,
        summary: summary.or(previous),
    });
    let after = compact::estimate(
        &run.def.system,
        &compact::view(history, state.compaction.as_ref()),
        specs,
    );
    sink.emit(EventPayload::ContextCompacted(ContextCompacted {
        before_tokens: plan.before_tokens,
        after_tokens: after,
        dropped_messages: (plan.cut - plan.from) as u64,
        summarized,
    }))?;
    Ok(None)
}

/// Streams one inference, turning text deltas into chunk events and retries into
/// `provider.retry` events. Returns the provider's result, why it was interrupted (if
/// it was), and any failure to record an event.
async fn stream_step(
    run: &Run<'_>,
    request: ModelRequest<'_>,
    sink: &mut dyn Sink,
    deadline: Option<Timestamp>,
) -> (
    Result<ModelTurn, ProviderError>,
    Option<Stop>,
    Option<anyhow::Error>,
) {
    let mut observer = StepObserver {
        sink,
        streams: run.preset.streams_chunks(),
        chunk_index: 0,
        stop: None,
        record_error: None,
        deadline,
    };
    let result = run.provider.stream(request, &mut observer).await;
    (result, observer.stop, observer.record_error)
}

/// Sees a step's stream on behalf of the loop.
struct StepObserver<'s> {
    sink: &'s mut dyn Sink,
    streams: bool,
    chunk_index: u64,
    stop: Option<Stop>,
    record_error: Option<anyhow::Error>,
    deadline: Option<Timestamp>,
}

impl StepObserver<'_> {
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
struct ToolRun {
    errors: u32,
    last_error: Option<String>,
    stop: Option<Stop>,
}

/// Runs the step's tool calls that have no result yet, persisting results as they
/// come. Consecutive read-only calls run at the same time and are persisted together,
/// in the order of the calls (a crash before that runs them again, which changes
/// nothing); a side-effecting call runs alone, marked as started first. A cancel or
/// the time limit between calls answers the remaining calls with errors (so the
/// transcript stays a valid conversation); a shutdown stops at once, leaving the step
/// open for the next worker: a running command is killed, and one that may have had
/// effects stays marked as started, so that the resumed step answers it as
/// interrupted.
async fn run_tools(
    run: &Run<'_>,
    history: &mut Vec<Message>,
    state: &mut AgentState,
    sink: &mut dyn Sink,
    calls: &[ToolCall],
    step: u32,
    deadline: Option<Timestamp>,
) -> anyhow::Result<ToolRun> {
    let mut next = history
        .iter()
        .rev()
        .take_while(|m| matches!(m, Message::Tool { .. }))
        .count();
    let mut ran = ToolRun {
        errors: 0,
        last_error: None,
        stop: None,
    };
    while next < calls.len() {
        if ran.stop.is_none() {
            ran.stop = stop_now(sink, deadline);
            if ran.stop == Some(Stop::Shutdown) {
                return Ok(ran);
            }
        }
        let call = &calls[next];
        let interrupted = current(state)?
            .open_step
            .as_ref()
            .and_then(|o| o.tool_started.as_deref())
            == Some(call.id.as_str());
        let outputs = match ran.stop {
            Some(Stop::TimeLimit) => {
                vec![ToolOutput::error("not run: the execution ran out of time")]
            }
            Some(_) => vec![ToolOutput::error("not run: the execution was cancelled")],
            // Never run twice: its effects may or may not have happened.
            None if interrupted => vec![ToolOutput::error(
                "interrupted: the worker running this tool stopped before it finished; it may or may not have taken effect",
            )],
            None if run.tools.is_read_only(&call.name) => {
                let batch = calls[next..]
                    .iter()
                    .take_while(|c| run.tools.is_read_only(&c.name))
                    .count();
                match run_read_only(run, &calls[next..next + batch], sink, deadline).await? {
                    Some(outputs) => outputs,
                    // Cut by a shutdown: they have no results, and run again on resume.
                    None => {
                        ran.stop = Some(Stop::Shutdown);
                        return Ok(ran);
                    }
                }
            }
            None => {
                if let Some(open) = current_mut(state)?.open_step.as_mut() {
                    open.tool_started = Some(call.id.clone());
                }
                sink.checkpoint(Vec::new(), state)?;
                match run_side_effecting(run, call, sink, &mut state.todos, deadline).await? {
                    Some(output) => vec![output],
                    // Cut by a shutdown: the call stays marked as started, so the
                    // resumed step answers it as interrupted instead of running it again.
                    None => {
                        ran.stop = Some(Stop::Shutdown);
                        return Ok(ran);
                    }
                }
            }
        };
        let answered = &calls[next..next + outputs.len()];
        next += outputs.len();
        let mut lines = Vec::with_capacity(outputs.len());
        for (call, output) in answered.iter().zip(outputs) {
            if output.is_error {
                ran.errors += 1;
                ran.last_error = Some(output.content.clone());
            }
            let line = transcript_line(
                run,
                step,
                sink.now(),
                Message::Tool {
                    tool_call_id: call.id.clone(),
                    name: call.name.clone(),
                    content: output.content,
                    is_error: output.is_error,
                },
            );
            history.push(line.message.clone());
            lines.push(line);
        }
        let current = current_mut(state)?;
        if let Some(open) = current.open_step.as_mut() {
            open.tool_started = None;
        }
        if next == calls.len() && ran.stop.is_none() {
            // The step is complete: it counts as failed when every one of its calls
            // failed, including those answered before a resume.
            let failed = history
                .iter()
                .rev()
                .take(calls.len())
                .all(|m| matches!(m, Message::Tool { is_error: true, .. }));
            current.failed_steps_in_a_row = if failed {
                current.failed_steps_in_a_row + 1
            } else {
                0
            };
            close_step(state, step)?;
        }
        sink.checkpoint(lines, state)?;
    }
    if ran.stop.is_none() {
        ran.stop = stop_now(sink, deadline).filter(|s| *s != Stop::Shutdown);
    }
    Ok(ran)
}

/// How often running tools look whether the execution should stop.
const STOP_CHECK: std::time::Duration = std::time::Duration::from_millis(10);

/// The answer recorded for a call a shutdown cut short (in its `agent.tool.completed`
/// event; the transcript gets the resumed step's answer).
const CUT_BY_SHUTDOWN: &str = "interrupted: the worker stopped while this tool ran";

/// Runs read-only calls at the same time. Their events keep the calls' order: every
/// start, then every completion. Any stop (a cancel, the deadline, a shutdown) stops
/// them: a command's process group is killed. `None` when a shutdown did: the calls
/// changed nothing and have no results, so the resumed step runs them again.
async fn run_read_only(
    run: &Run<'_>,
    calls: &[ToolCall],
    sink: &mut dyn Sink,
    deadline: Option<Timestamp>,
) -> anyhow::Result<Option<Vec<ToolOutput>>> {
    for call in calls {
        sink.emit(tool_started(run, call))?;
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
                cut = stop_now(sink, deadline);
                if cut.is_some() {
                    stopping.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    };
    let shutdown = cut == Some(Stop::Shutdown);
    let mut outputs = Vec::with_capacity(results.len());
    for (call, (output, duration_ms)) in calls.iter().zip(results) {
        let output = if shutdown {
            ToolOutput::error(CUT_BY_SHUTDOWN)
        } else {
            output
        };
        sink.emit(tool_completed(run, call, &output, duration_ms))?;
        outputs.push(output);
    }
    Ok((!shutdown).then_some(outputs))
}

/// Runs one call that may change something, alone. Any stop (a cancel, the deadline,
/// a shutdown) cuts a long tool (a command: its process group is killed). `None` when
/// a shutdown did: the call may or may not have taken effect, and has no result.
async fn run_side_effecting(
    run: &Run<'_>,
    call: &ToolCall,
    sink: &mut dyn Sink,
    todos: &mut Vec<crate::domain::state::Todo>,
    deadline: Option<Timestamp>,
) -> anyhow::Result<Option<ToolOutput>> {
    sink.emit(tool_started(run, call))?;
    let started = Instant::now();
    let mut cut = None;
    let mut stop = || {
        cut = cut.or_else(|| stop_now(&mut *sink, deadline));
        cut.is_some()
    };
    let output = invoke(run, call, todos, &mut stop).await;
    let output = match cut {
        Some(Stop::Shutdown) => None,
        _ => Some(output),
    };
    let shown = output
        .clone()
        .unwrap_or_else(|| ToolOutput::error(CUT_BY_SHUTDOWN));
    sink.emit(tool_completed(run, call, &shown, elapsed_ms(started)))?;
    Ok(output)
}

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
    }
}

fn provider_failure(err: &ProviderError, step: u32) -> Outcome {
    let (reason, status) = match err {
        ProviderError::Transient { status, .. } => (StopReason::ProviderUnavailable, *status),
        ProviderError::Fatal { status, .. } => (StopReason::Error, *status),
        ProviderError::Interrupted => (StopReason::Error, None),
    };
    let status_text = status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
    Outcome {
        status: ExecStatus::Failed,
        stop_reason: reason,
        response: None,
        error: Some(ErrorInfo {
            message: format!("model provider error{status_text}: {err}"),
            context: Some(format!("step {step}")),
        }),
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
