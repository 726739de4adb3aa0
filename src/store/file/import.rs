//! Moving a session into and out of the file store (`agentq store copy`): a session
//! directory read whole into a [`SessionDump`], and one written from a dump.
//!
//! Reading takes the owner lock (so no worker claims the session meanwhile, and one
//! that owns it refuses the copy) and the session's write lock (so no `send`, `pause`
//! or `close` lands between two of the files read), then repairs what a crash left as
//! any claim does first (`state.json` behind the transcript, `session.json` behind the
//! records): the copy is the session as its next owner would find it.
//!
//! Writing assembles the session in a dot-named staging directory (invisible to
//! listings), makes every file and directory in it durable, and renames it into place
//! without replacing anything: a crash leaves no half-copied session, and a session
//! with the same id, however it got there, is never overwritten.

use std::io;
use std::path::Path;

use anyhow::{Context, Result};
use uuid::Uuid;

use super::events::{LogReader, parse_line};
use super::fs::{self, AtPath, ReadError};
use super::session::{damaged, hex, meta_with_remedy};
use super::{FileStore, SessionDir, inbox, transcript};
use crate::domain::event::EventPayload;
use crate::domain::execution::Execution;
use crate::error::UserError;
use crate::store::dump::{self, DumpedEvent, SessionDump};

impl FileStore {
    /// [`crate::store::Store::export`] for the file store.
    pub(crate) fn export_session(&self, id: Uuid) -> Result<SessionDump> {
        let dir = self.dir(id);
        if !dir.path.is_dir() {
            return Err(UserError::usage(format!(
                "no session {id} in {}",
                self.sessions_dir().display()
            ))
            .into());
        }
        // Taken without naming a worker: the lock file keeps naming the last one.
        let Some(_owner) = dir.try_lock_owner(None)? else {
            return Err(dump::owned(id, dir.lock_owner().as_ref()).into());
        };
        let mut log = dir.open_events(self.clock.clone())?;
        let _locked = log.lock()?;
        super::lease::recover_files(self, &dir, &mut fs::UnsyncedSwaps::default())?;
        let meta = meta_with_remedy(&dir)?;
        let state = dir.read_state().map_err(|err| damaged(&dir, err))?;
        let transcript = transcript::read(&dir.transcript_path(), state.transcript)?;
        let listing = inbox::list(&dir.inbox_dir())?;
        if let Some(unreadable) = listing.unreadable.into_iter().next() {
            return Err(unreadable_entry(unreadable));
        }
        let events = read_events(&dir)?;
        Ok(SessionDump {
            keys: read_keys(&dir, &events)?,
            executions: read_executions(&dir)?,
            inbox: listing.entries.into_iter().map(|file| file.entry).collect(),
            last_owner: dir.lock_owner(),
            meta,
            state,
            transcript,
            events,
        })
    }

    /// [`crate::store::Store::import`] for the file store.
    pub(crate) fn import_session(&self, dump: &SessionDump) -> Result<()> {
        let id = dump.id();
        let sessions = self.sessions_dir();
        fs::create_dir_private(&sessions)?;
        fs::create_dir_private(&self.ready_dir())?;
        let target = self.dir(id);
        if std::fs::symlink_metadata(&target.path).is_ok() {
            return Err(dump::exists(id, &self.describe_files()).into());
        }
        let staging = SessionDir {
            id,
            path: sessions.join(format!(".copy-{id}-{}", std::process::id())),
        };
        let built = write_session(&staging, dump)
            .and_then(|()| rename_new(&staging.path, &target.path, id, &self.describe_files()));
        if let Err(err) = built {
            let _ = std::fs::remove_dir_all(&staging.path);
            return Err(err)
                .with_context(|| format!("copying session {id} into {}", sessions.display()));
        }
        fs::sync_dir(&sessions)?;
        if !dump.inbox.is_empty() {
            self.mark_ready(id)?;
        }
        Ok(())
    }

    fn describe_files(&self) -> String {
        self.sessions_dir().display().to_string()
    }
}

/// Every file of the session in `dir` (a new directory), then made durable.
fn write_session(dir: &SessionDir, dump: &SessionDump) -> Result<()> {
    for sub in [
        dir.path.clone(),
        dir.inbox_dir(),
        dir.executions_dir(),
        dir.workspace_dir(),
    ] {
        fs::create_dir_private(&sub)?;
    }
    fs::write_json_unsynced(&dir.meta_path(), &dump.meta)?;
    let mut state = dump.state.clone();
    // The mark counts the lines as written here, which is what every later append and
    // read of this transcript measures against.
    state.transcript = transcript::append(
        &dir.transcript_path(),
        Default::default(),
        &dump.transcript,
        fs::Durable::Later,
    )?;
    fs::write_json_unsynced(&dir.state_path(), &state)?;
    for exec in &dump.executions {
        fs::write_json_unsynced(&dir.execution_path(exec.id), exec)?;
    }
    for entry in &dump.inbox {
        fs::write_json_unsynced(&dir.inbox_dir().join(entry.file_name()), entry)?;
    }
    if !dump.keys.is_empty() {
        fs::create_dir_private(&dir.keys_dir())?;
        for (key, message) in &dump.keys {
            write_unsynced(
                &dir.keys_dir().join(hex(key.as_bytes())),
                message.to_string().as_bytes(),
            )?;
        }
    }
    let mut log = Vec::new();
    for event in &dump.events {
        log.extend_from_slice(event.line.as_bytes());
        log.push(b'\n');
    }
    write_unsynced(&dir.events_path(), &log)?;
    if let Some(worker) = &dump.last_owner {
        // As a claim writes it (`SessionDir::try_lock_owner`): who ran the session last.
        let line = serde_json::json!({"pid": worker.pid, "host": worker.host});
        write_unsynced(&dir.lock_path(), format!("{line}\n").as_bytes())?;
    }
    sync_tree(&dir.path)?;
    Ok(())
}

/// A new file holding `bytes`, not yet fsynced ([`sync_tree`] does it).
fn write_unsynced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    fs::create_private(path)?.write_all(bytes).at(path)
}

/// fsyncs every file and directory under `root`, the directories after what they hold.
fn sync_tree(root: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(root).at(root)? {
        let path = entry.at(root)?.path();
        if std::fs::symlink_metadata(&path).at(&path)?.is_dir() {
            sync_tree(&path)?;
        } else {
            fs::sync_path(&path)?;
        }
    }
    fs::sync_dir(root)
}

/// Renames the staging directory to the session's name, never over anything there.
fn rename_new(from: &Path, to: &Path, id: Uuid, store: &str) -> Result<()> {
    let Err(err) = fs::rename_with(from, to, libc::RENAME_NOREPLACE) else {
        return Ok(());
    };
    match err.raw_os_error() {
        Some(libc::EEXIST | libc::ENOTEMPTY) => Err(dump::exists(id, store).into()),
        // A file system without the flag: the look before is the guard.
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
            if std::fs::symlink_metadata(to).is_ok() {
                return Err(dump::exists(id, store).into());
            }
            Ok(std::fs::rename(from, to).at(to)?)
        }
        _ => Err(fs::with_path(err, to).into()),
    }
}

/// The event log's complete lines, each an event with a seq above the one before:
/// a line that is not one (damage) stops the copy, which must keep every line.
fn read_events(dir: &SessionDir) -> Result<Vec<DumpedEvent>> {
    let path = dir.events_path();
    let mut events: Vec<DumpedEvent> = Vec::new();
    for (i, raw) in LogReader::open_at(&path, 0)?
        .read_lines()?
        .into_iter()
        .enumerate()
    {
        let bad = |why: &str| {
            UserError::failed(format!(
                "line {} of {} {why}; a copy keeps every line of the log, so fix or remove that line first",
                i + 1,
                path.display()
            ))
        };
        let event = parse_line(&raw).ok_or_else(|| bad("is not an event"))?;
        if events.last().is_some_and(|last| last.seq >= event.seq) {
            return Err(bad(&format!("has seq {}, not above the line before", event.seq)).into());
        }
        let line = String::from_utf8(raw).map_err(|_| bad("is not UTF-8"))?;
        events.push(DumpedEvent {
            seq: event.seq,
            kind: event.kind,
            line,
        });
    }
    Ok(events)
}

/// Every execution record; one that cannot be read stops the copy (a copy without it
/// would count the session's executions differently).
fn read_executions(dir: &SessionDir) -> Result<Vec<Execution>> {
    let path = dir.executions_dir();
    let mut records: Vec<Execution> = Vec::new();
    for entry in std::fs::read_dir(&path).at(&path)? {
        let file = entry.at(&path)?.path();
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| !n.starts_with('.') && n.ends_with(".json")) {
            records.push(fs::read_json(&file)?);
        }
    }
    records.sort_by_key(|e| e.id);
    Ok(records)
}

/// The idempotency keys: the files of `keys/`, and for a key whose file is damaged or
/// gone, the first message the event log says was queued with it (as `send --key`
/// answers then).
fn read_keys(dir: &SessionDir, events: &[DumpedEvent]) -> Result<Vec<(String, Uuid)>> {
    let mut keys = std::collections::BTreeMap::new();
    let path = dir.keys_dir();
    if path.is_dir() {
        for entry in std::fs::read_dir(&path).at(&path)? {
            let file = entry.at(&path)?.path();
            let Some(key) = file
                .file_name()
                .and_then(|n| unhex(&n.to_string_lossy()))
                .and_then(|bytes| String::from_utf8(bytes).ok())
            else {
                continue;
            };
            if let Ok(message) = std::fs::read_to_string(&file)
                .map_err(drop)
                .and_then(|text| Uuid::try_parse(text.trim()).map_err(drop))
            {
                keys.insert(key, message);
            }
        }
    }
    for event in events.iter().filter(|e| e.kind == "message.queued") {
        let queued = parse_line(event.line.as_bytes())
            .and_then(|raw| raw.into_event().ok().flatten())
            .map(|event| event.payload);
        if let Some(EventPayload::MessageQueued(queued)) = queued
            && let Some(key) = queued.key
        {
            keys.entry(key).or_insert(queued.message_id);
        }
    }
    Ok(keys.into_iter().collect())
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn unreadable_entry(err: ReadError) -> anyhow::Error {
    UserError::failed(format!(
        "{err}; a copy takes every inbox entry, so move it out of the inbox (a worker does) or remove it first"
    ))
    .into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_file_names_decode_to_the_keys_they_encode() {
        let key = "daily-2026-11-21 ü";
        let name = super::hex(key.as_bytes());
        assert_eq!(super::unhex(&name).as_deref(), Some(key.as_bytes()));
        assert_eq!(super::unhex("abc"), None);
        assert_eq!(super::unhex("zz"), None);
    }
}
