//! Turning events into what people read. `watch`, `run` and `send --wait` pick a
//! [`Renderer`]: [`TerminalRenderer`] on a terminal (a spinner with the status on
//! stderr, the model's text streamed word by word and wrapped on stdout), or
//! [`PlainRenderer`] (one line per event, for CI logs and pipes).
//!
//! Everything shown passes through [`sanitize()`](crate::text::sanitize) (multi-line
//! text) or [`one_line()`](crate::text::one_line) (a field that must keep its row);
//! only `--json` prints lines untouched.

pub mod approval;
pub mod plain;
pub mod terminal;
mod wrap;

use std::io;

use crate::domain::event::{Event, ExecutionFinished};
use crate::domain::execution::ExecStatus;
use crate::text::{FIELD_CAP, one_line};
use crate::time::human_duration;
pub use plain::PlainRenderer;
pub use terminal::TerminalRenderer;

/// How a tool is named in a view: `server › tool` for an MCP tool (whose model-facing
/// name is `mcp__<server>__<tool>`), its name otherwise; neutralised, on one line.
pub fn tool_label(name: &str, server: Option<&str>) -> String {
    let own = server.and_then(|server| name.strip_prefix(&format!("mcp__{server}__")));
    match (server, own) {
        (Some(server), Some(tool)) => format!(
            "{} › {}",
            one_line(server, FIELD_CAP),
            one_line(tool, FIELD_CAP)
        ),
        _ => one_line(name, FIELD_CAP).into_owned(),
    }
}

/// What every view says of an answer with no text, instead of showing nothing.
pub const EMPTY_ANSWER: &str = "the model's answer was empty (no text and no tool calls)";

/// Something that shows events as they are read from the log.
pub trait Renderer {
    fn render(&mut self, event: &Event) -> io::Result<()>;
    /// Everything in the log so far has been rendered; from now on events are live.
    fn live(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Ends any open line or spinner, leaving the terminal as it was.
    fn finish(&mut self) -> io::Result<()>;
}

/// How a failed check ended, in a few words: `exit 1`, or `no exit code` when it was
/// killed (timeout, signal, stop) or could not start.
pub fn check_exit(code: Option<i32>) -> String {
    match code {
        Some(code) => format!("exit {code}"),
        None => "no exit code".to_owned(),
    }
}

/// A completion hook's line, shared by both renderings: `✓ hook 0: command notify
/// (12ms)`, or `✗ hook 1: url https://hooks.example.com, 5 attempts (2s): HTTP 503`.
pub fn hook_line(p: &crate::domain::event::HookReport) -> String {
    let mark = if p.error.is_none() { '✓' } else { '✗' };
    let attempts = if p.attempts > 1 {
        format!(", {} attempts", p.attempts)
    } else {
        String::new()
    };
    let mut text = format!(
        "{mark} hook {}: {} {}{attempts} ({})",
        p.hook,
        p.kind,
        one_line(&p.target, FIELD_CAP),
        crate::time::human_duration(p.duration_ms)
    );
    if let Some(error) = &p.error {
        text.push_str(&format!(": {}", one_line(error, FIELD_CAP)));
    }
    text
}

/// The summary line of a finished execution, shared by both renderings:
/// `completed · 2 steps · 375 tokens · $0.0012 · 1.5s · exit 0`.
pub fn footer(p: &ExecutionFinished) -> String {
    let mut text = p.status.as_str().to_owned();
    if let Some(reason) = p.stop_reason
        && !(p.status == ExecStatus::Completed && reason.as_str() == "completed")
    {
        text.push_str(&format!(" ({})", reason.as_str()));
    }
    text.push_str(&format!(
        " · {} · {}{}",
        crate::plural::count(u64::from(p.steps), "step", "steps"),
        // Estimated by agentq: the server reported no usage.
        if p.usage.execution.estimated { "~" } else { "" },
        crate::plural::count(p.usage.execution.total, "token", "tokens")
    ));
    if let Some(cost) = p.cost_usd {
        text.push_str(&format!(" · ${:.4}", cost.execution));
    }
    text.push_str(&format!(
        " · {} · exit {}",
        human_duration(p.duration_ms),
        p.exit_code
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_mcp_tool_is_shown_as_server_and_tool() {
        assert_eq!(tool_label("mcp__time__now", Some("time")), "time › now");
        assert_eq!(tool_label("read_file", None), "read_file");
        // A name shortened with a hash keeps its whole form.
        assert_eq!(tool_label("mcp__tim_1a2b", Some("time")), "mcp__tim_1a2b");
    }
}
