//! The process groups of declared commands, and the guarantee that none outlives the
//! worker that started it, however the worker ends.
//!
//! Every command runs as the leader of a process group of its own. What kills it:
//! - the call itself, when the command ends, times out or is stopped (a cancel, a
//!   shutdown, `--max-duration`): [`Group`] kills the whole group when it is dropped,
//!   so no path out of a call (an early return, a dropped future) forgets it;
//! - [`kill_all`], on the exits that do not unwind to the calls (a second signal);
//! - the kernel, when the worker dies without a word (SIGKILL, a crash): the leader is
//!   spawned with `PR_SET_PDEATHSIG`. That signal fires when the *thread* that forked
//!   exits, not the process: commands are spawned from the thread that drives the
//!   session's whole drain (a blocking thread in `block_on`, or a runtime worker
//!   thread for `agentq run`), which awaits the command and so outlives it;
//! - [`kill_leftovers`], for what the death signal cannot reach (it reaches only the
//!   direct child, not its children): every process of a command inherits
//!   [`SESSION_MARKER`] naming its session, and the next worker to take the session
//!   kills every group still carrying it before it resumes the execution. The marker
//!   is the session's UUID, so a recycled pid or process group id is never mistaken
//!   for one of ours.

use std::sync::Mutex;

use uuid::Uuid;

/// Set in the environment of every command (and so of its children): the id of the
/// session it runs for.
pub const SESSION_MARKER: &str = "AGENTQ_SESSION_ID";

/// Groups started by this process and not yet killed.
static LIVE: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<i32>> {
    // The list stays valid whatever a panicking holder was doing: entries are plain ids.
    LIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Makes `command` the leader of a new process group, marked as working for
/// `session`, that the kernel kills if this process dies.
pub fn prepare(command: &mut tokio::process::Command, session: Option<Uuid>) {
    command.process_group(0);
    if let Some(session) = session {
        command.env(SESSION_MARKER, session.to_string());
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

/// A running command's process group: registered while it lives, killed whole when
/// dropped.
pub struct Group {
    id: i32,
}

impl Group {
    /// The group led by the process `leader` (spawned after [`prepare`]).
    pub fn register(leader: u32) -> Option<Group> {
        let id = i32::try_from(leader).ok().filter(|id| *id > 0)?;
        live().push(id);
        Some(Group { id })
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        kill_group(self.id);
        live().retain(|id| *id != self.id);
    }
}

/// Kills every group this process started that is still running: for exits that skip
/// the calls' own clean-up.
pub fn kill_all() {
    for id in live().iter() {
        kill_group(*id);
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

/// Kills what is left of the commands a previous owner of `session` ran: every
/// process carrying the session's marker, with its group when that group is one a
/// command leads. Returns how many processes were found. Without `/proc` there is
/// nothing to scan (and no `PR_SET_PDEATHSIG` either), and nothing is done.
pub fn kill_leftovers(session: Uuid) -> usize {
    let marker = format!("{SESSION_MARKER}={session}");
    let own_group = own_group();
    let living = processes();
    let marked: Vec<(i32, i32)> = living
        .iter()
        .copied()
        .filter(|(pid, _)| carries(*pid, &marker))
        .collect();
    for (pid, group) in &marked {
        // A command may have moved itself into a group it does not lead (even ours):
        // then only the process itself is killed, never the group's other members.
        // A group whose leader is gone was a command's (the death signal killed it).
        let leader_gone = !living.iter().any(|(p, _)| p == group);
        let leads_marked_group = *group != own_group
            && *group > 1
            && (marked.iter().any(|(p, _)| p == group) || leader_gone);
        if leads_marked_group {
            kill_group(*group);
        } else {
            kill_process(*pid);
        }
    }
    marked.len()
}

/// Every living process's pid and process group, from `/proc`. Zombies are left out:
/// they run nothing, and are gone once their parent (or init) reaps them.
fn processes() -> Vec<(i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (state, group) = parse_stat(&stat)?;
            (!matches!(state, 'Z' | 'X')).then_some((pid, group))
        })
        .collect()
}

/// The state and process group in `/proc/PID/stat`: the first and third fields after
/// the parenthesised command name (which may itself hold spaces and parentheses).
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let group = fields.nth(1)?.parse().ok()?;
    Some((state, group))
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
    fn the_group_is_read_after_a_command_name_with_spaces_and_parentheses() {
        assert_eq!(parse_stat("42 (sleep) S 1 42 42 0 -1"), Some(('S', 42)));
        assert_eq!(parse_stat("43 (a) b (c) Z 7 41 41 0"), Some(('Z', 41)));
        assert_eq!(parse_stat("44 (truncated"), None);
    }

    #[test]
    fn leftovers_of_a_session_are_found_by_its_marker_and_killed_with_their_group() {
        let session = Uuid::now_v7();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut command = tokio::process::Command::new("sh");
            command.args(["-c", "sleep 30 & sleep 30"]);
            prepare(&mut command, Some(session));
            let mut child = command.spawn().unwrap();
            let leader = i32::try_from(child.id().unwrap()).unwrap();
            // Both processes of the group carry the marker once the grandchild runs.
            let marker = format!("{SESSION_MARKER}={session}");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while processes()
                .iter()
                .filter(|(pid, group)| *group == leader && carries(*pid, &marker))
                .count()
                < 2
            {
                assert!(std::time::Instant::now() < deadline, "the grandchild never ran");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert_eq!(kill_leftovers(Uuid::now_v7()), 0, "another session's marker");
            assert!(kill_leftovers(session) >= 2);
            let _ = child.wait().await;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while processes().iter().any(|(_, group)| *group == leader) {
                assert!(std::time::Instant::now() < deadline, "the group survived");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        });
    }
}
