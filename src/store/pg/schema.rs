//! agentq's tables in Postgres, created and migrated by agentq itself: a version table
//! (`agentq_schema`) and migrations applied in order under an advisory lock, so workers
//! starting at once on many hosts migrate once. A database at a newer version than
//! this binary knows is refused: an older agentq must not write what it does not
//! understand.
//!
//! The tables hold what a session directory holds (ARCHITECTURE.md §1), with the same
//! JSON documents: `sessions` (`session.json` as `meta`, `state.json` as `state`, the
//! last event `seq` handed out, and the owner lease: `owner`, `epoch`, `lease_until`
//! on the database clock), `inbox`, `executions`, `transcript` (one row per line),
//! `events` (the exact NDJSON line, so `watch --json` prints the same bytes, with its
//! `type` beside it for the searches by type; key `(session_id, seq)`), `keys`
//! (idempotency keys) and `workers` (a heartbeat each). `sessions.last_owner` is the
//! worker (`{pid, host}`) that took the lease last, kept after it is released, with
//! the process that holds it (`process`, optional: see `takeover`).

use super::Db;
use crate::error::UserError;

/// The advisory lock migrations take (any constant other programs are unlikely to use:
/// "agentq" in ASCII).
const MIGRATION_LOCK: i64 = 0x6167_656e_7471;

/// The migrations, in order: migration `i` brings the schema to version `i + 1`.
/// Append only: a migration that shipped is never edited.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE sessions (
    id uuid PRIMARY KEY,
    meta jsonb NOT NULL,
    state jsonb NOT NULL,
    last_seq bigint NOT NULL DEFAULT 0,
    owner text,
    epoch bigint NOT NULL DEFAULT 0,
    lease_until timestamptz,
    last_owner jsonb
);
CREATE TABLE inbox (
    session_id uuid NOT NULL REFERENCES sessions ON DELETE CASCADE,
    seq bigint NOT NULL,
    id uuid NOT NULL UNIQUE,
    entry jsonb NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE TABLE executions (
    session_id uuid NOT NULL REFERENCES sessions ON DELETE CASCADE,
    id uuid PRIMARY KEY,
    record jsonb NOT NULL
);
CREATE INDEX executions_by_session ON executions (session_id, id);
CREATE TABLE transcript (
    session_id uuid NOT NULL REFERENCES sessions ON DELETE CASCADE,
    line bigint NOT NULL,
    body jsonb NOT NULL,
    PRIMARY KEY (session_id, line)
);
CREATE TABLE events (
    session_id uuid NOT NULL REFERENCES sessions ON DELETE CASCADE,
    seq bigint NOT NULL,
    type text NOT NULL,
    body text NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE INDEX events_by_type ON events (session_id, type, seq);
CREATE TABLE keys (
    session_id uuid NOT NULL REFERENCES sessions ON DELETE CASCADE,
    key text NOT NULL,
    message_id uuid NOT NULL,
    PRIMARY KEY (session_id, key)
);
CREATE TABLE workers (
    id text PRIMARY KEY,
    pid integer NOT NULL,
    host text NOT NULL,
    started_at timestamptz NOT NULL,
    slot integer,
    heartbeat timestamptz NOT NULL
);
"#,
    // 2: inbox entries of kinds `approve` and `deny` (human approval). The index serves
    // the looks for cancels and decisions; the version is what matters: an agentq that
    // does not know those kinds refuses the database instead of misreading its rows.
    r#"
CREATE INDEX inbox_not_user ON inbox (session_id, seq) WHERE entry->>'kind' <> 'user';
"#,
];

/// The schema version this binary writes.
pub const VERSION: i32 = MIGRATIONS.len() as i32;

/// What [`migrate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    pub from: i32,
    pub to: i32,
}

/// Brings the database to [`VERSION`], in one transaction under the migration lock:
/// a crash midway leaves the previous version, and concurrent callers wait and then
/// find nothing left to do.
pub fn migrate(db: &Db) -> Result<Migrated, UserError> {
    let url = db.url().clone();
    let outcome = db.call("migrating agentq's schema in", move |client| {
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS agentq_schema (
                version integer PRIMARY KEY,
                migrated_at timestamptz NOT NULL DEFAULT now()
            )",
        )?;
        let from: i32 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM agentq_schema", &[])?
            .get(0);
        if from > VERSION {
            return Ok(Err(from));
        }
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            tx.batch_execute(migration)?;
            tx.execute(
                "INSERT INTO agentq_schema (version) VALUES ($1)",
                &[&(i as i32 + 1)],
            )?;
        }
        tx.commit()?;
        Ok(Ok(Migrated { from, to: VERSION }))
    })?;
    outcome.map_err(|newer| {
        UserError::usage(format!(
            "the database at {url} has agentq's schema version {newer}, newer than this agentq knows ({VERSION}); run a newer agentq with it"
        ))
    })
}

/// Brings the database to [`VERSION`] only if it is behind, as every command does
/// when it opens the store: one read of the version on the way (no transaction, no
/// lock, no DDL), and [`migrate`] only when that finds the schema missing or older.
/// A newer schema is refused as [`migrate`] refuses it.
pub fn ensure(db: &Db) -> Result<Migrated, UserError> {
    let found = db.call("reading agentq's schema version in", |client| {
        match client.query_one("SELECT coalesce(max(version), 0) FROM agentq_schema", &[]) {
            Ok(row) => Ok(Some(row.get::<_, i32>(0))),
            // No version table yet: a database agentq has not used.
            Err(err) if err.code() == Some(&postgres::error::SqlState::UNDEFINED_TABLE) => Ok(None),
            Err(err) => Err(err),
        }
    })?;
    match found {
        Some(version) if version == VERSION => Ok(Migrated {
            from: version,
            to: version,
        }),
        _ => migrate(db),
    }
}

/// The schema version of the database (0 before the first migration).
pub fn version(db: &Db) -> Result<i32, UserError> {
    db.call("reading agentq's schema version in", |client| {
        let exists: bool = client
            .query_one("SELECT to_regclass('agentq_schema') IS NOT NULL", &[])?
            .get(0);
        if !exists {
            return Ok(0);
        }
        Ok(client
            .query_one("SELECT coalesce(max(version), 0) FROM agentq_schema", &[])?
            .get(0))
    })
}
