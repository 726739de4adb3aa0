//! Taking over at once the lease of an owner that died on this host. On the files a
//! killed worker's lock dies with it, and the next worker resumes the session at
//! once; a lease outlives its owner until it expires. So the claim records who holds
//! the lease beyond hostname and pid ([`OwnerProcess`]: the boot, the pid namespace,
//! the process's start time, in `last_owner`), and a claimer that finds the session
//! busy and runs on the same boot and in the same pid namespace looks whether that
//! process still lives. If it does not (SIGKILL, a crash, an exit that skipped the
//! release), the claimer takes the lease over: one `UPDATE` conditioned on the owner
//! and epoch it saw, raising the epoch, so the fence holds as for an expired lease and
//! of two claimers racing for it one wins. Across hosts (or pid namespaces) nothing
//! can be told, and the lease is taken once it expires, as before.

use std::sync::OnceLock;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tracing::info;
use uuid::Uuid;

use super::PgStore;
use super::prepared::Prepared;
use crate::domain::execution::WorkerInfo;

/// A lease owner's process, as its kernel knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct OwnerProcess {
    /// `/proc/sys/kernel/random/boot_id`: a pid names a process on one boot of one
    /// host only.
    boot_id: String,
    /// `/proc/self/ns/pid` (`pid:[…]`): pids are per namespace, and containers on one
    /// kernel share its boot id.
    pid_ns: String,
    pid: u32,
    /// Clock ticks since boot (`/proc/PID/stat`, field 22): a process that got the pid
    /// of one that ended started later.
    started: u64,
}

impl OwnerProcess {
    /// This process; `None` where `/proc` does not tell (then no claimer takes this
    /// process's leases over before they expire).
    pub(super) fn this() -> Option<&'static OwnerProcess> {
        static THIS: OnceLock<Option<OwnerProcess>> = OnceLock::new();
        THIS.get_or_init(|| {
            let pid = std::process::id();
            // A `/proc` of another pid namespace than ours would name other processes.
            let own = std::fs::read_to_string("/proc/self/stat").ok()?;
            if own.split_whitespace().next()? != pid.to_string() {
                return None;
            }
            let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
            let pid_ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
            Some(OwnerProcess {
                boot_id: boot_id.trim().to_owned(),
                pid_ns: pid_ns.to_str()?.to_owned(),
                pid,
                started: crate::tools::process::start_time(i32::try_from(pid).ok()?)?,
            })
        })
        .as_ref()
    }

    /// Whether this process can tell that `self` has ended: it runs on the same boot,
    /// in the same pid namespace, and no process lives with that pid and start time.
    pub(super) fn is_gone(&self) -> bool {
        let Some(me) = OwnerProcess::this() else {
            return false;
        };
        self.boot_id == me.boot_id
            && self.pid_ns == me.pid_ns
            && i32::try_from(self.pid)
                .is_ok_and(|pid| crate::tools::process::ended(pid, self.started))
    }

    /// This host's boot id, for the searches that look only at owners of this boot.
    pub(super) fn this_boot() -> Option<&'static str> {
        OwnerProcess::this().map(|me| me.boot_id.as_str())
    }
}

/// `sessions.last_owner` as a claim writes it: the worker (`{pid, host}`, what readers
/// take from it) and the process holding the lease, when it can be told.
#[derive(Serialize, Deserialize)]
struct LastOwner {
    #[serde(flatten)]
    worker: WorkerInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    process: Option<OwnerProcess>,
}

/// The `last_owner` a claim by `worker`, in this process, writes.
pub(super) fn last_owner(worker: &WorkerInfo) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(LastOwner {
        worker: worker.clone(),
        process: OwnerProcess::this().cloned(),
    })?)
}

/// The process `last_owner` names, if it names one (rows written before it was
/// recorded do not).
pub(super) fn process_of(last_owner: Option<serde_json::Value>) -> Option<OwnerProcess> {
    serde_json::from_value::<LastOwner>(last_owner?)
        .ok()?
        .process
}

/// Takes the lease of session `id` for `worker` if its holder is a process of this
/// host that has ended; the new epoch, or `None` when the session stays busy (its
/// owner alive, on another host, or taken by another claimer first). For a claim that
/// found the session busy.
pub(super) fn take_over_ended(
    store: &PgStore,
    id: Uuid,
    worker: &WorkerInfo,
) -> Result<Option<i64>> {
    if OwnerProcess::this().is_none() {
        return Ok(None);
    }
    let (owner, info) = (
        super::lease::owner_value(store, worker),
        last_owner(worker)?,
    );
    let lease = store.lease_secs();
    let taken = store.db.call("taking over a session in", move |c| {
        let Some(row) = c.row_opt(
            "SELECT owner, epoch, last_owner FROM sessions
             WHERE id = $1 AND owner IS NOT NULL AND lease_until >= now()",
            &[&id],
        )?
        else {
            return Ok(None);
        };
        let (held_by, epoch): (String, i64) = (row.get(0), row.get(1));
        let previous: Option<serde_json::Value> = row.get(2);
        let Some(process) = process_of(previous.clone()).filter(OwnerProcess::is_gone) else {
            return Ok(None);
        };
        // Conditioned on what was seen: a claimer that took it meanwhile (the lease
        // expired, or it saw the death too) raised the epoch, and this takes nothing.
        let taken = c.row_opt(
            "UPDATE sessions
             SET owner = $2, epoch = epoch + 1,
                 lease_until = now() + make_interval(secs => $3), last_owner = $4
             WHERE id = $1 AND owner = $5 AND epoch = $6
             RETURNING epoch",
            &[&id, &owner, &lease, &info, &held_by, &epoch],
        )?;
        Ok(taken.map(|row| (row.get::<_, i64>(0), process, previous)))
    })?;
    Ok(taken.map(|(epoch, process, previous)| {
        let host = previous
            .and_then(|v| serde_json::from_value::<WorkerInfo>(v).ok())
            .map_or_else(|| "this host".to_owned(), |w| w.host);
        info!(session = %id, "the worker that owned the session (pid {} on {host}) is gone; took its lease over", process.pid);
        epoch
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_one_that_ended_is_gone_seen_from_its_boot_and_namespace() {
        let me = OwnerProcess::this().expect("/proc tells who this process is");
        assert!(!me.is_gone());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let started = crate::tools::process::start_time(pid as i32).unwrap_or(0);
        let ended = OwnerProcess {
            pid,
            started,
            ..me.clone()
        };
        // A zombie until reaped: ended already.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !ended.is_gone() {
            assert!(std::time::Instant::now() < deadline, "the child ended");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.wait().unwrap();
        assert!(ended.is_gone());
        // Seen from another boot or pid namespace, the same pid tells nothing.
        for elsewhere in [
            OwnerProcess {
                boot_id: "another boot".into(),
                ..ended.clone()
            },
            OwnerProcess {
                pid_ns: "pid:[1]".into(),
                ..ended.clone()
            },
        ] {
            assert!(!elsewhere.is_gone(), "{elsewhere:?}");
        }
        // Our pid with another start time: the pid was reused, its owner is gone.
        let reused = OwnerProcess {
            started: me.started + 1,
            ..me.clone()
        };
        assert!(reused.is_gone());
    }

    #[test]
    fn last_owner_keeps_the_worker_readable_as_before() {
        let worker = WorkerInfo {
            pid: 7,
            host: "h".into(),
        };
        let written = last_owner(&worker).unwrap();
        assert_eq!(
            serde_json::from_value::<WorkerInfo>(written.clone()).unwrap(),
            worker
        );
        assert_eq!(process_of(Some(written)).as_ref(), OwnerProcess::this());
        // A row written before the process was recorded names none.
        assert_eq!(
            process_of(Some(serde_json::json!({"pid": 7, "host": "h"}))),
            None
        );
    }
}
