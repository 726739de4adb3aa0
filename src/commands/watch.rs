//! `agentq watch`: follows a session's event log and renders it live, until Ctrl-C, or
//! with `--exit-on-idle` until nothing is pending or running.

use std::io::Write;
use std::time::Instant;

use anyhow::Result;

use super::Context;
use crate::cli::WatchArgs;
use crate::domain::event::{Event, EventPayload, RawEvent};
use crate::domain::inbox::EntryKind;
use crate::error::{UserError, exit};
use crate::follow::{human_limit, terminal_view, why_not_done};
use crate::output::Output;
use crate::render::{PlainRenderer, Renderer};
use crate::store::{LogLine, Position, Session};

pub fn run(ctx: &Context, args: WatchArgs) -> Result<u8> {
    let session = ctx.store.resolve(&args.id)?;
    // A session whose session.json cannot be read is refused, naming it, rather than
    // followed in silence while no worker can run it.
    session.meta()?;
    let from = if args.from_start {
        Position::START
    } else if let Some(seq) = args.since {
        session.events_after(seq)?
    } else {
        session
            .last_event(&["execution.started"])?
            .map_or(Position::START, |(at, _)| at)
    };
    let out = &ctx.out;
    let stdout = out.stdout();
    let mut renderer: Box<dyn Renderer> = if args.json {
        Box::new(RawLines)
    } else if args.plain || !stdout.is_terminal() {
        let color = stdout.color() && !args.plain;
        Box::new(PlainRenderer::new(stdout).with_color(color))
    } else {
        let spinners = out.stderr().is_terminal();
        Box::new(terminal_view(
            stdout.clone(),
            stdout.color(),
            spinners,
            &*session,
        )?)
    };
    let watched = watch(out, &*session, from, &args, renderer.as_mut());
    super::runtime(1)?.block_on(watched)
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
fn show(
    out: &Output,
    line: &LogLine,
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
            let mut stdout = out.stdout();
            stdout.write_all(&line.raw)?;
            stdout.write_all(b"\n")?;
            stdout.flush()?;
        } else {
            out.note(&format!(
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
    out: &Output,
    session: &dyn Session,
    from: Position,
    args: &WatchArgs,
    renderer: &mut dyn Renderer,
) -> Result<u8> {
    let mut follower = session.follow(from)?;
    let started = Instant::now();
    let mut last_exit: Option<u8> = None;
    loop {
        let lines = follower.read()?;
        for line in &lines {
            show(out, line, args.json, renderer, &mut last_exit)?;
        }
        if !lines.is_empty() {
            continue;
        }
        renderer.live()?;
        if !follower.exists() {
            renderer.finish()?;
            return Err(UserError::usage(format!("session {} was removed", session.id())).into());
        }
        if args.exit_on_idle && is_idle(session)? {
            // Entries leave the inbox only after their final events were written:
            // one more read takes in everything up to idleness.
            for line in follower.read()? {
                show(out, &line, args.json, renderer, &mut last_exit)?;
            }
            renderer.finish()?;
            return Ok(match last_exit {
                Some(code) => code,
                None => last_exit_code(session)?,
            });
        }
        if args.no_wait_approval && waits_for_approval(session)? {
            // The record says so only once `approval.requested` is in the log.
            for line in follower.read()? {
                show(out, &line, args.json, renderer, &mut last_exit)?;
            }
            renderer.finish()?;
            return Ok(exit::AWAITING_APPROVAL);
        }
        if let Some(limit) = args.timeout
            && started.elapsed() >= limit
        {
            renderer.finish()?;
            // A damaged state is said plainly: the command's advice names the way out.
            let running = session.plain_state()?.current.is_some();
            return Err(UserError::unavailable(format!(
                "gave up waiting for session {} to be idle after {}: {}",
                session.id(),
                human_limit(limit),
                why_not_done(session, running)?
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
fn is_idle(session: &dyn Session) -> Result<bool> {
    Ok(!session
        .inbox()?
        .iter()
        .any(|entry| entry.kind == EntryKind::User))
}

/// Parked on a call that waits for approval, with nothing queued since that a worker
/// would act on (a decision, a cancel, a message).
fn waits_for_approval(session: &dyn Session) -> Result<bool> {
    let parked = session
        .running_execution()
        .is_some_and(|exec| exec.awaiting_approval.is_some());
    let Some(awaiting) = session
        .plain_state()?
        .current
        .and_then(|current| current.open_step?.awaiting)
        .filter(|_| parked)
    else {
        return Ok(false);
    };
    Ok(session
        .inbox()?
        .iter()
        .all(|entry| entry.seq <= awaiting.seen_through))
}

/// The exit code of the session's last finished execution, 0 if there was none.
fn last_exit_code(session: &dyn Session) -> Result<u8> {
    let last = session.last_event(&["execution.finished"])?;
    Ok(last
        .and_then(|(_, raw)| raw.into_event().ok().flatten())
        .and_then(|event| match event.payload {
            EventPayload::ExecutionFinished(done) => Some(done.exit_code),
            _ => None,
        })
        .unwrap_or(0))
}
