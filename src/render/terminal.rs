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
use super::{Renderer, footer, sanitize};
use crate::domain::event::{Event, EventPayload};
use crate::domain::execution::ExecStatus;
use crate::time::{Timestamp, human_duration};
use crate::tools::summarize_args;

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
        let mut text = format!("● session {session} · agent {agent}");
        if let Some(title) = title {
            text.push_str(&format!(" · \"{}\"", sanitize(title)));
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
                let width = (self.width)();
                self.text
                    .push(&mut self.out, &sanitize(&chunk.content), width, INDENT)?;
                self.streamed = true;
            }
            EventPayload::MessageQueued(p) => {
                self.note(&format!("queued #{}: {}", p.seq, p.content_preview))?;
            }
            EventPayload::SessionStatus(p) => {
                self.note(&format!(
                    "session {} (was {})",
                    p.status.as_str(),
                    p.previous_status.as_str()
                ))?;
            }
            EventPayload::CancelRequested(_) => self.note("cancel requested")?,
            EventPayload::ExecutionStarted(p) => {
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
            }
            EventPayload::StepStarted(p) => {
                self.end_text()?;
                self.streamed = false;
                self.set_status(format!("thinking · step {}", p.step_number));
            }
            EventPayload::ToolStarted(p) => {
                self.end_text()?;
                let args = p
                    .args_summary
                    .clone()
                    .or_else(|| p.args.as_ref().map(|a| summarize_args(a, 100)))
                    .unwrap_or_default();
                self.tool_args.insert(p.tool_call_id.clone(), args.clone());
                self.set_status(format!(
                    "running {} {}",
                    sanitize(&p.tool_name),
                    sanitize(&args)
                ));
            }
            EventPayload::ToolCompleted(p) => {
                let args = self.tool_args.remove(&p.tool_call_id).unwrap_or_default();
                let (mark, style) = if p.success {
                    ("✓", Style::new().green())
                } else {
                    ("✗", Style::new().red())
                };
                let mut text = format!(
                    "{INDENT}{} {} {} · {}",
                    self.paint(&style, mark),
                    sanitize(&p.tool_name),
                    sanitize(&args),
                    human_duration(p.duration_ms)
                );
                if let Some(error) = &p.error {
                    let error = crate::store::session::preview(error, 160);
                    text.push_str(&format!(
                        " — {}",
                        self.paint(&Style::new().red(), &sanitize(&error))
                    ));
                }
                self.line(&text)?;
                self.set_status("thinking".to_owned());
            }
            EventPayload::ProviderRetry(p) => {
                self.note(&format!(
                    "↻ model call failed ({}); retry {} in {}",
                    p.error,
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
                    "context compacted: {} messages {how}, {} → {} tokens",
                    p.dropped_messages, p.before_tokens, p.after_tokens
                ))?;
            }
            EventPayload::Continuation(p) => {
                let decision = match p.stop_reason {
                    None => "go on".to_owned(),
                    Some(reason) => format!("stop ({})", reason.as_str()),
                };
                self.note(&format!("after step {}: {decision}", p.step_number))?;
            }
            EventPayload::MessageCompleted(p) => {
                // Not streamed (the minimal preset): the answer is shown whole.
                if !self.streamed && !p.response.is_empty() {
                    let width = (self.width)();
                    self.hide_spinner();
                    self.text
                        .push(&mut self.out, &sanitize(&p.response), width, INDENT)?;
                }
                self.end_text()?;
            }
            EventPayload::ExecutionFinished(p) => {
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
                        &format!("{INDENT}error: {}", sanitize(error)),
                    );
                    self.line(&error)?;
                }
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
