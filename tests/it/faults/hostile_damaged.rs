//! Class 3: a damaged session neither harms the others nor wedges for good; every I/O error names its path.
//!
//! The class is "one damaged file of one session": every file and directory of a
//! session's layout, times every kind of damage, times every command that reads it.
//! Each command either works or refuses that session with one `agentq:` line naming
//! the damaged path; the other session is listed and run as if nothing happened; no
//! file grows NUL bytes; and what a worker can repair it repairs, without a message
//! having to arrive first.

use std::os::unix::fs::PermissionsExt;

use super::*;

/// What is done to one part of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Harm {
    Missing,
    Empty,
    /// Cut to half its length.
    Truncated,
    Garbage,
    /// Overwritten with NUL bytes, length kept.
    Nul,
    /// A directory where the file belongs.
    Directory,
    /// A file where the directory belongs.
    File,
    /// Mode 000 (not testable as root, which reads anyway: such cases are skipped).
    Unreadable,
}

const FILE_HARMS: &[Harm] = &[
    Harm::Missing,
    Harm::Empty,
    Harm::Truncated,
    Harm::Garbage,
    Harm::Nul,
    Harm::Directory,
    Harm::Unreadable,
];
const DIR_HARMS: &[Harm] = &[Harm::Missing, Harm::File, Harm::Unreadable];

/// The parts of a session's layout (ARCHITECTURE.md §1), relative to its directory;
/// `inbox/*` and `executions/*` stand for the first entry there.
const FILES: &[&str] = &[
    "session.json",
    "state.json",
    "transcript.ndjson",
    "events.ndjson",
    "inbox/*",
    "executions/*",
    "keys/*",
    "lock",
];
const DIRS: &[&str] = &["inbox", "executions", "keys", "workspace"];

/// Parts a worker repairs (or moves aside) by itself, whatever the damage: the
/// damaged session runs its messages like the other. (A workspace that is not a
/// directory fails its executions, which is the agent's business, not the store's.)
const REPAIRED: &[&str] = &[
    "session.json",
    "state.json",
    "transcript.ndjson",
    "events.ndjson",
    "inbox/*",
    "executions/*",
    "lock",
    "inbox",
    "executions",
];

fn resolve_part(dir: &Path, part: &str) -> PathBuf {
    match part.strip_suffix("/*") {
        Some(sub) => {
            let mut names: Vec<PathBuf> = std::fs::read_dir(dir.join(sub))
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                .collect();
            names.sort();
            names.into_iter().next().expect("an entry to damage")
        }
        None => dir.join(part),
    }
}

/// Damages `path`; false when the damage cannot be made here (mode 000 as root).
fn harm(path: &Path, how: Harm) -> bool {
    let is_dir = path.is_dir();
    let remove = || {
        if is_dir {
            std::fs::remove_dir_all(path).unwrap();
        } else {
            std::fs::remove_file(path).unwrap();
        }
    };
    match how {
        Harm::Missing => remove(),
        Harm::Empty => std::fs::write(path, b"").unwrap(),
        Harm::Truncated => {
            let len = std::fs::metadata(path).unwrap().len();
            File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
        }
        Harm::Garbage => std::fs::write(path, b"not json at all {\"").unwrap(),
        Harm::Nul => {
            let len = std::fs::metadata(path).unwrap().len().max(16);
            std::fs::write(path, vec![0u8; len as usize]).unwrap();
        }
        Harm::Directory => {
            remove();
            std::fs::create_dir(path).unwrap();
            std::fs::write(path.join("stray"), b"x").unwrap();
        }
        Harm::File => {
            remove();
            std::fs::write(path, b"a file where a directory belongs").unwrap();
        }
        Harm::Unreadable => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o000)).unwrap();
            let readable = if is_dir {
                std::fs::read_dir(path).is_ok()
            } else {
                std::fs::read(path).is_ok()
            };
            if readable {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
                return false;
            }
        }
    }
    true
}

/// Gives every path under `root` its owner's permissions back (mode 000 damage), so
/// the walk below and the temp dir's removal can read them.
fn restore_permissions(root: &Path) {
    let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700));
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            restore_permissions(&path);
        } else {
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
    }
}

/// The session to damage has one message settled (so it has a transcript and an
/// execution record) and one waiting; the healthy one has one waiting.
fn two_sessions(env: &TestEnv) -> (String, String) {
    env.write_agent("fast", FAST_AGENT);
    let broken = env.new_session("fast");
    let fine = env.new_session("fast");
    env.send(&broken, "settled before the damage");
    worker_once_log(env);
    env.ok(&["send", &broken, "waiting at the damage", "--key", "k1"]);
    env.send(&fine, "in the healthy session");
    (broken, fine)
}

/// A command on the damaged session worked (exit 0; JSON on stdout when asked for),
/// or refused it in one `agentq:` line that names the damaged path.
fn works_or_names(out: &Output, named: &str, json: bool, what: &str) {
    assert!(
        !stderr(out).contains("panicked"),
        "{what}:\n{}",
        describe(out)
    );
    // `watch` exits with the code of the execution it saw finish last.
    let watched = what.ends_with("watch") && !stderr(out).contains("agentq: ");
    if code(out) == 0 || watched {
        if json {
            let parsed: Result<Value, _> = serde_json::from_slice(&out.stdout);
            assert!(parsed.is_ok(), "{what}: stdout is JSON:\n{}", describe(out));
        }
        return;
    }
    let err = stderr(out);
    let line = err
        .lines()
        .find(|l| l.starts_with("agentq: "))
        .unwrap_or("");
    assert!(
        line.contains(named) && line.contains("`agentq "),
        "{what}: a one-line error naming {named} and the command that gets out of it:\n{}",
        describe(out)
    );
}

/// `session list` and `status` work and show the healthy session, whatever the
/// damaged one looks like.
fn the_others_are_listed(env: &TestEnv, fine: &str, what: &str) {
    let out = env.run(&["session", "list", "--json"]);
    assert_eq!(code(&out), 0, "{what}: session list:\n{}", describe(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(
        listed.as_array().unwrap().iter().any(|s| s["id"] == fine),
        "{what}: the healthy session is listed:\n{}",
        describe(&out)
    );
    let out = env.run(&["session", "list"]);
    assert_eq!(code(&out), 0, "{what}: session list:\n{}", describe(&out));
    assert!(
        stdout(&out).contains(&fine[..8]),
        "{what}:\n{}",
        describe(&out)
    );
    // A session skipped is named with the way out.
    for line in stderr(&out).lines() {
        assert!(
            line.starts_with("agentq: skipping session ") && line.contains("`agentq "),
            "{what}:\n{}",
            describe(&out)
        );
    }
    let out = env.run(&["status", "--json"]);
    assert_eq!(code(&out), 0, "{what}: status:\n{}", describe(&out));
    serde_json::from_slice::<Value>(&out.stdout).expect("status --json is JSON");
}

#[test]
fn one_damaged_file_of_one_session_never_stops_the_others_nor_hides_its_path() {
    let mut cases = 0;
    let parts = FILES
        .iter()
        .flat_map(|p| FILE_HARMS.iter().map(move |h| (*p, *h)))
        .chain(
            DIRS.iter()
                .flat_map(|p| DIR_HARMS.iter().map(move |h| (*p, *h))),
        );
    for (part, how) in parts {
        let env = TestEnv::new();
        let (broken, fine) = two_sessions(&env);
        let dir = env.session_dir(&broken);
        let target = resolve_part(&dir, part);
        if !harm(&target, how) {
            continue;
        }
        let what = format!("{part} {how:?}");
        let named = target.file_name().unwrap().to_string_lossy().into_owned();

        // Every reader of the damaged session works or names the path.
        let readers: [(&[&str], bool); 7] = [
            (&["session", "show", &broken, "--json"], true),
            (&["session", "show", &broken], false),
            (&["session", "messages", &broken, "--json"], true),
            (&["send", &broken, "sent to the damaged session"], false),
            (
                &["send", &broken, "sent again", "--key", "k1", "--json"],
                true,
            ),
            (&["cancel", &broken, "--json"], true),
            (&["retry", &broken], false),
        ];
        for (args, json) in readers {
            let out = env.run(args);
            // Nothing failed before the damage: that answer is not about it.
            if args[0] == "retry" && stderr(&out).contains("no failed execution") {
                continue;
            }
            works_or_names(&out, &named, json, &format!("{what}: {args:?}"));
            // A damaged key is answered from the event log: still a duplicate.
            if args.contains(&"--key") && how != Harm::Missing && code(&out) == 0 {
                let sent: Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(sent["duplicate"], true, "{what}: {sent}");
            }
        }
        the_others_are_listed(&env, &fine, &what);
        // Whatever was lost, no seq is handed out twice.
        let mut queued: Vec<u64> = events_of(&env, &broken, "message.queued")
            .iter()
            .filter_map(|e| e["payload"]["seq"].as_u64())
            .collect();
        let all = queued.len();
        queued.dedup();
        assert_eq!(queued.len(), all, "{what}: seqs {queued:?}");
        if part == "session.json" {
            // Before issue 15 this followed the log in silence, for ever.
            let out = env
                .spawn(&["watch", &broken, "--json", "--exit-on-idle"])
                .wait(LONG);
            assert_ne!(code(&out), 0, "{what}: watch refuses:\n{}", describe(&out));
            assert_refused(&out, code(&out), &[&named, "`agentq "], &what);
        }

        // A worker serves the healthy session; for the damaged one it either runs
        // its messages or says which path stops it.
        let out = env.run(&["worker", "--once"]);
        let log = stderr(&out);
        assert!(!log.contains("panicked"), "{what}:\n{log}");
        assert_eq!(
            finishes(&env, &fine),
            vec![(
                "completed".to_owned(),
                env.payloads(&fine, "message.queued")[0]["message_id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            )],
            "{what}: the healthy session ran:\n{log}"
        );
        let inbox = dir.join("inbox");
        // An inbox that cannot be listed may hold anything.
        let still_waiting = match std::fs::read_dir(&inbox) {
            Ok(entries) => entries.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                !name.starts_with('.') && name.ends_with(".json")
            }),
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        };
        if REPAIRED.contains(&part) {
            assert!(!still_waiting, "{what}: repaired and run:\n{log}");
        }
        if still_waiting {
            assert!(
                log.contains(&named),
                "{what}: the worker names {named}:\n{log}"
            );
        }
        the_others_are_listed(&env, &fine, &what);
        for (args, json) in [
            (&["session", "show", &broken, "--json"][..], true),
            (&["session", "messages", &broken, "--json"][..], true),
        ] {
            works_or_names(
                &env.run(args),
                &named,
                json,
                &format!("{what}, after: {args:?}"),
            );
        }
        // `watch` ends on an idle session, or refuses it; it never hangs silently.
        if !still_waiting {
            let out = env
                .spawn(&["watch", &broken, "--json", "--from-start", "--exit-on-idle"])
                .wait(LONG);
            works_or_names(&out, &named, false, &format!("{what}: watch"));
        }

        // Nothing wrote past an end: NUL bytes are only where the damage put them.
        restore_permissions(env.home());
        let nuls: Vec<String> = files_containing(env.home(), b"\0")
            .into_iter()
            .filter(|p| *p != target.display().to_string() && !p.contains(".corrupt-"))
            .collect();
        assert!(nuls.is_empty(), "{what}: NUL bytes in {nuls:?}");
        cases += 1;
    }

    // The home's own directories: a file in the place of one stops no worker and no
    // `send`.
    let home_parts = [".ready", ".workers"]
        .into_iter()
        .flat_map(|p| [Harm::Missing, Harm::File].map(move |h| (p, h)))
        .chain([(".workers/slot-0", Harm::Directory)]);
    for (part, how) in home_parts {
        let env = TestEnv::new();
        env.write_agent("fast", FAST_AGENT);
        let id = env.new_session("fast");
        env.ok(&["worker", "--once", "--max-workers", "1"]);
        let target = env.home().join("sessions").join(part);
        harm(&target, how);
        let what = format!("sessions/{part} {how:?}");
        let out = env.run(&["send", &id, "after the damage"]);
        assert_eq!(code(&out), 0, "{what}: send:\n{}", describe(&out));
        let out = env.run(&["worker", "--once", "--max-workers", "1"]);
        let log = stderr(&out);
        assert_eq!(code(&out), 0, "{what}: worker:\n{log}");
        assert_eq!(finishes(&env, &id).len(), 1, "{what}:\n{log}");
        the_others_are_listed(&env, &id, &what);
        cases += 1;
    }
    report("damaged_session_files", &[("cases", cases)]);
}

/// Something done to one file of a session.
type Damage = fn(&Path);

#[test]
fn a_worker_repairs_a_damaged_session_that_has_no_message_waiting() {
    // Before issue 15 only a claim repaired, a claim needs a message, and `send`
    // refused the session: nothing but `session rm` got out.
    let mut cases = 0;
    let damages: [(&str, Damage); 5] = [
        ("session.json", |p| {
            std::fs::write(p, b"{\"v\":1,\"id\":").unwrap()
        }),
        ("session.json", |p| std::fs::remove_file(p).unwrap()),
        ("state.json", |p| std::fs::write(p, b"\0\0\0\0").unwrap()),
        ("state.json", |p| {
            std::fs::remove_file(p).unwrap();
            std::fs::create_dir(p).unwrap();
        }),
        ("transcript.ndjson", |p| {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(10)
                .unwrap()
        }),
    ];
    for (name, damage) in damages {
        let env = TestEnv::new();
        env.write_agent("fast", FAST_AGENT);
        let id = env.new_session("fast");
        env.send(&id, "before the damage");
        worker_once_log(&env);
        let path = env.session_dir(&id).join(name);
        damage(&path);
        let what = format!("{name} damaged, nothing waiting");

        let log = worker_once_log(&env);
        assert!(
            log.contains(&path.display().to_string()),
            "{what}: the worker repairs it and says so:\n{log}"
        );
        let shown = env.json(&["session", "show", &id, "--json"]);
        assert_eq!(shown["session"]["agent"], "fast", "{what}: {shown}");
        env.json(&["session", "messages", &id, "--json"]);
        assert!(
            !worker_once_log(&env).contains(name),
            "{what}: repaired once, not again"
        );
        // And the session goes on.
        env.send(&id, "after the repair");
        worker_once_log(&env);
        assert_eq!(env.responses(&id).last().unwrap(), "echo: after the repair");
        cases += 1;
    }

    // A line garbled inside the transcript: the reader that finds it says so, and
    // the next worker repairs it, nothing waiting.
    {
        let env = TestEnv::new();
        env.write_agent("fast", FAST_AGENT);
        let id = env.new_session("fast");
        env.send(&id, "first");
        env.send(&id, "second");
        worker_once_log(&env);
        let path = env.session_dir(&id).join("transcript.ndjson");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] = 0;
        std::fs::write(&path, &bytes).unwrap();
        let out = env.run(&["session", "messages", &id]);
        assert_refused(
            &out,
            1,
            &["transcript.ndjson", "line 1", "`agentq worker"],
            "garbled",
        );
        let log = worker_once_log(&env);
        assert!(log.contains(&path.display().to_string()), "{log}");
        assert_eq!(
            moved_aside(&env.session_dir(&id), "transcript.ndjson").len(),
            1
        );
        env.json(&["session", "messages", &id, "--json"]);
        env.send(&id, "third");
        worker_once_log(&env);
        assert_eq!(env.responses(&id).last().unwrap(), "echo: third");
        cases += 1;
    }

    // `send` needs only the inbox: a corrupt session.json does not refuse a message.
    for damage in [&b""[..], b"[]", b"\0\0"] {
        let env = TestEnv::new();
        env.write_agent("fast", FAST_AGENT);
        let id = env.new_session("fast");
        std::fs::write(env.session_dir(&id).join("session.json"), damage).unwrap();
        let message = env.send(&id, "sent while session.json is corrupt");
        worker_once_log(&env);
        assert_eq!(finishes(&env, &id), vec![("completed".to_owned(), message)]);
        assert_eq!(
            moved_aside(&env.session_dir(&id), "session.json").len(),
            1,
            "moved aside, not overwritten"
        );
        assert_gapless(&env, &id);
        cases += 1;
    }
    report(
        "damaged_session_repaired_without_a_message",
        &[("cases", cases)],
    );
}

/// The counts every command shows for one session: `(messages, pending)` of
/// `session list --json`, `session show --json` and its text, and `status --json`'s
/// pending and running.
fn counts(env: &TestEnv, id: &str) -> Vec<(&'static str, u64)> {
    let listed = env.json(&["session", "list", "--json"]);
    let row = &listed[0];
    let shown = env.json(&["session", "show", id, "--json"]);
    let text = env.ok(&["session", "show", id]);
    let line = text.lines().find(|l| l.starts_with("messages")).unwrap();
    let total: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let status = env.json(&["status", "--json"]);
    vec![
        ("list messages", row["messages"].as_u64().unwrap()),
        ("list pending", row["pending"].as_u64().unwrap()),
        (
            "show settled",
            shown["session"]["counters"]["messages"].as_u64().unwrap(),
        ),
        ("show pending", shown["pending"].as_u64().unwrap()),
        ("show text messages", total),
        ("status pending", status["pending"].as_u64().unwrap()),
        (
            "status running",
            status["running"].as_array().unwrap().len() as u64,
        ),
    ]
}

#[test]
fn counters_count_messages_not_cancel_entries_and_the_running_one_as_running() {
    let env = TestEnv::new();
    env.write_agent("fast", FAST_AGENT);
    env.write_agent("slow", SLOW_AGENT);
    let mut cases = 0;

    // A message and a cancel entry queued before any worker runs: one message.
    let id = env.new_session("fast");
    env.send(&id, "to be cancelled");
    env.ok(&["cancel", &id]);
    let expected = [1, 1, 0, 1, 1, 1, 0];
    let names: Vec<&str> = counts(&env, &id).iter().map(|(n, _)| *n).collect();
    let got: Vec<u64> = counts(&env, &id).iter().map(|(_, v)| *v).collect();
    assert_eq!(got, expected, "queued, before the worker: {names:?}");
    cases += expected.len() as u64;
    // Settled (cancelled, which `--once` reports as 130): still one message, none
    // pending.
    worker_once_log_exiting(&env, 130);
    assert_eq!(finishes(&env, &id)[0].0, "cancelled");
    let got: Vec<u64> = counts(&env, &id).iter().map(|(_, v)| *v).collect();
    assert_eq!(got, [1, 0, 1, 0, 1, 0, 0], "settled: {names:?}");
    cases += expected.len() as u64;
    env.ok(&["session", "rm", &id]);

    // A running first attempt: counted as running, not pending, with its worker.
    let id = env.new_session("slow");
    env.send(&id, "running");
    env.send(&id, "waiting behind it");
    let worker = env.spawn_worker(&[]);
    wait_until("a chunk", LONG, || {
        !events_of(&env, &id, "agent.stream.chunk").is_empty()
    });
    let got: Vec<u64> = counts(&env, &id).iter().map(|(_, v)| *v).collect();
    assert_eq!(
        got,
        [2, 2, 0, 2, 2, 1, 1],
        "one running, one waiting: {names:?}"
    );
    cases += expected.len() as u64;
    let pid = u64::from(worker.child.id());
    let shown = env.json(&["session", "show", &id, "--json"]);
    assert_eq!(shown["running"]["worker"]["pid"], pid, "{shown}");
    let host = shown["running"]["worker"]["host"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!host.is_empty() && host != "unknown", "{shown}");
    let text = env.ok(&["session", "show", &id]);
    assert!(
        text.contains(&format!("worker {pid} on {host}")),
        "the running line names its worker:\n{text}"
    );
    let status = env.json(&["status", "--json"]);
    assert_eq!(status["running"][0]["owner"]["pid"], pid, "{status}");
    cases += 3;
    drop(worker);
    report("counters", &[("cases", cases)]);
}

#[test]
fn attempts_count_the_starts_in_the_log_the_record_the_event_and_the_error() {
    let env = TestEnv::new();
    env.write_agent("slow", SLOW_AGENT);
    let id = env.new_session("slow");
    let doomed = env.send(&id, "crashes every time");
    for attempt in 1..=MAX_ATTEMPTS {
        let worker = env.spawn_worker(&[]);
        wait_until(&format!("attempt {attempt} streaming"), LONG, || {
            let events = events_of(&env, &id, "execution.started").len() as u64;
            let last = env.events(&id);
            let streaming = last
                .last()
                .is_some_and(|e| e["type"] == "agent.stream.chunk");
            events == attempt && streaming
        });
        worker.signal(9);
        let _ = worker.wait(LONG);
    }
    // Given up: a failed execution, exit 1.
    let log = worker_once_log_exiting(&env, 1);
    let starts: Vec<u64> = events_of(&env, &id, "execution.started")
        .iter()
        .map(|e| e["payload"]["attempt"].as_u64().unwrap())
        .collect();
    let record = &env.json(&["session", "show", &id, "--json"])["failed"][0];
    let error = finishes_error(&env, &id);
    let checks = [
        ("the starts in the log", starts == [1, 2, 3]),
        ("the record", record["attempts"] == MAX_ATTEMPTS),
        (
            "the record's error",
            record["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("after 3 attempts"),
        ),
        ("the event's error", error.contains("after 3 attempts")),
        (
            "the worker's log",
            log.contains("attempts=3") && !log.contains("attempt=4"),
        ),
        ("the message", record["message_id"] == doomed.as_str()),
    ];
    for (what, ok) in checks {
        assert!(
            ok,
            "{what}: starts {starts:?}, record {record}, error {error:?}, log:\n{log}"
        );
    }
    report("attempts", &[("cases", checks.len() as u64)]);
}

/// The error of the session's last `execution.finished`.
fn finishes_error(env: &TestEnv, id: &str) -> String {
    events_of(env, id, "execution.finished")
        .last()
        .and_then(|e| e["payload"]["error"].as_str().map(str::to_owned))
        .unwrap_or_default()
}
