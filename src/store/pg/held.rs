//! The leases this process holds, for an exit that skips their release (the second
//! signal, [`release_all`]): without it such a lease stays held until it expires,
//! where the files' lock ends with the process. Each lease is added when its claim
//! took it and removed when it lets go.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use uuid::Uuid;

use super::Db;

struct Held {
    db: Arc<Db>,
    id: Uuid,
    epoch: i64,
}

static HELD: Mutex<Vec<Held>> = Mutex::new(Vec::new());

fn held() -> std::sync::MutexGuard<'static, Vec<Held>> {
    // Plain data: valid whatever a panicking holder was doing.
    HELD.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Session `id`'s lease at `epoch`, taken on `db`'s database.
pub(super) fn add(db: &Arc<Db>, id: Uuid, epoch: i64) {
    held().push(Held {
        db: db.clone(),
        id,
        epoch,
    });
}

pub(super) fn remove(id: Uuid, epoch: i64) {
    held().retain(|h| (h.id, h.epoch) != (id, epoch));
}

/// Lets go of every lease still held, waiting at most `within` (the database may not
/// answer): what is not released by then expires as it would have.
pub(crate) fn release_all(within: Duration) {
    let leases: Vec<(Arc<Db>, Uuid, i64)> =
        held().drain(..).map(|h| (h.db, h.id, h.epoch)).collect();
    if leases.is_empty() {
        return;
    }
    let (done, finished) = std::sync::mpsc::channel();
    let releasing = std::thread::spawn(move || {
        for (db, id, epoch) in leases {
            if let Err(err) = super::lease::release_row(&db, id, epoch) {
                tracing::warn!(session = %id, "cannot release the lease before exiting: {err}");
            }
        }
        let _ = done.send(());
    });
    if finished.recv_timeout(within).is_ok() {
        let _ = releasing.join();
    }
}
