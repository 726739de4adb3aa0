//! Operations on a whole session: creating it, changing `session.json` under the
//! session's write lock, queueing inbox entries, the owner lock, removal.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};

use anyhow::{Context, Result};
use uuid::Uuid;

use super::events::offset_of_last;
use super::fs::{self, AtPath, ReadError};
use super::{FileStore, SessionDir, inbox};
use crate::domain::event::{
    CancelRequested, EventPayload, MessageQueued, SessionCreated, SessionStatusChanged,
};
use crate::domain::execution::WorkerInfo;
use crate::domain::inbox::{EntryKind, InboxEntry};
use crate::domain::session::{Counters, EventsPreset, SessionMeta, SessionStatus};
use crate::domain::state::AgentState;
use crate::domain::{FORMAT_VERSION, Usage};
use crate::error::{Remedy, UserError};
use crate::text::preview;

/// What `session new` asks for.
pub struct NewSession {
    pub agent: String,
    pub title: Option<String>,
    pub config: BTreeMap<String, serde_json::Value>,
    pub events: EventsPreset,
    pub agent_hash: String,
}

impl NewSession {
    /// The `session.json` of the new session, whichever store keeps it.
    pub(crate) fn into_meta(self, id: Uuid, now: crate::time::Timestamp) -> SessionMeta {
        SessionMeta {
            v: FORMAT_VERSION,
            id,
            agent: self.agent,
            title: self.title,
            status: SessionStatus::Active,
            events: self.events,
            config: self.config,
            agent_hash: self.agent_hash,
            created_at: now,
            updated_at: now,
            counters: Counters::default(),
            usage: Usage::default(),
            last_message_seq: 0,
            last_execution: None,
            extra_session_tokens: 0,
            cost_usd: None,
        }
    }
}

impl FileStore {
    /// Creates a session. It is assembled in a dot-named staging directory and renamed
    /// into place, so a crash never leaves a half-made session that looks real.
    pub(crate) fn create(&self, new: NewSession) -> Result<SessionMeta> {
        let id = self.ids.new_id();
        let sessions = self.sessions_dir();
        fs::create_dir_private(&sessions)?;
        fs::create_dir_private(&self.ready_dir())?;
        let staging = SessionDir {
            id,
            path: sessions.join(format!(".new-{id}")),
        };
        let now = self.clock.now();
        let meta = new.into_meta(id, now);
        let build = || -> Result<()> {
            for dir in [
                staging.path.clone(),
                staging.inbox_dir(),
                staging.executions_dir(),
                staging.workspace_dir(),
            ] {
                fs::create_dir_private(&dir)?;
            }
            fs::write_json(&staging.meta_path(), &meta)?;
            // A new directory: nothing in it was swapped before.
            staging.write_state(
                &AgentState::default(),
                fs::Durable::Now,
                &mut fs::UnsyncedSwaps::default(),
            )?;
            let created = SessionCreated {
                agent: meta.agent.clone(),
                title: meta.title.clone(),
                config: meta.config.clone().into_iter().collect(),
                events: meta.events,
                agent_hash: Some(meta.agent_hash.clone()),
            };
            let mut log = staging.open_events(self.clock.clone())?;
            log.append(None, EventPayload::SessionCreated(created))?;
            std::fs::rename(&staging.path, self.dir(id).path).at(&staging.path)?;
            fs::sync_dir(&sessions)?;
            Ok(())
        };
        if let Err(err) = build() {
            let _ = std::fs::remove_dir_all(&staging.path);
            return Err(err).with_context(|| format!("creating session in {}", sessions.display()));
        }
        Ok(meta)
    }

    /// Records that entries up to `seq` left the inbox without an execution (consumed
    /// cancel entries), so their seqs are never handed out again.
    pub(crate) fn note_consumed(&self, dir: &SessionDir, seq: u64) -> Result<()> {
        let mut log = dir.open_events(self.clock.clone())?;
        let _locked = log.lock()?;
        let mut meta = meta_with_remedy(dir)?;
        if seq > meta.last_message_seq {
            meta.last_message_seq = seq;
            fs::write_json(&dir.meta_path(), &meta)?;
        }
        Ok(())
    }

    /// Queues an entry in a session's inbox (`send`, `cancel`).
    pub(crate) fn enqueue(&self, dir: &SessionDir, new: NewEntry) -> Result<Enqueued> {
        let mut log = dir.open_events(self.clock.clone())?;
        let mut locked = log.lock()?;
        let mut meta = meta_for_queueing(dir, new.raise_session_tokens > 0)?;
        if new.kind == EntryKind::User && meta.status == SessionStatus::Closed {
            return Err(UserError::usage(format!(
                "session {} is closed and takes no new messages",
                dir.id
            ))
            .with_remedy(Remedy::StartAnother { agent: meta.agent })
            .into());
        }
        let key_path = new
            .key
            .as_deref()
            .map(|key| dir.keys_dir().join(hex(key.as_bytes())));
        if let Some(path) = &key_path
            && let Some(first) = read_key(dir, path, new.key.as_deref().unwrap_or_default())?
        {
            return Ok(Enqueued {
                id: first,
                seq: None,
                duplicate: true,
            });
        }
        let seq = next_seq(dir, &meta)?;
        let entry = InboxEntry {
            id: self.ids.new_id(),
            seq,
            kind: new.kind,
            content: new.content,
            metadata: new.metadata,
            key: new.key,
            created_at: self.clock.now(),
            attempts: 0,
        };
        inbox::publish(&dir.inbox_dir(), &entry)
            .with_context(|| format!("writing to the inbox of session {}", dir.id))?;
        if let Some(path) = &key_path {
            // A file in its place held no key (they are files inside it).
            super::recover::ensure_dir(&dir.keys_dir(), entry.created_at)?;
            fs::replace(path, entry.id.to_string().as_bytes())?;
        }
        self.mark_ready(dir.id)?;
        // session.json is not rewritten for a message (two fsyncs fewer per send): the
        // entry itself holds its seq until the worker that settles it records the seq
        // (and counts the message) in session.json, before removing the entry.
        if new.raise_session_tokens > 0 {
            meta.extra_session_tokens = meta
                .extra_session_tokens
                .saturating_add(new.raise_session_tokens);
            meta.updated_at = entry.created_at;
            fs::write_json(&dir.meta_path(), &meta)?;
        }
        locked.append(None, queued_event(&entry))?;
        Ok(Enqueued {
            id: entry.id,
            seq: Some(seq),
            duplicate: false,
        })
    }

    /// Moves a session to another status, recording the change as an event. Moving to
    /// the status it already has changes nothing and records nothing.
    pub(crate) fn set_status(&self, dir: &SessionDir, to: SessionStatus) -> Result<SessionStatus> {
        let mut log = dir.open_events(self.clock.clone())?;
        let mut locked = log.lock()?;
        let mut meta = meta_with_remedy(dir)?;
        let from = meta.status;
        if from == to {
            return Ok(from);
        }
        if from == SessionStatus::Closed {
            return Err(UserError::usage(format!(
                "session {} is closed; a closed session cannot be {}",
                dir.id,
                match to {
                    SessionStatus::Active => "resumed",
                    _ => "paused",
                }
            ))
            .into());
        }
        meta.status = to;
        meta.updated_at = self.clock.now();
        fs::write_json(&dir.meta_path(), &meta)?;
        locked.append(
            None,
            EventPayload::SessionStatus(SessionStatusChanged {
                status: to,
                previous_status: from,
            }),
        )?;
        Ok(from)
    }

    /// Removes a session and everything in it. Refused while a worker owns it.
    pub(crate) fn remove_session(&self, dir: &SessionDir) -> Result<()> {
        let Some(_owner) = dir.try_lock_owner(None)? else {
            return Err(
                UserError::usage(format!("session {} is being worked on", dir.id))
                    .with_remedy(Remedy::CancelOrWait { session: dir.id })
                    .into(),
            );
        };
        // Renamed away first so that a crash midway never leaves a half-deleted session
        // under its id; a dot name is invisible to listings.
        let trash = self
            .sessions_dir()
            .join(format!(".trash-{}-{}", dir.id, std::process::id()));
        std::fs::rename(&dir.path, &trash)
            .with_context(|| format!("removing {}", dir.path.display()))?;
        fs::sync_dir(&self.sessions_dir())?;
        self.clear_ready(dir.id)?;
        std::fs::remove_dir_all(&trash).with_context(|| format!("removing {}", trash.display()))?;
        Ok(())
    }
}

/// `session.json` for queueing an entry. A corrupt one does not stop a message: what
/// queueing needs of it (the status, the seqs handed out) is rebuilt from the event log
/// in memory, and the worker that takes the message repairs the file itself; only an
/// entry that must change it (`rewrites`) needs it whole.
fn meta_for_queueing(dir: &SessionDir, rewrites: bool) -> Result<SessionMeta> {
    match dir.read_meta() {
        Ok(meta) => Ok(meta),
        Err(ReadError::Corrupt { .. } | ReadError::NotFound { .. }) if !rewrites => {
            dir.rebuild_meta()
        }
        Err(_) => meta_with_remedy(dir),
    }
}

/// The seq of the next entry: above every seq handed out: in session.json, in the
/// inbox, the one the state names (session.json can lag behind it after a power
/// failure, and an entry below it counts as settled), and the last one the log says
/// was queued (an entry deleted by hand takes its seq out of the inbox, not out of the
/// log; found from the end, it costs a block or two).
fn next_seq(dir: &SessionDir, meta: &SessionMeta) -> Result<u64> {
    let claimed = dir.read_state().map_or(0, |state| state.claimed_seq());
    let logged = match offset_of_last(&dir.events_path(), &["message.queued"])? {
        Some((_, event)) => match event.into_event().ok().flatten().map(|e| e.payload) {
            Some(EventPayload::MessageQueued(queued)) => queued.seq,
            _ => 0,
        },
        None => 0,
    };
    Ok(meta
        .last_message_seq
        .max(inbox::highest_seq(&dir.inbox_dir())?)
        .max(claimed)
        .max(logged)
        + 1)
}

/// The event that records an entry queued.
pub(crate) fn queued_event(entry: &InboxEntry) -> EventPayload {
    match entry.kind {
        EntryKind::User => EventPayload::MessageQueued(MessageQueued {
            message_id: entry.id,
            seq: entry.seq,
            key: entry.key.clone(),
            content_preview: if entry.is_continue() {
                "(continue)".to_owned()
            } else {
                preview(&entry.content, 100)
            },
        }),
        EntryKind::Cancel => EventPayload::CancelRequested(CancelRequested {
            message_id: entry.id,
        }),
        EntryKind::Approve | EntryKind::Deny => {
            EventPayload::ApprovalDecided(crate::domain::approval::ApprovalDecided::of_entry(entry))
        }
    }
}

/// Reads `session.json` for someone to read the error: a missing or damaged file is a
/// [`UserError`] naming it, with the [`Remedy`] that gets the session going again
/// ([`SessionDir::read_meta`] is the plain read).
pub fn meta_with_remedy(dir: &SessionDir) -> Result<SessionMeta> {
    match dir.read_meta() {
        Ok(meta) => Ok(meta),
        Err(ReadError::NotFound { .. }) => Err(UserError::usage(format!(
            "session {} has no session.json ({})",
            dir.id,
            dir.meta_path().display(),
        ))
        .with_remedy(Remedy::RebuildFromEventLog { session: dir.id })
        .into()),
        Err(err) => Err(damaged(dir, err)),
    }
}

/// Reads `state.json` for someone to read the error, as [`meta_with_remedy`] does.
pub fn state_with_remedy(dir: &SessionDir) -> Result<AgentState> {
    dir.read_state().map_err(|err| damaged(dir, err))
}

/// The error for a file of a session that cannot be read, with the way out: a
/// corrupt `session.json` or `state.json` is repaired by a worker, anything else needs
/// a person (or the session's removal).
pub fn damaged(dir: &SessionDir, err: ReadError) -> anyhow::Error {
    let repairable = |path: &std::path::Path| path == dir.meta_path() || path == dir.state_path();
    let remedy = match &err {
        ReadError::Corrupt { path, .. } | ReadError::NotFound { path } if repairable(path) => {
            Remedy::RebuildFromLogs
        }
        _ => Remedy::RepairOrRemove { session: dir.id },
    };
    UserError::failed(err.to_string())
        .with_remedy(remedy)
        .into()
}

/// An entry to queue.
pub struct NewEntry {
    pub kind: EntryKind,
    pub content: String,
    pub key: Option<String>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Tokens added to the session's `session_max_tokens` (`send --raise-budget`).
    pub raise_session_tokens: u64,
}

/// The outcome of [`FileStore::enqueue`].
#[derive(Debug, Clone, Copy)]
pub struct Enqueued {
    pub id: Uuid,
    /// `None` when the key matched an earlier message and nothing was queued.
    pub seq: Option<u64>,
    pub duplicate: bool,
}

/// The message a key queued first, from its file. A damaged key file (or a file where
/// `keys/` belongs) is answered from the event log instead, whose `message.queued`
/// events carry the keys: idempotency holds through the damage.
fn read_key(dir: &SessionDir, path: &std::path::Path, key: &str) -> Result<Option<Uuid>> {
    let damage = match std::fs::read_to_string(path) {
        Ok(text) => match Uuid::try_parse(text.trim()) {
            Ok(id) => return Ok(Some(id)),
            Err(e) => format!("it does not hold a message id ({e})"),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => e.to_string(),
    };
    if let Some(id) = key_in_log(dir, key)? {
        return Ok(Some(id));
    }
    if std::fs::symlink_metadata(dir.keys_dir()).is_ok_and(|m| !m.is_dir()) {
        return Ok(None);
    }
    Err(UserError::failed(format!(
        "{} is damaged ({damage}), and the event log has no message queued with key `{key}`",
        path.display()
    ))
    .with_remedy(Remedy::RemoveAndResend)
    .into())
}

/// The message queued with `key`, according to the event log.
fn key_in_log(dir: &SessionDir, key: &str) -> Result<Option<Uuid>> {
    let mut reader = super::events::LogReader::open_at(&dir.events_path(), 0)?;
    Ok(reader
        .read_lines()?
        .iter()
        .filter_map(|raw| super::events::parse_line(raw)?.into_event().ok().flatten())
        .find_map(|event| match event.payload {
            EventPayload::MessageQueued(queued) if queued.key.as_deref() == Some(key) => {
                Some(queued.message_id)
            }
            _ => None,
        }))
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The advisory lock a worker holds while it owns a session. Released when dropped
/// (closing the file releases the lock, even when the process is killed).
pub struct OwnerLock {
    _file: File,
}

impl SessionDir {
    /// Takes the owner lock without waiting; `None` if another process holds it.
    /// The lock file is never deleted: two processes locking two different inodes of
    /// the same name would both think they own the session.
    pub(crate) fn try_lock_owner(&self, worker: Option<&WorkerInfo>) -> Result<Option<OwnerLock>> {
        let path = self.lock_path();
        let Some(mut file) = super::recover::try_lock_clearing(&path)
            .with_context(|| format!("locking {}", path.display()))?
        else {
            return Ok(None);
        };
        if let Some(worker) = worker {
            // Who owns it, for `agentq status`; informative only, so not fsynced.
            let line = serde_json::json!({"pid": worker.pid, "host": worker.host});
            file.set_len(0)
                .and_then(|()| writeln!(file, "{line}"))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(Some(OwnerLock { _file: file }))
    }
}
