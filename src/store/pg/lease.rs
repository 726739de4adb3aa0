//! The Postgres store's [`Lease`]: a lease on the session's row (`owner`, `epoch`,
//! `lease_until` on the database clock), taken by [`PgLease::claim`] when it is free
//! or expired, renewed every third of its length by a thread while it is held, and
//! checked by every write: each runs in a transaction that first locks the row and
//! compares its `epoch` with the one the claim got, and writes nothing (failing with
//! [`crate::store::LeaseLost`]) when another worker took the session over since.
//!
//! The lifecycle is the file store's (`crate::store`, "The lifecycle of a message"),
//! with each step one transaction: where the file store orders its writes so a crash
//! between them is recoverable, here they commit together. Settling, for one, writes
//! the state, the record, the session totals, the closing events and the removal of
//! the inbox entry atomically; the recovery paths of [`Lease::next`] (an entry that
//! settled before, a settled record whose entry is still there) are kept for what
//! the file store may hand over (`agentq store copy`) and cost nothing otherwise.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tracing::{info, warn};
use uuid::Uuid;

use super::events::{self, INBOX_CHANNEL};
use super::pending::Pending;
use super::prepared::Prepared;
use super::session::{
    doc, read_execution, read_meta, read_transcript, transcript_rows, write_execution, write_meta,
    write_state,
};
use super::write::{OwnerWrite, Refused, owner_write};
use super::{Commit, Db, PgStore, TxError};
use crate::domain::Usage;
use crate::domain::approval::{Decision, DecisionRef};
use crate::domain::event::{EventPayload, closing_events};
use crate::domain::execution::{ExecStatus, Execution, WorkerInfo};
use crate::domain::hook::PendingHook;
use crate::domain::inbox::{EntryKind, InboxEntry};
use crate::domain::session::{SessionMeta, SessionStatus};
use crate::domain::state::{AgentState, CurrentExecution, TranscriptMark};
use crate::domain::transcript::{Message, TranscriptLine};
use crate::error::UserError;
use crate::store::{
    Claim, Claimed, FinishedLine, Lease, LeaseLost, LocalFiles, Next, Parked, Start,
};
use crate::time::Timestamp;

/// A worker's lease on one session, on a connection of its own.
pub struct PgLease {
    store: PgStore,
    db: Arc<Db>,
    id: Uuid,
    /// The epoch the claim set: the lease is this owner's while the row still has it.
    epoch: i64,
    worker: WorkerInfo,
    local: LocalFiles,
    running: Option<Running>,
    renewer: Option<Renewer>,
    /// The events appended and not written yet.
    pending: Pending,
    released: bool,
    /// The completion hooks the state holds, as this owner last read or wrote them;
    /// `None` until read (the claim tells whether there are any).
    hooks: Option<Vec<PendingHook>>,
}

/// The message claimed, and the cancels queued for it.
struct Running {
    entry: InboxEntry,
    cancels: CancelWatch,
    /// The session's meta as read when the message was claimed: the settling writes
    /// the totals it computes from it, if it is still the row's.
    meta: serde_json::Value,
    /// The same, parsed: what [`Lease::meta`] answers while the message runs.
    parsed: SessionMeta,
    /// When the session was last seen not paused.
    unpaused_at: Instant,
}

/// The claim's own read tells whether the session is paused; a look at the row is
/// due again only this long after the last one (a pause is obeyed at a step's end).
const PAUSE_LOOK: Duration = Duration::from_millis(50);

impl PgLease {
    /// Takes the lease of session `id` if it is free or expired.
    pub(super) fn claim(store: &PgStore, id: Uuid, worker: &WorkerInfo) -> Result<Claimed> {
        let owner = owner_value(store, worker);
        let info = super::takeover::last_owner(worker)?;
        let lease = store.lease_secs();
        // Taken before the claim: the lease runs from the database's `now()` of the
        // claim, and the owner must not count it as held for longer than the database
        // does (a slow answer would otherwise let it write past the lease).
        let asked = Instant::now();
        // The claim is made on the connection the lease will write on.
        let db = store.pool.take(store.db.url())?;
        // Not durable (the connection's commits are not), as the file store's claim is
        // not fsynced: the first durable write makes it so, and a claim a crash lost
        // leaves the message in the inbox.
        let claimed = db.call("claiming a session in", move |c| {
            // One statement whether it is taken or not: the new epoch, or none when the
            // lease is held (or the session gone, which tells the two apart).
            let row = c.row(
                "WITH claimed AS (
                     UPDATE sessions
                     SET owner = $2, epoch = epoch + 1,
                         lease_until = now() + make_interval(secs => $3), last_owner = $4
                     WHERE id = $1 AND (owner IS NULL OR lease_until < now())
                     RETURNING epoch
                 )
                 SELECT (SELECT epoch FROM claimed),
                        EXISTS (SELECT 1 FROM sessions WHERE id = $1),
                        COALESCE((SELECT state ? 'hooks' FROM sessions WHERE id = $1), false)",
                &[&id, &owner, &lease, &info],
            )?;
            let (epoch, exists): (Option<i64>, bool) = (row.get(0), row.get(1));
            // Whether the state holds completion hooks, so a drain reads them only then.
            let hooks: bool = row.get(2);
            Ok(epoch.or(exists.then_some(-1)).map(|epoch| (epoch, hooks)))
        });
        let (epoch, hooks) = match claimed {
            Ok(Some((epoch, hooks))) if epoch != -1 => (epoch, hooks),
            // Busy: taken over at once if its owner's process ended on this host.
            Ok(Some(_)) => match super::takeover::take_over_ended(store, id, worker) {
                Ok(Some(epoch)) => (epoch, true),
                other => {
                    store.pool.give(db);
                    return other.map(|_| Claimed::Busy);
                }
            },
            other => {
                store.pool.give(db);
                return match other.map_err(anyhow::Error::from)? {
                    None => Ok(Claimed::Gone),
                    _ => Ok(Claimed::Busy),
                };
            }
        };
        let local = local_files(store, id);
        let made = crate::store::local::create_dir_private(&local.workspace).and_then(|()| {
            match local.processes.parent() {
                Some(dir) => crate::store::local::create_dir_private(dir),
                None => Ok(()),
            }
        });
        if let Err(err) = made {
            // Let go at once, rather than leave it held until the lease expires.
            let _ = release_row(&db, id, epoch);
            store.pool.give(db);
            return Err(err.into());
        }
        let renewer = store
            .renewing
            .then(|| Renewer::start(db.clone(), id, epoch, store.lease, asked));
        super::held::add(&db, id, epoch);
        let pending = Pending::start(db.clone(), id, epoch);
        Ok(Claimed::Owned(Box::new(PgLease {
            store: store.clone(),
            db,
            id,
            epoch,
            worker: worker.clone(),
            local,
            running: None,
            renewer,
            pending,
            released: false,
            hooks: (!hooks).then(Vec::new),
        })))
    }

    /// Runs `work` in a transaction, committed as `commit` says, that first locks the
    /// session's row and checks the lease is still this owner's.
    fn write<T: Send + 'static>(
        &self,
        doing: &str,
        commit: Commit,
        work: impl FnOnce(&mut postgres::Transaction<'_>, Uuid) -> Result<T, TxError> + Send + 'static,
    ) -> Result<T> {
        let (id, epoch) = (self.id, self.epoch);
        self.check_lapsed()?;
        self.pending.flush()?;
        self.db.transaction_as(doing, commit, move |tx| {
            fence(tx, id, epoch)?;
            work(tx, id)
        })
    }

    /// Runs `write`, which holds no meta (so only the fence can refuse it), as one
    /// statement, the events pending first ([`owner_write`]).
    fn write_one_fenced(&self, doing: &str, write: OwnerWrite) -> Result<()> {
        self.check_lapsed()?;
        let written = self.pending.with_events(|mut events| {
            events.extend(write.events);
            let write = OwnerWrite { events, ..write };
            owner_write(&self.db, doing, self.id, self.epoch, write)
        })?;
        match written {
            Ok(()) => Ok(()),
            Err(Refused::MetaChanged) => {
                anyhow::bail!(
                    "a write of session {} without its meta was refused",
                    self.id
                )
            }
        }
    }

    /// The session's meta as the row holds it now.
    fn read_meta_now(&self) -> Result<SessionMeta> {
        let id = self.id;
        self.read("reading a session in", move |tx| read_meta(tx, id))
    }

    /// Fails with [`LeaseLost`] when the renewals failed for as long as the lease.
    fn check_lapsed(&self) -> Result<()> {
        if self.renewer.as_ref().is_some_and(Renewer::lapsed) {
            return Err(anyhow::Error::new(LeaseLost { session: self.id }));
        }
        Ok(())
    }

    /// Runs `work`, one statement that only reads, on the lease's connection
    /// ([`Db::read`]).
    fn read<T: Send + 'static>(
        &self,
        doing: &str,
        work: impl FnOnce(&mut postgres::Client) -> Result<T, TxError> + Send + 'static,
    ) -> Result<T> {
        self.db.read(doing, work)
    }

    fn now(&self) -> Timestamp {
        self.store.clock.now()
    }

    /// Step 1 of the lifecycle for the entry at the head of the inbox.
    fn claim_entry(
        &mut self,
        entry: InboxEntry,
        mut state: AgentState,
        read: Read,
    ) -> Result<Next> {
        if state.has_moved_past(entry.seq) {
            warn!(session = %self.id, message_id = %entry.id, "an inbox entry that settled before came back; removing it");
            let message = entry.id;
            self.write(
                "removing an inbox entry in",
                Commit::Deferred,
                move |tx, id| delete_entry(tx, id, message),
            )?;
            return Ok(Next::Again);
        }
        let previous = state
            .current
            .clone()
            .filter(|current| current.message_id == entry.id);
        let (exec, start) = match previous {
            Some(current) => {
                let exec = self.previous_execution(&entry, &current)?;
                if exec.status.is_terminal() {
                    info!(session = %self.id, execution = %exec.id, "finishing an execution settled before a crash");
                    let (settled, message, now) = (exec.clone(), entry.id, self.now());
                    self.write(
                        "settling an execution in",
                        Commit::Durable,
                        move |tx, id| {
                            let meta = read_meta(tx, id)?;
                            finish(tx, id, &settled, meta, false, true, now)?;
                            delete_entry(tx, id, message)
                        },
                    )?;
                    return Ok(Next::Finished(Box::new(exec)));
                }
                self.resume(exec, &mut state)?
            }
            None => {
                let exec = self.new_execution(&entry);
                info!(session = %self.id, message_id = %entry.id, execution = %exec.id, "claimed");
                state = self.begin(&entry, &exec, state)?;
                (exec, Start::New)
            }
        };
        self.running = Some(Running {
            cancels: CancelWatch::seen_at_claim(entry.seq, &read.cancels),
            entry: entry.clone(),
            meta: read.doc,
            parsed: read.meta,
            unpaused_at: read.at,
        });
        Ok(Next::Run(Box::new(Claim {
            entry,
            execution: exec,
            state,
            start,
        })))
    }

    /// The record of the execution the state names for this entry, or one rebuilt
    /// from the state when it was never written (it is first written when the
    /// execution is resumed, suspended or settled).
    fn previous_execution(
        &self,
        entry: &InboxEntry,
        current: &CurrentExecution,
    ) -> Result<Execution> {
        let exec_id = current.execution_id;
        let record = self.read("reading an execution in", {
            let id = self.id;
            move |tx| read_execution(tx, id, exec_id)
        })?;
        Ok(record.unwrap_or_else(|| Execution {
            id: current.execution_id,
            started_at: current.started_at,
            attempts: current.attempts,
            ..self.new_execution(entry)
        }))
    }

    /// Counts the attempt of an execution started again, or gives up on it, as the
    /// file store does.
    fn resume(&self, mut exec: Execution, state: &mut AgentState) -> Result<(Execution, Start)> {
        if crate::store::restart(&mut exec, &self.worker, state) == Start::Exhausted {
            return Ok((exec, Start::Exhausted));
        }
        // Not durable, as the file store's resumed record is not fsynced: the state is
        // what a resuming owner trusts, and a record lost is rebuilt from it.
        self.write_one_fenced(
            "resuming an execution in",
            OwnerWrite {
                record: Some((exec.id, serde_json::to_value(&exec)?)),
                state: Some(serde_json::to_value(&*state)?),
                ..OwnerWrite::default()
            },
        )?;
        Ok((exec, Start::Resumed))
    }

    fn new_execution(&self, entry: &InboxEntry) -> Execution {
        Execution::for_entry(
            entry,
            self.store.ids.new_id(),
            self.id,
            self.worker.clone(),
            self.now(),
        )
    }

    /// Puts the user message into the transcript and names the execution in the state,
    /// in one transaction: from its commit on, a crash resumes this execution.
    fn begin(
        &self,
        entry: &InboxEntry,
        exec: &Execution,
        mut state: AgentState,
    ) -> Result<AgentState> {
        // `send --continue` adds no text: the model carries on from the history as is.
        let lines = if entry.is_continue() {
            Vec::new()
        } else {
            vec![TranscriptLine {
                message: Message::User {
                    content: entry.content.clone(),
                },
                message_id: Some(entry.id),
                execution_id: Some(exec.id),
                step: None,
                feedback: None,
                timestamp: exec.started_at,
                state: None,
            }]
        };
        let rows = transcript_rows(&lines)?;
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
        let mark = state.transcript;
        state.transcript = advanced(mark, &rows);
        // Not durable: the first checkpoint makes it so (a crash before it leaves the
        // message in the inbox, unclaimed), as the file store's claim is synced with it.
        self.write_one_fenced(
            "claiming a message in",
            OwnerWrite {
                lines: rows.into_iter().map(|(line, _)| line).collect(),
                mark: mark.lines,
                state: Some(serde_json::to_value(&state)?),
                ..OwnerWrite::default()
            },
        )?;
        Ok(state)
    }

    /// Lets go of the row (if it is still this lease's) and stops renewing it; an
    /// entry queued meanwhile is announced again, for the next owner.
    fn let_go(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        // What is still pending goes before the row is let go (after a settling,
        // nothing is).
        let flushed = self.pending.flush();
        self.pending.stop();
        super::held::remove(self.id, self.epoch);
        if let Some(renewer) = self.renewer.take() {
            renewer.stop();
        }
        let released = release_row(&self.db, self.id, self.epoch);
        self.store.pool.give(self.db.clone());
        flushed.and(released)
    }
}

/// A claim's `owner`: the worker, and a nonce of this claim's own.
pub(super) fn owner_value(store: &PgStore, worker: &WorkerInfo) -> String {
    format!("{}:{}:{}", worker.host, worker.pid, store.ids.new_id())
}

/// The workspace and process record of session `id` on this host.
fn local_files(store: &PgStore, id: Uuid) -> LocalFiles {
    let workspaces = store.home.join("workspaces");
    LocalFiles {
        workspace: workspaces.join(id.to_string()),
        processes: workspaces.join(".processes").join(format!("{id}.json")),
    }
}

/// Clears the owner of the row, if `epoch` still holds it, and announces the session
/// again if its inbox is not empty.
pub(super) fn release_row(db: &Db, id: Uuid, epoch: i64) -> Result<()> {
    // Not durable: a release a crash lost is a lease that expires.
    db.transaction_as("releasing a session in", Commit::Deferred, move |tx| {
        tx.run(
            "UPDATE sessions SET owner = NULL, lease_until = NULL WHERE id = $1 AND epoch = $2",
            &[&id, &epoch],
        )?;
        let waiting: bool = tx
            .row(
                "SELECT EXISTS (SELECT 1 FROM inbox WHERE session_id = $1)",
                &[&id],
            )?
            .get(0);
        if waiting {
            events::notify(tx, INBOX_CHANNEL, id)?;
        }
        Ok(())
    })
}

/// What [`Lease::next`]'s read found beside the inbox's head.
struct Read {
    /// The meta as the row holds it, and parsed.
    doc: serde_json::Value,
    meta: SessionMeta,
    /// The seqs of the `cancel` entries queued.
    cancels: Vec<i64>,
    /// When it was read.
    at: Instant,
}

/// What a settling writes, for [`settle_reading_meta`].
struct Settled {
    exec: Execution,
    state: AgentState,
    message: Uuid,
    obeyed: Vec<i64>,
    now: Timestamp,
}

/// Settles in a transaction that locks the session's row and reads its meta: for when
/// a command changed the meta since the claim. `pending`: the events appended before.
fn settle_reading_meta(
    db: &Db,
    id: Uuid,
    epoch: i64,
    pending: events::Batch,
    settled: Settled,
) -> Result<()> {
    let Settled {
        exec,
        state,
        message,
        obeyed,
        now,
    } = settled;
    db.transaction_as("settling an execution in", Commit::Durable, move |tx| {
        fence(tx, id, epoch)?;
        if !pending.is_empty() {
            events::append_fenced_on(tx, id, epoch, pending)?;
        }
        let mut meta = read_meta(tx, id)?;
        let mut dirty = false;
        if let Some(max) = obeyed.iter().max() {
            // The cancel entries it obeyed leave the inbox with it.
            tx.run(
                "DELETE FROM inbox WHERE session_id = $1 AND seq = ANY($2)",
                &[&id, &obeyed],
            )?;
            meta.last_message_seq = meta.last_message_seq.max(*max as u64);
            dirty = true;
        }
        write_state(tx, id, &state)?;
        write_execution(tx, &exec)?;
        finish(tx, id, &exec, meta, dirty, false, now)?;
        delete_entry(tx, id, message)
    })
}

/// Locks the session's row for the transaction, if `epoch` still holds its lease.
fn fence(tx: &mut postgres::Transaction<'_>, id: Uuid, epoch: i64) -> Result<(), TxError> {
    let row = tx.row_opt(
        "SELECT epoch FROM sessions WHERE id = $1 FOR UPDATE",
        &[&id],
    )?;
    if row.is_none_or(|row| row.get::<_, i64>(0) != epoch) {
        return Err(TxError::Lost(id));
    }
    Ok(())
}

/// The transcript's mark once `rows` are appended after `mark`.
fn advanced(mark: TranscriptMark, rows: &[(serde_json::Value, u64)]) -> TranscriptMark {
    TranscriptMark {
        lines: mark.lines + rows.len() as u64,
        bytes: mark.bytes + rows.iter().map(|(_, bytes)| bytes).sum::<u64>(),
    }
}

/// Adds the execution to the session totals, unless they count it already (a settling
/// done again after a crash); whether they changed.
fn add_totals(meta: &mut SessionMeta, exec: &Execution, now: Timestamp) -> bool {
    if meta.last_execution == Some(exec.id) {
        return false;
    }
    meta.add_execution(exec);
    // A message settles one execution, so this counts it, as the file store does.
    meta.counters.messages += 1;
    meta.last_message_seq = meta.last_message_seq.max(exec.message_seq);
    meta.updated_at = now;
    true
}

fn delete_entry(
    tx: &mut postgres::Transaction<'_>,
    id: Uuid,
    message: Uuid,
) -> Result<(), TxError> {
    tx.run(
        "DELETE FROM inbox WHERE session_id = $1 AND id = $2",
        &[&id, &message],
    )?;
    Ok(())
}

/// Adds the execution to the session totals (unless `session.json` counts it
/// already) and appends the closing events (when `recovering`, only if its
/// `execution.finished` is not in the log yet). `dirty`: the meta changed before and
/// is written either way.
fn finish(
    tx: &mut postgres::Transaction<'_>,
    id: Uuid,
    exec: &Execution,
    mut meta: SessionMeta,
    mut dirty: bool,
    recovering: bool,
    now: Timestamp,
) -> Result<(), TxError> {
    dirty |= add_totals(&mut meta, exec, now);
    if dirty {
        write_meta(tx, id, &meta)?;
    }
    if recovering {
        let written = tx
            .row_opt(
                "SELECT body FROM events WHERE session_id = $1 AND type = 'execution.finished'
                 ORDER BY seq DESC LIMIT 1",
                &[&id],
            )?
            .and_then(|row| {
                crate::store::file::events::parse_line(row.get::<_, String>(0).as_bytes())
            })
            .is_some_and(|event| event.execution_id == Some(exec.id));
        if written {
            return Ok(());
        }
    }
    events::append_all(tx, id, Some(exec.id), closing_events(exec, &meta), now)?;
    Ok(())
}

impl Lease for PgLease {
    fn session_id(&self) -> Uuid {
        self.id
    }

    fn renew(&mut self) -> Result<()> {
        if let Some(renewer) = &self.renewer {
            // The renewer extends the lease every third of its length, and every write
            // checks the epoch: a lease renewed that recently needs no query (a drain
            // confirms its hold before each message).
            if renewer.fresh() {
                return Ok(());
            }
        }
        let asked = Instant::now();
        if renew_row(&self.db, self.id, self.epoch, self.store.lease)? {
            if let Some(renewer) = &self.renewer {
                *renewer.renewed.lock().unwrap_or_else(|e| e.into_inner()) = asked;
            }
            Ok(())
        } else {
            Err(anyhow::Error::new(LeaseLost { session: self.id }))
        }
    }

    /// An empty inbox is [`Next::Empty`] at the first look: there is no marker to
    /// clear, and a `send` that commits after the look is announced again when the
    /// lease is released (and found by the next scan in any case).
    fn next(&mut self) -> Result<Next> {
        self.running = None;
        self.pending.flush()?;
        let at = Instant::now();
        let (meta, meta_doc, state, head, cancels) = self.read("reading the inbox in", {
            let id = self.id;
            move |tx| {
                // One statement, one snapshot: the documents, the inbox's head and the
                // cancels queued (the running message's first look for one).
                let Some(row) = tx.row_opt(
                    "SELECT s.meta, s.state,
                            (SELECT i.entry FROM inbox i WHERE i.session_id = s.id
                             ORDER BY i.seq LIMIT 1),
                            (SELECT array_agg(i.seq ORDER BY i.seq) FROM inbox i
                             WHERE i.session_id = s.id AND i.entry->>'kind' = 'cancel')
                     FROM sessions s WHERE s.id = $1",
                    &[&id],
                )?
                else {
                    return Err(
                        anyhow::Error::from(UserError::usage(format!("no session {id}"))).into(),
                    );
                };
                let meta_doc: serde_json::Value = row.get(0);
                let meta: SessionMeta = doc(meta_doc.clone(), "session.json", id)?;
                let state: AgentState = doc(row.get(1), "state.json", id)?;
                let head: Option<InboxEntry> = row
                    .get::<_, Option<serde_json::Value>>(2)
                    .map(|entry| doc(entry, "inbox entry", id))
                    .transpose()?;
                let cancels: Option<Vec<i64>> = row.get(3);
                Ok((meta, meta_doc, state, head, cancels.unwrap_or_default()))
            }
        })?;
        if meta.status == SessionStatus::Paused {
            return Ok(Next::Paused);
        }
        let Some(entry) = head else {
            return Ok(Next::Empty);
        };
        if entry.kind == EntryKind::Cancel || entry.is_decision() {
            // Nothing is running that it could cancel, or decide (a decision that came
            // after its execution settled, or its call was answered).
            let (message, seq) = (entry.id, entry.seq);
            self.write("consuming a cancel in", Commit::Deferred, move |tx, id| {
                let mut meta = read_meta(tx, id)?;
                delete_entry(tx, id, message)?;
                if seq > meta.last_message_seq {
                    meta.last_message_seq = seq;
                    write_meta(tx, id, &meta)?;
                }
                Ok(())
            })?;
            return Ok(Next::Again);
        }
        let read = Read {
            doc: meta_doc,
            meta,
            cancels,
            at,
        };
        self.claim_entry(entry, state, read)
    }

    /// While a message runs, the meta its claim read (it is what the execution runs
    /// with, and a command that changes it meanwhile changes nothing the execution
    /// reads but the status, which [`Lease::paused`] looks at).
    fn meta(&self) -> Result<SessionMeta> {
        if let Some(running) = &self.running {
            return Ok(running.parsed.clone());
        }
        self.read_meta_now()
    }

    fn paused(&mut self) -> bool {
        if let Some(running) = &self.running
            && running.unpaused_at.elapsed() < PAUSE_LOOK
        {
            return false;
        }
        let paused = self
            .read_meta_now()
            .is_ok_and(|meta| meta.status == SessionStatus::Paused);
        if let Some(running) = self.running.as_mut().filter(|_| !paused) {
            running.unpaused_at = Instant::now();
        }
        paused
    }

    fn history(&self, mark: TranscriptMark) -> Result<Vec<TranscriptLine>> {
        let id = self.id;
        self.read("reading a transcript in", move |tx| {
            read_transcript(tx, id, mark)
        })
    }

    fn append(&mut self, execution: Option<Uuid>, payload: EventPayload) -> Result<u64> {
        self.check_lapsed()?;
        // A tool's start comes before the call, a check's before its command: written
        // (under the fence) before they run, so that an owner that lost its lease runs
        // neither.
        let before_a_call = matches!(
            payload,
            EventPayload::ToolStarted(_) | EventPayload::CheckStarted(_)
        );
        self.pending.push(execution, payload, self.now())?;
        if before_a_call {
            self.pending.flush()?;
        }
        // Its seq is known once it is written; no caller needs it.
        Ok(0)
    }

    fn checkpoint(&mut self, mut lines: Vec<TranscriptLine>, state: &mut AgentState) -> Result<()> {
        if self.running.is_none() {
            anyhow::bail!(
                "a checkpoint of session {} with no message claimed",
                self.id
            );
        }
        if let Some(last) = lines.last_mut() {
            last.state = Some(Box::new(AgentState {
                transcript: TranscriptMark::default(),
                ..state.clone()
            }));
        }
        let rows = transcript_rows(&lines)?;
        let mark = state.transcript;
        let mut next = state.clone();
        next.transcript = advanced(mark, &rows);
        self.write_one_fenced(
            "checkpointing in",
            OwnerWrite {
                lines: rows.into_iter().map(|(line, _)| line).collect(),
                mark: mark.lines,
                state: Some(serde_json::to_value(&next)?),
                durable: checkpoint_commit(state) == Commit::Durable,
                ..OwnerWrite::default()
            },
        )?;
        *state = next;
        Ok(())
    }

    fn cancel_requested(&mut self) -> bool {
        let (db, id) = (self.db.clone(), self.id);
        self.running
            .as_mut()
            .is_some_and(|running| running.cancels.requested(&db, id))
    }

    /// One statement in the common case: the totals are computed from the meta read
    /// at the claim, and written if it is still the row's; when a command changed it
    /// meanwhile, a transaction reads it again ([`settle_reading_meta`]).
    fn settle(&mut self, exec: &Execution, state: &AgentState) -> Result<()> {
        let Some(running) = self.running.take() else {
            anyhow::bail!("settling session {} with no message claimed", self.id);
        };
        let obeyed: Vec<i64> = if exec.status == ExecStatus::Cancelled {
            running.cancels.seen.iter().map(|seq| *seq as i64).collect()
        } else {
            Vec::new()
        };
        let now = self.now();
        let mut meta = running.parsed;
        if let Some(max) = obeyed.iter().max() {
            meta.last_message_seq = meta.last_message_seq.max(*max as u64);
        }
        add_totals(&mut meta, exec, now);
        let mut closing = events::Batch::default();
        for payload in closing_events(exec, &meta) {
            closing.push(self.id, Some(exec.id), payload, now)?;
        }
        let write = OwnerWrite {
            state: Some(serde_json::to_value(state)?),
            meta: Some((serde_json::to_value(&meta)?, running.meta)),
            record: Some((exec.id, serde_json::to_value(exec)?)),
            consumed: Some(running.entry.id),
            cancels: obeyed.clone(),
            durable: true,
            ..OwnerWrite::default()
        };
        // What the state holds once this commits (a failed write ends the drain).
        self.hooks = Some(state.hooks.clone());
        self.check_lapsed()?;
        let (db, id, epoch) = (self.db.clone(), self.id, self.epoch);
        self.pending.with_events(move |pending| {
            let mut events = pending.clone();
            events.extend(closing);
            let write = OwnerWrite { events, ..write };
            match owner_write(&db, "settling an execution in", id, epoch, write)? {
                Ok(()) => Ok(()),
                Err(Refused::MetaChanged) => {
                    let settled = Settled {
                        exec: exec.clone(),
                        state: state.clone(),
                        message: running.entry.id,
                        obeyed,
                        now,
                    };
                    settle_reading_meta(&db, id, epoch, pending, settled)
                }
            }
        })
    }

    fn decision(&mut self, call: &DecisionRef) -> Result<Decision> {
        let (id, execution) = (self.id, call.execution_id.to_string());
        let (seen_through, entries) = self.read("looking for a decision in", move |c| {
            let row = c.row(
                "SELECT coalesce(max(seq), 0),
                        array_agg(entry) FILTER (
                            WHERE entry->>'kind' IN ('approve', 'deny')
                              AND entry->'metadata'->>'execution_id' = $2)
                 FROM inbox WHERE session_id = $1",
                &[&id, &execution],
            )?;
            let entries: Option<Vec<serde_json::Value>> = row.get(1);
            Ok((row.get::<_, i64>(0), entries.unwrap_or_default()))
        })?;
        let entries: Vec<InboxEntry> = entries
            .into_iter()
            .filter_map(|entry| serde_json::from_value(entry).ok())
            .collect();
        Ok(
            crate::domain::approval::decision_in(entries.iter(), call).unwrap_or(
                Decision::Pending {
                    seen_through: u64::try_from(seen_through).unwrap_or(0),
                },
            ),
        )
    }

    /// The record, durably, as for a suspension; `pending()` then skips the session
    /// until an entry newer than `seen_through` comes, and the release announces it.
    fn park(&mut self, exec: &Execution, seen_through: u64) -> Result<Parked> {
        self.suspend(exec)?;
        let (id, seen) = (self.id, seen_through as i64);
        let newer = self.read("looking at the inbox in", move |c| {
            Ok(c.row(
                "SELECT EXISTS (SELECT 1 FROM inbox WHERE session_id = $1 AND seq > $2)",
                &[&id, &seen],
            )?
            .get::<_, bool>(0))
        })?;
        Ok(if newer {
            Parked::Again
        } else {
            Parked::Released
        })
    }

    fn suspend(&mut self, exec: &Execution) -> Result<()> {
        self.running = None;
        let suspended = Execution {
            suspended: true,
            ..exec.clone()
        };
        self.write_one_fenced(
            "suspending an execution in",
            OwnerWrite {
                record: Some((suspended.id, serde_json::to_value(&suspended)?)),
                durable: true,
                ..OwnerWrite::default()
            },
        )
    }

    fn local(&self) -> LocalFiles {
        self.local.clone()
    }

    fn release(mut self: Box<Self>) -> Result<()> {
        self.let_go()
    }

    fn hooks(&mut self) -> Result<Vec<PendingHook>> {
        if let Some(hooks) = &self.hooks {
            return Ok(hooks.clone());
        }
        let id = self.id;
        let hooks = self.read("reading the hooks of a session in", move |c| {
            let row = c.row(
                "SELECT COALESCE(state->'hooks', '[]'::jsonb) FROM sessions WHERE id = $1",
                &[&id],
            )?;
            doc::<Vec<PendingHook>>(row.get(0), "state.json", id)
        })?;
        self.hooks = Some(hooks.clone());
        Ok(hooks)
    }

    fn save_hooks(&mut self, hooks: &[PendingHook]) -> Result<()> {
        if self.running.is_some() {
            anyhow::bail!(
                "saving the hooks of session {} while a message runs",
                self.id
            );
        }
        let value = serde_json::to_value(hooks)?;
        // Deferred, as a checkpoint is: a change lost with the server only delivers a
        // hook again. The key goes when the list is empty, as the file's state omits it.
        self.write(
            "saving the hooks of a session in",
            Commit::Deferred,
            move |tx, id| {
                tx.run(
                    "UPDATE sessions SET state = CASE WHEN jsonb_array_length($2::jsonb) = 0
                     THEN state - 'hooks' ELSE jsonb_set(state, '{hooks}', $2::jsonb) END
                 WHERE id = $1",
                    &[&id, &value],
                )?;
                Ok(())
            },
        )?;
        self.hooks = Some(hooks.to_vec());
        Ok(())
    }

    /// The settling writes the state, the record and the line in one transaction: a
    /// line that is not there is missing for good.
    fn finished_line(&mut self, execution: Uuid) -> Result<FinishedLine> {
        let id = self.id;
        let exec = execution.to_string();
        self.read("reading an execution's last event in", move |c| {
            let row = c.row_opt(
                "SELECT body FROM events WHERE session_id = $1 AND type = 'execution.finished'
                   AND (body::jsonb)->>'execution_id' = $2
                 ORDER BY seq DESC LIMIT 1",
                &[&id, &exec],
            )?;
            Ok(row.map_or(FinishedLine::Missing, |row| {
                FinishedLine::Written(row.get(0))
            }))
        })
    }
}

impl Drop for PgLease {
    fn drop(&mut self) {
        // A drain that failed lets go too, so the next owner need not wait for the
        // lease to expire (best effort: expiry does it otherwise).
        let _ = self.let_go();
    }
}

/// How a checkpoint of `state` commits. Durable where exactly-once needs it: the state
/// that marks a side-effecting call as about to run must be on disk before the call
/// runs. The others (a model's answer, tool results, a step closed) are flushed by the
/// settling's durable commit or by the server a moment later; a crash of the database
/// server itself before that resumes the execution from an earlier checkpoint, calling
/// the model again but never a side-effecting call a second time (the mark, durable,
/// says it may have run). A worker killed loses none of them.
fn checkpoint_commit(state: &AgentState) -> Commit {
    let marked = state
        .current
        .as_ref()
        .and_then(|current| current.open_step.as_ref())
        .is_some_and(|step| step.tool_started.is_some());
    if marked {
        Commit::Durable
    } else {
        Commit::Deferred
    }
}

/// Extends the lease if `epoch` still holds it; false if it does not.
fn renew_row(db: &Db, id: Uuid, epoch: i64, lease: Duration) -> Result<bool> {
    let secs = lease.as_secs_f64();
    // Durable, so the lease the owner counts on is the one a crashed server comes back
    // with (it costs a flush every third of the lease).
    let renewed = db.transaction_as("renewing a lease in", Commit::Durable, move |tx| {
        Ok(tx.run(
            "UPDATE sessions SET lease_until = now() + make_interval(secs => $3)
             WHERE id = $1 AND epoch = $2",
            &[&id, &epoch, &secs],
        )?)
    })?;
    Ok(renewed == 1)
}

/// Renews a lease every third of its length, on a thread, until stopped or lost.
struct Renewer {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    /// When the lease was last known to be held until `now + lease`: at the claim, then
    /// at each renewal that succeeded.
    renewed: Arc<std::sync::Mutex<Instant>>,
    lease: Duration,
}

impl Renewer {
    /// `claimed` is when the claim that took the lease was asked.
    fn start(db: Arc<Db>, id: Uuid, epoch: i64, lease: Duration, claimed: Instant) -> Renewer {
        let (stop, stopped) = mpsc::channel::<()>();
        let renewed = Arc::new(std::sync::Mutex::new(claimed));
        let last = renewed.clone();
        let thread = std::thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(lease / 3) {
                let asked = Instant::now();
                match renew_row(&db, id, epoch, lease) {
                    Ok(true) => *last.lock().unwrap_or_else(|e| e.into_inner()) = asked,
                    Ok(false) => {
                        warn!(session = %id, "the lease was taken over by another worker");
                        return;
                    }
                    // The next renewal tries again; past the lease, the owner stops.
                    Err(err) => warn!(session = %id, "{err}"),
                }
            }
        });
        Renewer {
            stop,
            thread,
            renewed,
            lease,
        }
    }

    /// Whether the renewals failed for as long as the lease: another worker may have
    /// taken it over by now, so the owner writes nothing more and runs no further tool
    /// call (each is preceded by a checkpoint, a write) even if the database, when it
    /// answers, would still show its epoch.
    fn lapsed(&self) -> bool {
        self.renewed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            >= self.lease
    }

    /// Whether the lease was renewed (or claimed) less than a third of its length ago.
    fn fresh(&self) -> bool {
        self.renewed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            < self.lease / 3
    }

    fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// Notices `cancel` entries queued after the running message, looking at most every
/// 50 ms.
struct CancelWatch {
    after_seq: u64,
    checked: Option<Instant>,
    /// The seqs of the cancel entries seen.
    seen: Vec<u64>,
}

impl CancelWatch {
    const INTERVAL: Duration = Duration::from_millis(50);

    /// For the message at `after_seq`, with the cancels the claim's read saw queued.
    fn seen_at_claim(after_seq: u64, queued: &[i64]) -> CancelWatch {
        CancelWatch {
            after_seq,
            checked: Some(Instant::now()),
            seen: queued
                .iter()
                .map(|seq| *seq as u64)
                .filter(|seq| *seq > after_seq)
                .collect(),
        }
    }

    fn requested(&mut self, db: &Db, id: Uuid) -> bool {
        if !self.seen.is_empty() {
            return true;
        }
        if self.checked.is_some_and(|t| t.elapsed() < Self::INTERVAL) {
            return false;
        }
        self.checked = Some(Instant::now());
        let after = self.after_seq as i64;
        let found = db.call("looking for a cancel in", move |c| {
            c.rows(
                "SELECT seq FROM inbox WHERE session_id = $1 AND seq > $2
                 AND entry->>'kind' = 'cancel' ORDER BY seq",
                &[&id, &after],
            )
        });
        if let Ok(rows) = found {
            self.seen = rows.iter().map(|row| row.get::<_, i64>(0) as u64).collect();
        }
        !self.seen.is_empty()
    }
}
