//! `agentq run`: one shot. Queues a message (in a new session unless `--session`),
//! processes that session right here without a separate worker, renders the execution
//! as `watch` would, and exits with the execution's exit code.
//!
//! If a worker already owns the session, `run` waits for it instead of competing.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use uuid::Uuid;

use super::{Context, print_result};
use crate::cli::RunArgs;
use crate::config::HomeConfig;
use crate::definition;
use crate::domain::execution::ExecStatus;
use crate::domain::inbox::EntryKind;
use crate::domain::session::{EventsPreset, SessionStatus};
use crate::error::{UserError, exit};
use crate::follow::{Interrupted, MessageResult, OnApproval, terminal_view, wait_for_message};
use crate::render::{PlainRenderer, Renderer};
use crate::store::{NewEntry, NewSession, Position, Session};
use crate::worker::{self, Shutdown};

pub fn run(ctx: &Context, args: RunArgs) -> Result<u8> {
    let config = ctx.config()?;
    let text = super::message_text(
        args.text,
        args.file.as_ref(),
        config.inbox.max_message_bytes,
    )?;
    let session = session_to_run(ctx, &config, args.session.as_deref(), args.agent.as_deref())?;
    let from = session.events_end()?;
    let queued = session.enqueue(NewEntry {
        kind: EntryKind::User,
        content: text,
        key: None,
        metadata: Default::default(),
        raise_session_tokens: 0,
    })?;

    // On a terminal the execution is rendered as `watch` renders it; otherwise the
    // progress goes to stderr as plain lines and stdout gets only the answer.
    let out = &ctx.out;
    let interactive = out.stdout().is_terminal();
    let mut renderer: Option<Box<dyn Renderer + Send>> = if args.json {
        None
    } else if interactive {
        let stdout = out.stdout();
        let spinners = out.stderr().is_terminal();
        Some(Box::new(terminal_view(
            stdout.clone(),
            stdout.color(),
            spinners,
            &*session,
        )?))
    } else {
        Some(Box::new(PlainRenderer::new(out.stderr())))
    };
    let note = |text: &str| out.note(text);
    let on_approval = if args.no_wait_approval {
        OnApproval::Return
    } else {
        OnApproval::Wait
    };
    let here = run_here(
        ctx,
        &*session,
        from,
        queued.id,
        on_approval,
        renderer.as_deref_mut().map(|r| r as &mut dyn Renderer),
        &note,
    );
    // Bound first, so the runtime is dropped, its tasks stopped, before anything is
    // printed.
    let outcome = super::runtime(1)?.block_on(here);
    let result = match outcome {
        Ok(result) => result,
        Err(err) if err.is::<Interrupted>() => {
            out.note(&format!(
                "interrupted; `agentq worker` resumes session {}",
                session.id()
            ));
            return Ok(exit::CANCELLED);
        }
        Err(err) => return Err(err),
    };
    if args.json {
        print_result(out, &result, true)?;
    } else if !interactive || result.status != ExecStatus::Completed {
        // Without the terminal view the renderer wrote to stderr: stdout gets the
        // answer alone. With it, the answer was shown; only a failure is said again.
        print_result(out, &result, false)?;
    }
    Ok(result.exit_code)
}

/// The session the message goes to: the one `--session` names, if it runs the agent
/// asked for and is not paused, or a new session of `--agent`.
fn session_to_run(
    ctx: &Context,
    config: &HomeConfig,
    session: Option<&str>,
    agent: Option<&str>,
) -> Result<Box<dyn Session>> {
    match (session, agent) {
        (Some(id), agent) => {
            let session = ctx.store.resolve(id)?;
            let meta = session.meta()?;
            let id = session.id();
            if let Some(agent) = agent
                && agent != meta.agent
            {
                return Err(UserError::usage(format!(
                    "session {id} runs agent `{}`, not `{agent}`",
                    meta.agent
                ))
                .into());
            }
            if meta.status == SessionStatus::Paused {
                return Err(UserError::usage(format!(
                    "session {id} is paused; resume it with `agentq session resume {id}`"
                ))
                .into());
            }
            Ok(session)
        }
        (None, Some(agent)) => {
            let (_, source) =
                definition::load_named(&ctx.home.agents_dir(), agent, &BTreeMap::new(), config)?;
            let meta = ctx.store.create_session(NewSession {
                agent: agent.to_owned(),
                title: None,
                config: BTreeMap::new(),
                events: EventsPreset::Standard,
                agent_hash: source.hash(),
            })?;
            Ok(ctx.store.session(meta.id))
        }
        (None, None) => Err(UserError::usage("give --agent NAME or --session ID").into()),
    }
}

/// Processes the session in this process, as a worker would, until the message has
/// its result, while following the log for it. Ctrl-C or SIGTERM stop the execution at
/// a safe point, resumable, and end in [`Interrupted`].
async fn run_here(
    ctx: &Context,
    session: &dyn Session,
    from: Position,
    message_id: Uuid,
    on_approval: OnApproval,
    renderer: Option<&mut dyn Renderer>,
    note: &dyn Fn(&str),
) -> Result<MessageResult> {
    let shutdown = Arc::new(Shutdown::default());
    let drain = {
        let (store, home) = (ctx.store.clone(), ctx.home.clone());
        let (shutdown, session_id) = (shutdown.clone(), session.id());
        tokio::spawn(async move {
            let me = worker::this_worker();
            loop {
                let drained =
                    worker::drain(&*store, &home, session_id, &shutdown, &me, Some(message_id))
                        .await?;
                if !drained.parked || on_approval == OnApproval::Return {
                    return Ok::<_, anyhow::Error>(drained);
                }
                // Parked: a person decides from elsewhere (`agentq approve`), and the
                // execution goes on here once they have.
                if !until_decided(&*store.session(session_id), &shutdown).await? {
                    return Ok(drained);
                }
            }
        })
    };
    let wait = wait_for_message(session, from, message_id, None, on_approval, renderer, note);
    tokio::pin!(wait);
    let mut drain = Some(drain);
    // SIGTERM (a CI step's timeout, systemd) is Ctrl-C's twin: without it the
    // process would die with the execution's commands unowned.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    let waited = loop {
        tokio::select! {
            waited = &mut wait => break waited,
            Some(()) = terminate.recv() => break Err(Interrupted.into()),
            Some(drained) = async { Some(drain.as_mut()?.await) }, if drain.is_some() => {
                drain = None;
                // Owned by another worker: keep waiting for it. A failure to
                // record means the message cannot finish here: report it.
                drained.context("the session task panicked")??;
            }
        }
    };
    if waited.as_ref().is_err_and(|e| e.is::<Interrupted>()) {
        // Ctrl-C: the inline execution stops at a safe point and stays resumable.
        shutdown.trigger();
    }
    if let Some(drain) = drain {
        drain.await.context("the session task panicked")??;
    }
    waited
}

/// How often a parked `run` looks whether the call it waits on was decided.
const DECISION_LOOK: std::time::Duration = std::time::Duration::from_millis(250);

/// Waits until the session's parked execution has something to go on with: a
/// decision (or any entry queued after the park), its `approval_timeout`, or no park
/// any more. False when a shutdown came first.
async fn until_decided(session: &dyn Session, shutdown: &Shutdown) -> Result<bool> {
    loop {
        let awaiting = session
            .plain_state()?
            .current
            .and_then(|current| current.open_step?.awaiting);
        let Some(awaiting) = awaiting else {
            return Ok(true);
        };
        let now = crate::time::Timestamp::from_system(std::time::SystemTime::now());
        let newer = session
            .inbox()?
            .iter()
            .any(|entry| entry.seq > awaiting.seen_through);
        if newer || awaiting.deny_at.is_some_and(|deny_at| now >= deny_at) {
            return Ok(true);
        }
        tokio::select! {
            () = tokio::time::sleep(DECISION_LOOK) => {}
            () = shutdown.wait() => return Ok(false),
        }
    }
}
