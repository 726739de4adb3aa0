//! The agent loop: inference, tool calls, tool results back to the model, until the
//! model answers without tool calls or a limit stops it.
//!
//! The loop does no I/O of its own. It talks to a [`Sink`] that records events and
//! checkpoints, so the worker backs it with the store and tests with memory. After
//! every settled step the new transcript lines and the state go to
//! [`Sink::checkpoint`]; a step that did not settle leaves no trace in the state, and a
//! resumed execution repeats it from its inference, never re-running a settled tool call.

use std::time::Instant;

use uuid::Uuid;

use crate::definition::AgentDef;
use crate::domain::Usage;
use crate::domain::event::{
    Continuation, Evaluation, EventPayload, MessageCompleted, ProviderRetry, StepCompleted,
    StepStarted, StreamChunk, ToolCompleted, ToolStarted,
};
use crate::domain::execution::{ErrorInfo, ExecStatus, StopReason};
use crate::domain::session::EventsPreset;
use crate::domain::state::AgentState;
use crate::domain::transcript::{Message, ToolCall, TranscriptLine};
use crate::provider::{
    Interrupt, ModelRequest, ModelTurn, Provider, ProviderError, RetryNotice, StreamObserver,
};
use crate::time::Timestamp;
use crate::tools::{Toolbox, summarize_args};

/// Why the loop was asked to stop early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `agentq cancel`: the execution ends `cancelled`.
    Cancel,
    /// The worker is shutting down: the execution stays resumable.
    Shutdown,
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
    /// Whether to stop, asked between text chunks, tool calls and steps.
    fn stop_requested(&mut self) -> Option<Stop>;
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
}

/// How a settled execution ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: ExecStatus,
    pub stop_reason: StopReason,
    pub response: Option<String>,
    pub error: Option<ErrorInfo>,
}

/// The loop either settles the execution or leaves it to be resumed.
#[derive(Debug, Clone, PartialEq)]
pub enum LoopEnd {
    Settled(Outcome),
    /// Stopped for shutdown at a safe point; the last checkpoint is where to resume.
    Suspended,
}

/// Runs steps until the execution settles. `history` holds the settled transcript
/// messages, `state.current` the execution (its settled steps and usage).
/// Errors are failures to record (disk), not failures of the agent.
pub async fn run(
    run: &Run<'_>,
    history: &mut Vec<Message>,
    state: &mut AgentState,
    sink: &mut dyn Sink,
) -> anyhow::Result<LoopEnd> {
    let specs = run.tools.specs();
    let tool_names = run.tools.names();
    loop {
        match sink.stop_requested() {
            Some(Stop::Cancel) => return Ok(LoopEnd::Settled(cancelled())),
            Some(Stop::Shutdown) => return Ok(LoopEnd::Suspended),
            None => {}
        }
        let current = state
            .current
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no execution in progress"))?;
        let step = current.steps + 1;
        let step_started = Instant::now();
        sink.emit(EventPayload::StepStarted(StepStarted {
            step_number: step,
            message_count: history.len(),
            available_tools: tool_names.clone(),
        }))?;

        let request = ModelRequest {
            system: &run.def.system,
            messages: history,
            tools: &specs,
            call_index: state.model_calls,
        };
        let (result, stop, record_error) = stream_step(run, request, sink).await;
        if let Some(err) = record_error {
            return Err(err);
        }
        let turn = match result {
            Ok(turn) => turn,
            Err(ProviderError::Interrupted) => match stop {
                Some(Stop::Cancel) => {
                    // The call was made and abandoned; a suspended one is made again.
                    state.model_calls += 1;
                    return Ok(LoopEnd::Settled(cancelled()));
                }
                _ => return Ok(LoopEnd::Suspended),
            },
            Err(err) => {
                // The call was made: a script entry was used up, a real API billed it.
                state.model_calls += 1;
                return Ok(LoopEnd::Settled(provider_failure(&err, step)));
            }
        };
        state.model_calls += 1;

        let (lines, errors, stop) = run_tools(run, &turn, step, sink)?;
        history.extend(lines.iter().map(|l| l.message.clone()));
        if let Some(current) = state.current.as_mut() {
            current.steps = step;
            current.usage.add(turn.usage);
        }
        sink.checkpoint(lines, state)?;
        sink.emit(EventPayload::StepCompleted(StepCompleted {
            step_number: step,
            has_tool_calls: !turn.tool_calls.is_empty(),
            errors,
            finish_reason: turn.finish_reason.clone(),
            usage: turn.usage,
            duration_ms: elapsed_ms(step_started),
        }))?;

        match stop {
            Some(Stop::Cancel) => return Ok(LoopEnd::Settled(cancelled())),
            Some(Stop::Shutdown) => return Ok(LoopEnd::Suspended),
            None => {}
        }
        let decision = evaluate(run, state, &turn, step, sink.now());
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
                sink.emit(EventPayload::MessageCompleted(MessageCompleted {
                    message_id: run.message_id,
                    response: turn.text.clone(),
                }))?;
                return Ok(LoopEnd::Settled(Outcome {
                    status: ExecStatus::Completed,
                    stop_reason: StopReason::Completed,
                    response: Some(turn.text),
                    error: None,
                }));
            }
            Some(limit) => {
                return Ok(LoopEnd::Settled(Outcome {
                    status: ExecStatus::Stopped,
                    stop_reason: limit,
                    response: None,
                    error: None,
                }));
            }
        }
    }
}

/// Streams one inference, turning text deltas into chunk events and retries into
/// `provider.retry` events. Returns the provider's result, why it was interrupted (if
/// it was), and any failure to record an event.
async fn stream_step(
    run: &Run<'_>,
    request: ModelRequest<'_>,
    sink: &mut dyn Sink,
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
            self.stop = self.sink.stop_requested();
        }
        self.stop.is_some() || self.record_error.is_some()
    }
}

/// Runs the step's tool calls in order and builds the step's transcript lines.
/// A stop request between calls leaves the remaining calls unrun, each answered with
/// an error result so the transcript stays a valid conversation.
fn run_tools(
    run: &Run<'_>,
    turn: &ModelTurn,
    step: u32,
    sink: &mut dyn Sink,
) -> anyhow::Result<(Vec<TranscriptLine>, u32, Option<Stop>)> {
    let line = |message: Message, sink: &dyn Sink| TranscriptLine {
        message,
        message_id: None,
        execution_id: Some(run.execution_id),
        step: Some(step),
        timestamp: sink.now(),
    };
    let mut lines = vec![line(
        Message::Assistant {
            content: turn.text.clone(),
            tool_calls: turn.tool_calls.clone(),
        },
        sink,
    )];
    let mut errors = 0;
    let mut stop = None;
    for call in &turn.tool_calls {
        if stop.is_none() {
            stop = sink.stop_requested().filter(|s| *s == Stop::Cancel);
        }
        let output = if stop.is_some() {
            crate::tools::ToolOutput::error("not run: the execution was cancelled")
        } else {
            run_tool(run, call, sink)?
        };
        errors += u32::from(output.is_error);
        lines.push(line(
            Message::Tool {
                tool_call_id: call.id.clone(),
                name: call.name.clone(),
                content: output.content,
                is_error: output.is_error,
            },
            sink,
        ));
    }
    // A shutdown lets the step's calls finish (their effects are done or cheap to
    // finish) and stops after the checkpoint, so no call is ever run twice.
    Ok((lines, errors, stop.or_else(|| sink.stop_requested())))
}

fn run_tool(
    run: &Run<'_>,
    call: &ToolCall,
    sink: &mut dyn Sink,
) -> anyhow::Result<crate::tools::ToolOutput> {
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
    sink.emit(EventPayload::ToolStarted(ToolStarted {
        tool_name: call.name.clone(),
        tool_call_id: call.id.clone(),
        args_summary,
        args,
    }))?;
    let started = Instant::now();
    let output = match &call.invalid_arguments {
        Some(reason) => crate::tools::ToolOutput::error(format!(
            "the arguments of `{}` are not valid JSON ({reason}); call it again with a JSON object",
            call.name
        )),
        None => run.tools.call(&call.name, &call.arguments),
    };
    sink.emit(EventPayload::ToolCompleted(ToolCompleted {
        tool_name: call.name.clone(),
        tool_call_id: call.id.clone(),
        success: !output.is_error,
        error: output.is_error.then(|| output.content.clone()),
        duration_ms: elapsed_ms(started),
    }))?;
    Ok(output)
}

struct Decision {
    stop_reason: Option<StopReason>,
    evaluations: Vec<Evaluation>,
}

/// Decides whether to run another step; every check is recorded for the debug trace.
fn evaluate(
    run: &Run<'_>,
    state: &AgentState,
    turn: &ModelTurn,
    step: u32,
    now: Timestamp,
) -> Decision {
    let limits = &run.def.limits;
    let (usage, started_at) = state
        .current
        .as_ref()
        .map_or((Usage::default(), now), |c| (c.usage, c.started_at));
    let mut session_usage = run.session_usage;
    session_usage.add(usage);
    let mut evaluations = Vec::new();
    let mut check = |name: &str, stop: bool, detail: String, reason: StopReason| {
        evaluations.push(Evaluation {
            check: name.to_owned(),
            passed: !stop,
            detail,
        });
        stop.then_some(reason)
    };
    let reasons = [
        check(
            "answered",
            turn.tool_calls.is_empty(),
            format!("{} tool calls", turn.tool_calls.len()),
            StopReason::Completed,
        ),
        check(
            "max_steps",
            step >= limits.max_steps,
            format!("step {step} of {}", limits.max_steps),
            StopReason::StepsLimit,
        ),
        check(
            "max_tokens",
            limits.max_tokens.is_some_and(|max| usage.total >= max),
            format!("{} tokens of {:?}", usage.total, limits.max_tokens),
            StopReason::TokenLimit,
        ),
        check(
            "session_max_tokens",
            limits
                .session_max_tokens
                .is_some_and(|max| session_usage.total >= max),
            format!(
                "{} tokens of {:?}",
                session_usage.total, limits.session_max_tokens
            ),
            StopReason::TokenLimit,
        ),
        check(
            "timeout",
            limits
                .timeout
                .is_some_and(|t| u128::from(now.millis_since(started_at)) >= t.as_millis()),
            format!("{} ms elapsed", now.millis_since(started_at)),
            StopReason::TimeLimit,
        ),
    ];
    Decision {
        stop_reason: reasons.into_iter().flatten().next(),
        evaluations,
    }
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
