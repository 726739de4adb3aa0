//! The `scripted` provider: replays `[[model.script]]` entries, one per model call.
//!
//! Which entry answers is decided by the session's count of model calls, kept in
//! `state.json`, so a session with several messages walks through the script and a
//! resumed execution continues where it stopped. Past the end, the last entry repeats.
//!
//! An injected `error` fails the call the way a server's answer with that status would:
//! a transient status is retried under the same policy as the HTTP providers
//! (`max_attempts`, backoff, a `provider.retry` event per retry), and since every
//! attempt replays the same entry, it fails each time, like a server that stays down.
//! `{input}` stands for the latest user message in the text and in every string of the
//! tool calls' arguments.

use std::time::Duration;

use super::retry::{Attempts, RetryPolicy};
use super::{
    BoxFuture, ModelRequest, ModelTurn, Provider, ProviderError, StreamObserver, usage_or_estimate,
};
use crate::definition::ScriptEntry;
use crate::domain::Usage;
use crate::domain::transcript::{Message, ToolCall};

pub struct Scripted {
    entries: Vec<ScriptEntry>,
    retry: RetryPolicy,
}

impl Scripted {
    pub fn new(entries: Vec<ScriptEntry>, retry: RetryPolicy) -> Scripted {
        Scripted { entries, retry }
    }

    fn entry(&self, call_index: u64) -> ScriptEntry {
        let last = self.entries.len().saturating_sub(1);
        let i = usize::try_from(call_index).unwrap_or(usize::MAX).min(last);
        self.entries.get(i).cloned().unwrap_or_default()
    }
}

impl Provider for Scripted {
    fn stream<'a>(
        &'a self,
        request: ModelRequest<'a>,
        observer: &'a mut dyn StreamObserver,
    ) -> BoxFuture<'a, Result<ModelTurn, ProviderError>> {
        Box::pin(async move {
            let entry = self.entry(request.call_index);
            if let Some(error) = &entry.error {
                let message = if error.message.is_empty() {
                    format!("scripted error with status {}", error.status)
                } else {
                    error.message.clone()
                };
                let mut attempts = Attempts::new(self.retry);
                loop {
                    let failed = ProviderError::from_status(error.status, message.clone());
                    attempts.after(failed, None, observer).await?;
                }
            }
            let input = latest_input(request.messages);
            let text = entry.text.replace("{input}", input);
            for chunk in word_chunks(&text) {
                if let Some(ms) = entry.delay_ms.filter(|ms| *ms > 0) {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                observer
                    .text(chunk)
                    .map_err(|_| ProviderError::Interrupted)?;
            }
            let tool_calls: Vec<ToolCall> = entry
                .tool_calls
                .iter()
                .enumerate()
                .map(|(i, call)| ToolCall {
                    id: format!("call_{}_{}", request.call_index + 1, i + 1),
                    name: call.name.clone(),
                    arguments: fill_input(
                        crate::definition::toml_to_json(toml::Value::Table(call.arguments.clone())),
                        input,
                    ),
                    invalid_arguments: None,
                })
                .collect();
            // A script's usage is taken as written, zeros included.
            let usage = match entry.usage {
                Some(u) => Usage::new(u.input, u.output),
                None => usage_or_estimate(None, &request, &text, &tool_calls),
            };
            let finish_reason = if tool_calls.is_empty() {
                "stop"
            } else {
                "tool_calls"
            };
            Ok(ModelTurn {
                text,
                tool_calls,
                usage,
                finish_reason: Some(finish_reason.to_owned()),
            })
        })
    }
}

/// The content of the latest user message, which `{input}` stands for.
fn latest_input(messages: &[Message]) -> &str {
    messages
        .iter()
        .rev()
        .find_map(|m| match m {
            Message::User { content } => Some(content.as_str()),
            _ => None,
        })
        .unwrap_or("")
}

/// `value` with `{input}` replaced by `input` in every string it holds.
fn fill_input(value: serde_json::Value, input: &str) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(text) => Value::String(text.replace("{input}", input)),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| fill_input(v, input)).collect())
        }
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k, fill_input(v, input)))
                .collect(),
        ),
        other => other,
    }
}

/// Splits text into words, each keeping the whitespace that follows it, so the chunks
/// concatenate back to the text exactly.
pub fn word_chunks(text: &str) -> Vec<&str> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            chunks.push(&text[start..i]);
            start = i;
            in_space = false;
        }
    }
    if start < text.len() {
        chunks.push(&text[start..]);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{ScriptError, ScriptToolCall};

    /// Retries without waiting, so the tests stay fast.
    fn quick(entries: Vec<ScriptEntry>, max_attempts: u32) -> Scripted {
        Scripted::new(
            entries,
            RetryPolicy {
                max_attempts,
                base: Duration::from_millis(1),
                max_delay: Duration::from_millis(1),
            },
        )
    }

    fn run(
        provider: &Scripted,
        call_index: u64,
        input: &str,
    ) -> (Result<ModelTurn, ProviderError>, Vec<String>) {
        let messages = vec![Message::User {
            content: input.into(),
        }];
        let mut sink = Chunks::default();
        let request = ModelRequest {
            system: "",
            messages: &messages,
            tools: &[],
            tool_choice: None,
            output_schema: None,
            call_index,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let result = rt.block_on(provider.stream(request, &mut sink));
        (result, sink.0)
    }

    /// The text chunks, and a `retry:N` line for each retry announced.
    #[derive(Default)]
    struct Chunks(Vec<String>);

    impl StreamObserver for Chunks {
        fn text(&mut self, delta: &str) -> Result<(), crate::provider::Interrupt> {
            self.0.push(delta.to_owned());
            Ok(())
        }
        fn retry(
            &mut self,
            notice: &crate::provider::RetryNotice,
        ) -> Result<(), crate::provider::Interrupt> {
            self.0.push(format!("retry:{}", notice.attempt));
            Ok(())
        }
        fn interrupted(&mut self) -> bool {
            false
        }
    }

    fn entry(text: &str) -> ScriptEntry {
        ScriptEntry {
            text: text.into(),
            ..Default::default()
        }
    }

    #[test]
    fn chunks_concatenate_to_the_text() {
        assert_eq!(
            word_chunks("Hello  world,\nfriend "),
            vec!["Hello  ", "world,\n", "friend "]
        );
        assert_eq!(word_chunks(""), Vec::<&str>::new());
        assert_eq!(word_chunks("  lead"), vec!["  ", "lead"]);
    }

    #[test]
    fn entries_answer_in_order_and_the_last_repeats() {
        let provider = quick(vec![entry("one"), entry("two {input}")], 1);
        assert_eq!(run(&provider, 0, "x").0.unwrap().text, "one");
        let (turn, chunks) = run(&provider, 1, "hi there");
        assert_eq!(turn.unwrap().text, "two hi there");
        assert_eq!(chunks, vec!["two ", "hi ", "there"]);
        assert_eq!(run(&provider, 7, "again").0.unwrap().text, "two again");
    }

    #[test]
    fn tool_calls_and_usage_come_from_the_script() {
        let mut arguments = toml::Table::new();
        arguments.insert("path".into(), "notes/{input}.md".into());
        let mut nested = toml::Table::new();
        nested.insert("tags".into(), vec!["{input}", "fixed"].into());
        arguments.insert("meta".into(), nested.into());
        arguments.insert("limit".into(), 3.into());
        let entry = ScriptEntry {
            text: "reading".into(),
            tool_calls: vec![ScriptToolCall {
                name: "read_file".into(),
                arguments,
            }],
            usage: Some(crate::definition::ScriptUsage {
                input: 10,
                output: 5,
            }),
            ..Default::default()
        };
        let turn = run(&quick(vec![entry], 1), 2, "today").0.unwrap();
        assert_eq!(turn.tool_calls[0].id, "call_3_1");
        assert_eq!(
            turn.tool_calls[0].arguments,
            serde_json::json!({
                "path": "notes/today.md",
                "meta": {"tags": ["today", "fixed"]},
                "limit": 3
            }),
            "{{input}} is filled in every string of the arguments"
        );
        assert_eq!(turn.usage, Usage::new(10, 5));
        assert_eq!(turn.finish_reason.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn injected_errors_are_retried_like_a_servers_by_status() {
        let error = |status| {
            quick(
                vec![ScriptEntry {
                    error: Some(ScriptError {
                        status,
                        message: "boom".into(),
                    }),
                    ..Default::default()
                }],
                3,
            )
        };
        for status in [408, 409, 429, 500, 503] {
            let (result, reported) = run(&error(status), 0, "x");
            assert_eq!(reported, vec!["retry:2", "retry:3"], "status {status}");
            let Err(ProviderError::Transient {
                status: Some(seen),
                message,
            }) = result
            else {
                panic!("status {status}: {result:?}")
            };
            assert_eq!(seen, status);
            assert_eq!(message, "boom (gave up after 3 attempts)");
        }
        for status in [400, 401, 403, 404] {
            let (result, reported) = run(&error(status), 0, "x");
            assert!(reported.is_empty(), "status {status} is not retried");
            assert!(matches!(
                result,
                Err(ProviderError::Fatal { status: Some(s), .. }) if s == status
            ));
        }
    }
}
