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
    "lock",
];
const DIRS: &[&str] = &["inbox", "executions", "workspace"];

/// Parts a worker repairs (or moves aside) by itself, whatever the damage: the
/// damaged session runs its messages like the other.
const REPAIRED: &[&str] = &[
    "session.json",
    "state.json",
    "transcript.ndjson",
    "inbox/*",
    "executions/*",
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
    env.send(&broken, "waiting at the damage");
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
        let readers: [(&[&str], bool); 6] = [
            (&["session", "show", &broken, "--json"], true),
            (&["session", "show", &broken], false),
            (&["session", "messages", &broken, "--json"], true),
            (&["send", &broken, "sent to the damaged session"], false),
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
        }
        the_others_are_listed(&env, &fine, &what);

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
    report("damaged_session_files", &[("cases", cases)]);
}
