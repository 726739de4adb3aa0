//! Plain rendering: one line per event, the model's text streamed inline, flushed per
//! event. For CI logs, pipes and `--plain`; no cursor movement, colours only if asked.

use std::io::{self, Write};

use super::{Renderer, footer};
use crate::domain::approval::Verdict;
use crate::domain::event::{CheckCompleted, Event, EventPayload, ToolCompleted, ToolStarted};
use crate::domain::execution::ExecStatus;
use crate::text::{ERROR_CAP, FIELD_CAP, one_line, preview, sanitize, summarize_args};
use crate::time::human_duration;

/// Renders events as plain lines to any writer, flushing after each event so the output
/// is live in a terminal and in CI logs alike.
pub struct PlainRenderer<W: Write> {
    out: W,
    color: bool,
    /// The cursor is in the middle of streamed text.
    mid_text: bool,
    /// Text chunks were shown since the last step started.
    streamed: bool,
}

impl<W: Write> PlainRenderer<W> {
    pub fn new(out: W) -> Self {
        PlainRenderer {
            out,
            color: false,
            mid_text: false,
            streamed: false,
        }
    }

    /// Colours the marks and notes (only ever on a terminal, or with `--color always`).
    pub fn with_color(mut self, color: bool) -> Self {
        self.color = color;
        self
    }

    fn render_event(&mut self, event: &Event) -> io::Result<()> {
        match &event.payload {
            EventPayload::StreamChunk(chunk) => {
                self.out.write_all(sanitize(&chunk.content).as_bytes())?;
                self.mid_text = !chunk.content.ends_with('\n');
                self.streamed = true;
            }
            EventPayload::MessageCompleted(done) => {
                // With the minimal preset no chunks were recorded: show the answer whole.
                if !self.streamed && !done.response.is_empty() {
                    self.line(Style::Plain, &done.response)?;
                }
                if done.empty {
                    self.line(Style::Dim, &format!("· {}", super::EMPTY_ANSWER))?;
                }
            }
            payload => {
                if let Some((style, text)) = describe(event, payload) {
                    self.line(style, &text)?;
                }
                if matches!(payload, EventPayload::StepStarted(_)) {
                    self.streamed = false;
                }
            }
        }
        self.out.flush()
    }

    /// Ends any streamed text, then writes one line.
    fn line(&mut self, style: Style, text: &str) -> io::Result<()> {
        if self.mid_text {
            self.out.write_all(b"\n")?;
            self.mid_text = false;
        }
        let text = sanitize(text);
        match style.code().filter(|_| self.color) {
            Some(code) => writeln!(self.out, "\x1b[{code}m{text}\x1b[0m"),
            None => writeln!(self.out, "{text}"),
        }
    }

    /// Ends streamed text still open, before the caller writes elsewhere or exits.
    fn end(&mut self) -> io::Result<()> {
        if self.mid_text {
            self.out.write_all(b"\n")?;
            self.mid_text = false;
        }
        self.out.flush()
    }
}

impl<W: Write> Renderer for PlainRenderer<W> {
    fn render(&mut self, event: &Event) -> io::Result<()> {
        self.render_event(event)
    }

    fn finish(&mut self) -> io::Result<()> {
        self.end()
    }
}

/// How a line is emphasised when colours are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Plain,
    Dim,
    Good,
    Bad,
    Strong,
}

impl Style {
    fn code(self) -> Option<&'static str> {
        match self {
            Style::Plain => None,
            Style::Dim => Some("2"),
            Style::Good => Some("32"),
            Style::Bad => Some("31"),
            Style::Strong => Some("1"),
        }
    }
}

/// How the line of an event is emphasised: outcomes stand out, bookkeeping is dim.
fn style(payload: &EventPayload) -> Style {
    match payload {
        EventPayload::ToolCompleted(p) if p.success => Style::Good,
        EventPayload::ToolCompleted(_) => Style::Bad,
        EventPayload::CheckCompleted(p) if p.success => Style::Good,
        EventPayload::CheckCompleted(_) => Style::Bad,
        EventPayload::CheckStarted(_) => Style::Plain,
        EventPayload::ApprovalRequested(_) => Style::Strong,
        EventPayload::ApprovalDecided(p) if p.decision == Verdict::Approved => Style::Good,
        EventPayload::ApprovalDecided(_) => Style::Bad,
        EventPayload::ExecutionFinished(p) if p.status == ExecStatus::Completed => Style::Strong,
        EventPayload::ExecutionFinished(_) => Style::Bad,
        EventPayload::HookCompleted(_) => Style::Good,
        EventPayload::HookFailed(_) => Style::Bad,
        EventPayload::ToolStarted(_) | EventPayload::ExecutionStarted(_) => Style::Plain,
        _ => Style::Dim,
    }
}

/// The line for an event, or `None` for events shown another way (or not at all).
/// One arm per event type, so it is as long as the list of events is.
fn describe(event: &Event, payload: &EventPayload) -> Option<(Style, String)> {
    let text = match payload {
        EventPayload::SessionCreated(p) => format!(
            "session {} created: agent {}{}",
            &event.session_id.to_string()[..13],
            one_line(&p.agent, FIELD_CAP),
            p.title
                .as_deref()
                .map(|t| format!(", \"{}\"", one_line(t, FIELD_CAP)))
                .unwrap_or_default()
        ),
        EventPayload::SessionStatus(p) => format!(
            "session {} (was {})",
            p.status.as_str(),
            p.previous_status.as_str()
        ),
        EventPayload::MessageQueued(p) => {
            format!(
                "queued message #{}: {}",
                p.seq,
                one_line(&p.content_preview, FIELD_CAP)
            )
        }
        EventPayload::CancelRequested(_) => "cancel requested".to_owned(),
        EventPayload::ExecutionStarted(p) => format!(
            "{} execution {} (attempt {}, worker {} on {})",
            if p.resumed { "resumed" } else { "started" },
            event.execution_id.unwrap_or_default(),
            p.attempt,
            p.worker.pid,
            one_line(&p.worker.host, FIELD_CAP)
        ),
        EventPayload::StepStarted(p) => format!("· step {}", p.step_number),
        EventPayload::ToolStarted(p) => tool_started(p),
        EventPayload::ToolCompleted(p) => tool_completed(p),
        EventPayload::Continuation(p) => format!(
            "· continue after step {}: {}",
            p.step_number,
            if p.should_continue {
                "yes".to_owned()
            } else {
                format!("no ({})", p.stop_reason.map_or("", |r| r.as_str()))
            }
        ),
        EventPayload::ProviderRetry(p) => format!(
            "· model call failed ({}), retry {} in {}",
            one_line(&p.error, ERROR_CAP),
            p.attempt,
            human_duration(p.delay_ms)
        ),
        EventPayload::ContextCompacted(p) => format!(
            "· context compacted: {} {} ({} → {} tokens)",
            crate::plural::count(p.dropped_messages, "message", "messages"),
            if p.summarized {
                "summarised"
            } else {
                "dropped"
            },
            p.before_tokens,
            p.after_tokens
        ),
        EventPayload::CheckStarted(p) => format!(
            "→ check {} (round {})",
            one_line(&p.name, FIELD_CAP),
            p.round
        ),
        EventPayload::CheckCompleted(p) => check_completed(p),
        EventPayload::ApprovalRequested(p) => super::approval::requested(event.session_id, p),
        EventPayload::ApprovalDecided(p) => super::approval::decided(p),
        EventPayload::ExecutionFinished(p) => {
            let mut text = format!("■ {}", footer(p));
            if let Some(error) = &p.error {
                text.push_str(&format!("\n  error: {}", one_line(error, ERROR_CAP)));
            }
            text
        }
        EventPayload::HookCompleted(p) | EventPayload::HookFailed(p) => super::hook_line(p),
        EventPayload::AgentStatus(_)
        | EventPayload::StepCompleted(_)
        | EventPayload::StreamChunk(_)
        | EventPayload::MessageCompleted(_) => return None,
    };
    Some((style(payload), text))
}

/// `→ read_file path: 'notes.md'`: the arguments as the event summarised them, or
/// summarised here from the arguments recorded whole.
fn tool_started(p: &ToolStarted) -> String {
    let args = p
        .args_summary
        .clone()
        .or_else(|| p.args.as_ref().map(|a| summarize_args(a, 100)))
        .unwrap_or_default();
    format!(
        "→ {} {}",
        super::tool_label(&p.tool_name, p.server.as_deref()),
        one_line(&args, FIELD_CAP)
    )
}

/// `✓ read_file (3ms)`, or `✗ read_file (3ms): ` and the start of the error.
fn tool_completed(p: &ToolCompleted) -> String {
    let label = super::tool_label(&p.tool_name, p.server.as_deref());
    let took = human_duration(p.duration_ms);
    match &p.error {
        None => format!("✓ {label} ({took})"),
        Some(error) => format!(
            "✗ {label} ({took}): {}",
            one_line(&preview(error, 200), FIELD_CAP)
        ),
    }
}

/// `✓ check tests (1.2s)`, or `✗ check tests (1.2s): exit 1 — ` and the end of its output.
fn check_completed(p: &CheckCompleted) -> String {
    let name = one_line(&p.name, FIELD_CAP);
    let took = human_duration(p.duration_ms);
    if p.success {
        return format!("✓ check {name} ({took})");
    }
    format!(
        "✗ check {name} ({took}): {} — {}",
        super::check_exit(p.exit_code),
        one_line(&p.output_summary, FIELD_CAP)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{MessageCompleted, StepStarted, StreamChunk};
    use crate::time::Timestamp;
    use uuid::Uuid;

    fn event(payload: EventPayload) -> Event {
        Event {
            v: 1,
            seq: 1,
            session_id: Uuid::nil(),
            execution_id: Some(Uuid::nil()),
            timestamp: Timestamp(0),
            payload,
        }
    }

    fn render(payloads: Vec<EventPayload>) -> String {
        let mut out = Vec::new();
        let mut r = PlainRenderer::new(&mut out);
        for p in payloads {
            r.render(&event(p)).unwrap();
        }
        r.finish().unwrap();
        String::from_utf8(out).unwrap()
    }

    fn chunk(text: &str) -> EventPayload {
        EventPayload::StreamChunk(StreamChunk {
            content: text.into(),
            chunk_index: 0,
        })
    }

    #[test]
    fn streamed_text_is_inline_and_ended_before_the_next_line() {
        let text = render(vec![
            chunk("Hello "),
            chunk("world"),
            EventPayload::ToolCompleted(ToolCompleted {
                tool_name: "read_file".into(),
                tool_call_id: "c".into(),
                server: None,
                success: true,
                error: None,
                duration_ms: 3,
            }),
        ]);
        assert_eq!(text, "Hello world\n✓ read_file (3ms)\n");
    }

    #[test]
    fn the_answer_is_shown_whole_when_nothing_was_streamed() {
        let done = |r: &str| {
            EventPayload::MessageCompleted(MessageCompleted {
                message_id: Uuid::nil(),
                response: r.into(),
                empty: false,
                structured: None,
            })
        };
        let step = EventPayload::StepStarted(StepStarted {
            step_number: 1,
            message_count: 1,
            available_tools: vec![],
        });
        assert_eq!(
            render(vec![step.clone(), done("The answer.")]),
            "· step 1\nThe answer.\n"
        );
        assert_eq!(
            render(vec![step, chunk("The answer."), done("The answer.")]),
            "· step 1\nThe answer.\n"
        );
    }

    #[test]
    fn a_check_is_a_line_when_it_starts_and_one_with_its_outcome() {
        use crate::domain::event::{CheckCompleted, CheckStarted};
        let completed = |success, exit_code| {
            EventPayload::CheckCompleted(CheckCompleted {
                name: "tests".into(),
                round: 2,
                success,
                exit_code,
                duration_ms: 1200,
                output_summary: "test result: FAILED\n".into(),
            })
        };
        let text = render(vec![
            EventPayload::CheckStarted(CheckStarted {
                name: "tests".into(),
                round: 2,
            }),
            completed(false, Some(101)),
            completed(true, Some(0)),
        ]);
        assert_eq!(
            text,
            "→ check tests (round 2)\n✗ check tests (1.2s): exit 101 — test result: FAILED␊\n✓ check tests (1.2s)\n"
        );
    }

    #[test]
    fn control_characters_never_reach_the_output() {
        let text = render(vec![chunk("\x1b]0;title\x07\x1b[31mred")]);
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    }

    #[test]
    fn notes_resumed_and_failed_executions_and_colours_on_request() {
        use crate::domain::Usage;
        use crate::domain::event::{
            CancelRequested, ContextCompacted, Continuation, ExecutionFinished, ExecutionStarted,
            FinishedUsage, ProviderRetry, SessionStatusChanged,
        };
        use crate::domain::execution::{StopReason, WorkerInfo};
        use crate::domain::session::SessionStatus;

        let finished = |status, reason, exit_code, error: Option<&str>| {
            EventPayload::ExecutionFinished(ExecutionFinished {
                status,
                stop_reason: Some(reason),
                exit_code,
                steps: 2,
                usage: FinishedUsage {
                    execution: Usage::new(100, 20),
                    session: Usage::new(300, 60),
                },
                duration_ms: 1500,
                error: error.map(str::to_owned),
                message_id: None,
                cost_usd: None,
                checks: Vec::new(),
            })
        };
        let events = vec![
            EventPayload::SessionStatus(SessionStatusChanged {
                status: SessionStatus::Active,
                previous_status: SessionStatus::Paused,
            }),
            EventPayload::ExecutionStarted(ExecutionStarted {
                message_id: Uuid::nil(),
                attempt: 2,
                worker: WorkerInfo {
                    pid: 42,
                    host: "host".into(),
                },
                resumed: true,
            }),
            EventPayload::ProviderRetry(ProviderRetry {
                attempt: 2,
                delay_ms: 1500,
                http_status: Some(429),
                error: "slow down".into(),
            }),
            EventPayload::ContextCompacted(ContextCompacted {
                before_tokens: 9000,
                after_tokens: 2000,
                dropped_messages: 12,
                summarized: false,
            }),
            EventPayload::ToolStarted(ToolStarted {
                tool_name: "write_file".into(),
                tool_call_id: "c1".into(),
                server: None,
                args_summary: None,
                args: Some(serde_json::json!({"path": "a.md"})),
            }),
            EventPayload::Continuation(Continuation {
                step_number: 3,
                should_continue: false,
                stop_reason: Some(StopReason::TokenLimit),
                evaluations: vec![],
            }),
            chunk("Half"),
            EventPayload::CancelRequested(CancelRequested {
                message_id: Uuid::nil(),
            }),
            finished(
                ExecStatus::Failed,
                StopReason::Error,
                1,
                Some("it broke\x1b[2J"),
            ),
            finished(ExecStatus::Completed, StopReason::Completed, 0, None),
        ];
        let text = render(events.clone());
        insta::assert_snapshot!(text);

        let mut out = Vec::new();
        let mut r = PlainRenderer::new(&mut out).with_color(true);
        for p in events {
            r.render(&event(p)).unwrap();
        }
        r.finish().unwrap();
        let coloured = String::from_utf8(out).unwrap();
        assert!(
            coloured.contains("\x1b[2m· model call failed"),
            "{coloured:?}"
        );
        assert!(coloured.contains("\x1b[31m■ failed"), "{coloured:?}");
        assert!(coloured.contains("\x1b[1m■ completed"), "{coloured:?}");
        // Colours never come from the text itself.
        assert!(!coloured.contains("\x1b[2J"), "{coloured:?}");
    }
}
