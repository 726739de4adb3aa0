//! The Anthropic Messages API with streaming.
//!
//! The stream is a sequence of typed events: `message_start` (input usage),
//! `content_block_start` / `_delta` / `_stop` for text and tool use (tool input arrives
//! as `input_json_delta` pieces), `message_delta` (stop reason, output usage),
//! `message_stop`, `ping`, and `error`, which can arrive after an HTTP 200.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::endpoint::Endpoint;
use super::sse::Decoder;
use super::{
    BoxFuture, ModelRequest, ModelTurn, Provider, ProviderError, StreamObserver, http,
    usage_or_estimate,
};
use crate::definition::ToolChoice;
use crate::domain::Usage;
use crate::domain::transcript::{Message, ToolCall};
use crate::error::UserError;

/// The API version this module speaks.
const API_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by the API; this is used when the definition sets none.
const DEFAULT_MAX_TOKENS: u64 = 4096;
/// The tool an answer that must follow a JSON Schema is given through: the Messages API
/// has no response format, but a forced tool's input is kept to its schema.
const ANSWER_TOOL: &str = "answer";

pub struct Anthropic {
    endpoint: Endpoint,
    client: reqwest::Client,
}

impl Anthropic {
    pub fn new(endpoint: Endpoint) -> Result<Anthropic, UserError> {
        Ok(Anthropic {
            client: http::client()?,
            endpoint,
        })
    }
}

impl Provider for Anthropic {
    fn stream<'a>(
        &'a self,
        request: ModelRequest<'a>,
        observer: &'a mut dyn StreamObserver,
    ) -> BoxFuture<'a, Result<ModelTurn, ProviderError>> {
        Box::pin(async move {
            let endpoint = &self.endpoint;
            let url = format!("{}/v1/messages", endpoint.base_url);
            let mut headers = vec![("anthropic-version".to_owned(), API_VERSION.to_owned())];
            if let Some(key) = &endpoint.api_key {
                headers.push(("x-api-key".to_owned(), key.expose().to_owned()));
            }
            let body = request_body(endpoint, &request);
            let mut response =
                http::post_stream(&self.client, endpoint, &url, &headers, &body, observer).await?;
            let mut turn = TurnBuilder::for_request(&request);
            http::read_sse(&mut response, endpoint, observer, &mut turn).await?;
            turn.finish(&request)
        })
    }
}

pub fn request_body(endpoint: &Endpoint, request: &ModelRequest<'_>) -> Value {
    let mut body = json!({
        "model": endpoint.model,
        "max_tokens": endpoint.max_output_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "stream": true,
        "messages": wire_messages(request.messages),
    });
    if !request.system.is_empty() {
        body["system"] = json!(request.system);
    }
    if let Some(schema) = answer_schema(request) {
        body["tools"] = json!([{
            "name": ANSWER_TOOL,
            "description": "Give your final answer: its input is the answer.",
            "input_schema": schema,
        }]);
        body["tool_choice"] = json!({"type": "tool", "name": ANSWER_TOOL});
    } else if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
            .collect();
        if let Some(choice) = request.tool_choice {
            body["tool_choice"] = match choice {
                ToolChoice::Auto => json!({"type": "auto"}),
                ToolChoice::Required => json!({"type": "any"}),
                ToolChoice::None => json!({"type": "none"}),
                ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
            };
        }
    }
    if let Some(t) = endpoint.temperature {
        body["temperature"] = json!(t);
    }
    body
}

/// The schema the answer is forced through [`ANSWER_TOOL`] with: only when the agent
/// offers no tools of its own (forcing the answer tool at every step would forbid real
/// tool calls), and only for an object schema (a tool's input is an object). Otherwise
/// the answer is validated without the server's help.
fn answer_schema<'a>(request: &ModelRequest<'a>) -> Option<&'a Value> {
    request
        .output_schema
        .filter(|schema| request.tools.is_empty() && schema["type"] == "object")
}

/// Maps the transcript to Messages API turns: tool results travel as `tool_result`
/// blocks in a user turn, and consecutive turns of one role are merged, since the API
/// wants the roles to alternate. A turn that is one text block travels as a plain
/// string: both forms are valid, but behind some gateways an array of blocks reaches
/// the model as an empty prompt.
pub fn wire_messages(messages: &[Message]) -> Vec<Value> {
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in messages {
        let (role, blocks) = match message {
            Message::User { content } => ("user", vec![json!({"type": "text", "text": content})]),
            Message::Assistant {
                content,
                tool_calls,
            } => {
                let mut blocks = Vec::new();
                if !content.is_empty() {
                    blocks.push(json!({"type": "text", "text": content}));
                }
                for call in tool_calls {
                    // The API insists on an object; invalid arguments were answered with
                    // an error already, so an empty object stands in for them.
                    let input = if call.arguments.is_object() {
                        call.arguments.clone()
                    } else {
                        json!({})
                    };
                    blocks.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}));
                }
                ("assistant", blocks)
            }
            Message::Tool {
                tool_call_id,
                content,
                is_error,
                ..
            } => (
                "user",
                vec![
                    json!({"type": "tool_result", "tool_use_id": tool_call_id, "content": content, "is_error": is_error}),
                ],
            ),
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last_role, last_blocks)) if *last_role == role => last_blocks.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    turns
        .into_iter()
        .map(|(role, mut content)| match content.as_mut_slice() {
            [block] if block["type"] == "text" => {
                json!({"role": role, "content": block["text"].take()})
            }
            _ => json!({"role": role, "content": content}),
        })
        .collect()
}

impl Decoder for TurnBuilder {
    fn decode(&mut self, data: &str) -> Result<String, ProviderError> {
        self.on_event(data)
    }

    fn is_done(&self) -> bool {
        self.done
    }
}

#[derive(Debug)]
enum Block {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        json: String,
        start_input: Value,
    },
}

/// Assembles one answer from the stream's events.
#[derive(Debug, Default)]
pub struct TurnBuilder {
    blocks: BTreeMap<u64, Block>,
    /// Blocks that continue an earlier one: a `tool_use` block with the same `id` as the
    /// block before it carries more of that call's arguments (LiteLLM's proxy sends one
    /// block per argument fragment), so its deltas go to the first block.
    continues: BTreeMap<u64, u64>,
    input_tokens: u64,
    output_tokens: u64,
    stop_reason: Option<String>,
    /// `message_stop` was seen.
    pub done: bool,
    /// The request forced [`ANSWER_TOOL`]: its input is the answer's text, streamed
    /// as the text of an answer is.
    answer_tool: bool,
}

impl TurnBuilder {
    pub fn for_request(request: &ModelRequest<'_>) -> TurnBuilder {
        TurnBuilder {
            answer_tool: answer_schema(request).is_some(),
            ..TurnBuilder::default()
        }
    }

    /// Takes one event's data; returns the text delta it carried (often empty).
    pub fn on_event(&mut self, data: &str) -> Result<String, ProviderError> {
        let event: Value = serde_json::from_str(data).map_err(|e| {
            ProviderError::transient(format!("the server sent an event that is not JSON ({e})"))
        })?;
        let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
        let index = self.continues.get(&index).copied().unwrap_or(index);
        match event.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" => self.message_start(&event),
            "content_block_start" => return Ok(self.block_start(index, &event)),
            "content_block_delta" => return Ok(self.block_delta(index, &event)),
            "message_delta" => self.message_delta(&event),
            "message_stop" => self.done = true,
            "error" => return Err(stream_error(event.get("error").unwrap_or(&Value::Null))),
            // `ping`, `content_block_stop` and event types added later.
            _ => {}
        }
        Ok(String::new())
    }

    /// `message_start`: the usage the answer starts with (the prompt's tokens).
    fn message_start(&mut self, event: &Value) {
        if let Some(usage) = event.pointer("/message/usage") {
            self.input_tokens = input_tokens(usage);
            self.output_tokens = usage
                .get("output_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0);
        }
    }

    /// `content_block_start`: a new text or `tool_use` block, or more of the call
    /// before it. Returns the text the block starts with.
    fn block_start(&mut self, index: u64, event: &Value) -> String {
        let block = event.get("content_block").cloned().unwrap_or(Value::Null);
        let text = |key: &str| {
            block
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        if let Some(first) = self.continued_call(index, &text("id"), &block) {
            self.continues.insert(index, first);
            return String::new();
        }
        let started = match block.get("type").and_then(Value::as_str) {
            Some("tool_use") => Block::ToolUse {
                id: text("id"),
                name: text("name"),
                json: String::new(),
                start_input: block.get("input").cloned().unwrap_or(Value::Null),
            },
            _ => Block::Text(text("text")),
        };
        let initial = match &started {
            Block::Text(t) => t.clone(),
            Block::ToolUse { .. } => String::new(),
        };
        self.blocks.insert(index, started);
        initial
    }

    /// `content_block_delta`: more text, or more of a call's arguments. Returns the
    /// text it adds.
    fn block_delta(&mut self, index: u64, event: &Value) -> String {
        let delta = event.get("delta").cloned().unwrap_or(Value::Null);
        match (
            delta.get("type").and_then(Value::as_str),
            self.blocks.get_mut(&index),
        ) {
            (Some("text_delta"), Some(Block::Text(text))) => {
                let piece = delta.get("text").and_then(Value::as_str).unwrap_or("");
                text.push_str(piece);
                return piece.to_owned();
            }
            (Some("input_json_delta"), Some(Block::ToolUse { json, name, .. })) => {
                let piece = delta
                    .get("partial_json")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                json.push_str(piece);
                if self.answer_tool && name == ANSWER_TOOL {
                    return piece.to_owned();
                }
            }
            // Thinking and other block kinds are not part of the answer.
            _ => {}
        }
        String::new()
    }

    /// `message_delta`: why the answer ended, and the final usage.
    fn message_delta(&mut self, event: &Value) {
        if let Some(reason) = event.pointer("/delta/stop_reason").and_then(Value::as_str) {
            self.stop_reason = Some(reason.to_owned());
        }
        if let Some(usage) = event.get("usage") {
            if let Some(out) = usage.get("output_tokens").and_then(Value::as_u64) {
                self.output_tokens = out;
            }
            let input = input_tokens(usage);
            if input > 0 {
                self.input_tokens = input;
            }
        }
    }

    /// The block a new `tool_use` block at `index` continues: the block just before it,
    /// when that is a call with the same `id`.
    fn continued_call(&self, index: u64, id: &str, block: &Value) -> Option<u64> {
        if id.is_empty() || block.get("type").and_then(Value::as_str) != Some("tool_use") {
            return None;
        }
        let (&last, previous) = self.blocks.range(..index).next_back()?;
        match previous {
            Block::ToolUse { id: previous, .. } if previous == id => Some(last),
            _ => None,
        }
    }

    pub fn finish(self, request: &ModelRequest<'_>) -> Result<ModelTurn, ProviderError> {
        if !self.done && self.stop_reason.is_none() {
            return Err(ProviderError::transient(
                "the stream ended before the answer was complete (no message_stop)",
            ));
        }
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for block in self.blocks.into_values() {
            match block {
                Block::Text(t) => text.push_str(&t),
                Block::ToolUse {
                    name,
                    json,
                    start_input,
                    ..
                } if self.answer_tool && name == ANSWER_TOOL => {
                    if json.trim().is_empty() {
                        text.push_str(&start_input.to_string());
                    } else {
                        text.push_str(&json);
                    }
                }
                Block::ToolUse {
                    id,
                    name,
                    json,
                    start_input,
                } => {
                    let call = if json.trim().is_empty() && start_input.is_object() {
                        ToolCall {
                            id,
                            name,
                            arguments: start_input,
                            invalid_arguments: None,
                        }
                    } else {
                        ToolCall::from_json_text(id, name, &json)
                    };
                    tool_calls.push(call);
                }
            }
        }
        let reported = Usage::new(self.input_tokens, self.output_tokens);
        Ok(ModelTurn {
            usage: usage_or_estimate(Some(reported), request, &text, &tool_calls),
            text,
            tool_calls,
            finish_reason: self.stop_reason,
        })
    }
}

/// Input tokens, counting cached prompt tokens too.
fn input_tokens(usage: &Value) -> u64 {
    [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ]
    .iter()
    .filter_map(|k| usage.get(*k).and_then(Value::as_u64))
    .sum()
}

fn stream_error(error: &Value) -> ProviderError {
    let kind = error.get("type").and_then(Value::as_str).unwrap_or("error");
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("no details given");
    let message = format!("the server reported {kind} in the stream: {message}");
    match kind {
        "overloaded_error" | "api_error" | "rate_limit_error" | "timeout_error" => {
            ProviderError::transient(message)
        }
        _ => ProviderError::fatal(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn request() -> ModelRequest<'static> {
        ModelRequest {
            system: "",
            messages: &[],
            tools: &[],
            tool_choice: None,
            output_schema: None,
            call_index: 0,
        }
    }

    fn feed(events: &[&str]) -> Result<ModelTurn, ProviderError> {
        let mut turn = TurnBuilder::default();
        for event in events {
            turn.on_event(event)?;
        }
        turn.finish(&request())
    }

    const START: &str = r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":25,"output_tokens":1}}}"#;
    const STOP: &str = r#"{"type":"message_stop"}"#;

    #[test]
    fn text_and_tool_use_blocks_make_the_turn() {
        let turn = feed(&[
            START,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me "}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"look."}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"read_file","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"path\": \"a"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":".md\"}"}}"#,
            r#"{"type":"content_block_stop","index":1}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":40}}"#,
            STOP,
        ])
        .unwrap();
        assert_eq!(turn.text, "Let me look.");
        assert_eq!(turn.tool_calls[0].id, "toolu_1");
        assert_eq!(turn.tool_calls[0].arguments, json!({"path": "a.md"}));
        assert_eq!(turn.usage, Usage::new(25, 40));
        assert_eq!(turn.finish_reason.as_deref(), Some("tool_use"));
    }

    #[test]
    fn blocks_that_repeat_the_previous_call_id_continue_its_arguments() {
        // LiteLLM's proxy: one tool_use block per argument fragment, all with one id.
        let piece = |index: u64, json: &str| {
            [
                format!(
                    r#"{{"type":"content_block_start","index":{index},"content_block":{{"type":"tool_use","id":"call_0","name":"read_file","input":{{}}}}}}"#
                ),
                format!(
                    r#"{{"type":"content_block_delta","index":{index},"delta":{{"type":"input_json_delta","partial_json":{}}}}}"#,
                    serde_json::to_string(json).unwrap()
                ),
                format!(r#"{{"type":"content_block_stop","index":{index}}}"#),
            ]
        };
        let mut events = vec![START.to_owned()];
        for (i, json) in ["{", "\"path\"", ": \"notes", ".md\"}"].iter().enumerate() {
            events.extend(piece(i as u64, json));
        }
        // A second call with another id stays a call of its own.
        events.push(r#"{"type":"content_block_start","index":4,"content_block":{"type":"tool_use","id":"call_1","name":"list_dir","input":{}}}"#.to_owned());
        events.push(r#"{"type":"content_block_delta","index":4,"delta":{"type":"input_json_delta","partial_json":"{\"path\": \".\"}"}}"#.to_owned());
        events.push(r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}}"#.to_owned());
        events.push(STOP.to_owned());
        let events: Vec<&str> = events.iter().map(String::as_str).collect();
        let turn = feed(&events).unwrap();
        let calls: Vec<(&str, &str, Value)> = turn
            .tool_calls
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.clone()))
            .collect();
        assert_eq!(
            calls,
            vec![
                ("call_0", "read_file", json!({"path": "notes.md"})),
                ("call_1", "list_dir", json!({"path": "."}))
            ]
        );
    }

    #[test]
    fn zero_usage_for_a_streamed_answer_is_estimated_and_marked() {
        let turn = feed(&[
            r#"{"type":"message_start","message":{"usage":{"input_tokens":0,"output_tokens":0}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello there"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":0}}"#,
            STOP,
        ])
        .unwrap();
        assert!(turn.usage.estimated, "{:?}", turn.usage);
        assert!(turn.usage.output > 0);
        let reported = feed(&[
            START,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":"Hi"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}"#,
            STOP,
        ])
        .unwrap();
        assert_eq!(reported.usage, Usage::new(25, 2));
    }

    #[test]
    fn a_forced_tool_choice_is_sent_in_the_messages_api_shape() {
        let endpoint = Endpoint::for_tests(super::super::endpoint::Kind::Anthropic);
        let tools = [crate::provider::ToolSpec {
            name: "read_file".into(),
            description: "Read".into(),
            parameters: json!({"type": "object"}),
        }];
        for (choice, wire) in [
            (ToolChoice::Auto, json!({"type": "auto"})),
            (ToolChoice::Required, json!({"type": "any"})),
            (ToolChoice::None, json!({"type": "none"})),
            (
                ToolChoice::Tool("read_file".into()),
                json!({"type": "tool", "name": "read_file"}),
            ),
        ] {
            let request = ModelRequest {
                tools: &tools,
                tool_choice: Some(&choice),
                ..request()
            };
            assert_eq!(request_body(&endpoint, &request)["tool_choice"], wire);
        }
        assert!(
            request_body(&endpoint, &request())
                .get("tool_choice")
                .is_none()
        );
    }

    #[test]
    fn an_answer_that_must_follow_a_schema_is_forced_through_the_answer_tool_when_no_tools_are_offered()
     {
        let endpoint = Endpoint::for_tests(super::super::endpoint::Kind::Anthropic);
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        let constrained = ModelRequest {
            output_schema: Some(&schema),
            ..request()
        };
        let body = request_body(&endpoint, &constrained);
        assert_eq!(body["tools"][0]["name"], ANSWER_TOOL);
        assert_eq!(body["tools"][0]["input_schema"], schema);
        assert_eq!(
            body["tool_choice"],
            json!({"type": "tool", "name": ANSWER_TOOL})
        );

        // With tools of its own, or a schema that is not an object's, nothing is forced.
        let tools = [crate::provider::ToolSpec {
            name: "read_file".into(),
            description: "Read".into(),
            parameters: json!({"type": "object"}),
        }];
        let with_tools = ModelRequest {
            tools: &tools,
            ..constrained
        };
        let body = request_body(&endpoint, &with_tools);
        assert_eq!(body["tools"].as_array().unwrap().len(), 1);
        assert_eq!(body["tools"][0]["name"], "read_file");
        assert!(body.get("tool_choice").is_none());
        let list = json!({"type": "array"});
        let not_an_object = ModelRequest {
            output_schema: Some(&list),
            ..request()
        };
        assert!(
            request_body(&endpoint, &not_an_object)
                .get("tools")
                .is_none()
        );
    }

    #[test]
    fn the_answer_tools_input_is_the_answers_text_and_streams_as_text() {
        let schema = json!({"type": "object"});
        let request = ModelRequest {
            output_schema: Some(&schema),
            ..request()
        };
        let mut turn = TurnBuilder::for_request(&request);
        let mut streamed = String::new();
        for event in [
            START,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"answer","input":{}}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"n\": "}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"3}"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":5}}"#,
            STOP,
        ] {
            streamed.push_str(&turn.on_event(event).unwrap());
        }
        let turn = turn.finish(&request).unwrap();
        assert_eq!(turn.text, r#"{"n": 3}"#);
        assert_eq!(streamed, turn.text);
        assert!(turn.tool_calls.is_empty());
    }

    #[test]
    fn a_tool_without_input_deltas_gets_its_start_input() {
        let turn = feed(&[
            START,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"list_dir","input":{}}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":3}}"#,
            STOP,
        ])
        .unwrap();
        assert_eq!(turn.tool_calls[0].arguments, json!({}));
    }

    #[test]
    fn an_error_event_after_200_fails_the_step_by_its_kind() {
        let overloaded =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert!(matches!(
            feed(&[START, overloaded]),
            Err(ProviderError::Transient { .. })
        ));
        let invalid =
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#;
        assert!(matches!(
            feed(&[START, invalid]),
            Err(ProviderError::Fatal { .. })
        ));
    }

    #[test]
    fn a_stream_without_its_end_is_an_error() {
        let partial = r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":"Hi"}}"#;
        assert!(matches!(
            feed(&[START, partial]),
            Err(ProviderError::Transient { .. })
        ));
    }

    #[test]
    fn tool_results_travel_in_user_turns_and_roles_alternate() {
        let messages = vec![
            Message::User {
                content: "read a".into(),
            },
            Message::Assistant {
                content: "ok".into(),
                tool_calls: vec![
                    ToolCall::from_json_text("t1".into(), "read_file".into(), r#"{"path":"a"}"#),
                    ToolCall::from_json_text("t2".into(), "read_file".into(), "{bad"),
                ],
            },
            Message::Tool {
                tool_call_id: "t1".into(),
                name: "read_file".into(),
                content: "A".into(),
                is_error: false,
            },
            Message::Tool {
                tool_call_id: "t2".into(),
                name: "read_file".into(),
                content: "invalid".into(),
                is_error: true,
            },
            Message::User {
                content: "next".into(),
            },
        ];
        assert_eq!(
            Value::Array(wire_messages(&messages)),
            json!([
                {"role": "user", "content": "read a"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "ok"},
                    {"type": "tool_use", "id": "t1", "name": "read_file", "input": {"path": "a"}},
                    {"type": "tool_use", "id": "t2", "name": "read_file", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "A", "is_error": false},
                    {"type": "tool_result", "tool_use_id": "t2", "content": "invalid", "is_error": true},
                    {"type": "text", "text": "next"}
                ]}
            ])
        );
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;
    use proptest::prelude::*;

    const STREAM: &str = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":30,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\ndata: {\"type\":\"ping\"}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Ça \"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"va\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"read_file\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"path\\\": \"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"n.md\\\"}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":22}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    fn normalise(pieces: &[&[u8]]) -> (Vec<String>, ModelTurn) {
        let mut turn = TurnBuilder::default();
        let deltas = crate::provider::sse::decode_all(pieces, &mut turn);
        (deltas, turn.finish(&super::tests::request()).unwrap())
    }

    #[test]
    fn the_whole_stream_gives_text_calls_and_usage() {
        let (deltas, turn) = normalise(&[STREAM.as_bytes()]);
        assert_eq!(deltas, vec!["Ça ", "va"]);
        assert_eq!(turn.tool_calls[0].arguments, json!({"path": "n.md"}));
        assert_eq!(turn.usage, Usage::new(30, 22));
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
