//! Model providers: each turns a request (system prompt, messages, tools) into a
//! streamed answer: text deltas as they arrive, then tool calls, usage and finish reason.
//!
//! The agent loop only sees the [`Provider`] trait. `openai` speaks the Chat Completions
//! API (OpenAI, Ollama, vLLM, llama.cpp, LiteLLM…), `anthropic` the Messages API, both
//! over SSE; `scripted` replays an answer script from the agent definition, so agents
//! run in CI with no network and tests drive the loop deterministically.

pub mod anthropic;
pub mod endpoint;
pub mod http;
pub mod openai;
pub mod retry;
pub mod scripted;
pub mod sse;

use std::future::Future;
use std::pin::Pin;

use crate::config::HomeConfig;
use crate::definition::{AgentDef, ToolChoice};
use crate::domain::Usage;
use crate::domain::transcript::{Message, ToolCall};
use crate::error::UserError;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A tool as offered to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
}

pub struct ModelRequest<'a> {
    pub system: &'a str,
    pub messages: &'a [Message],
    pub tools: &'a [ToolSpec],
    /// Whether and which tool the model must call; `None` leaves it to the server's
    /// default (which, with tools offered, is the model's own choice).
    pub tool_choice: Option<&'a ToolChoice>,
    /// The JSON Schema the answer must follow, for a server that can keep to it
    /// (`[output]` with `constrain`); `None` asks nothing of the server.
    pub output_schema: Option<&'a serde_json::Value>,
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

/// Returned by an observer to stop the stream early (cancellation, shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupt;

/// A model call that failed before its stream began and will be made again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryNotice {
    /// The attempt about to be made (2 for the first retry).
    pub attempt: u32,
    pub delay_ms: u64,
    pub http_status: Option<u16>,
    pub error: String,
}

/// What a provider reports while it streams.
pub trait StreamObserver: Send {
    /// A text delta, as it arrives.
    fn text(&mut self, delta: &str) -> Result<(), Interrupt>;
    /// A retry is about to be waited for.
    fn retry(&mut self, notice: &RetryNotice) -> Result<(), Interrupt>;
    /// Asked while waiting (for a response, a chunk, a retry delay): stop now?
    fn interrupted(&mut self) -> bool;
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Worth trying again later: connection failures, 408, 409, 429, 5xx, a stalled or
    /// truncated stream, an overloaded server.
    #[error("{message}")]
    Transient {
        status: Option<u16>,
        message: String,
    },
    /// Trying again will not help: bad request, authentication, unknown model.
    #[error("{message}")]
    Fatal {
        status: Option<u16>,
        message: String,
    },
    /// The observer asked to stop.
    #[error("interrupted")]
    Interrupted,
}

impl ProviderError {
    /// Classifies an HTTP status the way every provider does.
    pub fn from_status(status: u16, message: String) -> ProviderError {
        if is_transient_status(status) {
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

    /// The same error with the endpoint's key cut out of its message.
    pub fn redacted(self, endpoint: &endpoint::Endpoint) -> ProviderError {
        match self {
            ProviderError::Transient { status, message } => ProviderError::Transient {
                status,
                message: endpoint.redact(&message),
            },
            ProviderError::Fatal { status, message } => ProviderError::Fatal {
                status,
                message: endpoint.redact(&message),
            },
            other => other,
        }
    }

    pub fn transient(message: impl Into<String>) -> ProviderError {
        ProviderError::Transient {
            status: None,
            message: message.into(),
        }
    }

    pub fn fatal(message: impl Into<String>) -> ProviderError {
        ProviderError::Fatal {
            status: None,
            message: message.into(),
        }
    }
}

/// 408, 409, 429 and 5xx are worth retrying; other statuses are not.
pub fn is_transient_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || status >= 500
}

pub trait Provider: Send + Sync {
    /// Streams one answer, reporting text deltas and retries to `observer`.
    fn stream<'a>(
        &'a self,
        request: ModelRequest<'a>,
        observer: &'a mut dyn StreamObserver,
    ) -> BoxFuture<'a, Result<ModelTurn, ProviderError>>;
}

/// The provider an agent definition asks for. Fails before any request when the
/// configuration is incomplete (no model name, no API key where one is needed).
pub fn for_agent(def: &AgentDef, home: &HomeConfig) -> Result<Box<dyn Provider>, UserError> {
    if def.model.provider == "scripted" {
        return Ok(Box::new(scripted::Scripted::new(
            def.model.script.clone(),
            retry::RetryPolicy::with_max_attempts(def.model.max_attempts),
        )));
    }
    let endpoint = endpoint::resolve(def, home, &|name| std::env::var(name).ok())?;
    Ok(match endpoint.kind {
        endpoint::Kind::OpenAi => Box::new(openai::OpenAi::new(endpoint)?),
        endpoint::Kind::Anthropic => Box::new(anthropic::Anthropic::new(endpoint)?),
    })
}

/// A rough token count (four bytes a token) for providers that report none.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// The usage to record for an answer: what the server reported, unless it reported
/// nothing, or zero tokens for an answer it did stream (some gateways do); then an
/// estimate, marked as one.
pub fn usage_or_estimate(
    reported: Option<Usage>,
    request: &ModelRequest<'_>,
    text: &str,
    tool_calls: &[ToolCall],
) -> Usage {
    let answered = !text.is_empty() || !tool_calls.is_empty();
    match reported {
        Some(usage) if usage.total > 0 || !answered => usage,
        _ => Usage::estimate(
            estimate_prompt(request),
            estimate_tokens(text)
                + tool_calls
                    .iter()
                    .map(|c| estimate_tokens(&c.arguments_text()) + 5)
                    .sum::<u64>(),
        ),
    }
}

/// An estimate of the prompt's tokens, for servers that report no usage.
pub fn estimate_prompt(request: &ModelRequest<'_>) -> u64 {
    let messages: u64 = request
        .messages
        .iter()
        .map(|m| match m {
            Message::User { content } | Message::Tool { content, .. } => estimate_tokens(content),
            Message::Assistant {
                content,
                tool_calls,
            } => {
                estimate_tokens(content)
                    + tool_calls
                        .iter()
                        .map(|c| estimate_tokens(&c.arguments.to_string()) + 5)
                        .sum::<u64>()
            }
        })
        .sum();
    estimate_tokens(request.system) + messages
}
