//! The event log in Postgres: one row per event, its `body` the exact NDJSON line the
//! file store would write (without the newline), so `watch --json` prints the same
//! bytes whichever store keeps the session. `seq` comes from `sessions.last_seq`,
//! raised in the transaction that inserts the events: gapless per session, because a
//! transaction that fails takes its seqs back with it. A `NOTIFY agentq` with the
//! session id follows each append (delivered at commit): a hint for followers, whose
//! poll is the truth.

use std::time::Duration;

use anyhow::Result;
use postgres::fallible_iterator::FallibleIterator;
use uuid::Uuid;

use super::prepared::Prepared;
use super::{Db, TxError};
use crate::domain::FORMAT_VERSION;
use crate::domain::event::{Event, EventPayload, RawEvent};
use crate::store::file::events::parse_line;
use crate::store::{EventFeed, LogLine};
use crate::time::Timestamp;

/// The channel followers listen on; the payload is the session id.
pub(crate) const EVENTS_CHANNEL: &str = "agentq";
/// The channel workers listen on; the payload is the session id.
pub(crate) const INBOX_CHANNEL: &str = "agentq_inbox";

/// How often a follower looks when no notification arrives.
const POLL: Duration = Duration::from_millis(200);

/// Appends `payloads` as consecutive events of session `session`, in the caller's
/// transaction (which must hold the session's row); returns the last seq.
pub(crate) fn append_all(
    tx: &mut postgres::Transaction<'_>,
    session: Uuid,
    execution: Option<Uuid>,
    payloads: Vec<EventPayload>,
    now: Timestamp,
) -> Result<u64, TxError> {
    let n = payloads.len() as i64;
    let row = tx.row_opt(
        "UPDATE sessions SET last_seq = last_seq + $2 WHERE id = $1 RETURNING last_seq",
        &[&session, &n],
    )?;
    let Some(row) = row else {
        return Err(anyhow::anyhow!("session {session} no longer exists").into());
    };
    let last: i64 = row.get(0);
    let (mut seqs, mut kinds, mut bodies) = (Vec::new(), Vec::new(), Vec::new());
    for (i, payload) in payloads.into_iter().enumerate() {
        let seq = last - n + 1 + i as i64;
        kinds.push(payload.type_name().to_owned());
        let event = Event {
            v: FORMAT_VERSION,
            seq: seq as u64,
            session_id: session,
            execution_id: execution,
            timestamp: now,
            payload,
        };
        bodies.push(serde_json::to_string(&event)?);
        seqs.push(seq);
    }
    // All the rows and the notification in one statement: an event is a round trip.
    tx.run(
        "WITH inserted AS (
             INSERT INTO events (session_id, seq, type, body)
             SELECT $1, e.seq, e.type, e.body
             FROM unnest($2::bigint[], $3::text[], $4::text[]) AS e (seq, type, body)
         )
         SELECT pg_notify($5, $6)",
        &[
            &session,
            &seqs,
            &kinds,
            &bodies,
            &EVENTS_CHANNEL,
            &session.to_string(),
        ],
    )?;
    Ok(last as u64)
}

/// Events to append together, each kept as the tail of its line after the seq
/// ([`body_head`]): the seqs are known only once the statement appending them holds
/// the session's row, and the server writes each into its line.
#[derive(Default, Clone)]
pub(crate) struct Batch {
    kinds: Vec<String>,
    tails: Vec<String>,
}

impl Batch {
    pub(crate) fn push(
        &mut self,
        session: Uuid,
        execution: Option<Uuid>,
        payload: EventPayload,
        now: Timestamp,
    ) -> Result<()> {
        self.kinds.push(payload.type_name().to_owned());
        self.tails.push(body_after_seq(&Event {
            v: FORMAT_VERSION,
            seq: 0,
            session_id: session,
            execution_id: execution,
            timestamp: now,
            payload,
        })?);
        Ok(())
    }

    pub(crate) fn len(&self) -> usize {
        self.kinds.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    /// Adds `later`'s events after these.
    pub(crate) fn extend(&mut self, later: Batch) {
        self.kinds.extend(later.kinds);
        self.tails.extend(later.tails);
    }

    /// The events' types and their lines' tails, in order.
    pub(crate) fn into_parts(self) -> (Vec<String>, Vec<String>) {
        (self.kinds, self.tails)
    }
}

/// Appends `events` as consecutive events of session `session` for its owner, if the
/// lease's `epoch` still holds the session: one statement, so one round trip that
/// checks the fence, takes the seqs and inserts the rows (committed as `db`'s commits
/// are). `None` when the epoch is no longer the session's (nothing is written).
pub(crate) fn append_fenced(
    db: &Db,
    session: Uuid,
    epoch: i64,
    events: Batch,
) -> Result<Option<u64>> {
    Ok(db.call("appending an event in", move |c| {
        append_fenced_on(c, session, epoch, events)
    })?)
}

/// [`append_fenced`] on a connection or in a transaction.
pub(crate) fn append_fenced_on(
    c: &mut impl postgres::GenericClient,
    session: Uuid,
    epoch: i64,
    events: Batch,
) -> Result<Option<u64>, postgres::Error> {
    let n = events.len() as i64;
    let (kinds, tails) = events.into_parts();
    let head = body_head();
    let row = c.row_opt(
        "WITH s AS (
             UPDATE sessions SET last_seq = last_seq + $2
             WHERE id = $1 AND epoch = $3 RETURNING last_seq
         ), inserted AS (
             INSERT INTO events (session_id, seq, type, body)
             SELECT $1, s.last_seq - $2 + e.n, e.type,
                    $6::text || (s.last_seq - $2 + e.n)::text || e.tail
             FROM s, unnest($4::text[], $5::text[]) WITH ORDINALITY AS e (type, tail, n)
         )
         SELECT s.last_seq, pg_notify($7, $1::text) FROM s",
        &[&session, &n, &epoch, &kinds, &tails, &head, &EVENTS_CHANNEL],
    )?;
    Ok(row.map(|row| row.get::<_, i64>(0) as u64))
}

/// What every event's line starts with, up to its seq.
pub(super) fn body_head() -> String {
    format!("{{\"v\":{FORMAT_VERSION},\"seq\":")
}

/// The line of `event` (whose seq is 0) after its seq: [`body_head`], the seq, and
/// this make the line the file store would write.
fn body_after_seq(event: &Event) -> Result<String> {
    let line = serde_json::to_string(event)?;
    let head = format!("{}0", body_head());
    match line.strip_prefix(&head) {
        Some(tail) => Ok(tail.to_owned()),
        None => anyhow::bail!("an event's line does not start with `{head}`: {line}"),
    }
}

/// Announces something of session `session` on `channel`, at commit.
pub(crate) fn notify(
    tx: &mut postgres::Transaction<'_>,
    channel: &str,
    session: Uuid,
) -> Result<(), postgres::Error> {
    tx.run(
        "SELECT pg_notify($1, $2)",
        &[&channel, &session.to_string()],
    )
    .map(drop)
}

/// The last event of one of `types`, with its seq.
pub(crate) fn last_of(db: &Db, session: Uuid, types: &[&str]) -> Result<Option<(u64, RawEvent)>> {
    let types: Vec<String> = types.iter().map(|t| (*t).to_owned()).collect();
    let row = db.call("reading the event log in", move |c| {
        c.row_opt(
            "SELECT seq, body FROM events WHERE session_id = $1 AND type = ANY($2)
             ORDER BY seq DESC LIMIT 1",
            &[&session, &types],
        )
    })?;
    Ok(row.and_then(|row| {
        let seq: i64 = row.get(0);
        let body: String = row.get(1);
        Some((seq as u64, parse_line(body.as_bytes())?))
    }))
}

/// A session's events, followed from a seq: read by query, woken early by the
/// session's notifications (on a connection of its own, listening on a thread).
pub(crate) struct PgFeed {
    db: std::sync::Arc<Db>,
    session: Uuid,
    /// The last seq read.
    after: u64,
    wake: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl PgFeed {
    pub(crate) fn open(db: std::sync::Arc<Db>, session: Uuid, after: u64) -> PgFeed {
        let (tx, wake) = tokio::sync::mpsc::unbounded_channel();
        listen(db.url(), EVENTS_CHANNEL, Some(session), move |heard| {
            if heard {
                tx.send(()).is_ok()
            } else {
                !tx.is_closed()
            }
        });
        PgFeed {
            db,
            session,
            after,
            wake,
        }
    }

    /// [`PgFeed::open`] for reading what the log holds now: no listening connection
    /// of its own, so waiting only polls.
    pub(crate) fn unheard(db: std::sync::Arc<Db>, session: Uuid, after: u64) -> PgFeed {
        // The sender is dropped: `wait` falls back to its poll.
        let (_, wake) = tokio::sync::mpsc::unbounded_channel();
        PgFeed {
            db,
            session,
            after,
            wake,
        }
    }
}

impl EventFeed for PgFeed {
    fn read(&mut self) -> Result<Vec<LogLine>> {
        let (session, after) = (self.session, self.after as i64);
        let rows = self.db.call("reading the event log in", move |c| {
            c.rows(
                "SELECT s.last_seq, e.seq, e.body FROM sessions s
                 LEFT JOIN LATERAL (
                     SELECT seq, body FROM events
                     WHERE session_id = s.id AND seq > $2 ORDER BY seq LIMIT 1000
                 ) e ON true
                 WHERE s.id = $1",
                &[&session, &after],
            )
        })?;
        if let Some(last) = rows.first().map(|row| row.get::<_, i64>(0) as u64)
            && last < self.after
        {
            // Events are not flushed one by one (`super::Commit::Deferred`): a crash
            // of the server took back those after `last`, and the execution, resumed,
            // writes those seqs again. Followed from there, nothing new is skipped.
            tracing::warn!(
                session = %session,
                "the database came back without events {}–{} (it stopped before they were flushed); following from event {last}",
                last + 1,
                self.after
            );
            self.after = last;
        }
        let mut lines = Vec::with_capacity(rows.len());
        for row in rows {
            let Some(seq) = row.get::<_, Option<i64>>(1) else {
                continue;
            };
            let body: String = row.get(2);
            self.after = seq as u64;
            let raw = body.into_bytes();
            let event = parse_line(&raw);
            lines.push(LogLine { raw, event });
        }
        Ok(lines)
    }

    fn wait(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            tokio::select! {
                heard = self.wake.recv() => {
                    // No one left to tell (no watch could be set up, or none was wanted):
                    // the poll is all there is.
                    if heard.is_none() {
                        tokio::time::sleep(POLL).await;
                    }
                }
                () = tokio::time::sleep(POLL) => {}
            }
            while self.wake.try_recv().is_ok() {}
        })
    }

    fn exists(&self) -> bool {
        let session = self.session;
        // An error is no proof that it is gone: the next read says what is wrong.
        self.db
            .call("looking for a session in", move |c| {
                c.row(
                    "SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1)",
                    &[&session],
                )
            })
            .map_or(true, |row| row.get(0))
    }
}

/// Listens on `channel` on a connection of its own, on a thread of its own, calling
/// `heard(true)` after a notification (only those naming `session`, when given) and
/// `heard(false)` after a quiet interval, until it returns false. Without a
/// connection nothing is heard, which only delays who relies on a poll anyway.
pub(crate) fn listen(
    url: &super::DbUrl,
    channel: &'static str,
    session: Option<Uuid>,
    heard: impl FnMut(bool) -> bool + Send + 'static,
) {
    let url = url.clone();
    let spawned = std::thread::Builder::new()
        .name("agentq-listen".to_owned())
        .spawn(move || {
            let db = match Db::connect(&url) {
                Ok(db) => db,
                Err(err) => {
                    tracing::warn!("no notifications ({}); polling instead", err.message);
                    return;
                }
            };
            // Shared by the connections made again after one broke.
            let heard = std::sync::Arc::new(std::sync::Mutex::new(heard));
            loop {
                let hear = heard.clone();
                let listened = db.call("listening for notifications in", move |c| {
                    c.batch_execute(&format!("LISTEN {channel}"))?;
                    let wanted = session.map(|id| id.to_string());
                    let mut hear = hear.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        let mut any = false;
                        {
                            let mut notifications = c.notifications();
                            let mut iter = notifications.timeout_iter(POLL);
                            while let Some(note) = iter.next()? {
                                if wanted.as_deref().is_none_or(|id| note.payload() == id) {
                                    any = true;
                                    break;
                                }
                            }
                        }
                        if !(*hear)(any) {
                            return Ok(());
                        }
                    }
                });
                match listened {
                    Ok(()) => return,
                    Err(err) => {
                        tracing::warn!("{}", err.message);
                        // What was notified while the connection was down went
                        // unheard: told as heard, the listener looks for itself. The
                        // next call connects again (backing off) and LISTENs again.
                        let mut hear = heard.lock().unwrap_or_else(|e| e.into_inner());
                        if !(*hear)(true) {
                            return;
                        }
                    }
                }
            }
        });
    if let Err(err) = spawned {
        tracing::warn!("no notifications (cannot start a thread: {err}); polling instead");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{AgentStatus, AgentStatusChanged};

    #[test]
    fn a_line_is_its_head_its_seq_and_its_tail_as_the_file_store_writes_it() {
        let mut event = Event {
            v: FORMAT_VERSION,
            seq: 0,
            session_id: Uuid::nil(),
            execution_id: Some(Uuid::max()),
            timestamp: Timestamp(1_700_000_000_000),
            payload: EventPayload::AgentStatus(AgentStatusChanged {
                status: AgentStatus::Processing,
                previous_status: AgentStatus::Idle,
            }),
        };
        let tail = body_after_seq(&event).expect("the line has the head");
        event.seq = 4711;
        let line = serde_json::to_string(&event).expect("serialises");
        assert_eq!(format!("{}4711{tail}", body_head()), line);
    }
}
