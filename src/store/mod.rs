//! The store: everything a session is (meta, inbox, executions, transcript, state,
//! events, idempotency keys, the owner lease), behind one interface (ARCHITECTURE.md §8).
//! Nothing above this module knows whether a session is files or rows, or where the
//! fsyncs go; [`file`](mod@file) keeps them as files under the home, as §1 lays out.
//!
//! Three traits, from the widest to the narrowest hold on a session:
//! - [`Store`]: a home's sessions: create, find, list, what may have work, workers;
//!   and [`Store::claim`], which makes a worker a session's owner.
//! - [`Session`]: one session, for anyone: read it, queue entries, pause, close, remove,
//!   follow its events.
//! - [`Lease`]: the owner's hold on a session. Every write an execution makes goes
//!   through it, in the order below, so a store can refuse the writes of an owner that
//!   lost it (a database lease that expired) with [`LeaseLost`].
//!
//! # The lifecycle of a message, and the order of its writes
//! What makes a crash at any point recoverable, whichever store keeps it:
//! 1. **Claim** ([`Lease::next`]): the head of the inbox becomes an execution. A new one
//!    puts the user message in the transcript and names the execution in the state; a
//!    resumed one (the state already names it) has its record marked `running` with the
//!    attempt counted. From here on a crash resumes this execution instead of starting
//!    another. A message that settled before a crash is only finished settling.
//! 2. **Checkpoints** ([`Lease::checkpoint`]): each step's answer, then each tool result,
//!    as transcript lines carrying the state; a side-effecting call is marked in the state
//!    before it runs ([`Lease::checkpoint`] with no lines), so a resumed execution never
//!    runs it twice.
//! 3. **Settle** ([`Lease::settle`]): the state the record settles, then the settled
//!    record (the commit point), then the session totals and the final events (one
//!    append), each skipped if an earlier attempt already wrote it; the inbox entry goes
//!    last. The state keeps naming the message until the next execution replaces it, so
//!    a settled message is never run again. [`Lease::suspend`] instead leaves the
//!    execution at its last checkpoint for a later owner.
//!
//! Events are appended through [`Lease::append`] (by the owner) or by the session's
//! other writes (`send`, `pause`, …); the store assigns `seq`, gapless per session.
//!
//! # Durability in the file store
//! A killed worker loses nothing it wrote (the page cache survives it); fsyncs are for
//! power failures, and are spent where a lost write could not be told apart from one
//! never made. The claim is not fsynced: the first checkpoint makes it durable (a power
//! failure before it loses only the claim; the message is still in the inbox). A
//! checkpoint is durable once its transcript lines are: `state.json` follows without
//! fsync, and an owner that finds it behind rolls forward. A checkpoint without lines
//! and the settled record are fsynced. The session totals and the inbox removals are
//! fsynced once per drain, when the lease is released: an entry brought back is
//! recognised by its seq ([`crate::domain::state::AgentState::has_moved_past`]), an
//! older `session.json` by the execution it names last. A resumed record is not
//! fsynced: `state.json` is what a resuming owner trusts, and a record lost is rebuilt
//! from it.

pub mod dump;
pub mod file;
pub mod pg;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use uuid::Uuid;

use crate::domain::approval::{Decision, DecisionRef};
use crate::domain::event::{EventPayload, RawEvent};
use crate::domain::execution::{Execution, WorkerInfo};
use crate::domain::hook::PendingHook;
use crate::domain::inbox::InboxEntry;
use crate::domain::session::{SessionMeta, SessionStatus};
use crate::domain::state::{AgentState, TranscriptMark};
use crate::domain::transcript::TranscriptLine;
use crate::time::Clock;

pub use dump::{DumpedEvent, SessionDump};
pub use file::FileStore;
pub(crate) use file::SessionDir;
pub use file::fs::ReadError;
pub use file::inbox::Counts as InboxCounts;
pub use file::session::{Enqueued, NewEntry, NewSession};
pub use file::workers::WorkerRecord;

/// A home's sessions, wherever they are kept: what the worker asks of them as a whole.
pub trait Store: Send + Sync {
    /// The clock the store stamps its records with.
    fn clock(&self) -> Arc<dyn Clock>;

    /// Makes ready what workers need, once when a worker starts.
    fn prepare_workers(&self) -> Result<()>;

    /// Registers a worker as running for as long as the guard lives. With
    /// `max_workers`, takes one of that many slots, or returns `None` when all are held.
    fn register_worker(
        &self,
        worker: &WorkerInfo,
        max_workers: Option<usize>,
    ) -> Result<Option<Guard>>;

    /// Sessions that may have work waiting: those announced since (cheap), or with
    /// `full` every session that has any (the source of truth).
    fn pending(&self, full: bool) -> Result<Vec<Uuid>>;

    /// Calls `wake` whenever work may have been announced, until the guard is dropped:
    /// a hint that makes pickup fast. `None` where the store cannot tell (then only the
    /// scans of [`Store::pending`] find the work).
    fn notify_pending(&self, wake: Box<dyn Fn() + Send + Sync>) -> Option<Guard>;

    /// Makes `worker` the owner of session `id`, unless another worker is.
    fn claim(&self, id: Uuid, worker: &WorkerInfo) -> Result<Claimed>;

    /// Creates a session.
    fn create_session(&self, new: NewSession) -> Result<SessionMeta>;

    /// The one session a whole id or a unique prefix names.
    fn resolve(&self, input: &str) -> Result<Box<dyn Session>>;

    /// A session known to exist (from [`Store::session_ids`]).
    fn session(&self, id: Uuid) -> Box<dyn Session>;

    /// Every session id, oldest first.
    fn session_ids(&self) -> Result<Vec<Uuid>>;

    /// The workers running now.
    fn live_workers(&self) -> Result<Vec<WorkerRecord>>;

    /// Where the sessions are kept, as messages name it (the file store: its
    /// `sessions/` directory).
    fn describe(&self) -> String;

    /// Makes what a home's sessions need (`agentq init`), leaving what exists as it is.
    /// `created` is told, as each is made, where the things a user would look for are;
    /// returns whether anything was made at all.
    fn init(&self, created: &mut dyn FnMut(&str) -> Result<()>) -> Result<bool>;

    /// What opening the store did to its schema (`agentq store migrate` reports it):
    /// `None` for a store that has none to migrate (the files).
    fn migrated(&self) -> Option<pg::schema::Migrated>;

    /// Session `id`, whole, as one consistent snapshot (`agentq store copy`). Refused
    /// (exit 75) while a worker owns it: its writes would land on one side of the copy
    /// only. A session a crashed worker left mid-execution is taken as the next owner
    /// would find it, and the copy's next owner resumes it.
    fn export(&self, id: Uuid) -> Result<SessionDump>;

    /// Writes a session exported from another store, with this store's own rules:
    /// visible whole or not at all. Refused (exit 2) when a session with its id exists
    /// here; nothing is overwritten.
    fn import(&self, dump: &SessionDump) -> Result<()>;
}

/// One session, for anyone: what commands (and a server) read and ask of it. Taking
/// its messages is [`Store::claim`]'s, which makes the caller its owner.
pub trait Session: Send + Sync {
    fn id(&self) -> Uuid;

    /// `session.json`: the session's identity, status and totals.
    fn meta(&self) -> Result<SessionMeta>;

    /// `state.json`: where the session stands (the execution in progress, the task list).
    fn state(&self) -> Result<AgentState>;

    /// The settled lines of the transcript up to `mark`. A damaged transcript is an
    /// error saying so, and the session is announced for an owner to repair it.
    fn transcript(&self, mark: TranscriptMark) -> Result<Vec<TranscriptLine>>;

    /// Every readable execution record, oldest first.
    fn executions(&self) -> Result<Vec<Execution>>;

    /// One execution's record, which should exist (a missing one is an error naming
    /// it, with nothing more said, as the plain reads below).
    fn execution(&self, id: Uuid) -> Result<Execution>;

    // The plain reads fail with the store's own error, saying what could not be read
    // and nothing more: for a caller that words the way out itself, where `meta` and
    // `state` attach the remedy.

    /// `session.json`, its error plain.
    fn plain_meta(&self) -> Result<SessionMeta>;

    /// `state.json`, its error plain.
    fn plain_state(&self) -> Result<AgentState>;

    /// The execution in progress, if one is: its record, or what the state says of one
    /// that has not written its record yet.
    fn running_execution(&self) -> Option<Execution>;

    /// The readable entries waiting in the inbox, in run order.
    fn inbox(&self) -> Result<Vec<InboxEntry>>;

    /// What waits in the inbox, the message of the execution in progress told apart.
    fn inbox_counts(&self) -> Result<InboxCounts>;

    /// The worker that owns the session now, if one does.
    fn owner(&self) -> Option<WorkerInfo>;

    /// The worker that last owned the session; it may have exited since.
    fn last_owner(&self) -> Option<WorkerInfo>;

    /// Queues an entry (`send`, `cancel`, `retry`); with a key that queued one before,
    /// queues nothing and names the first.
    fn enqueue(&self, entry: NewEntry) -> Result<Enqueued>;

    /// Moves the session to another status, recording the change as an event; returns
    /// the status it had. Moving to the status it has changes and records nothing.
    fn set_status(&self, to: SessionStatus) -> Result<SessionStatus>;

    /// Removes the session and everything in it; refused while a worker owns it.
    fn remove(&self) -> Result<()>;

    /// Where the event log ends now: following from there sees only what comes next.
    fn events_end(&self) -> Result<Position>;

    /// Where the first event with `seq > after` is (or will be).
    fn events_after(&self, after: u64) -> Result<Position>;

    /// The last event of one of `types`, and where it starts.
    fn last_event(&self, types: &[&str]) -> Result<Option<(Position, RawEvent)>>;

    /// Follows the event log from `from` as it grows.
    fn follow(&self, from: Position) -> Result<Box<dyn EventFeed>>;

    /// Reads the event log from `from` as [`Session::follow`] does, for a reader that
    /// wants what is there now (a replay): nothing is set up to hear of new events, so
    /// a thousand replays cost a thousand reads and nothing more, and its `wait` only
    /// polls.
    fn replay(&self, from: Position) -> Result<Box<dyn EventFeed>>;
}

/// A place in a session's event log, for following it from there. Opaque: the file
/// store counts bytes, a database would count seqs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position(pub(crate) u64);

impl Position {
    /// The start of every log: following from there sees all of it.
    pub const START: Position = Position(0);
}

/// One line read from the event log: the raw text (for `--json`) and the parsed
/// envelope, absent for a line that is not an event (skipped by renderers).
pub struct LogLine {
    pub raw: Vec<u8>,
    pub event: Option<RawEvent>,
}

/// A session's event log, followed as it grows.
pub trait EventFeed: Send {
    /// Lines appended since the last call, without waiting.
    fn read(&mut self) -> Result<Vec<LogLine>>;

    /// Waits until the log may have grown (a notification, or a short poll).
    fn wait(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;

    /// False once the session (and so its log) was removed.
    fn exists(&self) -> bool;
}

/// Something held for as long as it lives (a registration, a subscription).
pub type Guard = Box<dyn Send>;

/// How `--store` (or `[store] url`) names the file store, the default.
pub const FILES: &str = "files";

/// The shortest `[store] lease`: the owner renews every third of it, and a renewal
/// must reach the database in that time, through a slow network or a busy server.
pub const MIN_LEASE: std::time::Duration = std::time::Duration::from_secs(1);

/// What `[store] lease` must be, in the words of every refusal.
pub const LEASE_RANGE: &str = "at least 1s and at most 8784h (a year), such as \"30s\"";

/// Whether the store `url` names (as [`open`] takes it) marks `home` as a home: the
/// files do, once `agentq init` or a first session made `sessions/`; a database keeps
/// nothing in the home, which is then marked by its own files only (`agents/`,
/// `agentq.toml`), as on every host of a database store. Asked before the store is
/// opened, so a directory that is not a home is refused the same way (exit 2)
/// whichever store is named, without connecting to a database for it.
pub fn marks_home(url: Option<&str>, home: &std::path::Path) -> bool {
    match url {
        None | Some(FILES) => file::sessions_dir_in(home).exists(),
        Some(_) => false,
    }
}

/// Opens the store a home's sessions are kept in: `None` or [`FILES`] for the files
/// under `<home>/sessions/`, a `postgres://` URL for a database (whose schema is
/// created or migrated on first use). `lease` is `[store] lease`: how long a database
/// store's lease lasts unless renewed (the file store's lock does not expire).
pub fn open(
    url: Option<&str>,
    lease: Option<std::time::Duration>,
    home: &std::path::Path,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn crate::ids::IdGen>,
) -> Result<Arc<dyn Store>, crate::error::UserError> {
    match url {
        None | Some(FILES) => Ok(Arc::new(FileStore::new(home.to_owned(), clock, ids))),
        Some(url) => {
            let url = pg::DbUrl::parse(url)?;
            let store = pg::PgStore::open(&url, home, clock, ids)?;
            Ok(Arc::new(match lease {
                Some(lease) => store.with_lease(lease),
                None => store,
            }))
        }
    }
}

/// Lets go of the holds this process has on sessions, for an exit that skips their
/// release (a worker's second signal), waiting at most `within`: a database lease
/// would otherwise stay held until it expires, where a file store's lock ends with
/// the process.
pub fn release_before_exit(within: std::time::Duration) {
    pg::release_all(within);
}

/// Files a session's owner keeps on its own host, beside the store: the workspace
/// directories and the record of running commands ([`LocalFiles`]). Written with the
/// store's own primitives, so they share its modes and its temp-file names (which the
/// clean-up of files left by killed writers knows).
pub mod local {
    pub use super::file::fs::{create_dir_private, temp_path, write_json_unsynced};
}

/// What every store decides when the execution a claim finds is started again: it
/// runs for `worker` now, and counts another attempt if a crash (not a clean
/// shutdown, which suspends it on purpose) interrupted it; one that crashed at its
/// last attempt is not started again ([`Start::Exhausted`]), its count as it stands.
/// The state's copy of the count follows, so the two never disagree for long. The
/// caller writes what changed.
pub(crate) fn restart(exec: &mut Execution, worker: &WorkerInfo, state: &mut AgentState) -> Start {
    exec.worker = worker.clone();
    if !exec.suspended && exec.attempts >= MAX_ATTEMPTS {
        tracing::warn!(session = %exec.session_id, execution = %exec.id, attempts = exec.attempts, "every attempt was interrupted by a crash; giving up");
        return Start::Exhausted;
    }
    // Parked or not, it runs now: the gate decides again whether the call waits.
    exec.awaiting_approval = None;
    if exec.suspended {
        exec.suspended = false;
    } else {
        exec.attempts += 1;
    }
    tracing::info!(session = %exec.session_id, execution = %exec.id, attempt = exec.attempts, "resuming");
    if let Some(current) = state.current.as_mut() {
        current.attempts = exec.attempts;
    }
    Start::Resumed
}

/// How many times an execution may be started (first, then resumed after a crash):
/// one whose last attempt crashed too fails instead of starting again.
pub const MAX_ATTEMPTS: u32 = 3;

/// The owner's hold on one session, from [`Store::claim`] until it is released.
///
/// The methods are the owner's writes, in the order the module's docs give. The file
/// store's hold (a lock on a file) cannot be lost while the process lives; a database
/// store's lease can expire, and then every write returns [`LeaseLost`] and the owner
/// stops its execution at once.
pub trait Lease: Send {
    /// The session held.
    fn session_id(&self) -> Uuid;

    /// Confirms the hold (and, for a store whose leases expire, extends it).
    fn renew(&mut self) -> Result<()>;

    /// Claims what comes next in the inbox, in `seq` order: see [`Next`]. Entries that
    /// need no execution (a `cancel` with nothing running, one that settled before and
    /// came back) are consumed on the way; unreadable ones are set aside and logged.
    fn next(&mut self) -> Result<Next>;

    /// `session.json` as it stands.
    fn meta(&self) -> Result<SessionMeta>;

    /// Whether the session was paused since the claim.
    fn paused(&mut self) -> bool;

    /// The settled transcript up to `mark`: the history an execution goes on from.
    fn history(&self, mark: TranscriptMark) -> Result<Vec<TranscriptLine>>;

    /// Appends one event of the execution `execution` (or of the session); returns its seq.
    fn append(&mut self, execution: Option<Uuid>, payload: EventPayload) -> Result<u64>;

    /// Persists a settled step: `lines`, the last of them carrying `state` (whose
    /// transcript mark advances). Without lines, persists the state alone: a
    /// side-effecting call about to run, or a step closed without a result.
    fn checkpoint(&mut self, lines: Vec<TranscriptLine>, state: &mut AgentState) -> Result<()>;

    /// Whether a `cancel` was queued for the running message since it was claimed.
    fn cancel_requested(&mut self) -> bool;

    /// What was decided of a call of the claimed execution that waits for approval:
    /// the first `approve` or `deny` entry naming it, else how far the inbox was seen.
    fn decision(&mut self, call: &DecisionRef) -> Result<Decision>;

    /// Leaves the claimed execution parked on the call its record names
    /// (`awaiting_approval`), as [`Lease::suspend`] leaves one, durably. The session is
    /// then not claimed again until an entry newer than `seen_through` is queued (a
    /// decision, a cancel, a message) or the call's `deny_at` passes;
    /// [`Parked::Again`] when one was queued already, for the drain to go on with.
    fn park(&mut self, execution: &Execution, seen_through: u64) -> Result<Parked>;

    /// Settles the claimed execution: `execution` carries its outcome (status, stop
    /// reason, response or error, totals) and `state` the state it ends in.
    fn settle(&mut self, execution: &Execution, state: &AgentState) -> Result<()>;

    /// Leaves the claimed execution at its last checkpoint, for a later owner to resume
    /// without counting another attempt (a shutdown, a pause).
    fn suspend(&mut self, execution: &Execution) -> Result<()>;

    /// Files of this session on this host: its workspace (`workspace = "session"`) and
    /// the record of the process groups its commands run in.
    fn local(&self) -> LocalFiles;

    /// Ends the hold, making durable what the drain left for the end.
    fn release(self: Box<Self>) -> Result<()>;

    // Completion hooks (`crate::worker::hooks`): the settling writes an execution's
    // into the state with the rest of it; these read and shrink that list between
    // messages, never while one is claimed.

    /// The completion hooks the session's state holds, not delivered yet.
    fn hooks(&mut self) -> Result<Vec<PendingHook>>;

    /// Replaces the hooks the state holds (one delivered or given up on leaves, one
    /// about to be attempted counts it). Not durable at once: a change lost with a
    /// power failure only delivers a hook again, which at-least-once allows.
    fn save_hooks(&mut self, hooks: &[PendingHook]) -> Result<()>;

    /// The `execution.finished` line of `execution`, byte for byte as the log holds
    /// it (without its `\n`), or why there is none.
    fn finished_line(&mut self, execution: Uuid) -> Result<FinishedLine>;
}

/// What [`Lease::finished_line`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishedLine {
    /// The line, as the log holds it.
    Written(String),
    /// The execution is not settled (a crash between the state and the record, on
    /// the files): it is resumed and settled again, which writes the line.
    Unsettled,
    /// The execution is settled, yet the log lacks the line: a log damaged and set
    /// aside by a repair. Nothing will write it any more.
    Missing,
}

/// What [`Lease::park`] left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parked {
    /// Nothing new in the inbox: the session waits, and the drain ends.
    Released,
    /// An entry came meanwhile: the drain goes on to [`Lease::next`].
    Again,
}

/// What [`Lease::next`] found.
#[derive(Debug)]
pub enum Next {
    /// The inbox is empty (looked at twice, so a `send` racing the look is not missed).
    Empty,
    /// The session is paused: its messages wait.
    Paused,
    /// A message to run, its execution begun or resumed.
    Run(Box<Claim>),
    /// A message whose execution settled before a crash left it in the inbox; its
    /// settling was finished and the entry removed. Nothing to run.
    Finished(Box<Execution>),
    /// Nothing to run from this look (an entry that needed no execution was consumed,
    /// or the inbox was seen empty once): call again.
    Again,
}

/// A claimed message and the execution that answers it.
#[derive(Debug)]
pub struct Claim {
    pub entry: InboxEntry,
    pub execution: Execution,
    /// The state the execution goes on from.
    pub state: AgentState,
    pub start: Start,
}

/// How a claimed execution starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Its first attempt.
    New,
    /// Resumed from its last checkpoint: after a crash (its attempt counted) or after a
    /// shutdown that suspended it.
    Resumed,
    /// Every attempt so far was interrupted by a crash ([`MAX_ATTEMPTS`]): it is not
    /// started again, and the owner settles it failed.
    Exhausted,
}

/// A session's files on the host that runs it.
#[derive(Debug, Clone)]
pub struct LocalFiles {
    /// The workspace of `workspace = "session"`.
    pub workspace: PathBuf,
    /// Where the process groups of running commands are recorded, so a later owner can
    /// end what a killed one left running.
    pub processes: PathBuf,
}

/// The hold on a session was lost (a database lease taken over after it expired): the
/// owner may write nothing more.
#[derive(Debug, thiserror::Error)]
#[error("lost the ownership of session {session} to another worker")]
pub struct LeaseLost {
    pub session: Uuid,
}

/// A lease of the worker that took it, as [`Store::claim`] returns it.
pub type Owned = Box<dyn Lease>;

/// What [`Store::claim`] may give a worker.
pub enum Claimed {
    /// The caller owns the session until it releases the lease.
    Owned(Owned),
    /// Another worker owns it.
    Busy,
    /// The session no longer exists.
    Gone,
}
