//! The worker: finds sessions with pending messages, takes each one's owner lock, and
//! drains its inbox in order (ARCHITECTURE.md §2, §4).
//!
//! Discovery has two sources. File-system notifications on `sessions/.ready/` wake the
//! worker early; a periodic scan of the markers, plus a full scan of every session's
//! inbox at start-up and every `FULL_SCAN_EVERY` ticks, is the source of truth, so a
//! lost notification or a lost marker delays work but never loses it.

pub mod execute;
pub mod mcp;
mod shutdown;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{error, info, warn};
use uuid::Uuid;

pub use shutdown::Shutdown;

use crate::domain::execution::WorkerInfo;
use crate::domain::inbox::EntryKind;
use crate::domain::session::SessionStatus;
use crate::store::Store;
use crate::store::fs::ReadError;
use crate::store::inbox;
use crate::store::recover::{ensure_dir, move_aside, read_or_rebuild};
use crate::store::session::read_meta;
use execute::{Handled, Owner};

/// Every this many ticks, every session's inbox is listed, not only the marked ones.
const FULL_SCAN_EVERY: u64 = 30;

pub struct WorkerOptions {
    /// Handle what is pending, then exit.
    pub once: bool,
    /// Sessions worked on at the same time.
    pub concurrency: usize,
    /// Only this session.
    pub session: Option<Uuid>,
    /// Stop claiming after this long.
    pub max_duration: Option<Duration>,
    /// Scan interval; `None` uses notifications plus a scan every second.
    pub poll: Option<Duration>,
    /// Workers allowed at once in this home; a worker finding no free slot exits.
    pub max_workers: Option<usize>,
}

/// What a worker did, for its exit summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct Report {
    pub settled: u64,
    pub suspended: u64,
    /// Sessions whose processing failed (logged as they happened).
    pub errors: u64,
    /// The worst exit code of the executions settled and of those failures
    /// ([`crate::error::exit::worst`]).
    pub worst: u8,
    /// Every worker slot was taken: this worker did nothing.
    pub no_slot: bool,
}

/// This process, as recorded in executions and locks.
pub fn this_worker() -> WorkerInfo {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    WorkerInfo {
        pid: std::process::id(),
        host,
    }
}

/// Runs the worker until shutdown (or, with `once`, until nothing is pending).
pub async fn run(store: Store, options: WorkerOptions, shutdown: Arc<Shutdown>) -> Result<Report> {
    if let Some(aside) = ensure_dir(&store.ready_dir(), store.clock.now())? {
        error!(
            "{} was not a directory; moved it to {} and made the directory again",
            store.ready_dir().display(),
            aside.display()
        );
    }
    let worker = Arc::new(this_worker());
    let Some(_registration) = store.register_worker(&worker, options.max_workers)? else {
        info!(
            max_workers = options.max_workers.unwrap_or(0),
            "every worker slot of this home is taken; exiting"
        );
        return Ok(Report {
            no_slot: true,
            ..Report::default()
        });
    };
    let mut tasks = JoinSet::new();
    let result = claim(&store, &options, &shutdown, &worker, &mut tasks).await;
    if result.is_err() {
        // The error ends the process: running executions stop first, at a checkpoint
        // and with their commands killed, instead of running on unowned.
        shutdown.trigger();
        while tasks.join_next().await.is_some() {}
    }
    result
}

/// The claiming loop of [`run`]: sessions it takes are drained in `tasks`.
async fn claim(
    store: &Store,
    options: &WorkerOptions,
    shutdown: &Arc<Shutdown>,
    worker: &Arc<WorkerInfo>,
    tasks: &mut JoinSet<(Uuid, Result<Drained>)>,
) -> Result<Report> {
    let (wake_tx, mut wake_rx) = mpsc::unbounded_channel::<()>();
    let _watcher = match options.poll {
        Some(_) => None,
        None => watch_ready_dir(store, wake_tx),
    };
    let tick = options.poll.unwrap_or(Duration::from_secs(1));
    let deadline = options.max_duration.map(|d| Instant::now() + d);
    let mut active: HashSet<Uuid> = HashSet::new();
    // Sessions another worker owns, or that are paused: not retried until the next tick
    // (with `once`, not at all).
    let mut deferred: HashSet<Uuid> = HashSet::new();
    // Sessions whose processing failed: retried only at the next full scan, so one
    // broken session does not fill the log every second.
    let mut failing: HashSet<Uuid> = HashSet::new();
    let mut backlog: BTreeSet<Uuid> = BTreeSet::new();
    let mut full_scan: Option<tokio::task::JoinHandle<Result<Vec<Uuid>>>> = None;
    let mut report = Report::default();
    let mut ticks = 0u64;
    let mut next_full_scan = 0u64;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) && !shutdown.is_requested() {
            // Like a signal: no new claims, running executions stop at a checkpoint.
            info!("--max-duration reached: stopping");
            shutdown.trigger();
        }
        let claiming = !shutdown.is_requested();
        let mut spawned = 0;
        if claiming {
            // The first full scan is done here, before deciding anything; later ones run
            // on a blocking thread, so listing thousands of inboxes never delays a
            // pickup that a marker announced.
            let full = ticks >= next_full_scan;
            if full && full_scan.is_none() {
                next_full_scan = ticks + FULL_SCAN_EVERY;
                if !options.once {
                    failing.clear();
                }
                if ticks == 0 {
                    backlog.extend(candidates(store, true, options.session)?);
                } else {
                    let (store, only) = (store.clone(), options.session);
                    full_scan = Some(tokio::task::spawn_blocking(move || {
                        candidates(&store, true, only)
                    }));
                }
            }
            // What a full scan found stays wanted until it is drained, even when the
            // concurrency limit keeps it waiting past the next (marker-only) scan.
            backlog.extend(candidates(store, false, options.session)?);
            for id in backlog.clone() {
                if active.len() >= options.concurrency.max(1) {
                    break;
                }
                if active.contains(&id) || deferred.contains(&id) || failing.contains(&id) {
                    backlog.remove(&id);
                    continue;
                }
                backlog.remove(&id);
                active.insert(id);
                spawned += 1;
                let (store, shutdown, worker) = (store.clone(), shutdown.clone(), worker.clone());
                // Each session on a thread of its own: its file writes block (fsync), and
                // must neither stall other sessions nor the loop that claims them.
                let runtime = tokio::runtime::Handle::current();
                tasks.spawn_blocking(move || {
                    let result = runtime.block_on(drain(&store, id, &shutdown, &worker, None));
                    (id, result)
                });
            }
        }
        if active.is_empty() && (!claiming || (options.once && spawned == 0)) {
            return Ok(report);
        }
        tokio::select! {
            Some(found) = async { Some(full_scan.as_mut()?.await) }, if full_scan.is_some() => {
                full_scan = None;
                match found {
                    Ok(found) => backlog.extend(found?),
                    Err(err) => error!("the periodic scan of the home failed: {err}"),
                }
            }
            Some(joined) = tasks.join_next() => {
                let (id, result) = joined.context("a session task panicked")?;
                active.remove(&id);
                match result {
                    Ok(drained) => {
                        report.settled += drained.settled;
                        report.worst = crate::error::exit::worst(report.worst, drained.worst);
                        report.suspended += u64::from(drained.suspended);
                        if drained.skipped {
                            deferred.insert(id);
                        }
                    }
                    Err(err) => {
                        error!(session = %id, "skipping the session until the next full scan: {}; repair or remove that file, or remove the session with `agentq session rm {id}`", crate::error::render(&err));
                        report.errors += 1;
                        // An invalid agentq.toml found here is exit 2, like at start.
                        report.worst =
                            crate::error::exit::worst(report.worst, crate::error::exit_code(&err));
                        failing.insert(id);
                        if is_storage_full(&err) && !shutdown.is_requested() {
                            // Claiming more work would only fail the same way; what is
                            // written stays readable (replace is atomic, torn appends
                            // are repaired by the next writer).
                            error!("the home cannot be written to; no new claims, stopping");
                            shutdown.trigger();
                        }
                    }
                }
            }
            Some(()) = wake_rx.recv() => {}
            () = tokio::time::sleep(tick) => {
                ticks += 1;
                if !options.once {
                    deferred.clear();
                }
            }
            () = shutdown.wait(), if claiming => {}
            // Woken at the deadline itself, not at the next tick after it.
            () = sleep_until(deadline), if claiming && deadline.is_some() => {}
        }
    }
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Whether an error means the disk is full or read-only, for every session alike.
fn is_storage_full(err: &anyhow::Error) -> bool {
    use std::io::ErrorKind;
    err.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| {
            matches!(
                io.kind(),
                ErrorKind::StorageFull | ErrorKind::ReadOnlyFilesystem | ErrorKind::QuotaExceeded
            )
        })
}

/// Sessions that may have pending entries.
fn candidates(store: &Store, full: bool, only: Option<Uuid>) -> Result<Vec<Uuid>> {
    // The markers always count (a stale one is cleared by draining its session); a full
    // scan adds every session with entries, marked or not.
    let mut ids = store.ready_ids()?;
    if full {
        for id in store.session_ids()? {
            if ids.contains(&id) {
                continue;
            }
            // A session whose inbox cannot be listed is claimed too: its drain fails
            // naming the path, logged once per full scan, and the others go on.
            let dir = store.session(id);
            let waiting = inbox::entry_names(&dir.inbox_dir()).map_or(true, |n| !n.is_empty());
            if waiting || dir.needs_repair() {
                ids.push(id);
            }
        }
    }
    if let Some(only) = only {
        ids.retain(|id| *id == only);
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Wakes the worker when a marker appears. Without notifications (some file systems,
/// exhausted inotify limits) the periodic scan still finds the work.
fn watch_ready_dir(
    store: &Store,
    wake: mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| e.kind.is_create() || e.kind.is_modify()) {
            let _ = wake.send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(err) => {
            warn!("file notifications unavailable ({err}); scanning every second");
            return None;
        }
    };
    if let Err(err) = watcher.watch(&store.ready_dir(), notify::RecursiveMode::NonRecursive) {
        warn!(
            "cannot watch {} ({err}); scanning every second",
            store.ready_dir().display()
        );
        return None;
    }
    Some(watcher)
}

/// Moves a corrupt `session.json` or `state.json` aside and rebuilds it from the
/// session's logs, so one damaged session neither stops the worker nor stays stuck.
fn recover_files(store: &Store, dir: &crate::store::SessionDir) -> Result<()> {
    for sub in [dir.inbox_dir(), dir.executions_dir()] {
        if let Some(aside) = ensure_dir(&sub, store.clock.now())? {
            error!(session = %dir.id, "{} was not a directory; moved it to {} and made the directory again", sub.display(), aside.display());
        }
    }
    // A directory where the event log belongs holds no events to go on from: it is
    // moved aside, and the log starts again.
    let events = dir.events_path();
    if events.is_dir() {
        let aside = move_aside(&events, store.clock.now())?;
        error!(session = %dir.id, "{} was a directory; moved it to {} and started the event log again", events.display(), aside.display());
    }
    let (meta, note) = read_or_rebuild(&dir.meta_path(), store.clock.now(), || dir.rebuild_meta())?;
    if let Some(note) = note {
        error!(session = %dir.id, "{note}");
    }
    let (mut state, note) =
        read_or_rebuild(&dir.state_path(), store.clock.now(), || dir.rebuild_state())?;
    if let Some(note) = note {
        error!(session = %dir.id, "{note}");
    }
    // A transcript that lost settled lines first: rolling forward reads past the mark.
    if let Some((rebuilt, note)) = dir.repair_transcript(&state, store.clock.now())? {
        error!(session = %dir.id, "{note}");
        state = rebuilt;
    }
    if let Some(newer) = dir.roll_forward(&state)? {
        warn!(session = %dir.id, "state.json was behind the transcript's last checkpoint (a power failure, or a worker killed between the two writes); rolled forward to it");
        dir.write_state(&newer)?;
        state = newer;
    }
    if let Some(note) = dir.catch_up_meta(meta, &state)? {
        warn!(session = %dir.id, "{note}");
    }
    let removed = crate::store::recover::remove_stale_temps(&[
        &dir.path,
        &dir.inbox_dir(),
        &dir.executions_dir(),
    ]);
    if removed > 0 {
        info!(session = %dir.id, removed, "removed temp files left by killed writers");
    }
    Ok(())
}

/// What draining one session did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Drained {
    pub settled: u64,
    pub suspended: bool,
    /// Not drained: owned by another worker, or paused.
    pub skipped: bool,
    /// The worst exit code of the executions settled ([`crate::error::exit::worst`]).
    pub worst: u8,
}

/// Takes a session's owner lock and runs its pending messages in `seq` order, until the
/// inbox is empty, the session is paused, shutdown, or (with `until`) that message
/// has settled.
pub async fn drain(
    store: &Store,
    id: Uuid,
    shutdown: &Shutdown,
    worker: &WorkerInfo,
    until: Option<Uuid>,
) -> Result<Drained> {
    let dir = store.session(id);
    let mut drained = Drained::default();
    if !dir.path.is_dir() {
        store.clear_ready(id)?;
        return Ok(drained);
    }
    let Some(_lock) = dir.try_lock_owner(Some(worker))? else {
        drained.skipped = true;
        return Ok(drained);
    };
    // The session's MCP servers live as long as the lock is held: they are stopped
    // whichever way the drain ends (a `?` included) before the lock goes.
    let mut mcp = mcp::McpPool::default();
    let result = drain_owned(store, &dir, shutdown, worker, until, &mut mcp, drained).await;
    mcp.stop().await;
    result
}

/// [`drain`] once the session's lock is held.
async fn drain_owned(
    store: &Store,
    dir: &crate::store::SessionDir,
    shutdown: &Shutdown,
    worker: &WorkerInfo,
    until: Option<Uuid>,
    mcp: &mut mcp::McpPool,
    mut drained: Drained,
) -> Result<Drained> {
    let id = dir.id;
    recover_files(store, dir)?;
    // An agentq.toml broken while the worker runs would fail every message claimed
    // from here on; they stay queued instead, the error naming the file, and run once
    // it is fixed (the worker refuses to start on one that is broken already).
    crate::config::HomeConfig::load(&store.config_path())?;
    let mut log = dir.open_events(store.clock.clone())?;
    let mut looked_again = false;
    // Whether anything needs `flush_drain` before the lock goes.
    let mut wrote = false;
    while !shutdown.is_requested() {
        if read_meta(dir)?.status == SessionStatus::Paused {
            drained.skipped = true;
            break;
        }
        let listing = inbox::head(&dir.inbox_dir())?;
        for unreadable in &listing.unreadable {
            // Kept (renamed, so it is no longer an entry) for someone to look at.
            if let ReadError::Corrupt { path, .. } = unreadable {
                let aside = move_aside(path, store.clock.now())?;
                error!(session = %id, "{unreadable}; moved it to {}", aside.display());
            } else {
                warn!(session = %id, "skipping an inbox entry: {unreadable}");
            }
        }
        let Some(head) = listing.entries.into_iter().next() else {
            // The marker goes only once the inbox was seen empty, and the inbox is
            // looked at once more afterwards, so a concurrent `send` is never missed.
            if looked_again {
                break;
            }
            store.clear_ready(id)?;
            looked_again = true;
            continue;
        };
        looked_again = false;
        if head.entry.kind == EntryKind::Cancel {
            // Nothing is running that it could cancel.
            store.note_consumed(dir, head.entry.seq)?;
            inbox::remove(&head.path)?;
            wrote = true;
            continue;
        }
        wrote = true;
        let mut owner = Owner {
            store,
            dir,
            log: &mut log,
            shutdown,
            worker,
            mcp,
        };
        match owner.handle(&head).await? {
            Handled::Settled(code) => {
                drained.settled += 1;
                drained.worst = crate::error::exit::worst(drained.worst, code);
                if until == Some(head.entry.id) {
                    break;
                }
            }
            Handled::AlreadySettled => {}
            Handled::Suspended => {
                drained.suspended = true;
                break;
            }
        }
    }
    if wrote {
        dir.flush_drain()?;
    }
    Ok(drained)
}
