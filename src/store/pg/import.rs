//! Moving a session into and out of Postgres (`agentq store copy`): its rows read
//! into a [`SessionDump`] in one read-only transaction at `REPEATABLE READ` (one
//! snapshot: every write of a session is one transaction, so the snapshot is a moment
//! between two of them), and written from one in one transaction: the session appears
//! whole at commit, or not at all.

use anyhow::Result;
use uuid::Uuid;

use super::events::{self, INBOX_CHANNEL};
use super::session::{doc, read_inbox, read_transcript, transcript_rows};
use super::{PgStore, TxError};
use crate::domain::execution::WorkerInfo;
use crate::domain::state::TranscriptMark;
use crate::error::UserError;
use crate::store::dump::{self, DumpedEvent, SessionDump};

impl PgStore {
    /// [`crate::store::Store::export`] for Postgres.
    pub(super) fn export_session(&self, id: Uuid) -> Result<SessionDump> {
        let url = self.db.url().to_string();
        self.db.transaction("copying a session from", move |tx| {
            tx.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
            let Some(row) = tx.query_opt(
                "SELECT meta, state, last_owner, owner IS NOT NULL AND lease_until > now()
                 FROM sessions WHERE id = $1",
                &[&id],
            )?
            else {
                return Err(UserError::usage(format!("no session {id} in {url}")).into());
            };
            let last_owner: Option<WorkerInfo> = row
                .get::<_, Option<serde_json::Value>>(2)
                .and_then(|worker| serde_json::from_value(worker).ok());
            if row.get::<_, bool>(3) {
                return Err(dump::owned(id, last_owner.as_ref()).into());
            }
            let meta = doc(row.get(0), "session.json", id)?;
            let state: crate::domain::state::AgentState = doc(row.get(1), "state.json", id)?;
            let transcript = read_transcript(tx, id, state.transcript)?;
            let inbox = read_inbox(tx, id)?;
            let keys = tx
                .query(
                    "SELECT key, message_id FROM keys WHERE session_id = $1 ORDER BY key",
                    &[&id],
                )?
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect();
            let executions = tx
                .query(
                    "SELECT record FROM executions WHERE session_id = $1 ORDER BY id",
                    &[&id],
                )?
                .into_iter()
                .map(|row| doc(row.get(0), "execution record", id))
                .collect::<Result<_, _>>()?;
            let events = tx
                .query(
                    "SELECT seq, type, body FROM events WHERE session_id = $1 ORDER BY seq",
                    &[&id],
                )?
                .iter()
                .map(|row| DumpedEvent {
                    seq: row.get::<_, i64>(0) as u64,
                    kind: row.get(1),
                    line: row.get(2),
                })
                .collect();
            Ok(SessionDump {
                meta,
                state,
                transcript,
                inbox,
                keys,
                executions,
                events,
                last_owner,
            })
        })
    }

    /// [`crate::store::Store::import`] for Postgres.
    pub(super) fn import_session(&self, dump: &SessionDump) -> Result<()> {
        let id = dump.id();
        let rows = transcript_rows(&dump.transcript)?;
        let mut state = dump.state.clone();
        // The mark counts the rows as this store measures lines (their JSON and a
        // newline each), which is what later appends and reads compare against.
        state.transcript = TranscriptMark {
            lines: rows.len() as u64,
            bytes: rows.iter().map(|(_, bytes)| bytes).sum(),
        };
        let meta = serde_json::to_value(&dump.meta)?;
        let state = serde_json::to_value(&state)?;
        let last_owner = dump
            .last_owner
            .as_ref()
            .map(serde_json::to_value)
            .transpose()?;
        let last_seq = dump.last_seq() as i64;
        let inbox = dump
            .inbox
            .iter()
            .map(|entry| Ok((entry.seq as i64, entry.id, serde_json::to_value(entry)?)))
            .collect::<Result<Vec<_>, serde_json::Error>>()?;
        let executions = dump
            .executions
            .iter()
            .map(|exec| Ok((exec.id, serde_json::to_value(exec)?)))
            .collect::<Result<Vec<_>, serde_json::Error>>()?;
        let keys = dump.keys.clone();
        let log = dump.events.clone();
        let url = self.db.url().to_string();
        self.db.transaction("copying a session into", move |tx| {
            let inserted = tx.execute(
                "INSERT INTO sessions (id, meta, state, last_seq, last_owner)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                &[&id, &meta, &state, &last_seq, &last_owner],
            )?;
            if inserted == 0 {
                return Err(dump::exists(id, &url).into());
            }
            let line =
                tx.prepare("INSERT INTO transcript (session_id, line, body) VALUES ($1, $2, $3)")?;
            for (i, (body, _)) in rows.iter().enumerate() {
                tx.execute(&line, &[&id, &(i as i64), body])?;
            }
            let entry = tx.prepare(
                "INSERT INTO inbox (session_id, seq, id, entry) VALUES ($1, $2, $3, $4)",
            )?;
            for (seq, entry_id, doc) in &inbox {
                tx.execute(&entry, &[&id, seq, entry_id, doc])?;
            }
            let key =
                tx.prepare("INSERT INTO keys (session_id, key, message_id) VALUES ($1, $2, $3)")?;
            for (text, message) in &keys {
                tx.execute(&key, &[&id, text, message])?;
            }
            let record =
                tx.prepare("INSERT INTO executions (session_id, id, record) VALUES ($1, $2, $3)")?;
            for (exec_id, doc) in &executions {
                tx.execute(&record, &[&id, exec_id, doc])?;
            }
            let event = tx.prepare(
                "INSERT INTO events (session_id, seq, type, body) VALUES ($1, $2, $3, $4)",
            )?;
            for logged in &log {
                tx.execute(
                    &event,
                    &[&id, &(logged.seq as i64), &logged.kind, &logged.line],
                )?;
            }
            if !inbox.is_empty() {
                // Workers waiting for work take the copied messages at once.
                events::notify(tx, INBOX_CHANNEL, id)?;
            }
            Ok::<_, TxError>(())
        })
    }
}
