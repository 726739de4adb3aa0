//! `agentq watch`: follows a session's event log and renders it live. Also home of the
//! waiting that `send --wait` and `run` share: following the log until one message's
//! execution has finished.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use uuid::Uuid;

use super::Context;
use crate::cli::WatchArgs;
use crate::domain::Usage;
use crate::domain::event::{Event, EventPayload, ExecutionFinished, RawEvent};
use crate::domain::execution::{ExecStatus, StopReason};
use crate::domain::inbox::EntryKind;
use crate::domain::session::SessionStatus;
use crate::error::{UserError, exit};
use crate::render::{PlainRenderer, Renderer, TerminalRenderer};
use crate::store::SessionDir;
use crate::store::events::{offset_after_seq, offset_of_last};
use crate::store::follow::{Follower, Line};
use crate::store::inbox;
use crate::store::session::read_meta;

pub fn run(ctx: &Context, args: WatchArgs) -> Result<u8> {
    let timeout = args.timeout;
    let dir = ctx.store.resolve(&args.id)?;
    // A session whose session.json cannot be read is refused, naming it, rather than
    // followed in silence while no worker can run it.
    read_meta(&dir)?;
    let path = dir.events_path();
    let offset = if args.from_start {
        0
    } else if let Some(seq) = args.since {
        offset_after_seq(&path, seq)?
    } else {
        offset_of_last(&path, &["execution.started"])?.map_or(0, |(offset, _)| offset)
    };
    let mut renderer: Box<dyn Renderer> = if args.json {
        Box::new(RawLines)
    } else if args.plain || !std::io::stdout().is_terminal() {
        Box::new(PlainRenderer::new(super::stdout()).with_color(ctx.color && !args.plain))
    } else {
        Box::new(terminal_view(ctx, &dir)?)
    };
    super::runtime(1)?.block_on(watch(&dir, offset, &args, timeout, renderer.as_mut()))
}

/// `--json`: the log's lines as they are (the raw text is written by [`show`]).
struct RawLines;

impl Renderer for RawLines {
    fn render(&mut self, _: &Event) -> std::io::Result<()> {
        Ok(())
    }
    fn finish(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Shows one line of the log; remembers the exit code of finished executions.
/// The live view of a session on a terminal, its header (id, agent, title) drawn:
/// `watch`'s default there, and `run`'s.
pub(super) fn terminal_view(
    ctx: &Context,
    dir: &SessionDir,
) -> Result<TerminalRenderer<super::Stdout>> {
    let mut terminal =
        TerminalRenderer::new(super::stdout(), ctx.color, std::io::stderr().is_terminal());
    let meta = read_meta(dir)?;
    terminal.header(&dir.id.to_string(), &meta.agent, meta.title.as_deref())?;
    Ok(terminal)
}

fn show(
    line: &Line,
    json: bool,
    renderer: &mut dyn Renderer,
    last_exit: &mut Option<u8>,
) -> Result<()> {
    // A line that is not an event (not an envelope, or a known type with a payload that
    // does not parse) is skipped, as the renderers skip it: `--json` readers get
    // events only, and are told on stderr that a line was left out. A type this version
    // does not know is still an event, and passes through `--json` untouched.
    let parsed = line.event.clone().map(RawEvent::into_event);
    if json {
        if matches!(parsed, Some(Ok(_))) {
            let mut out = crate::commands::stdout();
            out.write_all(&line.raw)?;
            out.write_all(b"\n")?;
            out.flush()?;
        } else {
            super::note(&format!(
                "skipped a line of the event log that is not an event ({} bytes)",
                line.raw.len()
            ));
        }
    }
    let Some(Ok(Some(event))) = parsed else {
        return Ok(());
    };
    if let EventPayload::ExecutionFinished(done) = &event.payload {
        *last_exit = Some(done.exit_code);
    }
    renderer.render(&event)?;
    Ok(())
}

async fn watch(
    dir: &SessionDir,
    offset: u64,
    args: &WatchArgs,
    timeout: Option<Duration>,
    renderer: &mut dyn Renderer,
) -> Result<u8> {
    let mut follower = Follower::open(dir, offset)?;
    let started = Instant::now();
    let mut last_exit: Option<u8> = None;
    loop {
        let lines = follower.read()?;
        for line in &lines {
            show(line, args.json, renderer, &mut last_exit)?;
        }
        if !lines.is_empty() {
            continue;
        }
        renderer.live()?;
        if !follower.exists() {
            renderer.finish()?;
            return Err(UserError::usage(format!("session {} was removed", dir.id)).into());
        }
        if args.exit_on_idle && is_idle(dir)? {
            // Entries leave the inbox only after their final events were written:
            // one more read takes in everything up to idleness.
            for line in follower.read()? {
                show(&line, args.json, renderer, &mut last_exit)?;
            }
            renderer.finish()?;
            return Ok(match last_exit {
                Some(code) => code,
                None => last_exit_code(dir)?,
            });
        }
        if let Some(limit) = timeout
            && started.elapsed() >= limit
        {
            renderer.finish()?;
            let running = dir.read_state()?.current.is_some();
            return Err(UserError::unavailable(format!(
                "gave up waiting for session {} to be idle after {}: {}",
                dir.id,
                human_limit(limit),
                why_not_done(dir, running)?
            ))
            .into());
        }
        tokio::select! {
            () = follower.wait() => {}
            _ = tokio::signal::ctrl_c() => {
                renderer.finish()?;
                return Ok(exit::CANCELLED);
            }
        }
    }
}

/// Nothing pending or running: no user entry left in the inbox (an entry stays there
/// until its execution has settled).
fn is_idle(dir: &SessionDir) -> Result<bool> {
    let listing = inbox::list(&dir.inbox_dir())?;
    Ok(!listing
        .entries
        .iter()
        .any(|f| f.entry.kind == EntryKind::User))
}

/// The exit code of the session's last finished execution, 0 if there was none.
fn last_exit_code(dir: &SessionDir) -> Result<u8> {
    let last = offset_of_last(&dir.events_path(), &["execution.finished"])?;
    Ok(last
        .and_then(|(_, raw)| raw.into_event().ok().flatten())
        .and_then(|event| match event.payload {
            EventPayload::ExecutionFinished(done) => Some(done.exit_code),
            _ => None,
        })
        .unwrap_or(0))
}

/// The result of one message, as `send --wait --json` and `run --json` print it.
#[derive(Debug, Clone, Serialize)]
pub struct MessageResult {
    pub session_id: Uuid,
    pub message_id: Uuid,
    pub execution_id: Option<Uuid>,
    pub status: ExecStatus,
    pub stop_reason: Option<StopReason>,
    pub exit_code: u8,
    pub response: Option<String>,
    /// The answer has no text: the model completed with nothing to say.
    pub empty: bool,
    pub usage: Usage,
    pub steps: u32,
    pub error: Option<String>,
}

impl MessageResult {
    /// Prints the answer (stdout) or the error (stderr), or the whole result as JSON.
    pub fn print(&self, json: bool) -> Result<()> {
        if json {
            return super::print_json(self);
        }
        if let Some(response) = &self.response {
            writeln!(super::human_stdout(), "{response}")?;
        }
        if self.empty {
            super::note(crate::render::EMPTY_ANSWER);
        }
        if self.status != ExecStatus::Completed {
            let reason = self.stop_reason.map_or("", StopReason::as_str);
            let detail = self
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            // The error may quote a provider's body: `note` keeps it to one safe line.
            super::note(&format!(
                "execution {} ({reason}){detail}",
                self.status.as_str()
            ));
        }
        Ok(())
    }
}

/// Collects what the log says about one message's execution.
struct Tracker {
    session_id: Uuid,
    message_id: Uuid,
    execution_id: Option<Uuid>,
    response: Option<String>,
    empty: bool,
    claimed: bool,
}

impl Tracker {
    fn observe(&mut self, event: &Event) -> Option<MessageResult> {
        match &event.payload {
            EventPayload::ExecutionStarted(p) if p.message_id == self.message_id => {
                self.execution_id = event.execution_id;
                self.claimed = true;
            }
            EventPayload::MessageCompleted(p) if p.message_id == self.message_id => {
                self.response = Some(p.response.clone());
                self.empty = p.empty;
            }
            EventPayload::ExecutionFinished(p)
                if p.message_id == Some(self.message_id)
                    || (p.message_id.is_none()
                        && event.execution_id.is_some()
                        && event.execution_id == self.execution_id) =>
            {
                return Some(self.result(event.execution_id, p));
            }
            _ => {}
        }
        None
    }

    fn result(&self, execution_id: Option<Uuid>, p: &ExecutionFinished) -> MessageResult {
        MessageResult {
            session_id: self.session_id,
            message_id: self.message_id,
            execution_id,
            status: p.status,
            stop_reason: p.stop_reason,
            exit_code: p.exit_code,
            response: self.response.clone(),
            empty: self.empty,
            usage: p.usage.execution,
            steps: p.steps,
            error: p.error.clone(),
        }
    }
}

/// How long `send --wait` waits for a worker before saying that none seems to run.
const NO_WORKER_HINT_AFTER: Duration = Duration::from_secs(10);

/// Follows the log from `offset` until the execution of `message_id` finishes, passing
/// every event to `renderer` if there is one.
pub async fn wait_for_message(
    dir: &SessionDir,
    offset: u64,
    message_id: Uuid,
    timeout: Option<Duration>,
    mut renderer: Option<&mut dyn Renderer>,
) -> Result<MessageResult> {
    let mut follower = Follower::open(dir, offset)?;
    let started = Instant::now();
    let mut hinted = false;
    let mut tracker = Tracker {
        session_id: dir.id,
        message_id,
        execution_id: None,
        response: None,
        empty: false,
        claimed: false,
    };
    loop {
        for line in follower.read()? {
            let Some(event) = line.event.and_then(|raw| raw.into_event().ok().flatten()) else {
                continue;
            };
            if let Some(r) = renderer.as_deref_mut() {
                r.render(&event)?;
            }
            if let Some(result) = tracker.observe(&event) {
                if let Some(r) = renderer.as_deref_mut() {
                    r.finish()?;
                }
                return Ok(result);
            }
        }
        if let Some(r) = renderer.as_deref_mut() {
            r.live()?;
        }
        if !follower.exists() {
            return Err(
                UserError::usage(format!("session {} was removed while waiting", dir.id)).into(),
            );
        }
        let waited = started.elapsed();
        if let Some(limit) = timeout
            && waited >= limit
        {
            return Err(UserError::unavailable(format!(
                "gave up waiting for message {message_id} after {}: {}",
                human_limit(limit),
                why_not_done(dir, tracker.claimed)?
            ))
            .into());
        }
        // A paused session is said at once: no worker will take it however long we wait.
        if !tracker.claimed && !hinted && (waited >= NO_WORKER_HINT_AFTER || is_paused(dir)?) {
            hinted = true;
            eprintln!(
                "agentq: waiting: message {message_id} is queued, but {}",
                why_not_done(dir, false)?
            );
        }
        tokio::select! {
            () = follower.wait() => {}
            _ = tokio::signal::ctrl_c() => return Err(Interrupted.into()),
        }
    }
}

/// Why what is waited for has not finished yet, for the messages of `--wait` and
/// `--timeout`: the running execution, a paused session, or no worker.
fn why_not_done(dir: &SessionDir, running: bool) -> Result<String> {
    Ok(if running {
        "its execution is still running".to_owned()
    } else if is_paused(dir)? {
        format!(
            "session {} is paused; workers skip it until `agentq session resume {}`",
            dir.id, dir.id
        )
    } else {
        "no worker has picked it up; start one with `agentq worker` (`--once` to handle what is queued and exit)"
            .to_owned()
    })
}

fn is_paused(dir: &SessionDir) -> Result<bool> {
    Ok(read_meta(dir)?.status == SessionStatus::Paused)
}

fn human_limit(limit: Duration) -> String {
    crate::time::human_duration(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX))
}

/// Ctrl-C while waiting; `main` exits 130 for it.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;
