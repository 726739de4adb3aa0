//! Rendering for a person at a terminal: a header, and per execution a spinner on
//! stderr with what is happening and for how long ("thinking · step 2", "running
//! read_file path: 'src/main.rs'"), tool calls as lines with a check or a cross, the
//! model's text streamed word by word and wrapped to the terminal's width on stdout,
//! retries and compaction as dim notes, and a footer with the outcome.
//!
//! The spinner is only shown once the log is followed live: a replay of history
//! (`--from-start`) prints at full speed. It is hidden while text streams, so the
//! text and the spinner never share a line.

use std::collections::HashMap;
use std::io::{self, Write};
use std::time::Duration;

use console::Style;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::wrap::Wrap;
use super::{Renderer, footer};
use crate::domain::event::{
    CheckCompleted, Event, EventPayload, ExecutionFinished, ExecutionStarted, MessageCompleted,
    ToolCompleted, ToolStarted,
};
use crate::domain::execution::ExecStatus;
use crate::text::{ERROR_CAP, FIELD_CAP, one_line, preview, sanitize, summarize_args};
use crate::time::{Timestamp, human_duration};

const INDENT: &str = "  ";

pub struct TerminalRenderer<W: Write> {
    out: W,
    color: bool,
    /// Columns of the terminal; asked again for every line, so a resize is followed.
    width: Box<dyn Fn() -> usize + Send>,
    /// Whether a spinner may be shown (stderr is a terminal).
    spinners: bool,
    live: bool,
    spinner: Option<ProgressBar>,
    /// What the spinner says, kept while it is hidden for text.
    status: String,
    /// When the running execution started, for the elapsed time.
    running_since: Option<Timestamp>,
    text: Wrap,
    /// Text was streamed since the step started.
    streamed: bool,
    /// Argument summaries of started tool calls, for their result lines.
    tool_args: HashMap<String, String>,
}

impl<W: Write> TerminalRenderer<W> {
    pub fn new(out: W, color: bool, spinners: bool) -> Self {
        TerminalRenderer {
            out,
            color,
            width: Box::new(|| console::Term::stdout().size().1 as usize),
            spinners,
            live: false,
            spinner: None,
            status: String::new(),
            running_since: None,
            text: Wrap::default(),
            streamed: false,
            tool_args: HashMap::new(),
        }
    }

    /// A fixed width, for tests.
    pub fn with_width(mut self, width: usize) -> Self {
        self.width = Box::new(move || width);
        self
    }

    fn paint(&self, style: &Style, text: &str) -> String {
        // The decision (--color, NO_COLOR, the terminal) was made once; `console` must
        // not second-guess it.
        if self.color {
            style.clone().force_styling(true).apply_to(text).to_string()
        } else {
            text.to_owned()
        }
    }

    /// The header: which session this is.
    pub fn header(&mut self, session: &str, agent: &str, title: Option<&str>) -> io::Result<()> {
        let mut text = format!(
            "● session {} · agent {}",
            one_line(session, FIELD_CAP),
            one_line(agent, FIELD_CAP)
        );
        if let Some(title) = title {
            text.push_str(&format!(" · \"{}\"", one_line(title, FIELD_CAP)));
        }
        let line = self.paint(&Style::new().bold(), &text);
        writeln!(self.out, "{line}")?;
        self.out.flush()
    }

    /// Ends streamed text, then writes a line, with the spinner out of the way.
    /// The text must be safe already: callers sanitise what came from outside before
    /// they add colours.
    fn line(&mut self, text: &str) -> io::Result<()> {
        self.end_text()?;
        match &self.spinner {
            Some(spinner) => {
                let out = &mut self.out;
                spinner.suspend(|| writeln!(out, "{text}"))?;
            }
            None => writeln!(self.out, "{text}")?,
        }
        Ok(())
    }

    fn end_text(&mut self) -> io::Result<()> {
        if self.text.is_open() {
            let width = (self.width)();
            self.text.end(&mut self.out, width, INDENT)?;
        }
        Ok(())
    }

    fn set_status(&mut self, status: String) {
        self.status = status;
        self.show_spinner();
    }

    fn show_spinner(&mut self) {
        if !(self.live && self.spinners) || self.running_since.is_none() {
            return;
        }
        match &self.spinner {
            Some(spinner) => spinner.set_message(self.status.clone()),
            None => {
                let since = self.running_since.unwrap_or(Timestamp(0));
                let now = Timestamp::from_system(std::time::SystemTime::now());
                let elapsed = Duration::from_millis(now.millis_since(since));
                let template = if self.color {
                    "{spinner:.cyan} {msg} · {elapsed}"
                } else {
                    "{spinner} {msg} · {elapsed}"
                };
                let style = ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
                    .with_style(style)
                    .with_elapsed(elapsed)
                    .with_message(self.status.clone());
                spinner.enable_steady_tick(Duration::from_millis(100));
                self.spinner = Some(spinner);
            }
        }
    }

    fn hide_spinner(&mut self) {
        if let Some(spinner) = self.spinner.take() {
            spinner.finish_and_clear();
        }
    }

    /// Streams model text, wrapped at the terminal's width as it is now.
    fn push_text(&mut self, text: &str) -> io::Result<()> {
        let width = (self.width)();
        self.text
            .push(&mut self.out, &sanitize(text), width, INDENT)
    }

    /// `▶ execution <id> · attempt 1` after a blank line, and the spinner's clock starts.
    fn execution_started(&mut self, event: &Event, p: &ExecutionStarted) -> io::Result<()> {
        self.end_text()?;
        self.hide_spinner();
        let id = event
            .execution_id
            .map(|id| id.to_string())
            .unwrap_or_default();
        let what = if p.resumed { "resumed" } else { "execution" };
        let text = format!("▶ {what} {id} · attempt {}", p.attempt);
        self.line("")?;
        let line = self.paint(&Style::new().bold(), &text);
        self.line(&line)?;
        self.running_since = Some(event.timestamp);
        self.set_status("starting".to_owned());
        Ok(())
    }

    /// A running tool is the spinner's status; its arguments are kept for its result.
    fn tool_started(&mut self, p: &ToolStarted) -> io::Result<()> {
        self.end_text()?;
        let args = p
            .args_summary
            .clone()
            .or_else(|| p.args.as_ref().map(|a| summarize_args(a, 100)))
            .unwrap_or_default();
        self.tool_args.insert(p.tool_call_id.clone(), args.clone());
        self.set_status(format!(
            "running {} {}",
            super::tool_label(&p.tool_name, p.server.as_deref()),
            one_line(&args, FIELD_CAP)
        ));
        Ok(())
    }

    /// `  ✓ read_file path: 'a.md' · 3ms`, with the start of the error if it failed.
    fn tool_completed(&mut self, p: &ToolCompleted) -> io::Result<()> {
        let args = self.tool_args.remove(&p.tool_call_id).unwrap_or_default();
        let (mark, style) = if p.success {
            ("✓", Style::new().green())
        } else {
            ("✗", Style::new().red())
        };
        let mut text = format!(
            "{INDENT}{} {} {} · {}",
            self.paint(&style, mark),
            super::tool_label(&p.tool_name, p.server.as_deref()),
            one_line(&args, FIELD_CAP),
            human_duration(p.duration_ms)
        );
        if let Some(error) = &p.error {
            let error = preview(error, 160);
            text.push_str(&format!(
                " — {}",
                self.paint(&Style::new().red(), &one_line(&error, FIELD_CAP))
            ));
        }
        self.line(&text)?;
        self.set_status("thinking".to_owned());
        Ok(())
    }

    /// `  ✓ check tests · 1.2s`, or with how it failed and the end of its output.
    fn check_completed(&mut self, p: &CheckCompleted) -> io::Result<()> {
        let (mark, style) = if p.success {
            ("✓", Style::new().green())
        } else {
            ("✗", Style::new().red())
        };
        let mut text = format!(
            "{INDENT}{} check {} · {}",
            self.paint(&style, mark),
            one_line(&p.name, FIELD_CAP),
            human_duration(p.duration_ms)
        );
        if !p.success {
            let why = format!(
                "{}: {}",
                super::check_exit(p.exit_code),
                one_line(&p.output_summary, FIELD_CAP)
            );
            text.push_str(&format!(" — {}", self.paint(&Style::new().red(), &why)));
        }
        self.line(&text)?;
        self.set_status("checking".to_owned());
        Ok(())
    }

    fn message_completed(&mut self, p: &MessageCompleted) -> io::Result<()> {
        // Not streamed (the minimal preset): the answer is shown whole.
        if !self.streamed && !p.response.is_empty() {
            self.hide_spinner();
            self.push_text(&p.response)?;
        }
        self.end_text()?;
        if p.empty {
            self.note(super::EMPTY_ANSWER)?;
        }
        Ok(())
    }

    /// The footer, coloured by the outcome, and the error if there was one.
    fn execution_finished(&mut self, p: &ExecutionFinished) -> io::Result<()> {
        self.end_text()?;
        self.hide_spinner();
        self.running_since = None;
        let style = match p.status {
            ExecStatus::Completed => Style::new().green().bold(),
            ExecStatus::Stopped => Style::new().yellow().bold(),
            _ => Style::new().red().bold(),
        };
        let line = self.paint(&style, &format!("■ {}", footer(p)));
        self.line(&line)?;
        if let Some(error) = &p.error {
            let error = self.paint(
                &Style::new().red(),
                &format!("{INDENT}error: {}", one_line(error, ERROR_CAP)),
            );
            self.line(&error)?;
        }
        Ok(())
    }

    fn note(&mut self, text: &str) -> io::Result<()> {
        let text = self.paint(&Style::new().dim(), &format!("{INDENT}{}", sanitize(text)));
        self.line(&text)
    }
}

impl<W: Write> Renderer for TerminalRenderer<W> {
    fn render(&mut self, event: &Event) -> io::Result<()> {
        match &event.payload {
            EventPayload::StreamChunk(chunk) => {
                // Text and spinner never share the screen: the spinner waits.
                self.hide_spinner();
                self.push_text(&chunk.content)?;
                self.streamed = true;
            }
            EventPayload::MessageQueued(p) => {
                self.note(&format!(
                    "queued #{}: {}",
                    p.seq,
                    one_line(&p.content_preview, FIELD_CAP)
                ))?;
            }
            EventPayload::SessionStatus(p) => {
                self.note(&format!(
                    "session {} (was {})",
                    p.status.as_str(),
                    p.previous_status.as_str()
                ))?;
            }
            EventPayload::CancelRequested(_) => self.note("cancel requested")?,
            EventPayload::ExecutionStarted(p) => self.execution_started(event, p)?,
            EventPayload::StepStarted(p) => {
                self.end_text()?;
                self.streamed = false;
                self.set_status(format!("thinking · step {}", p.step_number));
            }
            EventPayload::ToolStarted(p) => self.tool_started(p)?,
            EventPayload::ToolCompleted(p) => self.tool_completed(p)?,
            EventPayload::CheckStarted(p) => {
                self.end_text()?;
                self.set_status(format!(
                    "checking {} · round {}",
                    one_line(&p.name, FIELD_CAP),
                    p.round
                ));
            }
            EventPayload::CheckCompleted(p) => self.check_completed(p)?,
            EventPayload::ApprovalRequested(p) => {
                self.end_text()?;
                let line = super::approval::requested(event.session_id, p);
                let line = self.paint(&Style::new().bold(), &format!("{INDENT}{line}"));
                self.line(&line)?;
                self.set_status(format!(
                    "waiting for approval · {}",
                    one_line(&p.tool_name, FIELD_CAP)
                ));
            }
            EventPayload::ApprovalDecided(p) => self.note(&super::approval::decided(p))?,
            EventPayload::ProviderRetry(p) => {
                self.note(&format!(
                    "↻ model call failed ({}); retry {} in {}",
                    one_line(&p.error, ERROR_CAP),
                    p.attempt,
                    human_duration(p.delay_ms)
                ))?;
            }
            EventPayload::ContextCompacted(p) => {
                let how = if p.summarized {
                    "summarised"
                } else {
                    "dropped"
                };
                self.note(&format!(
                    "context compacted: {} {how}, {} → {} tokens",
                    crate::plural::count(p.dropped_messages, "message", "messages"),
                    p.before_tokens,
                    p.after_tokens
                ))?;
            }
            EventPayload::Continuation(p) => {
                let decision = match p.stop_reason {
                    None => "go on".to_owned(),
                    Some(reason) => format!("stop ({})", reason.as_str()),
                };
                self.note(&format!("after step {}: {decision}", p.step_number))?;
            }
            EventPayload::MessageCompleted(p) => self.message_completed(p)?,
            EventPayload::ExecutionFinished(p) => self.execution_finished(p)?,
            EventPayload::HookCompleted(p) | EventPayload::HookFailed(p) => {
                self.note(&super::hook_line(p))?;
            }
            EventPayload::SessionCreated(_)
            | EventPayload::AgentStatus(_)
            | EventPayload::StepCompleted(_) => {}
        }
        self.out.flush()
    }

    fn live(&mut self) -> io::Result<()> {
        if !self.live {
            self.live = true;
            if !self.text.is_open() {
                self.show_spinner();
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        self.end_text()?;
        self.hide_spinner();
        self.out.flush()
    }
}

impl<W: Write> Drop for TerminalRenderer<W> {
    fn drop(&mut self) {
        // Never leave a spinner line behind, whatever ended the program.
        self.hide_spinner();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use uuid::Uuid;

    use super::*;
    use crate::domain::Usage;
    use crate::domain::event::{
        CancelRequested, ContextCompacted, Continuation, Evaluation, ExecutionFinished,
        ExecutionStarted, FinishedCost, FinishedUsage, MessageCompleted, ProviderRetry,
        SessionStatusChanged, StepStarted, StreamChunk, ToolCompleted, ToolStarted,
    };
    use crate::domain::execution::{StopReason, WorkerInfo};
    use crate::domain::session::SessionStatus;

    const EXECUTION: Uuid = Uuid::from_u128(0x0193_a7c2_0000_7000_8000_0000_0000_0002);

    fn event(payload: EventPayload) -> Event {
        Event {
            v: 1,
            seq: 1,
            session_id: Uuid::nil(),
            execution_id: Some(EXECUTION),
            timestamp: Timestamp(1_795_240_800_000),
            payload,
        }
    }

    fn render(width: usize, payloads: Vec<EventPayload>) -> String {
        let mut out = Vec::new();
        {
            let mut r = TerminalRenderer::new(&mut out, false, false).with_width(width);
            r.header("0193a7c2", "demo", Some("notes\x1b]0;title\x07"))
                .unwrap();
            for p in payloads {
                r.render(&event(p)).unwrap();
            }
            r.live().unwrap();
            r.finish().unwrap();
        }
        String::from_utf8(out).unwrap()
    }

    fn started(resumed: bool, attempt: u32) -> EventPayload {
        EventPayload::ExecutionStarted(ExecutionStarted {
            message_id: Uuid::nil(),
            attempt,
            worker: WorkerInfo {
                pid: 42,
                host: "host".into(),
            },
            resumed,
        })
    }

    fn step(n: u32) -> EventPayload {
        EventPayload::StepStarted(StepStarted {
            step_number: n,
            message_count: 1,
            available_tools: vec![],
        })
    }

    fn chunk(text: &str) -> EventPayload {
        EventPayload::StreamChunk(StreamChunk {
            content: text.into(),
            chunk_index: 0,
        })
    }

    fn finished(
        status: ExecStatus,
        reason: StopReason,
        exit_code: u8,
        error: Option<&str>,
        cost: Option<f64>,
    ) -> EventPayload {
        EventPayload::ExecutionFinished(ExecutionFinished {
            status,
            stop_reason: Some(reason),
            exit_code,
            steps: 2,
            usage: FinishedUsage {
                execution: Usage::new(100, 20),
                session: Usage::new(300, 60),
            },
            duration_ms: 61_500,
            error: error.map(str::to_owned),
            message_id: None,
            cost_usd: cost.map(|c| FinishedCost {
                execution: c,
                session: c * 3.0,
            }),
            checks: Vec::new(),
        })
    }

    #[test]
    fn notes_resumed_and_failed_executions_and_an_unstreamed_answer() {
        let text = render(
            40,
            vec![
                EventPayload::SessionStatus(SessionStatusChanged {
                    status: SessionStatus::Active,
                    previous_status: SessionStatus::Paused,
                }),
                started(true, 2),
                step(3),
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
                    summarized: true,
                }),
                EventPayload::ToolStarted(ToolStarted {
                    tool_name: "write_file".into(),
                    tool_call_id: "c1".into(),
                    server: None,
                    args_summary: None,
                    args: Some(serde_json::json!({"path": "a.md", "content": "x"})),
                }),
                EventPayload::ToolCompleted(ToolCompleted {
                    tool_name: "write_file".into(),
                    tool_call_id: "c1".into(),
                    server: None,
                    success: true,
                    error: None,
                    duration_ms: 61_000,
                }),
                EventPayload::Continuation(Continuation {
                    step_number: 3,
                    should_continue: true,
                    stop_reason: None,
                    evaluations: vec![Evaluation {
                        check: "steps".into(),
                        passed: true,
                        detail: "3 of 8".into(),
                    }],
                }),
                step(4),
                // The minimal preset: no chunks, the answer arrives whole and is wrapped.
                EventPayload::MessageCompleted(MessageCompleted {
                    message_id: Uuid::nil(),
                    response: "An answer that arrives whole, long enough to be wrapped twice over."
                        .into(),
                    empty: false,
                    structured: None,
                }),
                finished(
                    ExecStatus::Failed,
                    StopReason::Error,
                    1,
                    Some("the tool broke\x1b[2J"),
                    Some(0.001_25),
                ),
                started(false, 1),
                step(1),
                chunk("Half an ans"),
                EventPayload::CancelRequested(CancelRequested {
                    message_id: Uuid::nil(),
                }),
                finished(
                    ExecStatus::Cancelled,
                    StopReason::UserRequested,
                    130,
                    None,
                    None,
                ),
            ],
        );
        assert!(
            !text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{text:?}"
        );
        insta::assert_snapshot!(text);
    }

    #[test]
    fn text_follows_a_resized_terminal_from_the_next_line_on() {
        let columns = Arc::new(AtomicUsize::new(40));
        let mut out = Vec::new();
        {
            let mut r = TerminalRenderer::new(&mut out, false, false);
            let width = columns.clone();
            r.width = Box::new(move || width.load(Ordering::SeqCst));
            r.render(&event(step(1))).unwrap();
            let words = "alpha beta gamma delta epsilon zeta eta theta iota kappa ";
            r.render(&event(chunk(words))).unwrap();
            columns.store(24, Ordering::SeqCst);
            r.render(&event(chunk(words))).unwrap();
            r.finish().unwrap();
        }
        // The first line was written at 40 columns, the rest at 24.
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            vec![
                "  alpha beta gamma delta epsilon zeta",
                "  eta theta iota kappa",
                "  alpha beta gamma delta",
                "  epsilon zeta eta theta",
                "  iota kappa",
            ],
            "{text}"
        );
    }

    #[test]
    fn checks_are_lines_with_their_outcome_and_the_end_of_a_failures_output() {
        use crate::domain::event::{CheckCompleted, CheckStarted};
        let check = |round, success, exit_code, summary: &str| {
            vec![
                EventPayload::CheckStarted(CheckStarted {
                    name: "tests".into(),
                    round,
                }),
                EventPayload::CheckCompleted(CheckCompleted {
                    name: "tests".into(),
                    round,
                    success,
                    exit_code,
                    duration_ms: 1200,
                    output_summary: summary.into(),
                }),
            ]
        };
        let mut events = vec![started(false, 1), step(1)];
        events.extend(check(1, false, Some(101), "test result: FAILED\x1b[2J"));
        events.extend(check(2, false, None, "timed out after 1s and was killed"));
        events.extend(check(3, true, Some(0), "ok"));
        let text = render(80, events);
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("check")).collect();
        assert_eq!(
            lines,
            [
                "  ✗ check tests · 1.2s — exit 101: test result: FAILED␛[2J",
                "  ✗ check tests · 1.2s — no exit code: timed out after 1s and was killed",
                "  ✓ check tests · 1.2s",
            ],
            "{text}"
        );
    }

    #[test]
    fn outside_text_is_neutralised_in_every_line() {
        let evil = "x\x1b]8;;http://e\x1b\\y\x07\r\u{9b}2J\u{202e}\u{2066}";
        let text = render(
            60,
            vec![
                started(false, 1),
                step(1),
                EventPayload::ToolStarted(ToolStarted {
                    tool_name: evil.into(),
                    tool_call_id: "c1".into(),
                    server: None,
                    args_summary: Some(evil.into()),
                    args: None,
                }),
                EventPayload::ToolCompleted(ToolCompleted {
                    tool_name: evil.into(),
                    tool_call_id: "c1".into(),
                    server: None,
                    success: false,
                    error: Some(evil.into()),
                    duration_ms: 1,
                }),
                EventPayload::ProviderRetry(ProviderRetry {
                    attempt: 2,
                    delay_ms: 0,
                    http_status: None,
                    error: evil.into(),
                }),
                chunk(evil),
                EventPayload::MessageCompleted(MessageCompleted {
                    message_id: Uuid::nil(),
                    response: evil.into(),
                    empty: false,
                    structured: None,
                }),
                finished(ExecStatus::Failed, StopReason::Error, 1, Some(evil), None),
            ],
        );
        let raw: Vec<char> = text
            .chars()
            .filter(|c| {
                (c.is_control() && *c != '\n' && *c != '\t') || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
            })
            .collect();
        assert!(raw.is_empty(), "{raw:?} in {text}");
        assert!(
            text.contains("x␛]8;;http://e␛\\y␇␍\u{fffd}2J<U+202E><U+2066>"),
            "{text}"
        );
    }
}
