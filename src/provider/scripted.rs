//! The `scripted` provider: replays `[[model.script]]` entries, one per model call.
//!
//! Which entry answers is decided by the session's count of model calls, kept in
//! `state.json`, so a session with several messages walks through the script and a
//! resumed execution continues where it stopped. Past the end, the last entry repeats.

use std::time::Duration;

use super::{
    BoxFuture, ModelRequest, ModelTurn, Provider, ProviderError, StreamObserver, usage_or_estimate,
};
use crate::definition::ScriptEntry;
use crate::domain::Usage;
use crate::domain::transcript::{Message, ToolCall};

pub struct Scripted {
    entries: Vec<ScriptEntry>,
}

impl Scripted {
    pub fn new(entries: Vec<ScriptEntry>) -> Scripted {
        Scripted { entries }
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
                return Err(ProviderError::from_status(error.status, message));
            }
            let text = entry
                .text
                .replace("{input}", latest_input(request.messages));
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
                    arguments: crate::definition::toml_to_json(toml::Value::Table(
                        call.arguments.clone(),
                    )),
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
            call_index,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let result = rt.block_on(provider.stream(request, &mut sink));
        (result, sink.0)
    }

    #[derive(Default)]
    struct Chunks(Vec<String>);

    impl StreamObserver for Chunks {
        fn text(&mut self, delta: &str) -> Result<(), crate::provider::Interrupt> {
            self.0.push(delta.to_owned());
            Ok(())
        }
        fn retry(
            &mut self,
            _: &crate::provider::RetryNotice,
        ) -> Result<(), crate::provider::Interrupt> {
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
        let provider = Scripted::new(vec![entry("one"), entry("two {input}")]);
        assert_eq!(run(&provider, 0, "x").0.unwrap().text, "one");
        let (turn, chunks) = run(&provider, 1, "hi there");
        assert_eq!(turn.unwrap().text, "two hi there");
        assert_eq!(chunks, vec!["two ", "hi ", "there"]);
        assert_eq!(run(&provider, 7, "again").0.unwrap().text, "two again");
    }

    #[test]
    fn tool_calls_and_usage_come_from_the_script() {
        let mut arguments = toml::Table::new();
        arguments.insert("path".into(), "notes.md".into());
        let provider = Scripted::new(vec![ScriptEntry {
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
        }]);
        let turn = run(&provider, 2, "x").0.unwrap();
        assert_eq!(turn.tool_calls[0].id, "call_3_1");
        assert_eq!(
            turn.tool_calls[0].arguments,
            serde_json::json!({"path": "notes.md"})
        );
        assert_eq!(turn.usage, Usage::new(10, 5));
        assert_eq!(turn.finish_reason.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn injected_errors_are_classified_by_status() {
        let error = |status| {
            Scripted::new(vec![ScriptEntry {
                error: Some(ScriptError {
                    status,
                    message: "boom".into(),
                }),
                ..Default::default()
            }])
        };
        assert!(matches!(
            run(&error(503), 0, "x").0,
            Err(ProviderError::Transient {
                status: Some(503),
                ..
            })
        ));
        assert!(matches!(
            run(&error(400), 0, "x").0,
            Err(ProviderError::Fatal {
                status: Some(400),
                ..
            })
        ));
    }
}
