//! What a server says, made fit for the model and the log: a tool result becomes a
//! bounded [`ToolOutput`], and a server's stderr becomes a bounded number of log lines.
//! Pure functions over JSON and strings; [`super::client`] feeds them.

use serde_json::Value;

use crate::tools::ToolOutput;
use crate::tools::command::OUTPUT_CAP;

/// A `tools/call` result (as the JSON the server sent) as the model sees it: the text
/// blocks joined by newlines, or the structured content as pretty JSON when there is
/// no text; images, audio and resources as one-line notes (their bytes would only
/// burn context); capped like a command's output.
pub fn tool_output(result: &Value) -> ToolOutput {
    let blocks = result
        .get("content")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let has_text = blocks.iter().any(|b| kind(b) == "text");
    let mut parts: Vec<String> = blocks.iter().map(describe).collect();
    if !has_text && let Some(structured) = result.get("structuredContent") {
        let pretty = serde_json::to_string_pretty(structured).unwrap_or_default();
        parts.insert(0, pretty);
    }
    let is_error = result.get("isError").and_then(Value::as_bool) == Some(true);
    let mut content = cap(parts.join("\n"));
    if content.is_empty() && is_error {
        content = "the tool failed without saying why".to_owned();
    }
    ToolOutput { content, is_error }
}

fn kind(block: &Value) -> &str {
    block.get("type").and_then(Value::as_str).unwrap_or("")
}

fn describe(block: &Value) -> String {
    let str_of = |value: &Value, key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    match kind(block) {
        "text" => str_of(block, "text"),
        kind @ ("image" | "audio") => format!(
            "[{kind} {}, {} bytes]",
            str_of(block, "mimeType"),
            base64_len(&str_of(block, "data"))
        ),
        "resource" => {
            let resource = block.get("resource").unwrap_or(&Value::Null);
            let bytes = match resource.get("text").and_then(Value::as_str) {
                Some(text) => text.len(),
                None => base64_len(&str_of(resource, "blob")),
            };
            note(
                &str_of(resource, "uri"),
                &str_of(resource, "mimeType"),
                bytes,
            )
        }
        "resource_link" => {
            let size = block.get("size").and_then(Value::as_u64);
            let mime = str_of(block, "mimeType");
            match size {
                Some(size) => note(
                    &str_of(block, "uri"),
                    &mime,
                    usize::try_from(size).unwrap_or(usize::MAX),
                ),
                None if mime.is_empty() => format!("[resource {}]", str_of(block, "uri")),
                None => format!("[resource {} ({mime})]", str_of(block, "uri")),
            }
        }
        other => format!(
            "[{} content]",
            if other.is_empty() { "unknown" } else { other }
        ),
    }
}

fn note(uri: &str, mime: &str, bytes: usize) -> String {
    if mime.is_empty() {
        format!("[resource {uri} ({bytes} bytes)]")
    } else {
        format!("[resource {uri} ({mime}, {bytes} bytes)]")
    }
}

/// The decoded size of base64 text, without decoding it.
fn base64_len(data: &str) -> usize {
    let data = data.trim_end_matches('=');
    data.len() * 3 / 4
}

/// Keeps the first [`OUTPUT_CAP`] bytes (on a character boundary), saying so.
fn cap(text: String) -> String {
    if text.len() <= OUTPUT_CAP {
        return text;
    }
    let mut at = OUTPUT_CAP;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    format!(
        "{}\n[output cut: {} bytes in all, the first {at} shown]",
        &text[..at],
        text.len()
    )
}

/// Characters kept of one stderr line.
pub const LINE_CAP: usize = 500;
/// Lines logged of one server's stderr, over its whole life.
pub const LINES_CAP: usize = 1000;

/// Decides which of a server's stderr lines reach the log, and how: each cut to
/// [`LINE_CAP`] characters, at most [`LINES_CAP`] of them, then one notice that the
/// rest is dropped; so a chatty server cannot flood the worker's log.
#[derive(Debug, Default)]
pub struct StderrLog {
    logged: usize,
}

impl StderrLog {
    /// The text to log for `line`, if any.
    pub fn admit(&mut self, line: &str) -> Option<String> {
        self.logged += 1;
        if self.logged > LINES_CAP + 1 {
            return None;
        }
        if self.logged == LINES_CAP + 1 {
            return Some(format!(
                "(more than {LINES_CAP} lines on stderr: the rest is not logged)"
            ));
        }
        let line = line.trim_end();
        Some(match line.char_indices().nth(LINE_CAP) {
            Some((at, _)) => format!("{}…", &line[..at]),
            None => line.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_blocks_are_joined_by_newlines() {
        let out = tool_output(&json!({"content": [
            {"type": "text", "text": "one"}, {"type": "text", "text": "two"}
        ]}));
        assert_eq!(out, ToolOutput::ok("one\ntwo"));
    }

    #[test]
    fn structured_content_is_shown_when_there_is_no_text() {
        let out = tool_output(&json!({"content": [], "structuredContent": {"a": 1}}));
        assert_eq!(out, ToolOutput::ok("{\n  \"a\": 1\n}"));
        let out = tool_output(&json!({
            "content": [{"type": "text", "text": "{\"a\":1}"}],
            "structuredContent": {"a": 1}
        }));
        assert_eq!(out, ToolOutput::ok("{\"a\":1}"), "the text already says it");
    }

    #[test]
    fn images_audio_and_resources_are_summarised() {
        let out = tool_output(&json!({"content": [
            {"type": "image", "mimeType": "image/png", "data": "AAAA"},
            {"type": "audio", "mimeType": "audio/wav", "data": "AAA="},
            {"type": "resource", "resource": {"uri": "file:///x", "mimeType": "text/plain", "text": "hello"}},
            {"type": "resource", "resource": {"uri": "file:///y", "blob": "AAAAAA=="}},
            {"type": "resource_link", "uri": "file:///z", "name": "z", "mimeType": "text/csv", "size": 300},
            {"type": "resource_link", "uri": "file:///w", "name": "w"},
            {"type": "hologram"}
        ]}));
        assert_eq!(
            out.content,
            "[image image/png, 3 bytes]\n[audio audio/wav, 2 bytes]\n\
             [resource file:///x (text/plain, 5 bytes)]\n[resource file:///y (4 bytes)]\n\
             [resource file:///z (text/csv, 300 bytes)]\n[resource file:///w]\n[hologram content]"
        );
        assert!(!out.is_error);
    }

    #[test]
    fn is_error_makes_an_error_output() {
        let out = tool_output(
            &json!({"content": [{"type": "text", "text": "no such city"}], "isError": true}),
        );
        assert_eq!(out, ToolOutput::error("no such city"));
        let out = tool_output(&json!({"isError": true}));
        assert!(out.is_error && !out.content.is_empty());
    }

    #[test]
    fn big_output_is_capped_like_a_commands() {
        let text = "é".repeat(OUTPUT_CAP);
        let out = tool_output(&json!({"content": [{"type": "text", "text": text}]}));
        assert!(out.content.len() < OUTPUT_CAP + 100);
        assert!(out.content.ends_with(&format!(
            "[output cut: {} bytes in all, the first {OUTPUT_CAP} shown]",
            OUTPUT_CAP * 2
        )));
    }

    #[test]
    fn stderr_lines_are_cut_and_counted() {
        let mut log = StderrLog::default();
        let long = "x".repeat(LINE_CAP + 10);
        assert_eq!(
            log.admit(&long).map(|l| l.chars().count()),
            Some(LINE_CAP + 1)
        );
        for _ in 1..LINES_CAP {
            assert!(log.admit("line\n").is_some_and(|l| l == "line"));
        }
        assert!(
            log.admit("one too many")
                .is_some_and(|l| l.contains("not logged"))
        );
        assert_eq!(log.admit("dropped"), None);
    }
}
