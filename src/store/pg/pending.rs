//! The events an owner appends, written together: with the owner's next write (a
//! checkpoint, the settling, a suspension, the release), or by a thread of the lease
//! [`FLUSH_AFTER`] after the first of them, whichever comes first. A message whose
//! model answers at once appends its start, its status and its answer's chunk in the
//! statement of its answer's checkpoint instead of one statement each.
//!
//! The fence is the same: every write of buffered events checks the lease's epoch, so
//! an owner that lost its lease commits none of them; it learns so at its next call
//! (or [`FLUSH_AFTER`] later). An event that comes before an action outside the
//! database, a tool call's or a check's start, is written before the action
//! ([`Pending::flush`]): no tool or check runs for an owner that lost its lease.
//!
//! Followers see an event up to [`FLUSH_AFTER`] later than they would if each were a
//! statement of its own; the events' order, their seqs (taken when written) and their
//! timestamps (taken when appended) are as before.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;
use uuid::Uuid;

use super::Db;
use super::events::{self, Batch};
use crate::domain::event::EventPayload;
use crate::store::LeaseLost;
use crate::time::Timestamp;

/// How long an appended event may wait for the owner's next write before the lease's
/// thread writes it: short beside `watch`'s 10 ms target, long beside the owner's own
/// steps between two writes when the model answers at once.
pub(super) const FLUSH_AFTER: Duration = Duration::from_millis(3);

/// The events of one lease not written yet.
pub(super) struct Pending {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    db: Arc<Db>,
    id: Uuid,
    epoch: i64,
}

struct Shared {
    buffer: Mutex<Buffer>,
    wake: Condvar,
}

#[derive(Default)]
struct Buffer {
    events: Batch,
    /// Why the thread's last write failed, for the owner's next call to say.
    failed: Option<anyhow::Error>,
    /// A write failed before: the owner's drain has stopped, and nothing more is taken.
    broken: bool,
    stopped: bool,
}

impl Pending {
    /// Starts the thread that writes events for the owner of session `id` at `epoch`.
    pub(super) fn start(db: Arc<Db>, id: Uuid, epoch: i64) -> Pending {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer::default()),
            wake: Condvar::new(),
        });
        let thread = {
            let (shared, db) = (shared.clone(), db.clone());
            std::thread::Builder::new()
                .name("agentq-events".to_owned())
                .spawn(move || write_later(&shared, &db, id, epoch))
                .ok()
        };
        Pending {
            shared,
            thread,
            db,
            id,
            epoch,
        }
    }

    /// Adds an event, for a write within [`FLUSH_AFTER`]. Fails as the last write of
    /// buffered events failed, if it did.
    pub(super) fn push(
        &self,
        execution: Option<Uuid>,
        payload: EventPayload,
        now: Timestamp,
    ) -> Result<()> {
        let mut buffer = self.usable()?;
        buffer.events.push(self.id, execution, payload, now)?;
        if buffer.events.len() == 1 {
            self.shared.wake.notify_one();
        }
        // Without the thread (it could not be started), each event is written at once.
        if self.thread.is_none() {
            drop(buffer);
            return self.flush();
        }
        Ok(())
    }

    /// Runs `write`, one of the owner's writes, with the events pending (which it must
    /// write in the same statement, or fail): the buffer is held meanwhile, so no event
    /// appended later is written before them.
    pub(super) fn with_events<T>(&self, write: impl FnOnce(Batch) -> Result<T>) -> Result<T> {
        let mut buffer = self.usable()?;
        let events = std::mem::take(&mut buffer.events);
        let written = write(events);
        if written.is_err() {
            buffer.broken = true;
        }
        written
    }

    /// Writes the events pending, if any.
    pub(super) fn flush(&self) -> Result<()> {
        let mut buffer = self.usable()?;
        if buffer.events.is_empty() {
            return Ok(());
        }
        let events = std::mem::take(&mut buffer.events);
        let written = write(&self.db, self.id, self.epoch, events);
        if written.is_err() {
            buffer.broken = true;
        }
        written
    }

    /// The buffer, unless a write failed: then the failure (once), or that it did.
    fn usable(&self) -> Result<MutexGuard<'_, Buffer>> {
        let mut buffer = self.shared.lock();
        if let Some(err) = buffer.failed.take() {
            buffer.broken = true;
            return Err(err);
        }
        if buffer.broken {
            anyhow::bail!("an earlier write of this session's events failed");
        }
        Ok(buffer)
    }

    /// Stops the thread; what is still pending stays for the owner to write or drop.
    pub(super) fn stop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The thread's work: waits for a first event, gives the owner [`FLUSH_AFTER`] to
/// write it with its own next write, then writes what is still pending.
fn write_later(shared: &Shared, db: &Db, id: Uuid, epoch: i64) {
    let mut buffer = shared.lock();
    loop {
        buffer = shared
            .wake
            .wait_while(buffer, |b| !b.stopped && (b.events.is_empty() || b.broken))
            .unwrap_or_else(|e| e.into_inner());
        if buffer.stopped {
            return;
        }
        buffer = shared
            .wake
            .wait_timeout_while(buffer, FLUSH_AFTER, |b| !b.stopped)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        if buffer.stopped {
            return;
        }
        if buffer.events.is_empty() || buffer.broken || buffer.failed.is_some() {
            continue;
        }
        let events = std::mem::take(&mut buffer.events);
        if let Err(err) = write(db, id, epoch, events) {
            buffer.failed = Some(err);
        }
    }
}

/// Appends `events` under the fence.
fn write(db: &Db, id: Uuid, epoch: i64, events: Batch) -> Result<()> {
    match events::append_fenced(db, id, epoch, events)? {
        Some(_) => Ok(()),
        None => Err(anyhow::Error::new(LeaseLost { session: id })),
    }
}
