//! `agentq worker`: runs the worker until SIGINT/SIGTERM, or with `--once` until
//! nothing is pending. A first signal stops claiming and stops running executions at
//! once, at a checkpoint (their commands killed); a second one exits at once.

use std::sync::Arc;

use anyhow::Result;
use tracing::info;

use super::Context;
use crate::cli::WorkerArgs;
use crate::error::exit;
use crate::worker::{self, Shutdown, WorkerOptions};

pub fn run(ctx: &Context, args: WorkerArgs) -> Result<u8> {
    // A worker that would fail every message it claims refuses to start instead.
    ctx.config()?;
    let session = args
        .session
        .as_deref()
        .map(|id| ctx.store.resolve(id))
        .transpose()?;
    let once = args.once;
    let options = WorkerOptions {
        once: args.once,
        concurrency: usize::from(args.concurrency),
        session: session.map(|session| session.id()),
        max_duration: args.max_duration,
        poll: args.poll,
        max_workers: args.max_workers.map(usize::from),
    };
    // Sessions run on blocking threads of their own (see worker::run); the runtime's
    // threads only drive timers, sockets and the claiming loop.
    let runtime = super::runtime(2)?;
    let (store, home) = (ctx.store.clone(), ctx.home.clone());
    runtime.block_on(async move {
        let shutdown = Arc::new(Shutdown::default());
        tokio::spawn(worker::on_signals(shutdown.clone()));
        let report = worker::run(store, home, options, shutdown).await?;
        info!(
            settled = report.settled,
            suspended = report.suspended,
            parked = report.parked,
            errors = report.errors,
            "worker stopped"
        );
        // Errors were logged as they happened; the exit code tells cron and CI. With
        // --once, it is the worst outcome of what this run did (README "Exit codes");
        // a worker run until a signal exits 0 unless processing itself failed.
        let processing = if report.errors > 0 { exit::FAILED } else { 0 };
        Ok(if once {
            exit::worst(report.worst, processing)
        } else {
            processing
        })
    })
}
