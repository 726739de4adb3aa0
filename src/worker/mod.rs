//! The worker: finds sessions with pending messages, becomes each one's owner (the
//! store's claim), and drains its inbox in order (ARCHITECTURE.md §2, §4). The
//! [`Scheduler`] decides which sessions are drained when; [`execute`] runs one
//! message; how either is written is the store's ([`crate::store::Lease`]).
//!
//! Discovery has two sources. The store's notifications ([`Store::notify_pending`]:
//! for files, `sessions/.ready/` watched) wake the worker early; a periodic look at what
//! was announced, plus a full scan of every session at start-up and every
//! `FULL_SCAN_EVERY` ticks ([`Store::pending`]), is the source of truth, so a lost
//! notification or a lost marker delays work but never loses it.

pub mod execute;
mod hooks;
pub mod mcp;
mod shutdown;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{error, info, warn};
use uuid::Uuid;

pub use shutdown::{Shutdown, on_signals};

use crate::domain::execution::WorkerInfo;
use crate::home::Home;
use crate::store::{Claimed, Next, Parked, Store};
use crate::time::Timestamp;
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
    /// Executions left parked on a call that waits for approval.
    pub parked: u64,
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
pub async fn run(
    store: Arc<dyn Store>,
    home: Home,
    options: WorkerOptions,
    shutdown: Arc<Shutdown>,
) -> Result<Report> {
    store.prepare_workers()?;
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
    let mut scheduler = Scheduler::new(store, home, options, shutdown, worker);
    let result = scheduler.run().await;
    if result.is_err() {
        // The error ends the process: running executions stop first, at a checkpoint
        // and with their commands killed, instead of running on unowned.
        scheduler.shutdown.trigger();
        while scheduler.tasks.join_next().await.is_some() {}
    }
    result
}

/// Decides which sessions are drained when: the claiming loop of [`run`], with what it
/// remembers from one turn to the next.
struct Scheduler {
    store: Arc<dyn Store>,
    home: Arc<Home>,
    options: WorkerOptions,
    shutdown: Arc<Shutdown>,
    worker: Arc<WorkerInfo>,
    /// The sessions being drained, each on a thread of its own.
    tasks: JoinSet<(Uuid, Result<Drained>)>,
    active: HashSet<Uuid>,
    /// Sessions another worker owns, or that are paused: not retried until the next
    /// tick (with `once`, not at all).
    deferred: HashSet<Uuid>,
    /// Sessions whose processing failed: retried only at the next full scan, so one
    /// broken session does not fill the log every second.
    failing: HashSet<Uuid>,
    /// Sessions found with work and not drained yet (the concurrency limit).
    backlog: BTreeSet<Uuid>,
    /// Sessions parked on a call whose `approval_timeout` denies it then: drained
    /// again once that time has come (the scans would find them only later).
    timers: BTreeMap<Uuid, Timestamp>,
    /// A full scan running on a blocking thread.
    full_scan: Option<tokio::task::JoinHandle<Result<Vec<Uuid>>>>,
    ticks: u64,
    next_full_scan: u64,
    report: Report,
}

impl Scheduler {
    fn new(
        store: Arc<dyn Store>,
        home: Home,
        options: WorkerOptions,
        shutdown: Arc<Shutdown>,
        worker: Arc<WorkerInfo>,
    ) -> Scheduler {
        Scheduler {
            store,
            home: Arc::new(home),
            options,
            shutdown,
            worker,
            tasks: JoinSet::new(),
            active: HashSet::new(),
            deferred: HashSet::new(),
            failing: HashSet::new(),
            backlog: BTreeSet::new(),
            timers: BTreeMap::new(),
            full_scan: None,
            ticks: 0,
            next_full_scan: 0,
            report: Report::default(),
        }
    }

    async fn run(&mut self) -> Result<Report> {
        let (wake_tx, mut wake_rx) = mpsc::unbounded_channel::<()>();
        let _notifications = match self.options.poll {
            Some(_) => None,
            None => self.store.notify_pending(Box::new(move || {
                let _ = wake_tx.send(());
            })),
        };
        let tick = self.options.poll.unwrap_or(Duration::from_secs(1));
        let deadline = self.options.max_duration.map(|d| Instant::now() + d);
        loop {
            if deadline.is_some_and(|d| Instant::now() >= d) && !self.shutdown.is_requested() {
                // Like a signal: no new claims, running executions stop at a checkpoint.
                info!("--max-duration reached: stopping");
                self.shutdown.trigger();
            }
            let claiming = !self.shutdown.is_requested();
            let mut spawned = 0;
            if claiming {
                match self.look_for_work() {
                    Ok(()) => {}
                    // The store unreachable for now (a restart, a lost connection it is
                    // making again): a long-lived worker looks again at the next tick,
                    // with a full scan, for what was announced meanwhile went unheard;
                    // `--once` is a one-shot command, and fails fast (exit 75).
                    Err(err) if !self.options.once && is_temporary(&err) => {
                        error!("looking for work failed: {err:#}");
                        self.next_full_scan = self.ticks + 1;
                    }
                    Err(err) => return Err(err),
                }
                spawned = self.start_drains();
            }
            if self.active.is_empty() && (!claiming || (self.options.once && spawned == 0)) {
                return Ok(self.report);
            }
            let shutdown = self.shutdown.clone();
            tokio::select! {
                Some(found) = async { Some(self.full_scan.as_mut()?.await) }, if self.full_scan.is_some() => {
                    self.full_scan = None;
                    match found {
                        Ok(found) => self.backlog.extend(self.only(found?)),
                        Err(err) => error!("the periodic scan of the home failed: {err}"),
                    }
                }
                Some(joined) = self.tasks.join_next() => {
                    let (id, result) = joined.context("a session task panicked")?;
                    self.drained(id, result);
                }
                Some(()) = wake_rx.recv() => {}
                () = tokio::time::sleep(tick) => {
                    self.ticks += 1;
                    if !self.options.once {
                        self.deferred.clear();
                    }
                }
                () = shutdown.wait(), if claiming => {}
                // Woken at the deadline itself, not at the next tick after it.
                () = sleep_until(deadline), if claiming && deadline.is_some() => {}
            }
        }
    }

    /// Adds the sessions that may have work to the backlog. The first full scan is
    /// done here, before deciding anything; later ones run on a blocking thread, so
    /// listing thousands of inboxes never delays a pickup that a marker announced.
    fn look_for_work(&mut self) -> Result<()> {
        let full = self.ticks >= self.next_full_scan;
        if full && self.full_scan.is_none() {
            self.next_full_scan = self.ticks + FULL_SCAN_EVERY;
            if !self.options.once {
                self.failing.clear();
            }
            if self.ticks == 0 {
                let found = self.store.pending(true)?;
                self.backlog.extend(self.only(found));
            } else {
                let store = self.store.clone();
                self.full_scan = Some(tokio::task::spawn_blocking(move || store.pending(true)));
            }
        }
        // What a full scan found stays wanted until it is drained, even when the
        // concurrency limit keeps it waiting past the next (announced-only) scan.
        let found = self.store.pending(false)?;
        self.backlog.extend(self.only(found));
        let now = self.store.clock().now();
        let due: Vec<Uuid> = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.timers.remove(&id);
            self.backlog.insert(id);
        }
        Ok(())
    }

    /// `--session`: only that one.
    fn only(&self, mut ids: Vec<Uuid>) -> Vec<Uuid> {
        if let Some(only) = self.options.session {
            ids.retain(|id| *id == only);
        }
        ids
    }

    /// Starts draining backlog sessions up to the concurrency limit; returns how many.
    fn start_drains(&mut self) -> usize {
        let mut spawned = 0;
        for id in self.backlog.clone() {
            if self.active.len() >= self.options.concurrency.max(1) {
                break;
            }
            self.backlog.remove(&id);
            if self.active.contains(&id)
                || self.deferred.contains(&id)
                || self.failing.contains(&id)
            {
                continue;
            }
            self.active.insert(id);
            spawned += 1;
            let (store, home, shutdown, worker) = (
                self.store.clone(),
                self.home.clone(),
                self.shutdown.clone(),
                self.worker.clone(),
            );
            // Each session on a thread of its own: its writes block (on the disk), and must
            // neither stall other sessions nor the loop that claims them.
            let runtime = tokio::runtime::Handle::current();
            self.tasks.spawn_blocking(move || {
                let drain = drain(store.as_ref(), &home, id, &shutdown, &worker, None);
                (id, runtime.block_on(drain))
            });
        }
        spawned
    }

    /// Records what draining a session did.
    fn drained(&mut self, id: Uuid, result: Result<Drained>) {
        self.active.remove(&id);
        let report = &mut self.report;
        match result {
            Ok(drained) => {
                report.settled += drained.settled;
                report.worst = crate::error::exit::worst(report.worst, drained.worst);
                report.suspended += u64::from(drained.suspended);
                report.parked += u64::from(drained.parked);
                match drained.wake_at.filter(|_| drained.parked) {
                    Some(at) => self.timers.insert(id, at),
                    None => self.timers.remove(&id),
                };
                if drained.skipped {
                    self.deferred.insert(id);
                }
            }
            // Expected under the fence (this worker was paused or cut off past its
            // lease): the session goes on elsewhere, nothing here failed.
            Err(err) if is_lease_lost(&err) => {
                warn!(session = %id, "another worker took session {id} over; stopped its execution here");
                self.deferred.insert(id);
            }
            Err(err) => {
                error!(session = %id, "skipping the session until the next full scan: {}; repair or remove that file, or remove the session with `agentq session rm {id}`", crate::error::render(&err));
                report.errors += 1;
                // An invalid agentq.toml found here is exit 2, like at start.
                report.worst =
                    crate::error::exit::worst(report.worst, crate::error::exit_code(&err));
                self.failing.insert(id);
                if is_storage_full(&err) && !self.shutdown.is_requested() {
                    // Claiming more work would only fail the same way; what is written
                    // stays readable (replace is atomic, torn appends are repaired by
                    // the next writer).
                    error!("the home cannot be written to; no new claims, stopping");
                    self.shutdown.trigger();
                }
            }
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

/// Whether the session's lease was taken over by another worker.
fn is_lease_lost(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|cause| cause.downcast_ref::<crate::store::LeaseLost>().is_some())
}

/// A store error that may pass by itself (exit 75).
fn is_temporary(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<crate::error::UserError>()
            .is_some_and(|e| e.kind == crate::error::ExitKind::Unavailable)
    })
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

/// What draining one session did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Drained {
    pub settled: u64,
    pub suspended: bool,
    /// Not drained: owned by another worker, or paused.
    pub skipped: bool,
    /// The worst exit code of the executions settled ([`crate::error::exit::worst`]).
    pub worst: u8,
    /// Its execution parked on a call that waits for approval.
    pub parked: bool,
    /// When that call's `approval_timeout` denies it, for the worker to come back then.
    pub wake_at: Option<crate::time::Timestamp>,
}

/// Takes ownership of a session and runs its pending messages in `seq` order, until
/// the inbox is empty, the session is paused, shutdown, or (with `until`) that
/// message has settled.
pub async fn drain(
    store: &dyn Store,
    home: &Home,
    id: Uuid,
    shutdown: &Shutdown,
    worker: &WorkerInfo,
    until: Option<Uuid>,
) -> Result<Drained> {
    let mut lease = match store.claim(id, worker)? {
        Claimed::Owned(lease) => lease,
        Claimed::Busy => {
            return Ok(Drained {
                skipped: true,
                ..Drained::default()
            });
        }
        Claimed::Gone => return Ok(Drained::default()),
    };
    // The session's MCP servers live as long as the lease is held: they are stopped
    // whichever way the drain ends (a `?` included) before the lease goes.
    let mut mcp = mcp::McpPool::default();
    let clock = store.clock();
    let mut owner = Owner {
        lease: lease.as_mut(),
        home,
        clock: clock.as_ref(),
        shutdown,
        worker,
        mcp: &mut mcp,
    };
    let result = drain_owned(&mut owner, until).await;
    mcp.stop().await;
    // A drain that failed releases nothing more: the lease ends as it is dropped,
    // and what it left for the release is made durable by the next owner's.
    let drained = result?;
    lease.release()?;
    Ok(drained)
}

/// [`drain`] once the session is owned: its messages, one after the other.
async fn drain_owned(owner: &mut Owner<'_>, until: Option<Uuid>) -> Result<Drained> {
    let mut drained = Drained::default();
    // An agentq.toml broken while the worker runs would fail every message claimed
    // from here on; they stay queued instead, the error naming the file, and run once
    // it is fixed (the worker refuses to start on one that is broken already).
    crate::config::HomeConfig::load(&owner.home.config_path())?;
    // What a worker that died after a settling left undelivered.
    hooks::deliver(owner, hooks::When::DrainStart).await?;
    while !owner.shutdown.is_requested() {
        owner.lease.renew()?;
        let (message, code) = match owner.lease.next()? {
            Next::Empty => break,
            Next::Paused => {
                drained.skipped = true;
                break;
            }
            Next::Again => continue,
            Next::Finished(exec) => (
                exec.message_id,
                crate::domain::execution::exit_code(exec.status, exec.stop_reason),
            ),
            Next::Run(claim) => {
                let message = claim.entry.id;
                match owner.handle(*claim).await? {
                    Handled::Settled(code) => (message, code),
                    Handled::Suspended => {
                        drained.suspended = true;
                        break;
                    }
                    Handled::Parked { parked, wake_at } => {
                        drained.wake_at = wake_at;
                        match parked {
                            // A decision (or another entry) came meanwhile.
                            Parked::Again => continue,
                            Parked::Released => {
                                drained.parked = true;
                                break;
                            }
                        }
                    }
                }
            }
        };
        hooks::deliver(owner, hooks::When::Settled).await?;
        drained.settled += 1;
        drained.worst = crate::error::exit::worst(drained.worst, code);
        if until == Some(message) {
            break;
        }
    }
    Ok(drained)
}
