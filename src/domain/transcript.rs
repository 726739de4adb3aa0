//! The transcript: every model-facing message of a session, in order, complete
//! (tool arguments and results included). One JSON object per line of
//! `transcript.ndjson`, appended and never rewritten.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::state::AgentState;
use crate::time::Timestamp;

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments object; the raw text as a string when it was not valid JSON.
    pub arguments: serde_json::Value,
    /// Why the arguments could not be parsed; the call is then answered with an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_arguments: Option<String>,
}

impl ToolCall {
    /// A call whose arguments arrived as JSON text (streamed by a provider).
    pub fn from_json_text(id: String, name: String, text: &str) -> ToolCall {
        let text = text.trim();
        let parsed = if text.is_empty() {
            // Servers send nothing at all for a tool without parameters.
            Ok(serde_json::Value::Object(Default::default()))
        } else {
            serde_json::from_str::<serde_json::Value>(text)
        };
        let (arguments, invalid_arguments) = match parsed {
            Ok(value) if value.is_object() => (value, None),
            Ok(_) => (
                serde_json::Value::String(text.to_owned()),
                Some("the arguments are not a JSON object".to_owned()),
            ),
            Err(e) => (
                serde_json::Value::String(text.to_owned()),
                Some(e.to_string()),
            ),
        };
        ToolCall {
            id,
            name,
            arguments,
            invalid_arguments,
        }
    }

    /// The arguments as JSON text, as the wire formats want them back.
    pub fn arguments_text(&self) -> String {
        match (&self.invalid_arguments, &self.arguments) {
            (Some(_), serde_json::Value::String(raw)) => raw.clone(),
            (_, value) => value.to_string(),
        }
    }
}

/// A message as the model sees it, independent of any provider's wire format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Message {
    User {
        content: String,
    },
    Assistant {
        content: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    Tool {
        tool_call_id: String,
        name: String,
        content: String,
        #[serde(default)]
        is_error: bool,
    },
}

/// What a user line written by agentq itself (not by `send`) tells the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Feedback {
    /// `[[checks]]` failed after the model answered; the line holds their output.
    Check,
    /// The answer was not JSON valid against `[output]`'s schema; the line holds why.
    Output,
}

/// One line of `transcript.ndjson`: a message and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptLine {
    #[serde(flatten)]
    pub message: Message,
    /// The inbox message that started the execution, on user lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<Uuid>,
    /// The step that produced the line (on a feedback line, the step whose answer it
    /// judges); absent on the user's own lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// On a user line agentq wrote for the model: what it reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<Feedback>,
    pub timestamp: Timestamp,
    /// On the last line of a checkpoint: the agent state that checkpoint settles. The
    /// line is made durable before `state.json` is written (without fsync), so a worker
    /// finding `state.json` behind the transcript (a power failure, or a kill between
    /// the two writes) rolls forward to it. Its `transcript` mark is not stored: the
    /// end of this line is the mark. Not read back with the line (the history and
    /// `session messages` have no use for it): [`CarriedState`] reads it.
    #[serde(default, skip_serializing_if = "Option::is_none", skip_deserializing)]
    pub state: Option<Box<AgentState>>,
}

/// The state a transcript line carries, read on its own.
#[derive(Debug, Deserialize)]
pub struct CarriedState {
    #[serde(default)]
    pub state: Option<AgentState>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_arguments_are_parsed_once_complete() {
        let call = ToolCall::from_json_text("c".into(), "read_file".into(), r#"{"path":"a"}"#);
        assert_eq!(call.arguments, serde_json::json!({"path": "a"}));
        assert!(call.invalid_arguments.is_none());
        let empty = ToolCall::from_json_text("c".into(), "list".into(), "");
        assert_eq!(empty.arguments, serde_json::json!({}));
    }

    #[test]
    fn invalid_arguments_are_kept_raw_with_the_reason() {
        let call = ToolCall::from_json_text("c".into(), "read_file".into(), r#"{"path": "a"#);
        assert!(call.invalid_arguments.is_some());
        assert_eq!(call.arguments_text(), r#"{"path": "a"#);
        let list = ToolCall::from_json_text("c".into(), "read_file".into(), "[1]");
        assert_eq!(
            list.invalid_arguments.as_deref(),
            Some("the arguments are not a JSON object")
        );
    }
}
