//! The OpenAI Chat Completions API with streaming, as spoken by OpenAI and by the
//! servers that copy it (Ollama, vLLM, the llama.cpp server, LiteLLM and others).
//!
//! Those servers differ in small ways, and the stream reader is lenient where they do:
//! `finish_reason` missing, null or `""`; usage absent, `{}`, or only in the last chunk;
//! keep-alive comments; CRLF line ends; tool calls without `index` (matched by `id`) or
//! with arguments sent as an object; `[DONE]` missing after a chunk that finished.
//! An error object inside a `data:` frame fails the step.

use serde_json::{Value, json};

use super::endpoint::Endpoint;
use super::sse::Decoder;
use super::{
    BoxFuture, ModelRequest, ModelTurn, Provider, ProviderError, StreamObserver, http,
    usage_or_estimate,
};
use crate::config::ResponseFormat;
use crate::definition::ToolChoice;
use crate::domain::Usage;
use crate::domain::transcript::{Message, ToolCall};
use crate::error::UserError;

pub struct OpenAi {
    endpoint: Endpoint,
    client: reqwest::Client,
}

impl OpenAi {
    pub fn new(endpoint: Endpoint) -> Result<OpenAi, UserError> {
        Ok(OpenAi {
            client: http::client()?,
            endpoint,
        })
    }
}

impl Provider for OpenAi {
    fn stream<'a>(
        &'a self,
        request: ModelRequest<'a>,
        observer: &'a mut dyn StreamObserver,
    ) -> BoxFuture<'a, Result<ModelTurn, ProviderError>> {
        Box::pin(async move {
            let endpoint = &self.endpoint;
            let url = format!("{}/chat/completions", endpoint.base_url);
            let mut headers = Vec::new();
            if let Some(key) = &endpoint.api_key {
                headers.push((
                    "authorization".to_owned(),
                    format!("Bearer {}", key.expose()),
                ));
            }
            let body = request_body(endpoint, &request);
            let mut response =
                http::post_stream(&self.client, endpoint, &url, &headers, &body, observer).await?;
            let mut turn = TurnBuilder::default();
            http::read_sse(&mut response, endpoint, observer, &mut turn).await?;
            turn.finish(&request)
        })
    }
}

/// The request body: model, messages (system first), tools, streaming with usage.
pub fn request_body(endpoint: &Endpoint, request: &ModelRequest<'_>) -> Value {
    let mut body = json!({
        "model": endpoint.model,
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": wire_messages(request.system, request.messages),
    });
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters}
                })
            })
            .collect();
        if let Some(choice) = request.tool_choice {
            body["tool_choice"] = match choice {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::Required => json!("required"),
                ToolChoice::None => json!("none"),
                ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
            };
        }
    }
    if let Some(schema) = request.output_schema {
        body["response_format"] = response_format(endpoint.response_format, schema);
    }
    if let Some(t) = endpoint.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(max) = endpoint.max_output_tokens {
        body["max_tokens"] = json!(max);
    }
    body
}

/// Asks the server to keep the answer to `schema`, in the shape it takes. Not `strict`:
/// OpenAI's strict mode refuses most hand-written schemas (every property required, no
/// `additionalProperties`), and the answer is validated anyway.
fn response_format(format: ResponseFormat, schema: &Value) -> Value {
    match format {
        ResponseFormat::JsonSchema => json!({
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": false},
        }),
        ResponseFormat::JsonObject => json!({"type": "json_object", "schema": schema}),
    }
}

/// Maps the transcript to Chat Completions messages, in the shapes every compatible
/// server accepts: `content` is always a string, also beside tool calls (llama.cpp-based
/// servers answer `null` with HTTP 500 and an omitted `content` with an empty 200);
/// arguments travel as JSON text; tool results carry only `tool_call_id` and `content`,
/// the fields the API defines.
pub fn wire_messages(system: &str, messages: &[Message]) -> Vec<Value> {
    let mut wire = Vec::with_capacity(messages.len() + 1);
    if !system.is_empty() {
        wire.push(json!({"role": "system", "content": system}));
    }
    for message in messages {
        wire.push(match message {
            Message::User { content } => json!({"role": "user", "content": content}),
            Message::Assistant {
                content,
                tool_calls,
            } => {
                let mut m = json!({"role": "assistant", "content": content});
                if !tool_calls.is_empty() {
                    m["tool_calls"] = tool_calls
                        .iter()
                        .map(|c| {
                            json!({
                                "id": c.id,
                                "type": "function",
                                "function": {"name": c.name, "arguments": c.arguments_text()}
                            })
                        })
                        .collect();
                }
                m
            }
            Message::Tool {
                tool_call_id,
                content,
                is_error,
                ..
            } => {
                // The API has no error flag for tool results: the text says it.
                let content = if *is_error {
                    format!("Error: {content}")
                } else {
                    content.clone()
                };
                json!({"role": "tool", "tool_call_id": tool_call_id, "content": content})
            }
        });
    }
    wire
}

impl Decoder for TurnBuilder {
    fn decode(&mut self, data: &str) -> Result<String, ProviderError> {
        self.on_data(data)
    }

    fn is_done(&self) -> bool {
        self.done
    }
}

/// A tool call being assembled from deltas.
#[derive(Debug, Default)]
struct PartialCall {
    index: Option<u64>,
    id: String,
    name: String,
    arguments: String,
}

/// Assembles one answer from the stream's `data:` payloads.
#[derive(Debug, Default)]
pub struct TurnBuilder {
    text: String,
    calls: Vec<PartialCall>,
    usage: Option<Usage>,
    finish_reason: Option<String>,
    /// `[DONE]` was seen.
    pub done: bool,
}

impl TurnBuilder {
    /// Takes one `data:` payload; returns the text delta it carried (often empty).
    pub fn on_data(&mut self, data: &str) -> Result<String, ProviderError> {
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(String::new());
        }
        if data.is_empty() {
            return Ok(String::new());
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| {
            ProviderError::transient(format!("the server sent a chunk that is not JSON ({e})"))
        })?;
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            return Err(stream_error(error));
        }
        if let Some(usage) = chunk.get("usage").and_then(parse_usage) {
            self.usage = Some(usage);
        }
        let mut text = String::new();
        let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) else {
            return Ok(text);
        };
        if let Some(reason) = choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
        {
            self.finish_reason = Some(reason.to_owned());
        }
        let Some(delta) = choice.get("delta").or_else(|| choice.get("message")) else {
            return Ok(text);
        };
        if let Some(content) = delta.get("content").and_then(Value::as_str) {
            text.push_str(content);
            self.text.push_str(content);
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for call in calls {
                self.merge_call(call);
            }
        }
        Ok(text)
    }

    fn merge_call(&mut self, delta: &Value) {
        let index = delta.get("index").and_then(Value::as_u64);
        let id = delta
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let position = match (index, id) {
            (Some(i), _) => self.calls.iter().position(|c| c.index == Some(i)),
            (None, Some(id)) => self.calls.iter().position(|c| c.id == id),
            // Neither: a continuation of the call being streamed.
            (None, None) => self.calls.len().checked_sub(1),
        };
        let position = position.unwrap_or_else(|| {
            self.calls.push(PartialCall {
                index,
                ..PartialCall::default()
            });
            self.calls.len() - 1
        });
        let call = &mut self.calls[position];
        if let Some(id) = id {
            call.id = id.to_owned();
        }
        let function = delta.get("function");
        if let Some(name) = function.and_then(|f| f.get("name")).and_then(Value::as_str)
            && call.name.is_empty()
        {
            call.name = name.to_owned();
        }
        match function.and_then(|f| f.get("arguments")) {
            Some(Value::String(piece)) => call.arguments.push_str(piece),
            // Some servers send the whole arguments object at once.
            Some(object @ Value::Object(_)) => call.arguments = object.to_string(),
            _ => {}
        }
    }

    /// The complete answer, or an error for a stream that ended before it was complete.
    pub fn finish(self, request: &ModelRequest<'_>) -> Result<ModelTurn, ProviderError> {
        if !self.done && self.finish_reason.is_none() {
            return Err(ProviderError::transient(
                "the stream ended before the answer was complete (no finish_reason and no [DONE])",
            ));
        }
        let tool_calls: Vec<ToolCall> = self
            .calls
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let id = if c.id.is_empty() {
                    format!("call_{}", i + 1)
                } else {
                    c.id
                };
                ToolCall::from_json_text(id, c.name, &c.arguments)
            })
            .collect();
        let usage = usage_or_estimate(self.usage, request, &self.text, &tool_calls);
        let finish_reason = self.finish_reason.unwrap_or_else(|| {
            if tool_calls.is_empty() {
                "stop"
            } else {
                "tool_calls"
            }
            .to_owned()
        });
        Ok(ModelTurn {
            text: self.text,
            tool_calls,
            usage,
            finish_reason: Some(finish_reason),
        })
    }
}

/// `usage` with token counts; `None` for null or `{}`.
fn parse_usage(usage: &Value) -> Option<Usage> {
    let input = usage.get("prompt_tokens").and_then(Value::as_u64);
    let output = usage.get("completion_tokens").and_then(Value::as_u64);
    if input.is_none() && output.is_none() {
        return None;
    }
    Some(Usage::new(input.unwrap_or(0), output.unwrap_or(0)))
}

/// An error object sent inside the stream.
fn stream_error(error: &Value) -> ProviderError {
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| error.as_str())
        .unwrap_or("the server reported an error")
        .to_owned();
    let kind = error
        .get("type")
        .or_else(|| error.get("code"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let status = error
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok());
    let transient = status.is_some_and(super::is_transient_status)
        || [
            "server_error",
            "overloaded",
            "rate_limit",
            "timeout",
            "unavailable",
        ]
        .iter()
        .any(|t| kind.contains(t));
    let message = format!("the server reported an error in the stream: {message}");
    if transient {
        ProviderError::Transient { status, message }
    } else {
        ProviderError::Fatal { status, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ModelRequest<'static> {
        ModelRequest {
            system: "",
            messages: &[],
            tools: &[],
            tool_choice: None,
            output_schema: None,
            call_index: 0,
        }
    }

    fn feed(frames: &[&str]) -> Result<ModelTurn, ProviderError> {
        let mut turn = TurnBuilder::default();
        for frame in frames {
            turn.on_data(frame)?;
        }
        turn.finish(&request())
    }

    #[test]
    fn an_answer_that_must_follow_a_schema_asks_for_it_in_the_servers_shape() {
        let schema = json!({"type": "object", "required": ["n"]});
        let constrained = ModelRequest {
            output_schema: Some(&schema),
            ..request()
        };
        let mut endpoint = Endpoint::for_tests(super::super::endpoint::Kind::OpenAi);
        assert_eq!(
            request_body(&endpoint, &constrained)["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": false}})
        );
        endpoint.response_format = ResponseFormat::JsonObject;
        assert_eq!(
            request_body(&endpoint, &constrained)["response_format"],
            json!({"type": "json_object", "schema": schema})
        );
        assert!(
            request_body(&endpoint, &request())
                .get("response_format")
                .is_none()
        );
    }

    #[test]
    fn text_deltas_and_last_chunk_usage_make_the_turn() {
        let turn = feed(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#,
            "[DONE]",
        ])
        .unwrap();
        assert_eq!(turn.text, "Hello");
        assert_eq!(turn.usage, Usage::new(9, 2));
        assert_eq!(turn.finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn parallel_tool_calls_are_assembled_by_index() {
        let turn = feed(&[
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"read_file","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"list_dir","arguments":"{\"pa"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"path\":\"a.md\"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"th\":\".\"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            "[DONE]",
        ])
        .unwrap();
        let calls: Vec<(&str, &str, Value)> = turn
            .tool_calls
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.clone()))
            .collect();
        assert_eq!(
            calls,
            vec![
                ("call_a", "read_file", json!({"path": "a.md"})),
                ("call_b", "list_dir", json!({"path": "."}))
            ]
        );
    }

    #[test]
    fn calls_without_index_are_matched_by_id_and_object_arguments_are_accepted() {
        let turn = feed(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"x","function":{"name":"a","arguments":{"k":1}}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"y","function":{"name":"b","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":""}]}"#,
            "[DONE]",
        ])
        .unwrap();
        assert_eq!(turn.tool_calls.len(), 2);
        assert_eq!(turn.tool_calls[0].arguments, json!({"k": 1}));
        assert_eq!(
            turn.finish_reason.as_deref(),
            Some("tool_calls"),
            "inferred when missing"
        );
    }

    #[test]
    fn invalid_arguments_become_a_marked_call_not_an_error() {
        let turn = feed(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"read_file","arguments":"{\"path\":"}}]},"finish_reason":"tool_calls"}]}"#,
        ])
        .unwrap();
        assert!(turn.tool_calls[0].invalid_arguments.is_some());
    }

    #[test]
    fn lenient_about_what_real_servers_leave_out() {
        // No usage at all, `usage: {}`, no [DONE] after a finished chunk.
        let turn = feed(&[
            r#"{"choices":[{"delta":{"content":"hi"},"finish_reason":null}],"usage":{}}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}],"usage":null}"#,
        ])
        .unwrap();
        assert_eq!(turn.text, "hi");
        assert!(
            turn.usage.total > 0,
            "estimated when the server reports none"
        );
        // [DONE] without any finish_reason.
        assert!(feed(&[r#"{"choices":[{"delta":{"content":"x"}}]}"#, "[DONE]"]).is_ok());
    }

    #[test]
    fn a_truncated_stream_is_an_error() {
        let err = feed(&[r#"{"choices":[{"delta":{"content":"par"}}]}"#]).unwrap_err();
        assert!(matches!(err, ProviderError::Transient { .. }), "{err:?}");
    }

    #[test]
    fn an_error_inside_a_data_frame_fails_the_step() {
        let err = feed(&[r#"{"error":{"message":"model overloaded","type":"server_error"}}"#])
            .unwrap_err();
        assert!(matches!(err, ProviderError::Transient { .. }));
        let err =
            feed(&[r#"{"error":{"message":"context too long","type":"invalid_request_error"}}"#])
                .unwrap_err();
        assert!(matches!(err, ProviderError::Fatal { .. }));
        assert!(err.to_string().contains("context too long"));
    }

    #[test]
    fn the_transcript_maps_to_chat_messages() {
        let messages = vec![
            Message::User {
                content: "hi".into(),
            },
            Message::Assistant {
                content: String::new(),
                tool_calls: vec![ToolCall::from_json_text(
                    "c1".into(),
                    "read_file".into(),
                    r#"{"path":"a"}"#,
                )],
            },
            Message::Tool {
                tool_call_id: "c1".into(),
                name: "read_file".into(),
                content: "missing".into(),
                is_error: true,
            },
        ];
        let wire = wire_messages("be brief", &messages);
        assert_eq!(
            Value::Array(wire),
            json!([
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"a\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "Error: missing"}
            ])
        );
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;
    use proptest::prelude::*;

    /// A stream with text, two tool calls split mid-string, usage in the last chunk,
    /// a keep-alive comment and CRLF line endings.
    const STREAM: &str = concat!(
        ": keep-alive\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Héllo \"}}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"wörld\"}}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\",\"function\":{\"name\":\"read_file\",\"arguments\":\"{\\\"pa\"}}]}}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"b\",\"function\":{\"name\":\"list_dir\",\"arguments\":\"{}\"}}]}}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"th\\\":\\\"x\\\"}\"}}]}}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\r\n\r\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7}}\r\n\r\n",
        "data: [DONE]\r\n\r\n",
    );

    fn normalise(pieces: &[&[u8]]) -> (Vec<String>, ModelTurn) {
        let mut turn = TurnBuilder::default();
        let deltas = crate::provider::sse::decode_all(pieces, &mut turn);
        let request = ModelRequest {
            system: "",
            messages: &[],
            tools: &[],
            tool_choice: None,
            output_schema: None,
            call_index: 0,
        };
        (deltas, turn.finish(&request).unwrap())
    }

    #[test]
    fn the_whole_stream_gives_text_calls_and_usage() {
        let (deltas, turn) = normalise(&[STREAM.as_bytes()]);
        assert_eq!(deltas, vec!["Héllo ", "wörld"]);
        assert_eq!(turn.tool_calls[0].arguments, json!({"path": "x"}));
        assert_eq!(turn.tool_calls[1].name, "list_dir");
        assert_eq!(turn.usage, Usage::new(12, 7));
    }

    proptest! {
        #[test]
        fn any_split_of_the_bytes_gives_the_same_normalised_events(
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
        ) {
            let bytes = STREAM.as_bytes();
            let pieces = crate::provider::sse::split_at(bytes, &cuts);
            prop_assert_eq!(normalise(&pieces), normalise(&[bytes]));
        }
    }
}
