//! [`PgSession`]: one session's rows, for commands; and the reads of a session's
//! documents that the lease shares.

use std::sync::Arc;

use anyhow::Result;
use postgres::GenericClient;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::events::{self, INBOX_CHANNEL, PgFeed};
use super::prepared::Prepared;
use super::{PgStore, TxError};
use crate::domain::event::{EventPayload, RawEvent, SessionStatusChanged};
use crate::domain::execution::{Execution, WorkerInfo};
use crate::domain::inbox::{EntryKind, InboxEntry};
use crate::domain::session::{SessionMeta, SessionStatus};
use crate::domain::state::{AgentState, TranscriptMark};
use crate::domain::transcript::TranscriptLine;
use crate::error::{Remedy, UserError};
use crate::store::file::session::queued_event;
use crate::store::{Enqueued, EventFeed, InboxCounts, NewEntry, Position, Session};
use crate::time::Timestamp;

/// A session of a [`PgStore`].
pub struct PgSession {
    pub(super) store: PgStore,
    pub(super) id: Uuid,
}

/// A document of a row, as its type.
pub(super) fn doc<T: DeserializeOwned>(
    value: serde_json::Value,
    what: &str,
    session: Uuid,
) -> Result<T, TxError> {
    serde_json::from_value(value).map_err(|e| {
        TxError::Other(
            UserError::failed(format!("the {what} of session {session} is not valid: {e}"))
                .with_remedy(Remedy::RepairOrRemove { session })
                .into(),
        )
    })
}

fn gone(session: Uuid) -> TxError {
    TxError::Other(UserError::usage(format!("no session {session}")).into())
}

/// Locks the session's row for the rest of the transaction; its meta and state.
pub(super) fn lock_session(
    tx: &mut postgres::Transaction<'_>,
    session: Uuid,
) -> Result<(i64, SessionMeta, AgentState), TxError> {
    let row = tx
        .row_opt(
            "SELECT epoch, meta, state FROM sessions WHERE id = $1 FOR UPDATE",
            &[&session],
        )?
        .ok_or_else(|| gone(session))?;
    Ok((
        row.get(0),
        doc(row.get(1), "session.json", session)?,
        doc(row.get(2), "state.json", session)?,
    ))
}

pub(super) fn read_meta(c: &mut impl GenericClient, session: Uuid) -> Result<SessionMeta, TxError> {
    let row = c
        .row_opt("SELECT meta FROM sessions WHERE id = $1", &[&session])?
        .ok_or_else(|| gone(session))?;
    doc(row.get(0), "session.json", session)
}

pub(super) fn read_state(c: &mut impl GenericClient, session: Uuid) -> Result<AgentState, TxError> {
    let row = c
        .row_opt("SELECT state FROM sessions WHERE id = $1", &[&session])?
        .ok_or_else(|| gone(session))?;
    doc(row.get(0), "state.json", session)
}

pub(super) fn read_execution(
    c: &mut impl GenericClient,
    session: Uuid,
    id: Uuid,
) -> Result<Option<Execution>, TxError> {
    match c.row_opt(
        "SELECT record FROM executions WHERE session_id = $1 AND id = $2",
        &[&session, &id],
    )? {
        Some(row) => Ok(Some(doc(row.get(0), "execution record", session)?)),
        None => Ok(None),
    }
}

pub(super) fn write_execution(c: &mut impl GenericClient, exec: &Execution) -> Result<(), TxError> {
    let record = serde_json::to_value(exec)?;
    c.run(
        "INSERT INTO executions (session_id, id, record) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
        &[&exec.session_id, &exec.id, &record],
    )?;
    Ok(())
}

pub(super) fn write_meta(
    c: &mut impl GenericClient,
    session: Uuid,
    meta: &SessionMeta,
) -> Result<(), TxError> {
    let meta = serde_json::to_value(meta)?;
    c.run(
        "UPDATE sessions SET meta = $2 WHERE id = $1",
        &[&session, &meta],
    )?;
    Ok(())
}

pub(super) fn write_state(
    c: &mut impl GenericClient,
    session: Uuid,
    state: &AgentState,
) -> Result<(), TxError> {
    let state = serde_json::to_value(state)?;
    c.run(
        "UPDATE sessions SET state = $2 WHERE id = $1",
        &[&session, &state],
    )?;
    Ok(())
}

/// The transcript's lines up to `mark` (its line count: a row per line).
pub(super) fn read_transcript(
    c: &mut impl GenericClient,
    session: Uuid,
    mark: TranscriptMark,
) -> Result<Vec<TranscriptLine>, TxError> {
    let lines = c.rows(
        "SELECT body FROM transcript WHERE session_id = $1 AND line < $2 ORDER BY line",
        &[&session, &(mark.lines as i64)],
    )?;
    if (lines.len() as u64) < mark.lines {
        return Err(TxError::Other(
            UserError::failed(format!(
                "the transcript of session {session} has {} lines, but state.json counts {} settled ones",
                lines.len(),
                mark.lines
            ))
            .with_remedy(Remedy::RepairOrRemove { session })
            .into(),
        ));
    }
    lines
        .into_iter()
        .map(|row| doc(row.get(0), "transcript", session))
        .collect()
}

/// Lines as rows: each one's JSON and the bytes its line would take in a file.
pub(super) fn transcript_rows(lines: &[TranscriptLine]) -> Result<Vec<(serde_json::Value, u64)>> {
    lines
        .iter()
        .map(|line| {
            let text = serde_json::to_vec(line)?;
            Ok((serde_json::from_slice(&text)?, text.len() as u64 + 1))
        })
        .collect()
}

/// The inbox entries, in run order.
pub(super) fn read_inbox(
    c: &mut impl GenericClient,
    session: Uuid,
) -> Result<Vec<InboxEntry>, TxError> {
    c.rows(
        "SELECT entry FROM inbox WHERE session_id = $1 ORDER BY seq",
        &[&session],
    )?
    .into_iter()
    .map(|row| doc(row.get(0), "inbox entry", session))
    .collect()
}

/// The execution in progress: its record, or what the state says of one that has not
/// written its record yet.
fn running_from(
    state: &AgentState,
    record: Option<Execution>,
    session: Uuid,
    owner: Option<WorkerInfo>,
) -> Option<Execution> {
    let current = state.current.as_ref()?;
    match record {
        Some(exec) => (!exec.status.is_terminal()).then_some(exec),
        None => Some(Execution::running_from(current, session, owner)),
    }
}

impl PgSession {
    /// Runs `work` in a transaction of its own: reads see one snapshot of the rows.
    fn call<T: Send + 'static>(
        &self,
        doing: &str,
        work: impl FnOnce(&mut postgres::Transaction<'_>, Uuid) -> Result<T, TxError> + Send + 'static,
    ) -> Result<T> {
        let id = self.id;
        self.store.db.transaction(doing, move |tx| work(tx, id))
    }

    fn worker_column(&self, live: bool) -> Option<WorkerInfo> {
        let id = self.id;
        let row = self
            .store
            .db
            .call("reading the owner of a session in", move |c| {
                c.row_opt(
                    "SELECT last_owner FROM sessions WHERE id = $1
                     AND (NOT $2 OR (owner IS NOT NULL AND lease_until > now()))",
                    &[&id, &live],
                )
            })
            .ok()??;
        serde_json::from_value(row.get::<_, Option<serde_json::Value>>(0)?).ok()
    }
}

impl Session for PgSession {
    fn id(&self) -> Uuid {
        self.id
    }

    fn meta(&self) -> Result<SessionMeta> {
        self.call("reading a session in", |c, id| read_meta(c, id))
    }

    fn state(&self) -> Result<AgentState> {
        self.call("reading a session in", |c, id| read_state(c, id))
    }

    fn transcript(&self, mark: TranscriptMark) -> Result<Vec<TranscriptLine>> {
        self.call("reading a transcript in", move |c, id| {
            read_transcript(c, id, mark)
        })
    }

    fn executions(&self) -> Result<Vec<Execution>> {
        self.call("reading the executions in", |c, id| {
            Ok(c.rows(
                "SELECT record FROM executions WHERE session_id = $1 ORDER BY id",
                &[&id],
            )?
            .into_iter()
            .filter_map(|row| serde_json::from_value(row.get(0)).ok())
            .collect())
        })
    }

    fn execution(&self, exec: Uuid) -> Result<Execution> {
        self.call("reading an execution in", move |c, id| {
            read_execution(c, id, exec)?.ok_or_else(|| {
                TxError::Other(anyhow::anyhow!("session {id} has no execution {exec}"))
            })
        })
    }

    fn plain_meta(&self) -> Result<SessionMeta> {
        self.meta()
    }

    fn plain_state(&self) -> Result<AgentState> {
        self.state()
    }

    fn running_execution(&self) -> Option<Execution> {
        let owner = self.last_owner();
        self.call("reading a session in", move |c, id| {
            let state = read_state(c, id)?;
            let record = match &state.current {
                Some(current) => read_execution(c, id, current.execution_id)?,
                None => None,
            };
            Ok(running_from(&state, record, id, owner))
        })
        .ok()?
    }

    fn inbox(&self) -> Result<Vec<InboxEntry>> {
        self.call("reading an inbox in", |c, id| read_inbox(c, id))
    }

    fn inbox_counts(&self) -> Result<InboxCounts> {
        let running = self.running_execution().map(|exec| exec.message_id);
        Ok(InboxCounts::of(self.inbox()?.iter(), running))
    }

    fn owner(&self) -> Option<WorkerInfo> {
        self.worker_column(true)
    }

    fn last_owner(&self) -> Option<WorkerInfo> {
        self.worker_column(false)
    }

    fn enqueue(&self, new: NewEntry) -> Result<Enqueued> {
        let entry_id = self.store.ids.new_id();
        let now = self.store.clock.now();
        self.call("queueing a message in", move |tx, id| {
            enqueue_in(tx, id, entry_id, now, new)
        })
    }

    fn set_status(&self, to: SessionStatus) -> Result<SessionStatus> {
        let now = self.store.clock.now();
        self.call("changing the status of a session in", move |tx, id| {
            let (_, mut meta, _) = lock_session(tx, id)?;
            let from = meta.status;
            if from == to {
                return Ok(from);
            }
            if from == SessionStatus::Closed {
                return Err(UserError::usage(format!(
                    "session {id} is closed; a closed session cannot be {}",
                    match to {
                        SessionStatus::Active => "resumed",
                        _ => "paused",
                    }
                ))
                .into());
            }
            meta.status = to;
            meta.updated_at = now;
            write_meta(tx, id, &meta)?;
            events::append_all(
                tx,
                id,
                None,
                vec![EventPayload::SessionStatus(SessionStatusChanged {
                    status: to,
                    previous_status: from,
                })],
                now,
            )?;
            // Messages that waited while it was paused are announced again.
            if to == SessionStatus::Active {
                events::notify(tx, INBOX_CHANNEL, id)?;
            }
            Ok(from)
        })
    }

    fn remove(&self) -> Result<()> {
        self.call("removing a session in", |tx, id| {
            lock_session(tx, id)?;
            let owned: bool = tx
                .row(
                    "SELECT owner IS NOT NULL AND lease_until > now() FROM sessions WHERE id = $1",
                    &[&id],
                )?
                .get(0);
            if owned {
                return Err(UserError::usage(format!("session {id} is being worked on"))
                    .with_remedy(Remedy::CancelOrWait { session: id })
                    .into());
            }
            // Its inbox, executions, transcript, events and keys go with it (cascade).
            tx.run("DELETE FROM sessions WHERE id = $1", &[&id])?;
            Ok(())
        })?;
        // The workspace this host kept for it, if any.
        let workspace = self.store.home.join("workspaces").join(self.id.to_string());
        match std::fs::remove_dir_all(&workspace) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(anyhow::Error::new(e).context(format!("removing {}", workspace.display())))
            }
            _ => Ok(()),
        }
    }

    fn events_end(&self) -> Result<Position> {
        let id = self.id;
        let row = self.store.db.call("reading the event log in", move |c| {
            c.row_opt("SELECT last_seq FROM sessions WHERE id = $1", &[&id])
        })?;
        Ok(Position(row.map_or(0, |row| row.get::<_, i64>(0) as u64)))
    }

    fn events_after(&self, after: u64) -> Result<Position> {
        Ok(Position(after))
    }

    fn last_event(&self, types: &[&str]) -> Result<Option<(Position, RawEvent)>> {
        Ok(events::last_of(&self.store.db, self.id, types)?
            .map(|(seq, event)| (Position(seq - 1), event)))
    }

    fn follow(&self, from: Position) -> Result<Box<dyn EventFeed>> {
        Ok(Box::new(PgFeed::open(
            Arc::clone(&self.store.db),
            self.id,
            from.0,
        )))
    }

    fn replay(&self, from: Position) -> Result<Box<dyn EventFeed>> {
        Ok(Box::new(PgFeed::unheard(
            Arc::clone(&self.store.db),
            self.id,
            from.0,
        )))
    }
}

/// `send`, `cancel`, `retry` in the caller's transaction: the key looked up, the entry
/// and its key inserted and its event appended, all or nothing.
fn enqueue_in(
    tx: &mut postgres::Transaction<'_>,
    id: Uuid,
    entry_id: Uuid,
    now: Timestamp,
    new: NewEntry,
) -> Result<Enqueued, TxError> {
    let (_, mut meta, state) = lock_session(tx, id)?;
    if new.kind == EntryKind::User && meta.status == SessionStatus::Closed {
        return Err(
            UserError::usage(format!("session {id} is closed and takes no new messages"))
                .with_remedy(Remedy::StartAnother { agent: meta.agent })
                .into(),
        );
    }
    if let Some(key) = &new.key
        && let Some(row) = tx.row_opt(
            "SELECT message_id FROM keys WHERE session_id = $1 AND key = $2",
            &[&id, key],
        )?
    {
        return Ok(Enqueued {
            id: row.get(0),
            seq: None,
            duplicate: true,
        });
    }
    let seq = next_seq(tx, id, &meta, &state)?;
    let entry = InboxEntry {
        id: entry_id,
        seq,
        kind: new.kind,
        content: new.content,
        metadata: new.metadata,
        key: new.key,
        created_at: now,
        attempts: 0,
    };
    let doc = serde_json::to_value(&entry)?;
    tx.run(
        "INSERT INTO inbox (session_id, seq, id, entry) VALUES ($1, $2, $3, $4)",
        &[&id, &(seq as i64), &entry.id, &doc],
    )?;
    if let Some(key) = &entry.key {
        tx.run(
            "INSERT INTO keys (session_id, key, message_id) VALUES ($1, $2, $3)",
            &[&id, key, &entry.id],
        )?;
    }
    if new.raise_session_tokens > 0 {
        meta.extra_session_tokens = meta
            .extra_session_tokens
            .saturating_add(new.raise_session_tokens);
        meta.updated_at = now;
        write_meta(tx, id, &meta)?;
    }
    events::append_all(tx, id, None, vec![queued_event(&entry)], now)?;
    events::notify(tx, INBOX_CHANNEL, id)?;
    Ok(Enqueued {
        id: entry.id,
        seq: Some(seq),
        duplicate: false,
    })
}

/// The seq of the next entry, above every seq handed out, as the file store finds it:
/// in `session.json`, in the inbox, the one the state names, and the last one the log
/// says was queued.
fn next_seq(
    tx: &mut postgres::Transaction<'_>,
    id: Uuid,
    meta: &SessionMeta,
    state: &AgentState,
) -> Result<u64, TxError> {
    let inbox: i64 = tx
        .row(
            "SELECT coalesce(max(seq), 0) FROM inbox WHERE session_id = $1",
            &[&id],
        )?
        .get(0);
    let logged: i64 = tx
        .row_opt(
            "SELECT (body::jsonb -> 'payload' ->> 'seq')::bigint FROM events
             WHERE session_id = $1 AND type = 'message.queued' ORDER BY seq DESC LIMIT 1",
            &[&id],
        )?
        .and_then(|row| row.get::<_, Option<i64>>(0))
        .unwrap_or(0);
    Ok(meta
        .last_message_seq
        .max(inbox as u64)
        .max(state.claimed_seq())
        .max(logged as u64)
        + 1)
}
