//! An owner's write as one statement: the fence, the events it appends, the transcript
//! lines, the state, the session's totals, the execution's record and the inbox
//! entries it consumes, all in one round trip that commits by itself.
//!
//! A transaction doing the same costs a round trip per statement, plus `BEGIN` and
//! `COMMIT`: about ten for a settling. On two cores that the server shares with the
//! workers, those round trips were most of what a message cost (README, Performance).
//!
//! The fence is the `UPDATE` of the session's row with the lease's epoch in its
//! condition: every other part of the statement reads that row's result, so when the
//! epoch is no longer this owner's nothing is written. The meta (`session.json`) is
//! written only if it is still what the owner read, since commands change it too
//! (`pause`, `close`, `send --add-tokens`); when it is not, nothing is written either,
//! and the caller settles in a transaction that reads it again ([`Refused::MetaChanged`]).

use anyhow::Result;
use uuid::Uuid;

use super::Db;
use super::events::{Batch, EVENTS_CHANNEL};
use super::prepared::Prepared;
use crate::store::LeaseLost;

/// What one owner's write holds; every part is optional.
#[derive(Default)]
pub(super) struct OwnerWrite {
    pub events: Batch,
    /// Transcript lines from line `mark` on.
    pub lines: Vec<serde_json::Value>,
    pub mark: u64,
    pub state: Option<serde_json::Value>,
    /// The new meta, and the one it was computed from.
    pub meta: Option<(serde_json::Value, serde_json::Value)>,
    pub record: Option<(Uuid, serde_json::Value)>,
    /// The inbox entry the execution answered, and the cancels it obeyed.
    pub consumed: Option<Uuid>,
    pub cancels: Vec<i64>,
    /// Committed durably (`synchronous_commit = on`) rather than as the lease's
    /// connection commits.
    pub durable: bool,
}

/// Why an [`OwnerWrite`] wrote nothing.
pub(super) enum Refused {
    /// The meta changed since the owner read it.
    MetaChanged,
}

/// Runs `write` for the owner of session `id` at `epoch`. `Err` with [`LeaseLost`]
/// when the epoch is no longer the session's.
pub(super) fn owner_write(
    db: &Db,
    doing: &str,
    id: Uuid,
    epoch: i64,
    write: OwnerWrite,
) -> Result<Result<(), Refused>> {
    let OwnerWrite {
        events,
        lines,
        mark,
        state,
        meta,
        record,
        consumed,
        cancels,
        durable,
    } = write;
    let (new_meta, read_meta) = meta.unzip();
    let (record_id, record) = record.unzip();
    let n = events.len() as i64;
    let (kinds, tails) = events.into_parts();
    let head = super::events::body_head();
    let mark = mark as i64;
    let outcome = db.call(doing, move |c| {
        let written = c.row_opt(
            "WITH s AS (
                 UPDATE sessions
                 SET last_seq = last_seq + $3,
                     state = coalesce($7::jsonb, state),
                     meta = coalesce($8::jsonb, meta)
                 WHERE id = $1 AND epoch = $2 AND ($9::jsonb IS NULL OR meta = $9::jsonb)
                 RETURNING last_seq
             ), ev AS (
                 INSERT INTO events (session_id, seq, type, body)
                 SELECT $1, s.last_seq - $3 + e.n, e.type,
                        $6::text || (s.last_seq - $3 + e.n)::text || e.tail
                 FROM s, unnest($4::text[], $5::text[]) WITH ORDINALITY AS e (type, tail, n)
             ), tr AS (
                 INSERT INTO transcript (session_id, line, body)
                 SELECT $1, $11 + l.n - 1, l.body
                 FROM s, unnest($10::jsonb[]) WITH ORDINALITY AS l (body, n)
                 ON CONFLICT (session_id, line) DO UPDATE SET body = EXCLUDED.body
             ), ex AS (
                 INSERT INTO executions (session_id, id, record)
                 SELECT $1, $12, $13 FROM s WHERE $13::jsonb IS NOT NULL
                 ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record
             ), ib AS (
                 DELETE FROM inbox i USING s
                 WHERE i.session_id = $1 AND (i.id = $14 OR i.seq = ANY($15::bigint[]))
             )
             SELECT CASE WHEN $3 > 0 THEN pg_notify($17, $1::text) END,
                    CASE WHEN $16 THEN set_config('synchronous_commit', 'on', true) END
             FROM s",
            &[
                &id,
                &epoch,
                &n,
                &kinds,
                &tails,
                &head,
                &state,
                &new_meta,
                &read_meta,
                &lines,
                &mark,
                &record_id,
                &record,
                &consumed,
                &cancels,
                &durable,
                &EVENTS_CHANNEL,
            ],
        )?;
        if written.is_some() {
            return Ok(Ok(()));
        }
        // Nothing written: the fence, or the meta's check?
        let held = c
            .row_opt("SELECT epoch FROM sessions WHERE id = $1", &[&id])?
            .is_some_and(|row| row.get::<_, i64>(0) == epoch);
        Ok(if held { Err(true) } else { Err(false) })
    })?;
    match outcome {
        Ok(()) => Ok(Ok(())),
        Err(true) => Ok(Err(Refused::MetaChanged)),
        Err(false) => Err(anyhow::Error::new(LeaseLost { session: id })),
    }
}
