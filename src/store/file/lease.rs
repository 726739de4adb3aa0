//! The file store's [`Lease`]: the owner lock of a session held by a worker, and the
//! lifecycle of its messages written as files in the order the store's docs give
//! (`crate::store`, "The lifecycle of a message").

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tracing::{error, info, warn};
use uuid::Uuid;

use super::events::{EventLog, last_line_of, offset_of_last};
use super::fs::{Durable, ReadError, UnsyncedSwaps};
use super::inbox::{self, InboxFile};
use super::recover::{ensure_dir, move_aside, read_or_rebuild};
use super::session::{OwnerLock, meta_with_remedy};
use super::{FileStore, SessionDir, transcript};
use crate::domain::Usage;
use crate::domain::approval::{Decision, DecisionRef};
use crate::domain::event::{EventPayload, closing_events};
use crate::domain::execution::{ExecStatus, Execution, WorkerInfo};
use crate::domain::hook::PendingHook;
use crate::domain::inbox::{EntryKind, InboxEntry};
use crate::domain::session::{SessionMeta, SessionStatus};
use crate::domain::state::{AgentState, CurrentExecution, TranscriptMark};
use crate::domain::transcript::{Message, TranscriptLine};
use crate::store::{Claim, Claimed, FinishedLine, Lease, LocalFiles, Next, Parked, Start};

/// A worker's ownership of one session: its owner lock, its open event log, and what
/// the claimed message has written so far.
pub struct FileLease {
    store: FileStore,
    dir: SessionDir,
    log: EventLog,
    worker: WorkerInfo,
    /// Held until the lease is dropped; closing the file releases it, even on a kill.
    _lock: OwnerLock,
    /// The inbox was seen empty once and the ready marker cleared: the next empty look
    /// ends the drain.
    looked_again: bool,
    /// Whether the drain wrote what [`Lease::release`] makes durable.
    wrote: bool,
    unsynced: UnsyncedSwaps,
    running: Option<Running>,
    /// The completion hooks `state.json` holds, as this owner last read or wrote them
    /// (it is their only writer).
    hooks: Vec<PendingHook>,
}

/// What the lease knows of the message it claimed.
struct Running {
    entry: InboxFile,
    /// Whether `state.json`, and the transcript it points into, are on disk as the loop
    /// left them: a checkpoint writes both durably, a claim does not.
    synced: bool,
    /// What `state.json` holds (the owner is its only writer), so settling writes it
    /// again only if the execution changed it since.
    written: AgentState,
    cancels: CancelWatch,
}

impl Lease for FileLease {
    fn session_id(&self) -> Uuid {
        self.dir.id
    }

    fn renew(&mut self) -> Result<()> {
        // A lock held by an open file cannot be taken away while the process lives.
        Ok(())
    }

    fn next(&mut self) -> Result<Next> {
        self.running = None;
        if meta_with_remedy(&self.dir)?.status == SessionStatus::Paused {
            return Ok(Next::Paused);
        }
        let listing = inbox::head(&self.dir.inbox_dir())?;
        for unreadable in &listing.unreadable {
            // Kept (renamed, so it is no longer an entry) for someone to look at.
            if let ReadError::Corrupt { path, .. } = unreadable {
                let aside = move_aside(path, self.store.clock.now())?;
                error!(session = %self.dir.id, "{unreadable}; moved it to {}", aside.display());
            } else {
                warn!(session = %self.dir.id, "skipping an inbox entry: {unreadable}");
            }
        }
        let Some(head) = listing.entries.into_iter().next() else {
            // The marker goes only once the inbox was seen empty, and the inbox is
            // looked at once more afterwards, so a concurrent `send` is never missed.
            if self.looked_again {
                return Ok(Next::Empty);
            }
            self.store.clear_ready(self.dir.id)?;
            self.looked_again = true;
            return Ok(Next::Again);
        };
        self.looked_again = false;
        self.wrote = true;
        if head.entry.kind == EntryKind::Cancel || head.entry.is_decision() {
            // Nothing is running that it could cancel, or decide (a decision that came
            // after its execution settled, or its call was answered).
            self.note_consumed(head.entry.seq)?;
            inbox::remove(&head.path)?;
            return Ok(Next::Again);
        }
        self.claim_entry(head)
    }

    fn meta(&self) -> Result<SessionMeta> {
        meta_with_remedy(&self.dir)
    }

    fn paused(&mut self) -> bool {
        self.dir
            .read_meta()
            .is_ok_and(|meta| meta.status == SessionStatus::Paused)
    }

    fn history(&self, mark: TranscriptMark) -> Result<Vec<TranscriptLine>> {
        Ok(transcript::read(&self.dir.transcript_path(), mark)?)
    }

    fn append(&mut self, execution: Option<Uuid>, payload: EventPayload) -> Result<u64> {
        Ok(self.log.append(execution, payload)?)
    }

    fn checkpoint(&mut self, lines: Vec<TranscriptLine>, state: &mut AgentState) -> Result<()> {
        // The user message the claim appended without fsync is synced with the first.
        let sync_transcript = !self.running_mut()?.synced;
        self.dir
            .checkpoint(lines, state, sync_transcript, &mut self.unsynced)?;
        let running = self.running_mut()?;
        running.synced = true;
        running.written = state.clone();
        Ok(())
    }

    fn cancel_requested(&mut self) -> bool {
        self.running
            .as_mut()
            .is_some_and(|claimed| claimed.cancels.requested())
    }

    fn decision(&mut self, call: &DecisionRef) -> Result<Decision> {
        Ok(super::approval::decision(&self.dir.inbox_dir(), call)?)
    }

    fn park(&mut self, exec: &Execution, seen_through: u64) -> Result<Parked> {
        self.suspend(exec)?;
        // The marker goes: the session has nothing to run until an entry comes, whose
        // own marker brings it back. One queued before the marker went is seen here.
        self.store.clear_ready(self.dir.id)?;
        if super::approval::has_newer(&self.dir.inbox_dir(), seen_through)? {
            return Ok(Parked::Again);
        }
        Ok(Parked::Released)
    }

    fn settle(&mut self, exec: &Execution, state: &AgentState) -> Result<()> {
        let Some(claimed) = self.running.take() else {
            anyhow::bail!("settling session {} with no message claimed", self.dir.id);
        };
        if exec.status == ExecStatus::Cancelled {
            // The cancel entries it obeyed leave the inbox with it.
            if let Some(seq) = claimed.cancels.seen.iter().map(|(_, seq)| *seq).max() {
                self.note_consumed(seq)?;
            }
            for (path, _) in &claimed.cancels.seen {
                inbox::remove(path)?;
            }
        }
        // The state the record settles must be on disk first: written again unless the
        // last checkpoint holds it (a failed model call, for one, changes the call
        // count without a checkpoint; an execution that failed before its first step
        // has none).
        if !claimed.synced {
            self.dir
                .write_state_and_transcript(state, true, &mut self.unsynced)?;
        } else if claimed.written != *state {
            self.dir
                .write_state(state, Durable::Now, &mut self.unsynced)?;
        }
        self.hooks.clone_from(&state.hooks);
        // The record is the commit point; the state keeps naming the message.
        self.dir.write_execution(exec)?;
        self.finish(exec, false)?;
        inbox::remove(&claimed.entry.path)?;
        Ok(())
    }

    fn suspend(&mut self, exec: &Execution) -> Result<()> {
        self.running = None;
        let suspended = Execution {
            suspended: true,
            ..exec.clone()
        };
        self.dir.write_execution(&suspended)?;
        Ok(())
    }

    fn local(&self) -> LocalFiles {
        LocalFiles {
            workspace: self.dir.workspace_dir(),
            processes: self.dir.path.join("processes.json"),
        }
    }

    fn hooks(&mut self) -> Result<Vec<PendingHook>> {
        Ok(self.hooks.clone())
    }

    fn save_hooks(&mut self, hooks: &[PendingHook]) -> Result<()> {
        if self.running.is_some() {
            anyhow::bail!(
                "saving the hooks of session {} while a message runs",
                self.dir.id
            );
        }
        let mut state = self
            .dir
            .read_state()
            .with_context(|| format!("reading the state of session {}", self.dir.id))?;
        state.hooks = hooks.to_vec();
        // Not fsynced: a change lost with a power failure only delivers a hook again,
        // which at-least-once allows. Synced when the lease is released.
        self.dir
            .write_state(&state, Durable::Later, &mut self.unsynced)?;
        self.wrote = true;
        self.hooks = state.hooks;
        Ok(())
    }

    fn finished_line(&mut self, execution: Uuid) -> Result<FinishedLine> {
        if let Some(line) = last_line_of(&self.dir.events_path(), "execution.finished", execution)?
        {
            return Ok(FinishedLine::Written(
                String::from_utf8_lossy(&line).into_owned(),
            ));
        }
        // A settling is written state (hooks included), record, line, then the inbox
        // entry's removal. Cut short anywhere before the removal, the message is still
        // queued and the state still names the execution: the next claim resumes or
        // finishes it, writing the line, and delivers the hooks then. Only a settling
        // that went as far as the removal and has no line lost it to damage.
        let redone = self
            .dir
            .read_state()
            .ok()
            .and_then(|state| state.current)
            .is_some_and(|current| {
                current.execution_id == execution && self.queued(current.message_id)
            });
        if redone {
            return Ok(FinishedLine::Unsettled);
        }
        match self.dir.read_execution(execution) {
            Ok(record) if !record.status.is_terminal() => Ok(FinishedLine::Unsettled),
            Ok(_) | Err(ReadError::NotFound { .. }) => Ok(FinishedLine::Missing),
            Err(err) => Err(err.into()),
        }
    }

    fn release(mut self: Box<Self>) -> Result<()> {
        if self.wrote {
            self.dir.flush_drain(&mut self.unsynced)?;
        }
        Ok(())
    }
}

impl Drop for FileLease {
    fn drop(&mut self) {
        // A drain that failed was not released: what it swapped without a sync is
        // synced now (best effort), so the next owner's durable writes, which know
        // nothing of these swaps, never rewrite a spare the disk still names.
        if !self.unsynced.is_empty() {
            let _ = super::fs::sync_dir(&self.dir.path);
        }
    }
}

impl FileLease {
    /// Whether message `id` is still in the inbox (an unreadable listing counts as
    /// yes: a hook is kept rather than given up on a guess).
    fn queued(&self, id: Uuid) -> bool {
        let name_ends = format!("-{id}.json");
        inbox::entry_names(&self.dir.inbox_dir()).map_or(true, |names| {
            names.iter().any(|name| name.ends_with(&name_ends))
        })
    }

    /// Records that entries up to `seq` left the inbox without an execution; that
    /// rewrite of `session.json` syncs the session's directory.
    fn note_consumed(&mut self, seq: u64) -> Result<()> {
        self.store.note_consumed(&self.dir, seq)?;
        self.unsynced.synced(&self.dir.path);
        Ok(())
    }

    /// Takes the owner lock of session `id` without waiting, and repairs what a crash
    /// or a hand left damaged before anything else reads it.
    pub(super) fn claim(store: &FileStore, id: Uuid, worker: &WorkerInfo) -> Result<Claimed> {
        let dir = store.dir(id);
        if !dir.path.is_dir() {
            store.clear_ready(id)?;
            return Ok(Claimed::Gone);
        }
        let Some(lock) = dir.try_lock_owner(Some(worker))? else {
            return Ok(Claimed::Busy);
        };
        let mut unsynced = UnsyncedSwaps::default();
        let state = recover_files(store, &dir, &mut unsynced)?;
        let log = dir.open_events(store.clock.clone())?;
        Ok(Claimed::Owned(Box::new(FileLease {
            store: store.clone(),
            dir,
            log,
            worker: worker.clone(),
            _lock: lock,
            looked_again: false,
            wrote: false,
            unsynced,
            running: None,
            hooks: state.hooks,
        })))
    }

    fn running_mut(&mut self) -> Result<&mut Running> {
        match self.running.as_mut() {
            Some(claimed) => Ok(claimed),
            None => anyhow::bail!(
                "a checkpoint of session {} with no message claimed",
                self.dir.id
            ),
        }
    }

    /// Step 1 of the lifecycle for the entry at the head of the inbox.
    fn claim_entry(&mut self, file: InboxFile) -> Result<Next> {
        let entry = &file.entry;
        let mut state = self
            .dir
            .read_state()
            .with_context(|| format!("reading the state of session {}", self.dir.id))?;
        if state.has_moved_past(entry.seq) {
            warn!(session = %self.dir.id, message_id = %entry.id, "an inbox entry that settled before came back (its removal was lost); removing it again");
            inbox::remove(&file.path)?;
            return Ok(Next::Again);
        }
        let written = state.clone();
        let previous = state
            .current
            .clone()
            .filter(|current| current.message_id == entry.id);
        let (exec, start) = match previous {
            Some(current) => {
                let exec = self.previous_execution(entry, &current)?;
                if exec.status.is_terminal() {
                    // Settled by a worker that stopped before removing the entry.
                    info!(session = %self.dir.id, execution = %exec.id, "finishing an execution settled before a crash");
                    self.finish(&exec, true)?;
                    inbox::remove(&file.path)?;
                    return Ok(Next::Finished(Box::new(exec)));
                }
                self.resume(exec, &mut state)?
            }
            None => {
                let exec = self.new_execution(entry);
                info!(session = %self.dir.id, message_id = %entry.id, execution = %exec.id, "claimed");
                self.begin(entry, &exec, &mut state)?;
                (exec, Start::New)
            }
        };
        let cancels = CancelWatch::new(self.dir.inbox_dir(), entry.seq);
        let entry = entry.clone();
        self.running = Some(Running {
            entry: file,
            synced: false,
            written: if start == Start::New {
                state.clone()
            } else {
                written
            },
            cancels,
        });
        Ok(Next::Run(Box::new(Claim {
            entry,
            execution: exec,
            state,
            start,
        })))
    }

    /// The record of the execution the state names for this entry: read, or rebuilt
    /// from the state when a crash came before it was written or left it corrupt.
    fn previous_execution(
        &self,
        entry: &InboxEntry,
        current: &CurrentExecution,
    ) -> Result<Execution> {
        Ok(match self.dir.read_execution(current.execution_id) {
            Ok(exec) => exec,
            // A crash between naming the execution in the state and writing its record.
            Err(ReadError::NotFound { .. }) => Execution {
                id: current.execution_id,
                started_at: current.started_at,
                attempts: current.attempts,
                ..self.new_execution(entry)
            },
            Err(err @ ReadError::Corrupt { .. }) => {
                let path = self.dir.execution_path(current.execution_id);
                let aside = move_aside(&path, self.store.clock.now())?;
                error!(session = %self.dir.id, "{err}; moved it to {} and rebuilt it from the state", aside.display());
                Execution {
                    id: current.execution_id,
                    started_at: current.started_at,
                    attempts: current.attempts,
                    usage: current.usage,
                    steps: current.steps,
                    ..self.new_execution(entry)
                }
            }
            Err(err) => return Err(err.into()),
        })
    }

    /// Counts the attempt of an execution that is started again, or gives up on it
    /// ([`crate::store::restart`]), and marks its record running.
    fn resume(&self, mut exec: Execution, state: &mut AgentState) -> Result<(Execution, Start)> {
        let start = crate::store::restart(&mut exec, &self.worker, state);
        if start == Start::Resumed {
            // Not fsynced: `state.json` is what a resuming owner trusts.
            self.dir.mark_running(&exec)?;
        }
        Ok((exec, start))
    }

    fn new_execution(&self, entry: &InboxEntry) -> Execution {
        Execution::for_entry(
            entry,
            self.store.ids.new_id(),
            self.dir.id,
            self.worker.clone(),
            self.store.clock.now(),
        )
    }

    /// Puts the user message into the transcript and names the execution in the state:
    /// from here on, a crash resumes this execution instead of starting another. Not
    /// fsynced: the first checkpoint makes it durable. The attempt is counted in the
    /// state; the record is first written when the execution settles (one file fewer
    /// per message).
    fn begin(
        &mut self,
        entry: &InboxEntry,
        exec: &Execution,
        state: &mut AgentState,
    ) -> Result<()> {
        // `send --continue` adds no text: the model carries on from the history as is.
        if !entry.is_continue() {
            let line = TranscriptLine {
                message: Message::User {
                    content: entry.content.clone(),
                },
                message_id: Some(entry.id),
                execution_id: Some(exec.id),
                step: None,
                feedback: None,
                timestamp: exec.started_at,
                state: None,
            };
            state.transcript = transcript::append(
                &self.dir.transcript_path(),
                state.transcript,
                &[line],
                Durable::Later,
            )?;
        }
        let previous_execution = state.current.as_ref().map(|c| c.execution_id);
        state.current = Some(CurrentExecution {
            execution_id: exec.id,
            message_id: entry.id,
            message_seq: entry.seq,
            previous_execution,
            attempts: exec.attempts,
            steps: 0,
            usage: Usage::default(),
            started_at: exec.started_at,
            failed_steps_in_a_row: 0,
            failed_check_rounds: 0,
            invalid_answers: 0,
            parked_ms: 0,
            open_step: None,
        });
        self.dir
            .write_state(state, Durable::Later, &mut self.unsynced)?;
        Ok(())
    }

    /// Adds the execution to the session totals and writes the final events, under the
    /// session lock. When `recovering`, parts an earlier attempt wrote are skipped.
    fn finish(&mut self, exec: &Execution, recovering: bool) -> Result<()> {
        let now = self.store.clock.now();
        let mut locked = self.log.lock()?;
        let mut meta = meta_with_remedy(&self.dir)?;
        if meta.last_execution != Some(exec.id) {
            meta.add_execution(exec);
            // A message settles one execution, so this counts it, as `recount` does. Not
            // by its seq: a `cancel` entry consumed while it ran has a higher one.
            meta.counters.messages += 1;
            // `send` leaves the seq in the entry alone: it is recorded here, before the
            // entry leaves the inbox, so no later message gets the same one.
            meta.last_message_seq = meta.last_message_seq.max(exec.message_seq);
            meta.updated_at = now;
            // Made durable when the lease is released.
            self.dir
                .write_meta(&meta, Durable::Later, &mut self.unsynced)?;
        }
        if recovering {
            let written = offset_of_last(&self.dir.events_path(), &["execution.finished"])?
                .is_some_and(|(_, event)| event.execution_id == Some(exec.id));
            if written {
                return Ok(());
            }
        }
        // One write: a crash leaves all or none, and recovery (above) writes them only
        // if `execution.finished` is missing.
        locked.append_all(Some(exec.id), closing_events(exec, &meta))?;
        Ok(())
    }
}

/// Moves a corrupt `session.json` or `state.json` aside and rebuilds it from the
/// session's logs, so one damaged session neither stops the worker nor stays stuck.
/// Returns the state as it now is.
pub(super) fn recover_files(
    store: &FileStore,
    dir: &SessionDir,
    unsynced: &mut UnsyncedSwaps,
) -> Result<AgentState> {
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
    if let Some((rebuilt, note)) = dir.repair_transcript(&state, store.clock.now(), unsynced)? {
        error!(session = %dir.id, "{note}");
        state = rebuilt;
    }
    if let Some(newer) = dir.roll_forward(&state)? {
        warn!(session = %dir.id, "state.json was behind the transcript's last checkpoint (a power failure, or a worker killed between the two writes); rolled forward to it");
        dir.write_state(&newer, Durable::Now, unsynced)?;
        state = newer;
    }
    if let Some(note) = dir.catch_up_meta(meta, &state)? {
        warn!(session = %dir.id, "{note}");
    }
    let removed =
        super::recover::remove_stale_temps(&[&dir.path, &dir.inbox_dir(), &dir.executions_dir()]);
    if removed > 0 {
        info!(session = %dir.id, removed, "removed temp files left by killed writers");
    }
    Ok(state)
}

/// Notices `cancel` entries queued after the running message. The inbox is listed at
/// most every 50 ms, and only entries not seen before are read.
struct CancelWatch {
    inbox: PathBuf,
    after_seq: u64,
    checked: Option<Instant>,
    known: std::collections::HashSet<String>,
    /// Cancel entries seen, with their seqs.
    seen: Vec<(PathBuf, u64)>,
}

impl CancelWatch {
    const INTERVAL: Duration = Duration::from_millis(50);

    fn new(inbox: PathBuf, after_seq: u64) -> CancelWatch {
        CancelWatch {
            inbox,
            after_seq,
            checked: None,
            known: Default::default(),
            seen: Vec::new(),
        }
    }

    fn requested(&mut self) -> bool {
        if !self.seen.is_empty() {
            return true;
        }
        if self.checked.is_some_and(|t| t.elapsed() < Self::INTERVAL) {
            return false;
        }
        self.checked = Some(Instant::now());
        let Ok(names) = inbox::entry_names(&self.inbox) else {
            return false;
        };
        for name in names {
            if !self.known.insert(name.clone()) {
                continue;
            }
            let path = self.inbox.join(&name);
            if let Ok(entry) = super::fs::read_json::<InboxEntry>(&path)
                && entry.kind == EntryKind::Cancel
                && entry.seq > self.after_seq
            {
                self.seen.push((path, entry.seq));
            }
        }
        !self.seen.is_empty()
    }
}
