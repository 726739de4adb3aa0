//! Keeping the prompt inside the model's context window.
//!
//! Before an inference whose estimated prompt passes the threshold (default 80% of
//! `context_window`), older turns are replaced by a summary the model writes in a
//! separate call, or, when that fails, dropped oldest-first. The system prompt, the
//! latest user message and unfinished tool exchanges (a tool call and its results
//! are never separated) are kept. The transcript on disk keeps the full history; only
//! the state records where the compacted part ends.

use std::borrow::Cow;

use crate::domain::state::Compaction;
use crate::domain::transcript::Message;
use crate::provider::{ModelRequest, ToolSpec, estimate_prompt, estimate_tokens};

pub const DEFAULT_THRESHOLD: f64 = 0.8;

/// The instructions of the summarising call.
pub const PROMPT: &str = "You compact a conversation between a user and an AI agent that uses tools. \
Write a concise summary that lets the agent carry on: the user's goals and constraints, \
decisions made, facts learned from tool results (file names, values, errors), work done \
and work still open. Leave out pleasantries. Answer with the summary only.";

/// How much a summary is assumed to take before it is written: a tenth of the window,
/// at most 500 tokens. A fixed 500 would stop compaction in small windows altogether
/// (below about 600 tokens, no cut could bring a prompt under the threshold with it).
fn summary_allowance(window: u64) -> u64 {
    (window / 10).min(500)
}

/// The messages the model sees: the summary (if any), the latest user message if it
/// was compacted away, then everything after the compacted part.
pub fn view<'h>(history: &'h [Message], compaction: Option<&Compaction>) -> Cow<'h, [Message]> {
    let Some(compaction) = compaction else {
        return Cow::Borrowed(history);
    };
    let through = usize::try_from(compaction.through)
        .unwrap_or(usize::MAX)
        .min(history.len());
    let mut view = Vec::with_capacity(history.len() - through + 2);
    if let Some(summary) = &compaction.summary {
        view.push(Message::User {
            content: format!("[Summary of the earlier conversation]\n{summary}"),
        });
    }
    if let Some(latest) = latest_user(history)
        && latest < through
    {
        view.push(history[latest].clone());
    }
    view.extend_from_slice(&history[through..]);
    Cow::Owned(view)
}

fn latest_user(history: &[Message]) -> Option<usize> {
    history
        .iter()
        .rposition(|m| matches!(m, Message::User { .. }))
}

/// The estimated prompt size of a view.
pub fn estimate(system: &str, messages: &[Message], tools: &[ToolSpec]) -> u64 {
    let request = ModelRequest {
        system,
        messages,
        tools,
        tool_choice: None,
        output_schema: None,
        call_index: 0,
    };
    let tools: u64 = tools
        .iter()
        .map(|t| estimate_tokens(&t.description) + estimate_tokens(&t.parameters.to_string()))
        .sum();
    estimate_prompt(&request) + tools
}

/// Where to cut, if the prompt is over the threshold: the smallest cut that brings it
/// to half the threshold, else the largest possible. `None` when under the threshold or
/// when nothing can be cut.
pub fn plan(
    system: &str,
    history: &[Message],
    tools: &[ToolSpec],
    compaction: Option<&Compaction>,
    window: u64,
    threshold: f64,
) -> Option<Plan> {
    let before = estimate(system, &view(history, compaction), tools);
    let limit = (window as f64 * threshold) as u64;
    if before <= limit {
        return None;
    }
    let target = limit / 2;
    let from = compaction.map_or(0, |c| usize::try_from(c.through).unwrap_or(usize::MAX));
    // A cut may fall before a user or assistant message, never between a tool call and
    // its results; the last message always stays.
    let candidates: Vec<usize> = (from + 1..history.len())
        .filter(|&i| !matches!(history[i], Message::Tool { .. }))
        .collect();
    let size_after = |cut: usize| {
        let trial = Compaction {
            through: cut as u64,
            summary: None,
        };
        estimate(system, &view(history, Some(&trial)), tools) + summary_allowance(window)
    };
    let cut = candidates
        .iter()
        .copied()
        .find(|&cut| size_after(cut) <= target)
        .or_else(|| candidates.last().copied())?;
    if size_after(cut) >= before {
        // Everything large belongs to the exchange in progress, which must stay whole.
        return None;
    }
    Some(Plan {
        from,
        cut,
        before_tokens: before,
    })
}

pub struct Plan {
    /// Where the previous compaction ended.
    pub from: usize,
    /// Messages before this index leave the prompt.
    pub cut: usize,
    pub before_tokens: u64,
}

/// The request for the summary: the previous summary and the messages being cut,
/// rendered as text.
pub fn summary_input(history: &[Message], plan: &Plan, previous: Option<&str>) -> String {
    const PER_MESSAGE: usize = 2000;
    let mut text = String::from("Summarise this conversation so far:\n\n");
    if let Some(previous) = previous {
        text.push_str(&format!("[Earlier summary]\n{previous}\n\n"));
    }
    for message in &history[plan.from..plan.cut] {
        let line = match message {
            Message::User { content } => format!("user: {content}"),
            Message::Assistant {
                content,
                tool_calls,
            } => {
                let calls: Vec<String> = tool_calls
                    .iter()
                    .map(|c| format!("{}({})", c.name, c.arguments_text()))
                    .collect();
                if calls.is_empty() {
                    format!("assistant: {content}")
                } else {
                    format!("assistant: {content} [called {}]", calls.join(", "))
                }
            }
            Message::Tool {
                name,
                content,
                is_error,
                ..
            } => format!(
                "{} {name}: {content}",
                if *is_error {
                    "tool error from"
                } else {
                    "tool result from"
                }
            ),
        };
        text.extend(line.chars().take(PER_MESSAGE));
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::transcript::ToolCall;

    fn user(t: &str) -> Message {
        Message::User { content: t.into() }
    }
    fn assistant_calling(t: &str) -> Message {
        Message::Assistant {
            content: t.into(),
            tool_calls: vec![ToolCall::from_json_text(
                "c".into(),
                "read_file".into(),
                "{}",
            )],
        }
    }
    fn tool(t: &str) -> Message {
        Message::Tool {
            tool_call_id: "c".into(),
            name: "read_file".into(),
            content: t.into(),
            is_error: false,
        }
    }

    fn long_history() -> Vec<Message> {
        let big = "x".repeat(4000);
        vec![
            user("first task"),
            assistant_calling("looking"),
            tool(&big),
            Message::Assistant {
                content: "done".into(),
                tool_calls: vec![],
            },
            user("second task"),
            assistant_calling("reading"),
            tool(&big),
        ]
    }

    #[test]
    fn nothing_happens_under_the_threshold() {
        assert!(plan("", &long_history(), &[], None, 100_000, 0.8).is_none());
    }

    #[test]
    fn cuts_fall_on_message_boundaries_and_keep_the_latest_user_message() {
        let history = long_history();
        let plan = plan("", &history, &[], None, 2000, 0.8).unwrap();
        assert!(
            !matches!(history[plan.cut], Message::Tool { .. }),
            "a tool result is never orphaned"
        );
        let compaction = Compaction {
            through: plan.cut as u64,
            summary: Some("S".into()),
        };
        let view = view(&history, Some(&compaction));
        assert!(matches!(&view[0], Message::User { content } if content.contains("S")));
        assert!(
            view.iter()
                .any(|m| matches!(m, Message::User { content } if content == "second task"))
        );
        assert!(matches!(view.last(), Some(Message::Tool { .. })));
    }

    #[test]
    fn small_windows_compact_too() {
        // Six messages of 100 tokens each: over the threshold of a 600-token window.
        let turn = "y".repeat(400);
        let history: Vec<Message> = (0..6)
            .map(|i| {
                if i % 2 == 0 {
                    user(&turn)
                } else {
                    Message::Assistant {
                        content: turn.clone(),
                        tool_calls: vec![],
                    }
                }
            })
            .collect();
        for window in [300, 500, 700] {
            let plan = plan("", &history, &[], None, window, 0.8)
                .unwrap_or_else(|| panic!("a {window}-token window compacts"));
            let trial = Compaction {
                through: plan.cut as u64,
                summary: None,
            };
            let after = estimate("", &view(&history, Some(&trial)), &[]);
            assert!(
                after + summary_allowance(window) < plan.before_tokens,
                "window {window}: the cut makes room ({after} of {})",
                plan.before_tokens
            );
        }
        assert_eq!(summary_allowance(100_000), 500, "large windows as before");
    }

    #[test]
    fn without_compaction_the_view_is_the_history() {
        let history = long_history();
        assert!(matches!(view(&history, None), Cow::Borrowed(_)));
    }

    #[test]
    fn the_summary_input_renders_the_cut_messages() {
        let history = long_history();
        let plan = Plan {
            from: 0,
            cut: 4,
            before_tokens: 0,
        };
        let text = summary_input(&history, &plan, Some("older"));
        assert!(text.contains("[Earlier summary]\nolder"));
        assert!(text.contains("user: first task"));
        assert!(text.contains("assistant: looking [called read_file({})]"));
        assert!(!text.contains("second task"));
    }
}
