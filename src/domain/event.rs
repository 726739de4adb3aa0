//! The event log's records (ARCHITECTURE.md §3): an envelope with a gapless `seq`, and a
//! typed payload per event type.
//!
//! Readers must ignore types they do not know, so parsing is two-stage: the envelope
//! with its payload as raw JSON, then the payload by its `type` ([`EventPayload::parse`]).
//! The list of types below is the single place a type name is tied to its payload.

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use uuid::Uuid;

use super::Usage;
use super::execution::{CheckResult, ExecStatus, StopReason, WorkerInfo};
use super::session::{EventsPreset, SessionStatus};
use crate::time::Timestamp;

/// One line of `events.ndjson`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub v: u32,
    pub seq: u64,
    pub session_id: Uuid,
    pub execution_id: Option<Uuid>,
    pub timestamp: Timestamp,
    pub payload: EventPayload,
}

impl Serialize for Event {
    // Written by hand so the keys come in the documented order, `type` before `payload`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Event", 7)?;
        st.serialize_field("v", &self.v)?;
        st.serialize_field("seq", &self.seq)?;
        st.serialize_field("type", self.payload.type_name())?;
        st.serialize_field("session_id", &self.session_id)?;
        st.serialize_field("execution_id", &self.execution_id)?;
        st.serialize_field("timestamp", &self.timestamp)?;
        st.serialize_field("payload", &self.payload)?;
        st.end()
    }
}

/// An event line with its payload not yet interpreted.
#[derive(Debug, Clone, Deserialize)]
pub struct RawEvent {
    pub v: u32,
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub session_id: Uuid,
    #[serde(default)]
    pub execution_id: Option<Uuid>,
    pub timestamp: Timestamp,
    #[serde(default)]
    pub payload: serde_json::Value,
}

impl RawEvent {
    /// The typed event, or `None` for a type this version does not know.
    pub fn into_event(self) -> Result<Option<Event>, serde_json::Error> {
        let Some(payload) = EventPayload::parse(&self.kind, self.payload)? else {
            return Ok(None);
        };
        Ok(Some(Event {
            v: self.v,
            seq: self.seq,
            session_id: self.session_id,
            execution_id: self.execution_id,
            timestamp: self.timestamp,
            payload,
        }))
    }
}

macro_rules! event_payloads {
    ($( $(#[$doc:meta])* $variant:ident($payload:ty) = $name:literal, )*) => {
        /// Every event type agentq writes, by its payload.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum EventPayload {
            $( $(#[$doc])* $variant($payload), )*
        }

        impl EventPayload {
            /// The `type` written in the envelope.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $( EventPayload::$variant(_) => $name, )*
                }
            }

            /// Interprets a payload by its type name; `None` for an unknown type.
            pub fn parse(type_name: &str, payload: serde_json::Value)
                -> Result<Option<EventPayload>, serde_json::Error>
            {
                Ok(Some(match type_name {
                    $( $name => EventPayload::$variant(serde_json::from_value(payload)?), )*
                    _ => return Ok(None),
                }))
            }

            /// Every type name, in the order of the table in ARCHITECTURE.md.
            pub const TYPE_NAMES: &'static [&'static str] = &[$( $name ),*];

            /// The JSON Schema of each type's payload, by type name; the definitions
            /// they refer to are collected in `generator`.
            pub fn payload_schemas(generator: &mut schemars::SchemaGenerator) -> Vec<(&'static str, schemars::Schema)> {
                vec![$( ($name, generator.subschema_for::<$payload>()) ),*]
            }
        }
    };
}

event_payloads! {
    SessionCreated(SessionCreated) = "session.created",
    SessionStatus(SessionStatusChanged) = "session.status",
    MessageQueued(MessageQueued) = "message.queued",
    /// Written by `agentq cancel`; the owner of the session acts on it.
    CancelRequested(CancelRequested) = "cancel.requested",
    ExecutionStarted(ExecutionStarted) = "execution.started",
    AgentStatus(AgentStatusChanged) = "agent.status",
    StepStarted(StepStarted) = "agent.step.started",
    StreamChunk(StreamChunk) = "agent.stream.chunk",
    ToolStarted(ToolStarted) = "agent.tool.started",
    ToolCompleted(ToolCompleted) = "agent.tool.completed",
    StepCompleted(StepCompleted) = "agent.step.completed",
    Continuation(Continuation) = "agent.continuation",
    ProviderRetry(ProviderRetry) = "provider.retry",
    ContextCompacted(ContextCompacted) = "context.compacted",
    CheckStarted(CheckStarted) = "agent.check.started",
    CheckCompleted(CheckCompleted) = "agent.check.completed",
    /// A call of a tool with `approval = "required"` waits for a person.
    ApprovalRequested(super::approval::ApprovalRequested) = "approval.requested",
    /// Written by `agentq approve` / `deny` (or by the worker, at `approval_timeout`).
    ApprovalDecided(super::approval::ApprovalDecided) = "approval.decided",
    MessageCompleted(MessageCompleted) = "agent.message.completed",
    ExecutionFinished(ExecutionFinished) = "execution.finished",
    /// Session-level (after `execution.finished`, which stays an execution's last event).
    HookCompleted(HookReport) = "hook.completed",
    /// Session-level, as `hook.completed`.
    HookFailed(HookReport) = "hook.failed",
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SessionCreated {
    pub agent: String,
    pub title: Option<String>,
    pub config: serde_json::Map<String, serde_json::Value>,
    pub events: EventsPreset,
    #[serde(default)]
    pub agent_hash: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SessionStatusChanged {
    pub status: SessionStatus,
    pub previous_status: SessionStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MessageQueued {
    pub message_id: Uuid,
    pub seq: u64,
    pub key: Option<String>,
    pub content_preview: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CancelRequested {
    pub message_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExecutionStarted {
    pub message_id: Uuid,
    pub attempt: u32,
    pub worker: WorkerInfo,
    /// True when a worker picks up an execution another worker left unfinished.
    #[serde(default)]
    pub resumed: bool,
}

/// The agent's status as `watch` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Idle,
    Processing,
    Completed,
    Failed,
    Cancelled,
    Stopped,
    /// Parked on a call that waits for approval.
    Waiting,
}

impl From<ExecStatus> for AgentStatus {
    fn from(status: ExecStatus) -> Self {
        match status {
            ExecStatus::Pending => AgentStatus::Idle,
            ExecStatus::Running => AgentStatus::Processing,
            ExecStatus::Completed => AgentStatus::Completed,
            ExecStatus::Failed => AgentStatus::Failed,
            ExecStatus::Cancelled => AgentStatus::Cancelled,
            ExecStatus::Stopped => AgentStatus::Stopped,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AgentStatusChanged {
    pub status: AgentStatus,
    pub previous_status: AgentStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StepStarted {
    pub step_number: u32,
    pub message_count: usize,
    pub available_tools: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StreamChunk {
    pub content: String,
    pub chunk_index: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ToolStarted {
    pub tool_name: String,
    pub tool_call_id: String,
    /// The MCP server the tool comes from (`tool_name` is then `mcp__<server>__<tool>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_summary: Option<String>,
    /// The arguments themselves, with the `debug` preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ToolCompleted {
    pub tool_name: String,
    pub tool_call_id: String,
    /// As in [`ToolStarted`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    pub success: bool,
    pub error: Option<String>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StepCompleted {
    pub step_number: u32,
    pub has_tool_calls: bool,
    /// Tool calls of this step that ended in an error.
    pub errors: u32,
    pub finish_reason: Option<String>,
    pub usage: Usage,
    pub duration_ms: u64,
}

/// One check made when deciding whether to run another step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Evaluation {
    pub check: String,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Continuation {
    pub step_number: u32,
    pub should_continue: bool,
    pub stop_reason: Option<StopReason>,
    pub evaluations: Vec<Evaluation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProviderRetry {
    pub attempt: u32,
    pub delay_ms: u64,
    pub http_status: Option<u16>,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ContextCompacted {
    /// Estimated prompt tokens before and after.
    pub before_tokens: u64,
    pub after_tokens: u64,
    /// Messages no longer sent to the model as they were.
    pub dropped_messages: u64,
    /// Whether a summary written by the model replaces them (else they were dropped).
    pub summarized: bool,
}

/// A `[[checks]]` entry starts, after the model answered. `round` counts the rounds of
/// checks of the execution from 1; a resumed execution runs its round again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CheckStarted {
    pub name: String,
    pub round: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CheckCompleted {
    pub name: String,
    pub round: u32,
    pub success: bool,
    /// `None` when it did not exit by itself (timeout, signal, stop) or could not start.
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    /// The end of its output on one line (the model is given all of it).
    pub output_summary: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MessageCompleted {
    pub message_id: Uuid,
    pub response: String,
    /// The model answered with no text (and no tool calls): the execution completed
    /// with nothing in it, which a reader should see rather than an empty line.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty: bool,
    /// The answer parsed as JSON, valid against the agent's `[output]` schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured: Option<serde_json::Value>,
}

/// Usage of the execution and the session's running total after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FinishedUsage {
    pub execution: Usage,
    pub session: Usage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExecutionFinished {
    pub status: ExecStatus,
    pub stop_reason: Option<StopReason>,
    pub exit_code: u8,
    pub steps: u32,
    pub usage: FinishedUsage,
    pub duration_ms: u64,
    pub error: Option<String>,
    /// The message the execution answered, so a reader needs no other event to match them.
    #[serde(default)]
    pub message_id: Option<Uuid>,
    /// US dollars, when `agentq.toml` prices the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<FinishedCost>,
    /// The agent's `[[checks]]` as their last round left them; absent without checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckResult>,
}

/// A completion hook (`[hooks] on_finish`) delivered, or given up on. Written with the
/// envelope's `execution_id` null: the execution is named here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HookReport {
    pub execution_id: Uuid,
    /// Its place in `on_finish`, from 0.
    pub hook: u32,
    /// `command` or `url`.
    pub kind: String,
    /// The program's name, or the URL's scheme and host: never its path or query,
    /// where webhooks keep their secrets.
    pub target: String,
    /// Attempts made, this one included.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Of the last attempt.
    pub duration_ms: u64,
    /// Why it failed (`hook.failed` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FinishedCost {
    pub execution: f64,
    pub session: f64,
}

/// The last events of a settled execution, in order: its answer (when it completed
/// with one), the agent's status, and `execution.finished` with the session's totals
/// once the execution is counted in `session` (whose `usage` and `cost_usd` include it).
/// A store appends them in one write, so a crash leaves all of them or none.
pub fn closing_events(
    exec: &super::execution::Execution,
    session: &super::session::SessionMeta,
) -> Vec<EventPayload> {
    let mut last = Vec::new();
    if let (ExecStatus::Completed, Some(response)) = (exec.status, &exec.response) {
        last.push(EventPayload::MessageCompleted(MessageCompleted {
            message_id: exec.message_id,
            response: response.clone(),
            empty: response.trim().is_empty(),
            structured: exec.structured.clone(),
        }));
    }
    last.push(EventPayload::AgentStatus(AgentStatusChanged {
        status: exec.status.into(),
        previous_status: AgentStatus::Processing,
    }));
    last.push(EventPayload::ExecutionFinished(ExecutionFinished {
        status: exec.status,
        stop_reason: exec.stop_reason,
        exit_code: super::execution::exit_code(exec.status, exec.stop_reason),
        steps: exec.steps,
        usage: FinishedUsage {
            execution: exec.usage,
            session: session.usage,
        },
        duration_ms: exec.duration_ms.unwrap_or(0),
        error: exec.error.as_ref().map(|e| e.message.clone()),
        message_id: Some(exec.message_id),
        cost_usd: exec.cost_usd.map(|execution| FinishedCost {
            execution,
            session: session.cost_usd.unwrap_or(execution),
        }),
        checks: exec.checks.clone(),
    }));
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(payload: EventPayload) -> Event {
        Event {
            v: 1,
            seq: 42,
            session_id: Uuid::nil(),
            execution_id: Some(Uuid::max()),
            timestamp: Timestamp(1_795_240_800_123),
            payload,
        }
    }

    #[test]
    fn the_envelope_is_written_as_documented() {
        let event = sample(EventPayload::ToolStarted(ToolStarted {
            tool_name: "read_file".into(),
            tool_call_id: "call_1".into(),
            server: None,
            args_summary: Some("path: 'src/main.rs'".into()),
            args: None,
        }));
        let line = serde_json::to_string(&event).unwrap();
        assert_eq!(
            line,
            r#"{"v":1,"seq":42,"type":"agent.tool.started","session_id":"00000000-0000-0000-0000-000000000000","execution_id":"ffffffff-ffff-ffff-ffff-ffffffffffff","timestamp":"2026-11-21T06:00:00.123Z","payload":{"tool_name":"read_file","tool_call_id":"call_1","args_summary":"path: 'src/main.rs'"}}"#
        );
        let raw: RawEvent = serde_json::from_str(&line).unwrap();
        assert_eq!(raw.into_event().unwrap(), Some(event));
    }

    #[test]
    fn unknown_types_and_fields_are_ignored() {
        let line = r#"{"v":1,"seq":7,"type":"agent.thought","session_id":"00000000-0000-0000-0000-000000000000","execution_id":null,"timestamp":"2026-11-21T06:00:00.123Z","payload":{"x":1},"extra":true}"#;
        let raw: RawEvent = serde_json::from_str(line).unwrap();
        assert_eq!(raw.seq, 7);
        assert_eq!(raw.into_event().unwrap(), None);

        let line = r#"{"v":1,"seq":8,"type":"message.queued","session_id":"00000000-0000-0000-0000-000000000000","execution_id":null,"timestamp":"2026-11-21T06:00:00.123Z","payload":{"message_id":"00000000-0000-0000-0000-000000000000","seq":1,"key":null,"content_preview":"hi","later":"field"}}"#;
        let raw: RawEvent = serde_json::from_str(line).unwrap();
        assert!(matches!(
            raw.into_event().unwrap().unwrap().payload,
            EventPayload::MessageQueued(_)
        ));
    }

    #[test]
    fn every_type_name_is_distinct() {
        let mut names = EventPayload::TYPE_NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EventPayload::TYPE_NAMES.len());
    }
}
