//! The benchmark's PostgreSQL: the tests' server (`tests/it/postgres/server.rs`: initdb
//! in a temp directory as the `postgres` user, a free loopback port), but flushing as
//! the server's defaults have it (fsync and synchronous_commit on; the tests turn them
//! off), a new database for each measurement, and what the measurements read from it
//! directly: a session's events as they commit, the settings in force, and the
//! server's own counters.

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};
use uuid::Uuid;

use crate::pg_server;

/// Whether a server can run here; `Err` says why not, in one line.
pub fn available() -> Result<(), String> {
    // The figures are for a server that flushes, as a production one does.
    pg_server::FLUSHES.store(true, std::sync::atomic::Ordering::Relaxed);
    pg_server::server().map(drop)
}

/// The URL of a new, empty database.
pub fn new_database() -> String {
    pg_server::new_database()
}

pub fn connect(url: &str) -> Client {
    Client::connect(url, NoTls).unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// The server's version and the settings the figures depend on, as one line.
pub fn settings(url: &str) -> String {
    let mut client = connect(url);
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('fsync'),
                    current_setting('synchronous_commit'), current_setting('shared_buffers'),
                    current_setting('wal_level'), current_setting('wal_sync_method'),
                    current_setting('full_page_writes'), current_setting('commit_delay')",
            &[],
        )
        .expect("the settings");
    let at = |i: usize| row.get::<_, String>(i);
    format!(
        "postgres: PostgreSQL {} on 127.0.0.1, started by the benchmark (initdb defaults): fsync {}, synchronous_commit {}, shared_buffers {}, wal_level {}, wal_sync_method {}, full_page_writes {}, commit_delay {}",
        at(0),
        at(1),
        at(2),
        at(3),
        at(4),
        at(5),
        at(6),
        at(7)
    )
}

/// A session's event log as it commits: each read returns the lines committed since
/// the last, waiting (up to 20 ms) for the notification a commit sends when there are
/// none yet, on a connection of its own.
pub struct EventLog {
    client: Client,
    session: Uuid,
    after: i64,
}

impl EventLog {
    /// From the end of the log as it is now.
    pub fn open(url: &str, session: &str) -> EventLog {
        let mut client = connect(url);
        // Listening before the end is read, so nothing committed after it goes unheard.
        client.batch_execute("LISTEN agentq").expect("LISTEN");
        let session: Uuid = session.parse().expect("a session id");
        let after = client
            .query_one(
                "SELECT coalesce(max(seq), 0) FROM events WHERE session_id = $1",
                &[&session],
            )
            .expect("the end of the log")
            .get(0);
        EventLog {
            client,
            session,
            after,
        }
    }

    pub fn read_lines(&mut self) -> Vec<Vec<u8>> {
        let lines = self.committed();
        if !lines.is_empty() {
            return lines;
        }
        {
            let mut notifications = self.client.notifications();
            let _ = notifications.timeout_iter(Duration::from_millis(20)).next();
            // The rest of what arrived meanwhile says nothing more.
            let mut buffered = notifications.iter();
            while let Ok(Some(_)) = buffered.next() {}
        }
        self.committed()
    }

    fn committed(&mut self) -> Vec<Vec<u8>> {
        let rows = self
            .client
            .query(
                "SELECT seq, body FROM events WHERE session_id = $1 AND seq > $2 ORDER BY seq",
                &[&self.session, &self.after],
            )
            .expect("the events");
        rows.iter()
            .map(|row| {
                self.after = row.get(0);
                row.get::<_, String>(1).into_bytes()
            })
            .collect()
    }
}

/// What the server did in a database: transactions committed, WAL flushes, WAL bytes.
#[derive(Default, Clone, Copy)]
pub struct Counters {
    pub commits: i64,
    pub wal_syncs: i64,
    pub wal_bytes: f64,
}

impl Counters {
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            commits: self.commits - before.commits,
            wal_syncs: self.wal_syncs - before.wal_syncs,
            wal_bytes: self.wal_bytes - before.wal_bytes,
        }
    }
}

/// The server's counters as they stand (its statistics are flushed by each backend
/// at its exit, and by the others within a second).
pub fn counters(client: &mut Client) -> Counters {
    client
        .batch_execute("SELECT pg_stat_clear_snapshot()")
        .expect("a fresh snapshot");
    let row = client
        .query_one(
            "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
                    wal_sync, wal_bytes::float8
             FROM pg_stat_wal",
            &[],
        )
        .expect("the counters");
    Counters {
        commits: row.get(0),
        wal_syncs: row.get(1),
        wal_bytes: row.get(2),
    }
}

/// `count` sessions with nothing to do, beside `template` (a session made by
/// `session new`) and like it, in one statement: made one by one, each would wait
/// for its own commit.
pub fn idle_sessions(url: &str, template: &str, count: usize) {
    let mut client = connect(url);
    let template: Uuid = template.parse().expect("a session id");
    client
        .execute(
            "WITH made AS (
                 INSERT INTO sessions (id, meta, state, last_seq)
                 SELECT g.id, jsonb_set(t.meta, '{id}', to_jsonb(g.id::text)), t.state, 1
                 FROM sessions t,
                      (SELECT gen_random_uuid() AS id FROM generate_series(1, $2::int)) g
                 WHERE t.id = $1
                 RETURNING id
             )
             INSERT INTO events (session_id, seq, type, body)
             SELECT made.id, 1, e.type, replace(e.body, $1::text, made.id::text)
             FROM made, events e WHERE e.session_id = $1 AND e.seq = 1",
            &[&template, &(count as i32)],
        )
        .expect("idle sessions");
    client
        .batch_execute("VACUUM ANALYZE sessions, events")
        .expect("VACUUM");
}

/// The number of executions settled and of inbox entries left.
pub fn settled_and_left(client: &mut Client) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM executions
                     WHERE record->>'status' = 'completed'),
                    (SELECT count(*) FROM inbox)",
            &[],
        )
        .expect("counts");
    (row.get(0), row.get(1))
}
