//! The process groups of declared commands, and the guarantee that none outlives the
//! worker that started it, however the worker ends.
//!
//! Every command runs as the leader of a process group of its own. What kills it:
//! - the call itself, when the command ends, times out or is stopped (a cancel, a
//!   shutdown, `--max-duration`): [`Group`] kills the whole group when it is dropped,
//!   so no path out of a call (an early return, a dropped future) forgets it;
//! - [`kill_all`], on the exits that do not unwind to the calls (a second signal);
//! - when the worker dies without a word (SIGKILL, a crash), two things at once. The
//!   leader is spawned with `PR_SET_PDEATHSIG`, so the kernel kills it. That signal
//!   fires when the *thread* that forked exits, not the process: commands are spawned
//!   from the thread that drives the session's whole drain (a blocking thread in
//!   `block_on`, or a runtime worker thread for `agentq run`), which awaits the
//!   command and so outlives it. And since the signal reaches only the leader, not
//!   its children, a watchdog joins the group: a `sh` blocked reading a pipe whose
//!   only writer is the worker; the worker's death closes it, and the watchdog kills
//!   its group, itself included;
//! - [`kill_leftovers`], for what escaped both (a worker killed between spawning a
//!   command and its watchdog, a watchdog that could not start or was killed), run by
//!   the next worker to take the session before it resumes anything. It finds them two
//!   ways: the groups recorded in the session's `processes.json` while they ran (with
//!   their leader's start time, so a recycled group id is not taken for one of ours),
//!   and every process still carrying [`SESSION_MARKER`] with the session's id in its
//!   environment (inherited by every child, even one that left the group; the id is a
//!   UUID, so it names nothing else).

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::warn;
use uuid::Uuid;

/// Set in the environment of every command (and so of its children): the id of the
/// session it runs for.
pub const SESSION_MARKER: &str = "AGENTQ_SESSION_ID";

/// The session commands run for, and the file its running groups are recorded in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub session: Uuid,
    pub record: PathBuf,
}

/// A group as recorded in `processes.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Recorded {
    /// The process group id: the pid of its leader.
    group: i32,
    /// The leader's start time (clock ticks since boot, `/proc/PID/stat`).
    started: u64,
}

/// A group started by this process and not yet killed.
struct Live {
    recorded: Recorded,
    owner: Option<Owner>,
}

static LIVE: Mutex<Vec<Live>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<Live>> {
    // The list stays valid whatever a panicking holder was doing: entries are plain data.
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes the groups of `owner` still running into its record (removing the record
/// when none is). Under the `LIVE` lock, so writes land in the order of the changes.
/// Not fsynced: a power failure that loses it also ends the processes. A failure is
/// logged, not fatal: the marker still finds the processes.
fn write_record(live: &[Live], owner: &Owner) {
    let groups: Vec<Recorded> = live
        .iter()
        .filter(|l| l.owner.as_ref() == Some(owner))
        .map(|l| l.recorded)
        .collect();
    let written = if groups.is_empty() {
        match std::fs::remove_file(&owner.record) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    } else {
        crate::store::local::write_json_unsynced(&owner.record, &groups)
    };
    if let Err(err) = written {
        warn!(session = %owner.session, "cannot record the running commands in {}: {err}", owner.record.display());
    }
}

/// Makes `command` the leader of a new process group, marked as working for the
/// owner's session, that the kernel kills if this process dies.
pub fn prepare(command: &mut tokio::process::Command, owner: Option<&Owner>) {
    command.process_group(0);
    if let Some(owner) = owner {
        command.env(SESSION_MARKER, owner.session.to_string());
    }
    #[cfg(target_os = "linux")]
    {
        let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (prctl, getppid); it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                let signal = libc::c_ulong::try_from(libc::SIGKILL).unwrap_or(9);
                if libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0, 0, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // The worker may have died between the fork and the prctl, which then
                // never fires: the command must not start at all.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
}

/// A running command's process group: registered (and recorded for its owner) while
/// it lives, killed whole when dropped.
pub struct Group {
    id: i32,
    watchdog: Option<std::process::Child>,
    /// The write end of the watchdog's pipe: closed when this process dies.
    _lifeline: Option<OwnedFd>,
}

impl Group {
    /// The group led by the process `leader` (spawned after [`prepare`]).
    pub fn register(leader: u32, owner: Option<&Owner>) -> Option<Group> {
        let id = i32::try_from(leader).ok().filter(|id| *id > 1)?;
        let (watchdog, lifeline) = match start_watchdog(id, owner) {
            Ok((watchdog, lifeline)) => (Some(watchdog), Some(lifeline)),
            Err(err) => {
                // The death signal and the next claim still cover the group.
                warn!("cannot start the watchdog of process group {id}: {err}");
                (None, None)
            }
        };
        let recorded = Recorded {
            group: id,
            started: start_time(id).unwrap_or(0),
        };
        let mut live = live();
        live.push(Live {
            recorded,
            owner: owner.cloned(),
        });
        if let Some(owner) = owner {
            write_record(&live, owner);
        }
        Some(Group {
            id,
            watchdog,
            _lifeline: lifeline,
        })
    }
}

/// Starts the watchdog of group `id`: `sh` in that group, reading a pipe nobody writes
/// to until its write end (returned, close-on-exec, so no other child keeps a copy)
/// closes, then killing every process of the group.
fn start_watchdog(
    id: i32,
    owner: Option<&Owner>,
) -> std::io::Result<(std::process::Child, OwnedFd)> {
    let mut ends = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given, which is
    // exactly two ints long; each is owned by one OwnedFd right after.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    let mut command = std::process::Command::new("/bin/sh");
    command
        .args(["-c", "read -r line; kill -KILL 0"])
        .env_clear()
        .stdin(std::process::Stdio::from(read))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(id);
    if let Some(owner) = owner {
        command.env(SESSION_MARKER, owner.session.to_string());
    }
    Ok((command.spawn()?, write))
}

impl Drop for Group {
    fn drop(&mut self) {
        kill_group(self.id);
        if let Some(mut watchdog) = self.watchdog.take() {
            // Killed with the group just now: this only collects its exit status.
            let _ = watchdog.wait();
        }
        let mut live = live();
        let Some(at) = live.iter().position(|l| l.recorded.group == self.id) else {
            return;
        };
        let gone = live.remove(at);
        if let Some(owner) = &gone.owner {
            write_record(&live, owner);
        }
    }
}

/// Kills every group this process started that is still running: for exits that skip
/// the calls' own clean-up.
pub fn kill_all() {
    for l in live().iter() {
        kill_group(l.recorded.group);
    }
}

fn kill_group(id: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions. A negative pid names a
    // process group; `id` is one this process created (never 0 or 1, which would name
    // our own group or every process). An already empty group gives ESRCH: fine.
    unsafe {
        libc::kill(-id, libc::SIGKILL);
    }
}

fn kill_process(pid: i32) {
    // SAFETY: as in kill_group; a positive pid names one process.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Kills what is left of the commands a previous owner of the session ran: the groups
/// it recorded, and every process carrying the session's marker (with its group, when
/// that group is one a command leads). Returns how many processes were found. Without
/// `/proc` there is nothing to scan (and no `PR_SET_PDEATHSIG` either), and nothing is
/// done.
pub fn kill_leftovers(owner: &Owner) -> usize {
    let living = processes();
    let own_group = own_group();
    let mut found = 0;
    let recorded: Vec<Recorded> = std::fs::read(&owner.record)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    for group in recorded {
        let members: Vec<&Process> = living.iter().filter(|p| p.group == group.group).collect();
        // The id is ours if its leader is the one recorded, or, once the leader is
        // gone (the death signal), if what is left started after it: a recycled id
        // would need every one of ours to have ended first.
        let leader = members.iter().find(|p| p.pid == group.group);
        let ours = match leader {
            Some(leader) => leader.started == group.started,
            None => members.iter().any(|p| p.started >= group.started),
        };
        if ours && group.group != own_group {
            found += members.len();
            kill_group(group.group);
        }
    }
    let marker = format!("{SESSION_MARKER}={}", owner.session);
    let marked: Vec<&Process> = living.iter().filter(|p| carries(p.pid, &marker)).collect();
    for process in &marked {
        // A command may have moved itself into a group it does not lead (even ours):
        // then only the process itself is killed, never the group's other members.
        // A group whose leader is gone was a command's (the death signal killed it).
        let group = process.group;
        let leader_gone = !living.iter().any(|p| p.pid == group);
        let leads_marked_group = group != own_group
            && group > 1
            && (marked.iter().any(|p| p.pid == group) || leader_gone);
        if leads_marked_group {
            kill_group(group);
        } else {
            kill_process(process.pid);
        }
    }
    found += marked.len();
    write_record(&[], owner);
    found
}

/// A living process, as `/proc/PID/stat` describes it.
struct Process {
    pid: i32,
    group: i32,
    /// Clock ticks since boot.
    started: u64,
}

/// Every living process, from `/proc`. Zombies are left out: they run nothing, and
/// are gone once their parent (or init) reaps them.
fn processes() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (state, group, started) = parse_stat(&stat)?;
            (!matches!(state, 'Z' | 'X')).then_some(Process {
                pid,
                group,
                started,
            })
        })
        .collect()
}

/// When process `pid` started (clock ticks since boot), as `/proc/PID/stat` says.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(parse_stat(&stat)?.2)
}

/// Whether the process `pid` that started at `started` (as [`start_time`] gave it)
/// has ended: no process has its pid, or the one that has it now is a zombie or
/// started at another time (the pid was reused). A process this one may not look
/// at (`/proc` mounted with `hidepid`) has not ended, as far as it can tell.
pub(crate) fn ended(pid: i32, started: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 sends nothing; it only checks that `pid` names a
    // process (a positive pid names one process, never a group).
    if unsafe { libc::kill(pid, 0) } == -1
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| parse_stat(&stat))
    {
        Some((state, _, start)) => matches!(state, 'Z' | 'X') || start != started,
        None => false,
    }
}

/// The state, process group and start time in `/proc/PID/stat`: fields 3, 5 and 22,
/// counted after the parenthesised command name (which may itself hold spaces and
/// parentheses).
fn parse_stat(stat: &str) -> Option<(char, i32, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let group = fields.get(2)?.parse().ok()?;
    let started = fields.get(19)?.parse().ok()?;
    Some((state, group, started))
}

fn carries(pid: i32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
}

fn own_group() -> i32 {
    // SAFETY: getpgrp(2) cannot fail and touches no memory.
    unsafe { libc::getpgrp() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stat_fields_are_read_after_a_command_name_with_spaces_and_parentheses() {
        // After the state: ppid, pgrp, session, tty, tpgid, flags, 4 fault counts, 4
        // cpu times, priority, nice, threads, itrealvalue, starttime.
        let tail = "0 -1 4194304 101 0 0 0 0 0 0 0 20 0 1 0 802958 3133440";
        assert_eq!(
            parse_stat(&format!("42 (sleep) S 1 42 42 {tail}")),
            Some(('S', 42, 802958))
        );
        assert_eq!(
            parse_stat(&format!("43 (a) b (c) Z 7 41 41 {tail}")),
            Some(('Z', 41, 802958))
        );
        assert_eq!(parse_stat("44 (truncated"), None);
        assert_eq!(parse_stat("45 (short) S 1 45 45"), None);
    }

    /// Spawns `sh -c SCRIPT` as a command of `owner` and waits until `count` living
    /// processes are in its group; returns the child, its group and the group's id.
    async fn spawn_group(
        owner: &Owner,
        script: &str,
        count: usize,
    ) -> (tokio::process::Child, Group, i32) {
        let mut command = tokio::process::Command::new("sh");
        command.args(["-c", script]);
        prepare(&mut command, Some(owner));
        let child = command.spawn().unwrap();
        let leader = child.id().unwrap();
        let group = Group::register(leader, Some(owner)).unwrap();
        let id = i32::try_from(leader).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while processes().iter().filter(|p| p.group == id).count() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "the children never ran"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        (child, group, id)
    }

    async fn wait_gone(id: i32) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while processes().iter().any(|p| p.group == id) {
            assert!(std::time::Instant::now() < deadline, "the group survived");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn leftovers_are_found_by_the_record_and_by_the_marker_and_killed_with_their_group() {
        let dir = tempfile::tempdir().unwrap();
        let owner = |name: &str| Owner {
            session: Uuid::now_v7(),
            record: dir.path().join(name),
        };
        let (marked, unmarked, ending, stranger) = (owner("a"), owner("b"), owner("c"), owner("d"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // Found by the marker: both processes carry it.
            // sh, its two sleeps, and the watchdog.
            let (mut child, group, id) = spawn_group(&marked, "sleep 30 & sleep 30", 4).await;
            assert!(marked.record.exists(), "recorded while it runs");
            // As a dead worker leaves it: never dropped, so never killed by the call.
            std::mem::forget(group);
            assert_eq!(kill_leftovers(&stranger), 0, "another session's");
            assert!(kill_leftovers(&marked) >= 2);
            let _ = child.wait().await;
            wait_gone(id).await;
            assert!(!marked.record.exists(), "the record goes with them");

            // Found by the record only: the one child left dropped its environment
            // (and the watchdog is gone too).
            let (mut child, mut group, id) =
                spawn_group(&unmarked, "env -i sleep 30 & exec sleep 30", 3).await;
            let mut watchdog = group.watchdog.take().unwrap();
            watchdog.kill().unwrap();
            watchdog.wait().unwrap();
            std::mem::forget(group);
            let _ = child.start_kill();
            let _ = child.wait().await;
            assert_eq!(processes().iter().filter(|p| p.group == id).count(), 1);
            assert!(kill_leftovers(&unmarked) >= 1);
            wait_gone(id).await;

            // A call that ends kills its group and clears the record.
            let (mut child, group, id) = spawn_group(&ending, "sleep 30 & sleep 30", 4).await;
            drop(group);
            let _ = child.wait().await;
            wait_gone(id).await;
            assert!(!ending.record.exists());
        });
        // The registry forgets the groups this test killed behind its back.
        let mine = [marked, unmarked];
        live().retain(|l| l.owner.as_ref().is_none_or(|o| !mine.contains(o)));
    }

    #[test]
    fn the_watchdog_kills_its_group_once_the_lifeline_closes() {
        let dir = tempfile::tempdir().unwrap();
        let owner = Owner {
            session: Uuid::now_v7(),
            record: dir.path().join("processes.json"),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut child, mut group, id) = spawn_group(&owner, "sleep 30 & sleep 30", 4).await;
            let mut watchdog = group.watchdog.take().unwrap();
            // What the worker's death does: the pipe's only writer goes.
            drop(group._lifeline.take());
            watchdog.wait().unwrap();
            let _ = child.wait().await;
            wait_gone(id).await;
        });
    }
}
