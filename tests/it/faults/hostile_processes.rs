//! Class 8: a tool never outlives its worker, and a worker stops at once.
//!
//! Every way a worker (or `agentq run`) ends, crossed with every kind of child it may
//! have running: a declared command that may have effects, one declared `read_only`,
//! and one whose surviving grandchild drops its environment, each `sh -c` with
//! background children in its process group. Once the process is gone no process of
//! that group may remain (if its watchdog was killed first, once the next worker has
//! claimed the session); a stopped worker exits promptly, leaving the execution
//! suspended; the resumed step answers a side-effecting call as interrupted and never
//! runs it again, and runs a read-only one again.

use super::*;

/// Which child runs when the worker ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Child {
    SideEffecting,
    ReadOnly,
    /// Side-effecting, and the grandchild that outlives the command's own process
    /// drops its environment (`env -i`), so only the recorded group leads to it.
    Unmarked,
}

const CHILDREN: &[Child] = &[Child::SideEffecting, Child::ReadOnly, Child::Unmarked];

/// How the process running the command ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Sigterm,
    Sigint,
    SigintTwice,
    SigtermThenSigint,
    Sigkill,
    /// SIGKILL after the command's watchdog was killed: what is left of the group is
    /// for the next worker to find.
    SigkillWithoutWatchdog,
    /// `worker --max-duration`.
    MaxDuration,
    /// The worker fails (its `.ready` directory replaced by a file) and exits non-zero.
    ErrorExit,
    /// `agentq run` interrupted with Ctrl-C.
    RunSigint,
    /// `agentq run` stopped with SIGTERM (a CI step's timeout).
    RunSigterm,
    /// `agentq run` killed.
    RunSigkill,
}

const ENDS: &[End] = &[
    End::Sigterm,
    End::Sigint,
    End::SigintTwice,
    End::SigtermThenSigint,
    End::Sigkill,
    End::SigkillWithoutWatchdog,
    End::MaxDuration,
    End::ErrorExit,
    End::RunSigint,
    End::RunSigterm,
    End::RunSigkill,
];

/// Well before the 30 s the command would take to end by itself.
const PROMPTLY: Duration = Duration::from_secs(10);

/// A command that, the first time only, hangs with a grandchild in its group. Every
/// run appends the group id (`$$`: `sh` leads the group) to `runs`.
fn hanging_agent(child: Child) -> String {
    let read_only = child == Child::ReadOnly;
    let hang = match child {
        Child::Unmarked => "env -i sleep 30 & exec sleep 30",
        _ => "sleep 30 & sleep 30",
    };
    format!(
        r#"
name = "hang"
[model]
provider = "scripted"
[[model.script]]
text = "running it"
tool_calls = [{{ name = "hang", arguments = {{}} }}]
[[model.script]]
text = "carried on"
[[tools.command]]
name = "hang"
argv = ["sh", "-c", "echo $$ >> runs; if [ -e hung ]; then exit 0; fi; touch hung; {hang}"]
timeout = "60s"
read_only = {read_only}
"#
    )
}

/// Sends a signal to a process of a command (not a child of the test).
fn signal_pid(pid: i32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` was just read as a
    // member of a process group this test's command created.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
    })
}

/// The process groups the command ran as, one per run, from `runs`.
fn runs(workspace: &Path) -> Vec<i32> {
    std::fs::read_to_string(workspace.join("runs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills the recorded groups when dropped, so a failing test leaves nothing behind.
struct KillGroups(PathBuf);

impl Drop for KillGroups {
    fn drop(&mut self) {
        for group in runs(&self.0) {
            // SAFETY: kill(2) has no memory-safety preconditions; `group` is the id of
            // a process group this test's command created (its `sh` wrote `$$`).
            unsafe {
                libc::kill(-group, libc::SIGKILL);
            }
        }
    }
}

/// One process ending one way while one child runs; returns the hostile cases checked.
fn end_while_a_command_runs(end: End, child: Child) -> u64 {
    let what = format!("{end:?} while a {child:?} command runs");
    let env = TestEnv::new();
    env.write_agent("hang", &hanging_agent(child));
    let id = env.new_session("hang");
    let workspace = env.session_dir(&id).join("workspace");
    let _cleanup = KillGroups(workspace.clone());
    let log = env.home().join("process.log");
    let args: Vec<&str> = match end {
        End::MaxDuration => vec!["worker", "--max-duration", "3s"],
        End::RunSigint | End::RunSigterm | End::RunSigkill => {
            vec!["run", "--session", &id, "go"]
        }
        _ => vec!["worker"],
    };
    if !matches!(end, End::RunSigint | End::RunSigterm | End::RunSigkill) {
        env.send(&id, "go");
    }
    let mut process = Logged::spawn(&env, &args, log.clone());
    let pid = process.child.id();
    wait_until(
        &format!("{what}: the command, its grandchild and its watchdog"),
        LONG,
        || {
            runs(&workspace)
                .first()
                // The command, its grandchild and its watchdog.
                .is_some_and(|g| group_members(*g).len() >= 3)
        },
    );
    let group = runs(&workspace)[0];
    let started = Instant::now();
    match end {
        End::Sigterm | End::RunSigterm => signal(pid, libc::SIGTERM),
        End::Sigint | End::RunSigint => signal(pid, libc::SIGINT),
        End::SigintTwice | End::SigtermThenSigint => {
            let first = if end == End::SigintTwice {
                libc::SIGINT
            } else {
                libc::SIGTERM
            };
            signal(pid, first);
            // Once the first is handled (two at once would count as one), the second
            // may still find the command running: then it is killed on the way out.
            wait_until(&format!("{what}: the worker stopping"), PROMPTLY, || {
                std::fs::read_to_string(&log).is_ok_and(|t| t.contains("stopping"))
            });
            signal(pid, libc::SIGINT);
        }
        End::Sigkill | End::RunSigkill => signal(pid, libc::SIGKILL),
        End::SigkillWithoutWatchdog => {
            let watchdog = group_members(group)
                .into_iter()
                .find(|p| {
                    std::fs::read(format!("/proc/{p}/cmdline"))
                        .is_ok_and(|c| c.windows(4).any(|w| w == b"read"))
                })
                .unwrap_or_else(|| panic!("{what}: no watchdog in the group"));
            signal_pid(watchdog, libc::SIGKILL);
            wait_until(&format!("{what}: the watchdog gone"), PROMPTLY, || {
                !alive(watchdog)
            });
            signal(pid, libc::SIGKILL);
        }
        End::MaxDuration => {}
        End::ErrorExit => {
            let ready = env.home().join("sessions/.ready");
            std::fs::remove_dir_all(&ready).unwrap();
            std::fs::write(&ready, "").unwrap();
        }
    }
    let (status, text) = process.wait(PROMPTLY + Duration::from_secs(5));
    let took = started.elapsed();
    assert!(!text.contains("panicked"), "{what}: {text}");
    if matches!(end, End::Sigkill | End::RunSigkill) {
        // The kernel kills the command itself with the worker, its watchdog the rest.
        wait_until(
            &format!("{what}: the group dying with it"),
            PROMPTLY,
            || group_members(group).is_empty(),
        );
    } else if end == End::SigkillWithoutWatchdog {
        // The command itself still dies with the worker; its grandchild is left for
        // the next claim.
        wait_until(
            &format!("{what}: the command dying with it"),
            PROMPTLY,
            || !alive(group),
        );
        assert!(
            !group_members(group).is_empty(),
            "{what}: nothing left to find"
        );
    } else {
        assert!(took < PROMPTLY, "{what}: stopped after {took:?}");
        let expected: &[i32] = match end {
            End::Sigterm | End::Sigint | End::MaxDuration => &[0],
            // The second signal may come before or after the stop completed.
            End::SigintTwice | End::SigtermThenSigint => &[0, 130],
            End::RunSigint | End::RunSigterm => &[130],
            _ => &[1],
        };
        assert!(
            status.code().is_some_and(|c| expected.contains(&c)),
            "{what}: exit {status:?}, expected {expected:?}:\n{text}"
        );
        wait_until(&format!("{what}: the group gone"), PROMPTLY, || {
            group_members(group).is_empty()
        });
    }
    if matches!(
        end,
        End::Sigterm | End::Sigint | End::MaxDuration | End::RunSigint | End::RunSigterm
    ) {
        // Stopped cleanly: suspended, and said so.
        let shown = env.json(&["session", "show", &id, "--json"]);
        assert_eq!(shown["running"]["suspended"], true, "{what}: {shown}");
        let text = env.ok(&["session", "show", &id]);
        assert!(
            text.lines().any(|l| l.starts_with("suspended ")) && !text.contains("running   "),
            "{what}:\n{text}"
        );
        // `status` too, which lists what is running in the whole home.
        let status = env.json(&["status", "--json"]);
        assert_eq!(status["running"][0]["suspended"], true, "{what}: {status}");
        let text = env.ok(&["status"]);
        assert!(
            text.lines().any(|l| l.starts_with("suspended session"))
                && !text.lines().any(|l| l.starts_with("running ")),
            "{what}:\n{text}"
        );
    }
    if end == End::ErrorExit {
        let ready = env.home().join("sessions/.ready");
        std::fs::remove_file(&ready).unwrap();
        std::fs::create_dir(&ready).unwrap();
    }

    // The next claim: nothing of the group may be left, and the call is never run twice.
    let out = env.run(&["worker", "--once"]);
    assert_eq!(code(&out), 0, "{what}: {}", describe(&out));
    assert!(
        group_members(group).is_empty(),
        "{what}: left running after the next claim: {:?}",
        group_members(group)
    );
    let done = env.finished(&id);
    assert_eq!(done.len(), 1, "{what}: {done:?}");
    assert_eq!(done[0]["status"], "completed", "{what}: {done:?}");
    let tools: Vec<Value> = env.tool_messages(&id);
    assert_eq!(tools.len(), 1, "{what}: {tools:?}");
    let content = tools[0]["content"].as_str().unwrap_or_default();
    match child {
        Child::SideEffecting | Child::Unmarked => {
            assert_eq!(runs(&workspace).len(), 1, "{what}: run again");
            assert!(content.starts_with("interrupted"), "{what}: {content}");
        }
        Child::ReadOnly => {
            assert_eq!(runs(&workspace).len(), 2, "{what}: run again on resume");
            assert!(content.starts_with("exit code: 0"), "{what}: {content}");
        }
    }
    assert!(check_files(env.home()).unparsable.is_empty(), "{what}");
    1
}

/// `worker --once` finishing: a command that exits at once, leaving children in its
/// group, leaves nothing once the call returns.
fn once_finishing_after_a_command_backgrounded_children() -> u64 {
    let env = TestEnv::new();
    env.write_agent(
        "background",
        r#"
name = "background"
[model]
provider = "scripted"
[[model.script]]
text = "starting it"
tool_calls = [{ name = "start", arguments = {} }]
[[model.script]]
text = "started"
[[tools.command]]
name = "start"
argv = ["sh", "-c", "echo $$ >> runs; sleep 30 & sleep 30 & exit 0"]
"#,
    );
    let id = env.new_session("background");
    let workspace = env.session_dir(&id).join("workspace");
    let _cleanup = KillGroups(workspace.clone());
    env.send(&id, "go");
    let started = Instant::now();
    env.worker_once();
    assert!(started.elapsed() < PROMPTLY, "the pipes were not held open");
    let group = runs(&workspace)[0];
    wait_until("the group gone", PROMPTLY, || {
        group_members(group).is_empty()
    });
    assert_eq!(env.responses(&id), vec!["started"]);
    1
}

#[test]
fn no_command_outlives_its_worker_however_the_worker_ends() {
    let mut cases = 0;
    for end in ENDS {
        for child in CHILDREN {
            cases += end_while_a_command_runs(*end, *child);
        }
    }
    cases += once_finishing_after_a_command_backgrounded_children();
    report("no_command_outlives_its_worker", &[("cases", cases)]);
}
