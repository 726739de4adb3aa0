//! `agentq run`: one shot. Queues a message (in a new session unless `--session`),
//! processes that session right here without a separate worker, renders the execution
//! as `watch` would, and exits with the execution's exit code.
//!
//! If a worker already owns the session, `run` waits for it instead of competing.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::{Context as _, Result};

use super::Context;
use super::watch::{Interrupted, MessageResult, terminal_view, wait_for_message};
use crate::cli::RunArgs;
use crate::definition;
use crate::domain::inbox::EntryKind;
use crate::domain::session::{EventsPreset, SessionStatus};
use crate::error::{UserError, exit};
use crate::render::{PlainRenderer, Renderer};
use crate::store::session::{NewEntry, NewSession, read_meta};
use crate::worker::{self, Shutdown};

pub fn run(ctx: &Context, args: RunArgs) -> Result<u8> {
    let config = ctx.config()?;
    let text = super::message_text(
        args.text,
        args.file.as_ref(),
        config.inbox.max_message_bytes,
    )?;
    let dir = match (&args.session, &args.agent) {
        (Some(id), agent) => {
            let dir = ctx.store.resolve(id)?;
            let meta = read_meta(&dir)?;
            if let Some(agent) = agent
                && *agent != meta.agent
            {
                return Err(UserError::usage(format!(
                    "session {} runs agent `{}`, not `{agent}`",
                    dir.id, meta.agent
                ))
                .into());
            }
            if meta.status == SessionStatus::Paused {
                return Err(UserError::usage(format!(
                    "session {} is paused; resume it with `agentq session resume {}`",
                    dir.id, dir.id
                ))
                .into());
            }
            dir
        }
        (None, Some(agent)) => {
            let (_, source) = definition::load_named(
                &ctx.store.agents_dir(),
                agent,
                &BTreeMap::new(),
                &ctx.config()?,
            )?;
            let meta = ctx.store.create_session(NewSession {
                agent: agent.clone(),
                title: None,
                config: BTreeMap::new(),
                events: EventsPreset::Standard,
                agent_hash: source.hash(),
            })?;
            ctx.store.session(meta.id)
        }
        (None, None) => return Err(UserError::usage("give --agent NAME or --session ID").into()),
    };
    let offset = std::fs::metadata(dir.events_path()).map_or(0, |m| m.len());
    let queued = ctx.store.enqueue(
        &dir,
        NewEntry {
            kind: EntryKind::User,
            content: text,
            key: None,
            metadata: Default::default(),
            raise_session_tokens: 0,
        },
    )?;

    // On a terminal the execution is rendered as `watch` renders it; otherwise the
    // progress goes to stderr as plain lines and stdout gets only the answer.
    let interactive = std::io::stdout().is_terminal();
    let mut renderer: Option<Box<dyn Renderer + Send>> = if args.json {
        None
    } else if interactive {
        Some(Box::new(terminal_view(ctx, &dir)?))
    } else {
        Some(Box::new(PlainRenderer::new(std::io::stderr())))
    };

    let store = ctx.store.clone();
    let outcome: Result<MessageResult> = super::runtime(1)?.block_on(async {
        let shutdown = Arc::new(Shutdown::default());
        let session_id = dir.id;
        let drain = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let me = worker::this_worker();
                let home = crate::home::Home::new(store.home().to_owned());
                worker::drain(&store, &home, session_id, &shutdown, &me, Some(queued.id)).await
            })
        };
        let wait = wait_for_message(
            &dir,
            offset,
            queued.id,
            None,
            renderer.as_deref_mut().map(|r| r as &mut dyn Renderer),
        );
        tokio::pin!(wait);
        let mut drain = Some(drain);
        // SIGTERM (a CI step's timeout, systemd) is Ctrl-C's twin: without it the
        // process would die with the execution's commands unowned.
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
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
    });
    let result = match outcome {
        Ok(result) => result,
        Err(err) if err.is::<Interrupted>() => {
            eprintln!(
                "agentq: interrupted; `agentq worker` resumes session {}",
                dir.id
            );
            return Ok(exit::CANCELLED);
        }
        Err(err) => return Err(err),
    };
    if args.json {
        result.print(true)?;
    } else if !interactive {
        // The renderer wrote to stderr; stdout gets the answer alone.
        result.print(false)?;
    } else if result.status != crate::domain::execution::ExecStatus::Completed {
        result.print(false)?;
    }
    Ok(result.exit_code)
}
