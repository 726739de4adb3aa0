//! Text helpers that renderers, tools, providers and error messages all use, so a
//! field is shortened and neutralised the same way wherever it is shown.
//!
//! Two jobs, kept apart:
//! - shortening: [`preview`] (any text on one bounded line) and [`summarize_args`]
//!   (a tool call's arguments, as events and views name the call). Their output is
//!   short, but not safe to print: it still holds whatever the text held;
//! - neutralising ([`sanitize`], [`one_line`], [`Neutral`]): what makes outside text
//!   safe for a terminal, in [`sanitize`](mod@sanitize)'s module.

mod sanitize;

pub use sanitize::{Neutral, one_line, sanitize};

use serde_json::Value;

/// The cap for a field in a row or a list (`session list` titles, todo items, names).
pub const FIELD_CAP: usize = 200;

/// The cap for a one-line error: long enough for a provider's message, short enough
/// that a 100 KB error body does not fill the screen.
pub const ERROR_CAP: usize = 1000;

/// The first `max` characters of a text on one line, with an ellipsis if cut.
pub fn preview(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A short, one-line rendering of tool arguments for events: `path: 'src/main.rs'`.
pub fn summarize_args(arguments: &Value, max_chars: usize) -> String {
    // What identifies the call (the path, the pattern) comes first, bulky content last.
    const FIRST: &[&str] = &["path", "pattern", "name", "command"];
    let rank = |key: &str| FIRST.iter().position(|k| *k == key).unwrap_or(FIRST.len());
    let text = match arguments {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by_key(|(k, _)| rank(k));
            entries
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}: '{s}'"),
                    other => format!("{k}: {other}"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
        other => other.to_string(),
    };
    preview(&text, max_chars)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn previews_are_one_line_and_bounded() {
        assert_eq!(preview("hello\n  world", 100), "hello world");
        assert_eq!(preview("abcdef", 4), "abc…");
    }

    #[test]
    fn argument_summaries_are_short_and_quoted() {
        assert_eq!(
            summarize_args(&json!({"path": "src/main.rs"}), 100),
            "path: 'src/main.rs'"
        );
        assert_eq!(
            summarize_args(&json!({"content": "x", "path": "a.md"}), 100),
            "path: 'a.md', content: 'x'"
        );
        let long = summarize_args(&json!({"content": "x".repeat(500)}), 100);
        assert_eq!(long.chars().count(), 100);
    }
}
