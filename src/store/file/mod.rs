//! The file store: every session as files under `<home>/sessions/` (ARCHITECTURE.md
//! §1), implementing the interface of [`crate::store`].
//!
//! [`FileStore`] knows the layout of the home; [`SessionDir`] the layout of one session;
//! [`FileSession`] is a session for commands, [`FileLease`] for its owner. Nothing
//! outside this module builds a path under `sessions/`, and a session id only becomes a
//! path after [`FileStore::resolve_dir`] matched it against the directory listing.
//!
//! # Rules every writer follows
//! - **Replace** ([`fs`]): the new version is written beside the target (a temp file, or
//!   for the files rewritten for every message the spare inode of
//!   [`fs::replace_reusing`]), then renamed or exchanged over it. What an
//!   acknowledgement depends on (a queued message, a settled execution, a
//!   side-effecting call about to run) is fsynced, with its directory, before the
//!   acknowledgement; a file that can be rebuilt from a durable log may be written
//!   without fsync, and the owner syncs it later (the durability notes of
//!   [`crate::store`] say which). A failed fsync fails the operation; it is not retried.
//! - **Append** ([`events`], [`transcript`]): one `write` of whole lines under an
//!   exclusive lock of the file; readers skip an unterminated last line, and the next
//!   writer cuts it off before appending. The event log's lock is also the session's
//!   write lock: whoever changes `session.json` holds it for the read-modify-write and
//!   the event that records it.
//! - **Damage** ([`recover`]): a corrupt or unreadable file is never replaced by a
//!   default: a command fails naming it; the owner moves it aside and rebuilds it from
//!   what is only ever appended (the event log, the transcript, the records).
//! - **Ownership** ([`session::OwnerLock`]): an advisory lock on `<session>/lock`, held
//!   by the worker that owns the session for as long as its process lives; the inbox
//!   entry's `.ready` marker only speeds up discovery (a full scan finds the work).
//! - Session files are 0600, directories 0700; no secret is ever written.

mod approval;
pub(crate) mod events;
pub(crate) mod follow;
pub(crate) mod fs;
mod handle;
mod import;
pub(crate) mod inbox;
mod lease;
pub(crate) use handle::FileSession;
pub(crate) use lease::FileLease;
pub(crate) mod recover;
pub(crate) mod session;
pub(crate) mod transcript;
pub(crate) mod workers;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use uuid::Uuid;

use crate::domain::execution::Execution;
use crate::domain::session::SessionMeta;
use crate::domain::state::{AgentState, TranscriptMark};
use crate::domain::transcript::TranscriptLine;
use crate::error::UserError;
use crate::ids::{IdGen, IdQuery};
use crate::time::Clock;
use events::EventLog;
use fs::{AtPath, Durable, ReadError};

/// The home directory and the services every store operation needs.
#[derive(Clone)]
pub struct FileStore {
    home: PathBuf,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) ids: Arc<dyn IdGen>,
    /// The last listing of `sessions/`, for a long-lived user (`serve`) that lists often.
    listed: Arc<std::sync::Mutex<Option<Listed>>>,
}

/// Session ids as `sessions/` held them, and when the directory had last changed then.
struct Listed {
    modified: std::time::SystemTime,
    at: std::time::Instant,
    ids: Vec<Uuid>,
}

/// How long a listing is trusted while the directory's time says nothing changed: a
/// bound on what a file system with a coarse or skewed clock could hide.
const LISTING_KEPT: std::time::Duration = std::time::Duration::from_secs(5);

/// A listing is kept only once the directory's last change is at least this old: a
/// change in the same tick of a coarse file-system clock (Linux stamps with the
/// scheduler tick) would leave its time as it was, unseen.
const SETTLED: std::time::Duration = std::time::Duration::from_secs(1);

/// Where the file store keeps the sessions of `home`.
pub(crate) fn sessions_dir_in(home: &Path) -> PathBuf {
    home.join("sessions")
}

impl FileStore {
    pub fn new(home: PathBuf, clock: Arc<dyn Clock>, ids: Arc<dyn IdGen>) -> FileStore {
        FileStore {
            home,
            clock,
            ids,
            listed: Arc::default(),
        }
    }

    pub(crate) fn sessions_dir(&self) -> PathBuf {
        sessions_dir_in(&self.home)
    }

    /// `sessions/.ready/`: one empty marker per session with pending inbox entries.
    pub(crate) fn ready_dir(&self) -> PathBuf {
        self.sessions_dir().join(".ready")
    }

    /// The directory of a session known to exist (from a listing or a marker).
    pub(crate) fn dir(&self, id: Uuid) -> SessionDir {
        SessionDir {
            id,
            path: self.sessions_dir().join(id.to_string()),
        }
    }

    /// Every session id in the home, oldest first. Entries that are not ids are ignored.
    ///
    /// Listing ten thousand sessions reads ten thousand directory entries (about 10 ms
    /// here), so the last listing is kept while `sessions/` has not changed since: its
    /// modification time moves whenever a session is made or removed (not when one is
    /// written to, which happens inside it). A listing taken right after a change is
    /// not kept ([`SETTLED`]), nor any for longer than [`LISTING_KEPT`].
    pub(crate) fn list_ids(&self) -> io::Result<Vec<Uuid>> {
        let dir = self.sessions_dir();
        let modified = std::fs::metadata(&dir).and_then(|m| m.modified()).ok();
        let mut listed = self.listed.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(kept), Some(modified)) = (listed.as_ref(), modified)
            && kept.modified == modified
            && kept.at.elapsed() < LISTING_KEPT
        {
            return Ok(kept.ids.clone());
        }
        let mut ids = uuid_entries(&dir)?;
        ids.sort_unstable();
        let settled = modified.filter(|m| m.elapsed().is_ok_and(|age| age >= SETTLED));
        *listed = settled.map(|modified| Listed {
            modified,
            at: std::time::Instant::now(),
            ids: ids.clone(),
        });
        Ok(ids)
    }

    /// Sessions with a `.ready` marker.
    pub(crate) fn ready_ids(&self) -> io::Result<Vec<Uuid>> {
        uuid_entries(&self.ready_dir())
    }

    /// Finds the one session a whole id or unique prefix names.
    pub(crate) fn resolve_dir(&self, input: &str) -> anyhow::Result<SessionDir> {
        let query = IdQuery::parse(input)?;
        let sessions = self.sessions_dir();
        if let IdQuery::Full(id) = query {
            let dir = self.dir(id);
            if dir.path.is_dir() {
                return Ok(dir);
            }
            return Err(
                UserError::usage(format!("no session {id} in {}", sessions.display())).into(),
            );
        }
        let matches: Vec<Uuid> = self
            .list_ids()
            .with_context(|| format!("listing {}", sessions.display()))?
            .into_iter()
            .filter(|id| query.matches(id))
            .collect();
        match matches.as_slice() {
            [id] => Ok(self.dir(*id)),
            [] => Err(UserError::usage(format!(
                "no session id starts with `{input}` in {}",
                sessions.display()
            ))
            .into()),
            many => Err(UserError::usage(format!(
                "`{input}` matches {} sessions ({}); give more of the id",
                many.len(),
                many.iter()
                    .take(3)
                    .map(Uuid::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into()),
        }
    }

    /// Marks a session as having pending entries. Not fsynced: the marker only speeds up
    /// discovery, and the worker's full scan finds the entries without it.
    pub(crate) fn mark_ready(&self, id: Uuid) -> io::Result<()> {
        let dir = self.ready_dir();
        let path = dir.join(id.to_string());
        match fs::create_private(&path) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            // Missing, or a file in its place (moved aside: markers are all it holds).
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                recover::ensure_dir(&dir, self.clock.now())?;
                fs::create_private(&path).map(drop).or_else(ignore_exists)
            }
            Err(e) => Err(fs::with_path(e, &path)),
        }
    }

    /// The settled lines of a session's transcript, for a command. A damaged
    /// transcript is an error saying so, and the session is marked ready: the worker
    /// that claims it next repairs it ([`SessionDir::repair_transcript`]), with or
    /// without a message waiting.
    pub(crate) fn read_transcript(
        &self,
        dir: &SessionDir,
        mark: TranscriptMark,
    ) -> io::Result<Vec<TranscriptLine>> {
        transcript::read(&dir.transcript_path(), mark).inspect_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                // Best effort: the error is what the user needs to see.
                let _ = self.mark_ready(dir.id);
            }
        })
    }

    pub(crate) fn clear_ready(&self, id: Uuid) -> io::Result<()> {
        let path = self.ready_dir().join(id.to_string());
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(fs::with_path(e, &path)),
            _ => Ok(()),
        }
    }
}

impl crate::store::Store for FileStore {
    fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    fn prepare_workers(&self) -> anyhow::Result<()> {
        if let Some(aside) = recover::ensure_dir(&self.ready_dir(), self.clock.now())? {
            tracing::error!(
                "{} was not a directory; moved it to {} and made the directory again",
                self.ready_dir().display(),
                aside.display()
            );
        }
        Ok(())
    }

    fn register_worker(
        &self,
        worker: &crate::domain::execution::WorkerInfo,
        max_workers: Option<usize>,
    ) -> anyhow::Result<Option<crate::store::Guard>> {
        Ok(FileStore::register(self, worker, max_workers)?
            .map(|registration| Box::new(registration) as crate::store::Guard))
    }

    fn pending(&self, full: bool) -> anyhow::Result<Vec<Uuid>> {
        // The markers always count (a stale one is cleared by draining its session); a
        // full scan adds every session with entries, marked or not.
        let mut ids = self.ready_ids()?;
        if full {
            for id in self.list_ids()? {
                if ids.contains(&id) {
                    continue;
                }
                // A session whose inbox cannot be listed is claimed too: its drain fails
                // naming the path, logged once per full scan, and the others go on.
                let dir = self.dir(id);
                let waiting = inbox::entry_names(&dir.inbox_dir()).map_or(true, |n| !n.is_empty())
                    && !approval::parked_and_quiet(&dir, self.clock.now());
                if waiting || dir.needs_owner() {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    fn notify_pending(&self, wake: Box<dyn Fn() + Send + Sync>) -> Option<crate::store::Guard> {
        use notify::Watcher;
        let handler = move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| e.kind.is_create() || e.kind.is_modify()) {
                wake();
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(err) => {
                tracing::warn!("file notifications unavailable ({err}); scanning every second");
                return None;
            }
        };
        let ready = self.ready_dir();
        if let Err(err) = watcher.watch(&ready, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(
                "cannot watch {} ({err}); scanning every second",
                ready.display()
            );
            return None;
        }
        Some(Box::new(watcher))
    }

    fn claim(
        &self,
        id: Uuid,
        worker: &crate::domain::execution::WorkerInfo,
    ) -> anyhow::Result<crate::store::Claimed> {
        FileLease::claim(self, id, worker)
    }

    fn create_session(&self, new: session::NewSession) -> anyhow::Result<SessionMeta> {
        FileStore::create(self, new)
    }

    fn resolve(&self, input: &str) -> anyhow::Result<Box<dyn crate::store::Session>> {
        Ok(self.handle(FileStore::resolve_dir(self, input)?))
    }

    fn session(&self, id: Uuid) -> Box<dyn crate::store::Session> {
        self.handle(FileStore::dir(self, id))
    }

    fn session_ids(&self) -> anyhow::Result<Vec<Uuid>> {
        Ok(FileStore::list_ids(self)?)
    }

    fn live_workers(&self) -> anyhow::Result<Vec<workers::WorkerRecord>> {
        FileStore::workers_alive(self)
    }

    fn describe(&self) -> String {
        self.sessions_dir().display().to_string()
    }

    fn migrated(&self) -> Option<crate::store::pg::schema::Migrated> {
        // Files have no schema: their formats are versioned line by line (`v`).
        None
    }

    fn export(&self, id: Uuid) -> anyhow::Result<crate::store::SessionDump> {
        self.export_session(id)
    }

    fn import(&self, dump: &crate::store::SessionDump) -> anyhow::Result<()> {
        self.import_session(dump)
    }

    fn init(&self, created: &mut dyn FnMut(&str) -> anyhow::Result<()>) -> anyhow::Result<bool> {
        let mut made = false;
        for dir in [self.sessions_dir(), self.ready_dir()] {
            if !dir.is_dir() {
                fs::create_dir_private(&dir)?;
                // `.ready/` is the store's own bookkeeping: nothing a user looks for.
                if dir != self.ready_dir() {
                    created(&format!("{}/", dir.display()))?;
                }
                made = true;
            }
        }
        Ok(made)
    }
}

impl FileStore {
    fn handle(&self, dir: SessionDir) -> Box<dyn crate::store::Session> {
        Box::new(FileSession {
            store: self.clone(),
            dir,
        })
    }
}

fn ignore_exists(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::AlreadyExists {
        Ok(())
    } else {
        Err(e)
    }
}

/// Names in `dir` that are UUIDs; a missing directory has none.
fn uuid_entries(dir: &Path) -> io::Result<Vec<Uuid>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(fs::with_path(e, dir)),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let name = entry.at(dir)?.file_name();
        // Only the canonical form: a directory named in upper case, or without hyphens,
        // would not be found again under the id's canonical name.
        if let Some(name) = name.to_str()
            && let Ok(id) = Uuid::try_parse(name)
            && id.hyphenated().to_string() == name
        {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// The files of one session.
#[derive(Debug, Clone)]
pub struct SessionDir {
    pub id: Uuid,
    pub path: PathBuf,
}

impl SessionDir {
    pub(crate) fn meta_path(&self) -> PathBuf {
        self.path.join("session.json")
    }
    pub(crate) fn state_path(&self) -> PathBuf {
        self.path.join("state.json")
    }
    pub(crate) fn transcript_path(&self) -> PathBuf {
        self.path.join("transcript.ndjson")
    }
    pub(crate) fn events_path(&self) -> PathBuf {
        self.path.join("events.ndjson")
    }
    pub(crate) fn inbox_dir(&self) -> PathBuf {
        self.path.join("inbox")
    }
    pub(crate) fn executions_dir(&self) -> PathBuf {
        self.path.join("executions")
    }
    /// `keys/<hex of key>`: idempotency keys of `send --key`, each holding a message id.
    pub(crate) fn keys_dir(&self) -> PathBuf {
        self.path.join("keys")
    }
    pub(crate) fn lock_path(&self) -> PathBuf {
        self.path.join("lock")
    }
    pub(crate) fn workspace_dir(&self) -> PathBuf {
        self.path.join("workspace")
    }
    pub(crate) fn execution_path(&self, id: Uuid) -> PathBuf {
        self.executions_dir().join(format!("{id}.json"))
    }

    pub(crate) fn read_meta(&self) -> Result<SessionMeta, ReadError> {
        fs::read_json(&self.meta_path())
    }

    pub(crate) fn read_state(&self) -> Result<AgentState, ReadError> {
        fs::read_json(&self.state_path())
    }

    /// Replaces `session.json`, reusing its inodes ([`fs::replace_reusing`]): it is
    /// written for every message settled, with [`Durable::Later`] (the totals a drain's
    /// end makes durable, [`SessionDir::flush_drain`]).
    pub(crate) fn write_meta(
        &self,
        meta: &SessionMeta,
        durable: Durable,
        unsynced: &mut fs::UnsyncedSwaps,
    ) -> io::Result<()> {
        fs::replace_reusing(&self.meta_path(), &fs::json_bytes(meta)?, durable, unsynced)
    }

    /// Replaces `state.json`, reusing its inodes ([`fs::replace_reusing`]): it is
    /// rewritten twice per message. [`Durable::Later`] at the start of an execution,
    /// whose first checkpoint (or its settling, if it has none) makes the state
    /// durable, so a power failure before that loses only the claim (the message is
    /// still in the inbox); and after a checkpoint whose transcript lines, synced,
    /// carry the same state ([`SessionDir::roll_forward`] brings back what a power
    /// failure took).
    pub(crate) fn write_state(
        &self,
        state: &AgentState,
        durable: Durable,
        unsynced: &mut fs::UnsyncedSwaps,
    ) -> io::Result<()> {
        fs::replace_reusing(
            &self.state_path(),
            &fs::json_bytes(state)?,
            durable,
            unsynced,
        )
    }

    /// Writes `state.json` durably, and with `sync_transcript` the transcript lines it
    /// points to as well (appended without fsync): both must be on disk before the new
    /// state takes the name, but neither fsync depends on the other, so they run at the
    /// same time.
    pub(crate) fn write_state_and_transcript(
        &self,
        state: &AgentState,
        sync_transcript: bool,
        unsynced: &mut fs::UnsyncedSwaps,
    ) -> io::Result<()> {
        let transcript = self.transcript_path();
        std::thread::scope(|scope| {
            let synced = sync_transcript.then(|| scope.spawn(|| transcript::sync(&transcript)));
            fs::replace_reusing_after(
                &self.state_path(),
                &fs::json_bytes(state)?,
                fs::Durable::Now,
                unsynced,
                || match synced {
                    Some(synced) => synced
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                    None => Ok(()),
                },
            )
        })
    }

    /// Persists a settled step: appends `lines` to the transcript, the last one
    /// carrying `state` (whose mark it advances), and syncs them: that makes the
    /// checkpoint durable, and `state.json` follows without fsync (a worker finding it
    /// behind rolls forward, [`SessionDir::roll_forward`]). A checkpoint without lines
    /// (a side-effecting call about to run, a step closed without a result) writes
    /// `state.json` durably, with the transcript if `sync_transcript` (lines appended
    /// earlier without fsync).
    pub(crate) fn checkpoint(
        &self,
        mut lines: Vec<TranscriptLine>,
        state: &mut AgentState,
        sync_transcript: bool,
        unsynced: &mut fs::UnsyncedSwaps,
    ) -> io::Result<()> {
        let Some(last) = lines.last_mut() else {
            return self.write_state_and_transcript(state, sync_transcript, unsynced);
        };
        last.state = Some(Box::new(AgentState {
            transcript: TranscriptMark::default(),
            ..state.clone()
        }));
        state.transcript = transcript::append(
            &self.transcript_path(),
            state.transcript,
            &lines,
            fs::Durable::Now,
        )?;
        self.write_state(state, Durable::Later, unsynced)
    }

    /// Makes durable what an owner wrote without fsync while draining the inbox:
    /// `session.json` (the totals of each settled execution) and the removal of inbox
    /// entries. Called once per drain instead of once per message; until then, a power
    /// failure can bring back an entry (recognised by its seq, see
    /// [`AgentState::has_moved_past`]) or an older `session.json` (recounted from the
    /// records when the session is next claimed).
    pub(crate) fn flush_drain(&self, unsynced: &mut fs::UnsyncedSwaps) -> io::Result<()> {
        fs::sync_path(&self.meta_path())?;
        fs::sync_dir(&self.path)?;
        unsynced.synced(&self.path);
        fs::sync_dir(&self.inbox_dir())
    }

    pub(crate) fn read_execution(&self, id: Uuid) -> Result<Execution, ReadError> {
        fs::read_json(&self.execution_path(id))
    }

    pub(crate) fn write_execution(&self, execution: &Execution) -> io::Result<()> {
        fs::write_json(&self.execution_path(execution.id), execution)
    }

    /// Writes the record of an execution that resumes (`running`, its attempt counted).
    /// Not fsynced: `state.json`, written durably, is what a resuming worker trusts,
    /// and a record lost or emptied by a power failure is rebuilt from it; the settled
    /// record, the commit point, is always written durably.
    pub(crate) fn mark_running(&self, execution: &Execution) -> io::Result<()> {
        fs::write_json_unsynced(&self.execution_path(execution.id), execution)
    }

    pub(crate) fn open_events(&self, clock: Arc<dyn Clock>) -> io::Result<EventLog> {
        EventLog::open(&self.events_path(), self.id, clock)
    }

    /// The execution in progress: its record, or, for one that has not written its
    /// record yet (a record is first written when it is resumed, suspended or
    /// settled), what the state says.
    pub(crate) fn running_execution(&self, state: &AgentState) -> Option<Execution> {
        let current = state.current.as_ref()?;
        match self.read_execution(current.execution_id) {
            Ok(exec) => (!exec.status.is_terminal()).then_some(exec),
            Err(ReadError::NotFound { .. }) => Some(Execution::running_from(
                current,
                self.id,
                // The worker that claimed it wrote who it is into the lock file.
                self.lock_owner(),
            )),
            Err(_) => None,
        }
    }

    /// The worker that last took the owner lock, as it wrote itself into the lock
    /// file ([`SessionDir::try_lock_owner`]); it may have exited since.
    pub(crate) fn lock_owner(&self) -> Option<crate::domain::execution::WorkerInfo> {
        let text = std::fs::read_to_string(self.lock_path()).ok()?;
        serde_json::from_str(text.trim()).ok()
    }

    /// What waits in the inbox ([`inbox::count`]), the message of the execution in
    /// progress told apart from the others.
    pub(crate) fn inbox_counts(&self) -> io::Result<inbox::Counts> {
        let running = self
            .read_state()
            .ok()
            .and_then(|state| self.running_execution(&state))
            .map(|exec| exec.message_id);
        inbox::count(&self.inbox_dir(), running)
    }

    /// Every readable execution record, oldest first (ids are time-ordered).
    pub(crate) fn executions(&self) -> io::Result<Vec<Execution>> {
        let path = self.executions_dir();
        let mut records = Vec::new();
        let entries = match std::fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(records),
            Err(e) => return Err(fs::with_path(e, &path)),
        };
        for entry in entries {
            let file = entry.at(&path)?.path();
            if file.extension().is_some_and(|e| e == "json")
                && let Ok(record) = fs::read_json::<Execution>(&file)
            {
                records.push(record);
            }
        }
        records.sort_by_key(|e| e.id);
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets `dir`'s modification time `seconds` into the past, as if it last changed then.
    fn age(dir: &Path, seconds: i64) {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let then = libc::timespec {
            tv_sec: now - seconds,
            tv_nsec: 0,
        };
        // SAFETY: a valid C string and two timespecs, as utimensat expects.
        let done =
            unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), [then, then].as_ptr(), 0) };
        assert_eq!(done, 0, "utimensat");
    }

    #[test]
    fn a_kept_listing_sees_every_session_made_or_removed_since() {
        let home = tempfile::tempdir().unwrap();
        let store = FileStore::new(
            home.path().to_owned(),
            Arc::new(crate::time::SystemClock),
            Arc::new(crate::ids::V7Ids),
        );
        let sessions = store.sessions_dir();
        let first = Uuid::now_v7();
        std::fs::create_dir_all(sessions.join(first.to_string())).unwrap();
        age(&sessions, 10);
        assert_eq!(store.list_ids().unwrap(), [first]);
        assert!(
            store.listed.lock().unwrap().is_some(),
            "a settled listing is kept"
        );
        // Made after the kept listing: the directory's time moves, the listing is redone.
        let second = Uuid::now_v7();
        std::fs::create_dir(sessions.join(second.to_string())).unwrap();
        assert_eq!(store.list_ids().unwrap(), [first, second]);
        age(&sessions, 10);
        assert_eq!(store.list_ids().unwrap(), [first, second]);
        std::fs::remove_dir(sessions.join(first.to_string())).unwrap();
        assert_eq!(store.list_ids().unwrap(), [second]);
    }
}
