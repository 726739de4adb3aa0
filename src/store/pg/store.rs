//! [`PgStore`]: a home's sessions in a Postgres database, implementing [`Store`].
//!
//! The store keeps one connection for its own calls and those of its sessions; each
//! lease writes on a connection of its own, taken from a small pool the store keeps
//! between claims ([`super::Pool`]), and each listener (a worker's wake-ups, a
//! follower) has one more, closed with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use uuid::Uuid;

use super::events::{self, INBOX_CHANNEL};
use super::lease::PgLease;
use super::prepared::Prepared;
use super::session::PgSession;
use super::takeover::{OwnerProcess, process_of};
use super::{Db, DbUrl, Pool, TxError, schema};
use crate::domain::event::{EventPayload, SessionCreated};
use crate::domain::execution::WorkerInfo;
use crate::domain::session::SessionMeta;
use crate::domain::state::AgentState;
use crate::error::UserError;
use crate::ids::{IdGen, IdQuery};
use crate::store::{Claimed, Guard, NewSession, Session, Store, WorkerRecord};
use crate::time::{Clock, Timestamp};

/// How long a lease (and a worker's heartbeat) lasts unless renewed.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// A home whose sessions are kept in Postgres.
#[derive(Clone)]
pub struct PgStore {
    pub(super) db: Arc<Db>,
    /// The connections of the leases, kept between claims.
    pub(super) pool: Arc<Pool>,
    pub(super) home: PathBuf,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) ids: Arc<dyn IdGen>,
    /// The length of a lease and of a worker's heartbeat.
    pub(super) lease: Duration,
    /// Whether a lease renews itself (every third of its length) while held.
    pub(super) renewing: bool,
    /// What opening the store did to agentq's schema (`from == to`: nothing).
    migrated: schema::Migrated,
}

impl PgStore {
    /// Connects to the database and brings its schema to this binary's version if it
    /// is behind ([`schema::ensure`]).
    pub fn open(
        url: &DbUrl,
        home: &Path,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdGen>,
    ) -> Result<PgStore, UserError> {
        let db = Db::connect(url)?;
        // Reads first (`ensure`), so a database already at this version is opened
        // without a write: on a read-only replica, reading commands work and writing
        // ones fail naming what they were writing.
        let migrated = schema::ensure(&db)?;
        Ok(PgStore {
            db: Arc::new(db),
            pool: Arc::default(),
            home: home.to_owned(),
            clock,
            ids,
            lease: DEFAULT_LEASE,
            renewing: true,
            migrated,
        })
    }

    /// Leases (and heartbeats) of `length` instead of [`DEFAULT_LEASE`].
    pub fn with_lease(mut self, length: Duration) -> PgStore {
        self.lease = length;
        self
    }

    /// Leases that are not renewed while an execution runs, only by [`crate::store::Lease::renew`]:
    /// for tests, a worker paused or cut off past its lease.
    pub fn without_renewing(mut self) -> PgStore {
        self.renewing = false;
        self
    }

    pub(super) fn lease_secs(&self) -> f64 {
        self.lease.as_secs_f64()
    }

    pub(super) fn handle(&self, id: Uuid) -> PgSession {
        PgSession {
            store: self.clone(),
            id,
        }
    }

    fn no_session(&self, what: impl std::fmt::Display) -> anyhow::Error {
        UserError::usage(format!("no session {what} in {}", self.db.url())).into()
    }
}

impl Store for PgStore {
    fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    fn prepare_workers(&self) -> Result<()> {
        // The schema was brought up to date when the store was opened.
        Ok(())
    }

    fn register_worker(
        &self,
        worker: &WorkerInfo,
        max_workers: Option<usize>,
    ) -> Result<Option<Guard>> {
        let db = Db::connect(self.db.url())?;
        let id = format!("{}:{}:{}", worker.host, worker.pid, self.ids.new_id());
        let (pid, host) = (worker.pid as i32, worker.host.clone());
        let started = self.clock.now().0;
        let lease = self.lease_secs();
        let max = max_workers.map(|m| m as i32);
        let row_id = id.clone();
        let registered = db.transaction("registering the worker in", move |tx| {
            // One registration at a time, so two workers never take the same slot.
            tx.batch_execute("LOCK TABLE workers IN EXCLUSIVE MODE")?;
            tx.run(
                "DELETE FROM workers WHERE heartbeat < now() - make_interval(secs => $1)",
                &[&lease],
            )?;
            let slot = match max {
                None => None,
                Some(max) => {
                    let held: Vec<i32> = tx
                        .rows("SELECT slot FROM workers WHERE slot IS NOT NULL", &[])?
                        .iter()
                        .map(|row| row.get(0))
                        .collect();
                    match (0..max).find(|slot| !held.contains(slot)) {
                        Some(slot) => Some(slot),
                        None => return Ok(false),
                    }
                }
            };
            tx.run(
                "INSERT INTO workers (id, pid, host, started_at, slot, heartbeat)
                 VALUES ($1, $2, $3, to_timestamp($4::float8 / 1000), $5, now())",
                &[&row_id, &pid, &host, &(started as f64), &slot],
            )?;
            Ok(true)
        })?;
        if !registered {
            return Ok(None);
        }
        Ok(Some(Box::new(Heartbeat::start(db, id, self.lease)?)))
    }

    fn pending(&self, _full: bool) -> Result<Vec<Uuid>> {
        // One query finds them all, so the cheap look and the full scan are the same.
        // A session parked on an approval has nothing to run until an entry newer than
        // its park comes, or its `deny_at` passes.
        // Sessions whose lease is held by a process of this boot come too, with it:
        // those whose owner has ended are taken over at once (`takeover`). A state
        // holding completion hooks is work too: a worker killed after a settling left
        // them, with nothing in the inbox.
        let boot = OwnerProcess::this_boot().map(str::to_owned);
        let rows = self.db.call("looking for pending messages in", move |c| {
            c.rows(
                "SELECT s.id,
                        CASE WHEN s.owner IS NOT NULL AND s.lease_until >= now()
                             THEN s.last_owner END
                 FROM sessions s
                 WHERE (s.owner IS NULL OR s.lease_until < now()
                        OR s.last_owner->'process'->>'boot_id' = $1)
                   AND s.meta->>'status' <> 'paused'
                   AND ((EXISTS (SELECT 1 FROM inbox i WHERE i.session_id = s.id)
                         AND NOT coalesce(
                             (s.state #>> '{current,open_step,awaiting,seen_through}')::bigint
                                 >= (SELECT max(i.seq) FROM inbox i WHERE i.session_id = s.id)
                             AND coalesce((s.state #>> '{current,open_step,awaiting,deny_at}')::timestamptz
                                          > now(), true),
                             false))
                        OR s.state ? 'hooks')
                 ORDER BY s.id",
                &[&boot],
            )
        })?;
        Ok(rows
            .iter()
            .filter(|row| match row.get::<_, Option<serde_json::Value>>(1) {
                None => true,
                Some(held) => process_of(Some(held)).is_some_and(|p| p.is_gone()),
            })
            .map(|row| row.get(0))
            .collect())
    }

    fn notify_pending(&self, wake: Box<dyn Fn() + Send + Sync>) -> Option<Guard> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        events::listen(self.db.url(), INBOX_CHANNEL, None, move |heard| {
            if stopped.load(Ordering::SeqCst) {
                return false;
            }
            if heard {
                wake();
            }
            true
        });
        Some(Box::new(StopOnDrop(stop)))
    }

    fn claim(&self, id: Uuid, worker: &WorkerInfo) -> Result<Claimed> {
        PgLease::claim(self, id, worker)
    }

    fn create_session(&self, new: NewSession) -> Result<SessionMeta> {
        let id = self.ids.new_id();
        let now = self.clock.now();
        let meta = new.into_meta(id, now);
        let created = SessionCreated {
            agent: meta.agent.clone(),
            title: meta.title.clone(),
            config: meta.config.clone().into_iter().collect(),
            events: meta.events,
            agent_hash: Some(meta.agent_hash.clone()),
        };
        let meta_doc = serde_json::to_value(&meta)?;
        let state_doc = serde_json::to_value(AgentState::default())?;
        self.db.transaction("creating a session in", move |tx| {
            tx.run(
                "INSERT INTO sessions (id, meta, state) VALUES ($1, $2, $3)",
                &[&id, &meta_doc, &state_doc],
            )?;
            events::append_all(
                tx,
                id,
                None,
                vec![EventPayload::SessionCreated(created)],
                now,
            )?;
            Ok::<_, TxError>(())
        })?;
        Ok(meta)
    }

    fn resolve(&self, input: &str) -> Result<Box<dyn Session>> {
        let query = IdQuery::parse(input)?;
        if let IdQuery::Full(id) = query {
            let exists: bool = self
                .db
                .call("looking for a session in", move |c| {
                    c.row(
                        "SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1)",
                        &[&id],
                    )
                })?
                .get(0);
            if !exists {
                return Err(self.no_session(id));
            }
            return Ok(Box::new(self.handle(id)));
        }
        let matches: Vec<Uuid> = self
            .session_ids()?
            .into_iter()
            .filter(|id| query.matches(id))
            .collect();
        match matches.as_slice() {
            [id] => Ok(Box::new(self.handle(*id))),
            [] => Err(UserError::usage(format!(
                "no session id starts with `{input}` in {}",
                self.db.url()
            ))
            .into()),
            many => Err(UserError::usage(format!(
                "`{input}` matches {} sessions ({}); give more of the id",
                many.len(),
                many.iter()
                    .take(3)
                    .map(Uuid::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into()),
        }
    }

    fn session(&self, id: Uuid) -> Box<dyn Session> {
        Box::new(self.handle(id))
    }

    fn session_ids(&self) -> Result<Vec<Uuid>> {
        // v7 ids are time-ordered: by id is oldest first.
        let rows = self.db.call("listing the sessions in", |c| {
            c.rows("SELECT id FROM sessions ORDER BY id", &[])
        })?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    fn live_workers(&self) -> Result<Vec<WorkerRecord>> {
        let lease = self.lease_secs();
        let rows = self.db.call("listing the workers in", move |c| {
            c.rows(
                "SELECT pid, host, (extract(epoch FROM started_at) * 1000)::bigint, slot
                 FROM workers WHERE heartbeat >= now() - make_interval(secs => $1)
                 ORDER BY started_at, id",
                &[&lease],
            )
        })?;
        Ok(rows
            .iter()
            .map(|row| WorkerRecord {
                pid: row.get::<_, i32>(0) as u32,
                host: row.get(1),
                started_at: Timestamp(row.get(2)),
                slot: row.get::<_, Option<i32>>(3).map(|s| s as usize),
            })
            .collect())
    }

    fn describe(&self) -> String {
        self.db.url().to_string()
    }

    fn migrated(&self) -> Option<schema::Migrated> {
        Some(self.migrated)
    }

    fn export(&self, id: Uuid) -> Result<crate::store::SessionDump> {
        self.export_session(id)
    }

    fn import(&self, dump: &crate::store::SessionDump) -> Result<()> {
        self.import_session(dump)
    }

    fn init(&self, created: &mut dyn FnMut(&str) -> Result<()>) -> Result<bool> {
        let made = self.migrated.from == 0;
        if made {
            created(&format!("agentq's tables in {}", self.db.url()))?;
        }
        Ok(made)
    }
}

/// Sets its flag when dropped: a listener's signal to stop.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A worker's registration: its row's heartbeat refreshed every third of the lease
/// by a thread, the row deleted when this is dropped.
struct Heartbeat {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    fn start(db: Db, id: String, lease: Duration) -> Result<Heartbeat> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("agentq-heartbeat".to_owned())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(lease / 3)
                {
                    let id = id.clone();
                    if let Err(err) = db.call("refreshing the worker's heartbeat in", move |c| {
                        c.run("UPDATE workers SET heartbeat = now() WHERE id = $1", &[&id])
                    }) {
                        tracing::warn!("{}", err.message);
                    }
                }
                let _ = db.call("unregistering the worker in", move |c| {
                    c.run("DELETE FROM workers WHERE id = $1", &[&id])
                });
            })?;
        Ok(Heartbeat {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
