//! Which workers are alive: every worker holds an exclusive lock on a file of its own in
//! `sessions/.workers/` for as long as it runs, so a crashed worker's file is simply no
//! longer locked. With `worker --max-workers N` the files are the N slots `slot-0` …
//! `slot-{N-1}`: a worker that finds every slot locked does not start, so overlapping
//! cron starts cannot pile up.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::FileStore;
use super::fs::AtPath;
use crate::domain::execution::WorkerInfo;
use crate::time::Timestamp;

/// What a worker's lock file says about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub pid: u32,
    pub host: String,
    pub started_at: Timestamp,
    #[serde(default)]
    pub slot: Option<usize>,
}

/// A registered worker; the registration ends when this is dropped.
pub struct Registration {
    _file: File,
    /// Per-process files are removed on a clean exit; slots stay for the next worker.
    remove: Option<PathBuf>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(path) = &self.remove {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl FileStore {
    pub(crate) fn workers_dir(&self) -> PathBuf {
        self.sessions_dir().join(".workers")
    }

    /// Registers this worker. With `max_workers`, takes a free slot, or returns `None`
    /// when all of them are held by live workers.
    pub(crate) fn register(
        &self,
        worker: &WorkerInfo,
        max_workers: Option<usize>,
    ) -> Result<Option<Registration>> {
        let dir = self.workers_dir();
        // Only lock files live there: something else in its place is moved aside, so
        // no worker is kept from starting by it.
        if let Some(aside) = super::recover::ensure_dir(&dir, self.clock.now())? {
            tracing::error!(
                "{} was not a directory; moved it to {} and made the directory again",
                dir.display(),
                aside.display()
            );
        }
        let mut record = WorkerRecord {
            pid: worker.pid,
            host: worker.host.clone(),
            started_at: self.clock.now(),
            slot: None,
        };
        let Some(max) = max_workers else {
            // Locked and described under a name readers ignore, then renamed into place:
            // a reader that finds a `worker-*` file unlocked knows its worker is gone
            // and removes it, and must never meet the file of one not locked yet.
            let name = format!("worker-{}-{}", worker.pid, record.started_at.0);
            let path = dir.join(&name);
            let starting = dir.join(format!(".{name}"));
            let registered = lock_and_describe(&starting, &record).and_then(|file| match file {
                Some(file) => std::fs::rename(&starting, &path)
                    .with_context(|| {
                        format!("renaming {} to {}", starting.display(), path.display())
                    })
                    .map(|()| file),
                None => anyhow::bail!("{} is locked by another process", starting.display()),
            });
            let file = match registered {
                Ok(file) => file,
                Err(err) => {
                    // A worker that cannot register leaves no file claiming it runs.
                    let _ = std::fs::remove_file(&starting);
                    return Err(err);
                }
            };
            return Ok(Some(Registration {
                _file: file,
                remove: Some(path),
            }));
        };
        for slot in 0..max {
            record.slot = Some(slot);
            if let Some(file) = lock_and_describe(&dir.join(format!("slot-{slot}")), &record)? {
                return Ok(Some(Registration {
                    _file: file,
                    remove: None,
                }));
            }
        }
        Ok(None)
    }

    /// The workers running now, by their locks.
    pub(crate) fn workers_alive(&self) -> Result<Vec<WorkerRecord>> {
        let dir = self.workers_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        let mut live = Vec::new();
        for entry in entries {
            let path = entry.at(&dir)?.path();
            // A worker registering right now (see `register_worker`).
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            let Ok(mut file) = File::open(&path) else {
                continue;
            };
            match file.try_lock_shared() {
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut text = String::new();
                    if file.read_to_string(&mut text).is_ok()
                        && let Ok(record) = serde_json::from_str::<WorkerRecord>(&text)
                    {
                        live.push(record);
                    }
                }
                Ok(()) => {
                    // Left by a worker that died: its per-process file can go.
                    let _ = file.unlock();
                    if path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("worker-"))
                    {
                        let _ = std::fs::remove_file(&path);
                    }
                }
                Err(_) => {}
            }
        }
        live.sort_by_key(|w| (w.started_at, w.pid));
        Ok(live)
    }
}

/// Locks `path` without waiting and writes `record` into it; `None` if it is held.
fn lock_and_describe(path: &std::path::Path, record: &WorkerRecord) -> Result<Option<File>> {
    let Some(mut file) = super::recover::try_lock_clearing(path)
        .with_context(|| format!("locking {}", path.display()))?
    else {
        return Ok(None);
    };
    let text = serde_json::to_string(record)?;
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::V7Ids;
    use crate::time::SystemClock;
    use std::sync::Arc;

    fn store() -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(
            dir.path().to_owned(),
            Arc::new(SystemClock),
            Arc::new(V7Ids),
        );
        (dir, store)
    }

    fn me() -> WorkerInfo {
        WorkerInfo {
            pid: std::process::id(),
            host: "test".into(),
        }
    }

    #[test]
    fn slots_run_out_and_come_back() {
        let (_dir, store) = store();
        let first = store.register(&me(), Some(2)).unwrap();
        let second = store.register(&me(), Some(2)).unwrap();
        assert!(first.is_some() && second.is_some());
        assert!(store.register(&me(), Some(2)).unwrap().is_none());
        assert_eq!(store.workers_alive().unwrap().len(), 2);
        drop(first);
        // Other tests of this binary fork processes; a child between fork and exec holds
        // a copy of the closed descriptor, and its lock, for a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while store.register(&me(), Some(2)).unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the freed slot came back"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn a_worker_is_live_while_registered() {
        let (_dir, store) = store();
        let registration = store.register(&me(), None).unwrap();
        let live = store.workers_alive().unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].pid, std::process::id());
        drop(registration);
        assert!(store.workers_alive().unwrap().is_empty());
        assert_eq!(std::fs::read_dir(store.workers_dir()).unwrap().count(), 0);
    }
}
