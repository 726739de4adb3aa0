//! Model providers: each turns a request (system prompt, messages, tools) into a
//! streamed answer: text deltas as they arrive, then tool calls, usage and finish reason.
//!
//! The agent loop only sees the [`Provider`] trait. `scripted` replays an answer script
//! from the agent definition, so agents run in CI with no network and tests drive the
//! loop deterministically.

pub mod scripted;

use std::future::Future;
use std::pin::Pin;

use crate::definition::AgentDef;
use crate::domain::Usage;
use crate::domain::transcript::{Message, ToolCall};
use crate::error::UserError;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A tool as offered to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
}

pub struct ModelRequest<'a> {
    pub system: &'a str,
    pub messages: &'a [Message],
    pub tools: &'a [ToolSpec],
    /// How many model calls the session made before this one.
    pub call_index: u64,
}

/// A complete answer of the model for one step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelTurn {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    pub finish_reason: Option<String>,
}

/// The receiver of text deltas returns `Err(Interrupt)` to stop the stream early
/// (cancellation, shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupt;

pub type TextSink<'a> = dyn FnMut(&str) -> Result<(), Interrupt> + Send + 'a;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying later: connection failures, 408, 409, 429, 5xx.
    #[error("{message}")]
    Transient {
        status: Option<u16>,
        message: String,
    },
    /// Retrying will not help: bad request, authentication, unknown model.
    #[error("{message}")]
    Fatal {
        status: Option<u16>,
        message: String,
    },
    /// The text sink asked to stop.
    #[error("interrupted")]
    Interrupted,
}

impl ProviderError {
    /// Classifies an HTTP status the way every provider does.
    pub fn from_status(status: u16, message: String) -> ProviderError {
        let transient = matches!(status, 408 | 409 | 429) || status >= 500;
        if transient {
            ProviderError::Transient {
                status: Some(status),
                message,
            }
        } else {
            ProviderError::Fatal {
                status: Some(status),
                message,
            }
        }
    }
}

pub trait Provider: Send + Sync {
    /// Streams one answer. Text deltas go to `on_text` as they arrive.
    fn stream<'a>(
        &'a self,
        request: ModelRequest<'a>,
        on_text: &'a mut TextSink<'a>,
    ) -> BoxFuture<'a, Result<ModelTurn, ProviderError>>;
}

/// The provider an agent definition asks for.
pub fn for_agent(def: &AgentDef) -> Result<Box<dyn Provider>, UserError> {
    match def.model.provider.as_str() {
        "scripted" => Ok(Box::new(scripted::Scripted::new(def.model.script.clone()))),
        other => Err(UserError::usage(format!(
            "agent `{}` uses provider `{other}`, which this build of agentq cannot call yet; use provider = \"scripted\"",
            def.name
        ))),
    }
}

/// A rough token count (four bytes a token) for providers that report none.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}
