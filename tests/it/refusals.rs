//! Refusals: every input agentq turns away gets one clear line on stderr, the exit code
//! of ARCHITECTURE.md §7 (2 for usage errors, invalid input, unknown agents and
//! sessions, invalid definitions), and leaves everything already stored as it was.
//!
//! `refuses` checks the shape of every refusal in this module: the exit code, stderr
//! exactly one line starting with `agentq: `, nothing on stdout, no panic or backtrace.
//! The test of the whole home (`refusals_leave_every_file_in_the_home_as_it_was`)
//! snapshots every path and its content around a batch of them.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Output, Stdio};

use serde_json::Value;

use super::*;

// ---------------------------------------------------------------------------------
// Helpers

const USAGE: i32 = 2;

/// A session id in the canonical form that no session in a fresh home has.
const UNKNOWN_ID: &str = "01900000-0000-7000-8000-000000000000";

/// Asserts `out` is a refusal with exit `expected`; returns the message without the
/// `agentq: ` prefix.
fn refused(out: &Output, expected: i32, what: &str) -> String {
    let err = stderr(out);
    assert_eq!(code(out), expected, "{what}:\n{}", describe(out));
    assert_no_panic(&err, what);
    assert!(
        out.stdout.is_empty(),
        "{what}: a refusal prints nothing on stdout:\n{}",
        describe(out)
    );
    let Some(line) = err.strip_suffix('\n') else {
        panic!(
            "{what}: stderr is not one terminated line:\n{}",
            describe(out)
        );
    };
    assert!(
        !line.contains('\n'),
        "{what}: stderr has more than one line:\n{}",
        describe(out)
    );
    let Some(message) = line.strip_prefix("agentq: ") else {
        panic!(
            "{what}: stderr does not start with `agentq: `:\n{}",
            describe(out)
        );
    };
    assert!(!message.trim().is_empty(), "{what}: the message is empty");
    message.to_owned()
}

/// Runs agentq with no standard input and requires a refusal with exit `expected`.
fn refuses(env: &TestEnv, args: &[&str], expected: i32) -> String {
    refused(&env.run(args), expected, &format!("agentq {args:?}"))
}

fn refuses_with_stdin(env: &TestEnv, args: &[&str], stdin: &[u8], expected: i32) -> String {
    let what = format!("agentq {args:?} with {} bytes on stdin", stdin.len());
    refused(&env.run_with_stdin(args, stdin), expected, &what)
}

/// For commands that block when they are not refused (`watch`, `worker`, `send
/// --wait`): a missing refusal fails the test instead of hanging it.
fn refuses_promptly(env: &TestEnv, args: &[&str], expected: i32) -> String {
    let out = env.spawn(args).wait(LONG);
    refused(&out, expected, &format!("agentq {args:?}"))
}

fn assert_no_panic(stderr: &str, what: &str) {
    for sign in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(
            !stderr.contains(sign),
            "{what}: {sign} on stderr:\n{stderr}"
        );
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "the message should mention {part:?}: {message}"
        );
    }
}

/// Every path under `root` (directories too) with the content of each file.
fn snapshot(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, into: &mut BTreeMap<String, Option<Vec<u8>>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            if path.is_dir() {
                into.insert(format!("{name}/"), None);
                walk(root, &path, into);
            } else {
                into.insert(name, Some(std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(root, root, &mut files);
    files
}

fn assert_unchanged(
    before: &BTreeMap<String, Option<Vec<u8>>>,
    after: &BTreeMap<String, Option<Vec<u8>>>,
) {
    let added: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    let removed: Vec<&String> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    let changed: Vec<&String> = before
        .iter()
        .filter(|(k, v)| after.get(*k).is_some_and(|a| a != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        added.is_empty() && removed.is_empty() && changed.is_empty(),
        "refusals changed the home:\n  added {added:?}\n  removed {removed:?}\n  changed {changed:?}"
    );
}

fn inbox_len(env: &TestEnv, id: &str) -> usize {
    env.inbox_len(id)
}

/// `session new --agent echo` followed by `extra`.
fn new_echo_session<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["session", "new", "--agent", "echo"];
    args.extend_from_slice(extra);
    args
}

fn session_count(env: &TestEnv) -> usize {
    env.json(&["session", "list", "--json"])
        .as_array()
        .unwrap()
        .len()
}

fn write_config(env: &TestEnv, text: &str) {
    std::fs::write(env.home().join("agentq.toml"), text).unwrap();
}

/// `agents validate` with `--json`, which exits 2 for an invalid file.
fn validate_json(env: &TestEnv, file: &str, expected: i32) -> Value {
    let out = env.run(&["agents", "validate", file, "--json"]);
    assert_eq!(code(&out), expected, "{}", describe(&out));
    serde_json::from_slice(&out.stdout).expect("validate --json prints JSON")
}

/// A definition with four problems at once: an unknown key, no `[model]`, a name that
/// is not the file's, and a duration with no unit.
const BROKEN_AGENT: &str = r#"
name = "someone-else"
colour = "blue"
[limits]
timeout = "soon"
"#;

/// Like `BROKEN_AGENT`, with the name right, so only the per-key problems remain.
const BROKEN_AGENT_RIGHT_NAME: &str = r#"
name = "broken"
colour = "blue"
[limits]
timeout = "soon"
"#;

/// Strings that are not session ids, each with what the refusal must say.
fn not_ids(real_id: &str) -> Vec<(String, &'static str)> {
    vec![
        ("../etc".to_owned(), "is not a session id"),
        ("/etc/passwd".to_owned(), "is not a session id"),
        ("abc def".to_owned(), "is not a session id"),
        ("zzzz".to_owned(), "is not a session id"),
        (".ready".to_owned(), "is not a session id"),
        ("0193a7c2/..".to_owned(), "is not a session id"),
        (format!("{real_id}0"), "is not a session id"),
        (format!("{real_id}x"), "is not a session id"),
        (real_id[..3].to_owned(), "too short"),
        (String::new(), "empty"),
    ]
}

// ---------------------------------------------------------------------------------
// send: the message

#[test]
fn an_empty_message_is_refused_with_exit_2() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let message = refuses(&env, &["send", &id, ""], USAGE);
    assert_mentions(&message, &["empty"]);
    let message = refuses_with_stdin(&env, &["send", &id, "-"], b"", USAGE);
    assert_mentions(&message, &["empty"]);
    assert_eq!(inbox_len(&env, &id), 0);
}

#[test]
fn a_whitespace_only_message_is_refused_as_empty() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let message = refuses(&env, &["send", &id, "  \n\t  "], USAGE);
    assert_mentions(&message, &["empty"]);
    let message = refuses_with_stdin(&env, &["send", &id, "-"], b"\n\n   \r\n", USAGE);
    assert_mentions(&message, &["empty"]);
    assert_eq!(inbox_len(&env, &id), 0);
}

#[test]
fn a_message_over_the_configured_size_limit_is_refused() {
    let env = TestEnv::new();
    write_config(&env, "[inbox]\nmax_message_bytes = 10\n");
    let id = env.new_session("echo");

    let message = refuses(&env, &["send", &id, "12345678901"], USAGE);
    assert_mentions(&message, &["10 bytes", "max_message_bytes"]);
    let message = refuses_with_stdin(&env, &["send", &id, "-"], b"12345678901", USAGE);
    assert_mentions(&message, &["10 bytes"]);
    assert_eq!(inbox_len(&env, &id), 0);

    env.send(&id, "1234567890");
    assert_eq!(inbox_len(&env, &id), 1, "exactly the limit is accepted");
}

#[test]
fn a_message_over_the_default_one_mib_limit_is_refused() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let one_mib = vec![b'a'; 1024 * 1024];
    let over = vec![b'a'; 1024 * 1024 + 1];

    let message = refuses_with_stdin(&env, &["send", &id, "-"], &over, USAGE);
    assert_mentions(&message, &["1048576 bytes"]);
    assert_eq!(inbox_len(&env, &id), 0);

    let out = env.run_with_stdin(&["send", &id, "-"], &one_mib);
    assert_eq!(
        code(&out),
        0,
        "exactly 1 MiB is accepted:\n{}",
        describe(&out)
    );
    assert_eq!(inbox_len(&env, &id), 1);
}

#[test]
fn invalid_utf8_on_standard_input_is_refused() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let message = refuses_with_stdin(&env, &["send", &id, "-"], b"caf\xe9 \xff\xfe", USAGE);
    assert_mentions(&message, &["UTF-8"]);
    assert_eq!(inbox_len(&env, &id), 0);
}

#[test]
fn a_missing_file_is_refused_naming_the_file() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let message = refuses(&env, &["send", &id, "--file", "no-such-prompt.md"], USAGE);
    assert_mentions(&message, &["no-such-prompt.md"]);
    assert_eq!(inbox_len(&env, &id), 0);
}

#[test]
fn a_directory_given_as_the_file_is_refused_with_exit_2() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let message = refuses(&env, &["send", &id, "--file", "agents"], USAGE);
    assert_mentions(&message, &["agents"]);
    assert_eq!(inbox_len(&env, &id), 0);
}

#[test]
fn send_without_any_text_is_refused_and_leaves_standard_input_unread() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let message = refuses_with_stdin(&env, &["send", &id], b"text meant for nobody", USAGE);
    assert_mentions(&message, &["no message", "-", "--file"]);
    assert_eq!(inbox_len(&env, &id), 0);
}

#[test]
fn text_and_file_together_are_refused() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    std::fs::write(env.home().join("prompt.md"), "hello").unwrap();
    let message = refuses(&env, &["send", &id, "hi", "--file", "prompt.md"], USAGE);
    assert_mentions(&message, &["--file"]);
    assert_eq!(inbox_len(&env, &id), 0);
}

#[test]
fn an_empty_or_overlong_idempotency_key_is_refused() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let message = refuses(&env, &["send", &id, "hi", "--key", ""], USAGE);
    assert_mentions(&message, &["--key"]);
    let long_key = "k".repeat(121);
    let message = refuses(&env, &["send", &id, "hi", "--key", &long_key], USAGE);
    assert_mentions(&message, &["--key"]);
    assert_eq!(inbox_len(&env, &id), 0);
}

#[test]
fn a_repeated_key_returns_the_first_id_and_queues_one_entry() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let first = env.ok(&["send", &id, "daily report", "--key", "daily-1"]);
    let second = env.ok(&["send", &id, "daily report, again", "--key", "daily-1"]);
    assert_eq!(first.trim(), second.trim());
    assert_eq!(inbox_len(&env, &id), 1);
    assert_eq!(env.events_of(&id, "message.queued").len(), 1);
}

// ---------------------------------------------------------------------------------
// send: the session

#[test]
fn a_closed_session_takes_no_new_messages_and_records_nothing() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    env.ok(&["session", "close", &id]);
    let before = snapshot(env.home());

    let message = refuses(&env, &["send", &id, "hello"], USAGE);
    assert_mentions(&message, &[&id, "closed"]);
    let message = refuses(&env, &["send", &id, "hello", "--key", "k"], USAGE);
    assert_mentions(&message, &["closed"]);

    assert_unchanged(&before, &snapshot(env.home()));
    assert_eq!(inbox_len(&env, &id), 0);
    assert!(env.events_of(&id, "message.queued").is_empty());
}

#[test]
fn an_unknown_session_is_refused() {
    let env = TestEnv::new();
    env.new_session("echo");
    let message = refuses(&env, &["send", UNKNOWN_ID, "hello"], USAGE);
    assert_mentions(&message, &["no session", UNKNOWN_ID]);
    let message = refuses(&env, &["send", "ffff", "hello"], USAGE);
    assert_mentions(&message, &["no session", "ffff"]);
}

#[test]
fn inputs_that_are_not_session_ids_are_refused_before_they_touch_a_path() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let before = snapshot(env.home());
    for (input, says) in not_ids(&id) {
        for args in [
            vec!["send", input.as_str(), "hello"],
            vec!["session", "show", input.as_str()],
            vec!["session", "rm", input.as_str()],
            vec!["session", "close", input.as_str()],
            vec!["cancel", input.as_str()],
        ] {
            let message = refuses(&env, &args, USAGE);
            assert_mentions(&message, &[says]);
        }
        let message = refuses_promptly(&env, &["watch", &input], USAGE);
        assert_mentions(&message, &[says]);
    }
    assert_unchanged(&before, &snapshot(env.home()));
}

#[test]
fn an_ambiguous_prefix_is_refused_and_selects_nothing() {
    let env = TestEnv::new();
    let ids: Vec<String> = (0..3).map(|_| env.new_session("echo")).collect();
    // UUID v7 ids begin with the creation time: sessions made a moment apart share it.
    let prefix = &ids[0][..4];
    assert!(ids.iter().all(|id| id.starts_with(prefix)), "{ids:?}");
    let before = snapshot(env.home());

    let message = refuses(&env, &["send", prefix, "hello"], USAGE);
    assert_mentions(&message, &[prefix, "3 sessions", "give more"]);
    let message = refuses(&env, &["session", "rm", prefix], USAGE);
    assert_mentions(&message, &[prefix, "3 sessions"]);

    assert_unchanged(&before, &snapshot(env.home()));
    assert_eq!(session_count(&env), 3);
}

// ---------------------------------------------------------------------------------
// session new

#[test]
fn an_unknown_agent_is_refused_naming_it() {
    let env = TestEnv::new();
    let message = refuses(&env, &["session", "new", "--agent", "nosuch"], USAGE);
    assert_mentions(&message, &["nosuch"]);
    assert_eq!(session_count(&env), 0);
}

#[test]
fn agent_names_that_could_be_paths_are_refused() {
    let env = TestEnv::new();
    // A valid definition one directory up: `../x` must not reach it.
    std::fs::write(
        env.home().join("x.toml"),
        ECHO_AGENT.replace("name = \"echo\"", "name = \"x\""),
    )
    .unwrap();
    for name in ["../x", "a/b", "/etc/passwd", ".hidden", ""] {
        let message = refuses(&env, &["session", "new", "--agent", name], USAGE);
        assert_mentions(&message, &["not an agent name"]);
    }
    assert_eq!(session_count(&env), 0);
}

#[test]
fn a_set_without_an_equals_sign_is_refused() {
    let env = TestEnv::new();
    let args = new_echo_session(&["--set", "limits.max_steps"]);
    let message = refuses(&env, &args, USAGE);
    assert_mentions(&message, &["--set", "limits.max_steps", "KEY=VALUE"]);
    assert_eq!(session_count(&env), 0);
}

#[test]
fn a_set_of_an_unknown_key_is_refused_naming_the_key() {
    let env = TestEnv::new();
    let args = new_echo_session(&["--set", "limits.max_stepz=3"]);
    let message = refuses(&env, &args, USAGE);
    assert_mentions(&message, &["limits.max_stepz", "unknown key"]);
    assert_eq!(session_count(&env), 0);
}

#[test]
fn a_negative_max_steps_is_refused() {
    let env = TestEnv::new();
    let args = new_echo_session(&["--set", "limits.max_steps=-1"]);
    let message = refuses(&env, &args, USAGE);
    assert_mentions(&message, &["limits.max_steps"]);
    assert_eq!(session_count(&env), 0);
}

#[test]
fn a_bad_override_is_blamed_on_set_not_on_the_definition_file() {
    let env = TestEnv::new();
    for set in ["limits.max_stepz=3", "limits.max_steps=-1"] {
        let args = new_echo_session(&["--set", set]);
        let message = refuses(&env, &args, USAGE);
        assert_mentions(&message, &["--set"]);
        assert!(
            !message.contains("echo.toml is invalid"),
            "the definition file is valid; the override is not: {message}"
        );
    }
}

#[test]
fn an_unknown_events_preset_is_refused_naming_the_choices() {
    let env = TestEnv::new();
    let args = new_echo_session(&["--events", "loud"]);
    let message = refuses(&env, &args, USAGE);
    assert_mentions(
        &message,
        &["--events", "loud", "minimal", "standard", "debug"],
    );
    assert_eq!(session_count(&env), 0);
}

#[test]
fn malformed_command_lines_are_refused_in_one_line_too() {
    let env = TestEnv::new();
    for (args, names) in [
        (vec!["send"], "<ID>"),
        (vec!["session", "new"], "--agent"),
        (vec!["session", "list", "--status", "weird"], "--status"),
        (vec!["worker", "--concurrency", "0"], "--concurrency"),
        (vec!["watch", "0193", "--since", "soon"], "--since"),
        (vec!["send", "0193", "x", "--timeout", "5s"], "--wait"),
        (vec!["sessions"], "sessions"),
    ] {
        let message = refuses(&env, &args, USAGE);
        assert_mentions(&message, &[names]);
    }
}

#[test]
fn arguments_that_are_not_utf8_are_refused() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let not_utf8 = OsStr::from_bytes(b"caf\xe9");
    for args in [[OsStr::new(&id), not_utf8], [not_utf8, OsStr::new("hi")]] {
        let out = env
            .cmd()
            .arg("send")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let message = refused(&out, USAGE, "send with a non-UTF-8 argument");
        assert_mentions(&message, &["UTF-8"]);
    }
    assert_eq!(inbox_len(&env, &id), 0);
}

// ---------------------------------------------------------------------------------
// agents

#[test]
fn validate_reports_every_problem_of_a_definition_each_naming_the_file() {
    let env = TestEnv::new();
    env.write_agent("broken", BROKEN_AGENT);
    let out = env.run(&["agents", "validate", "agents/broken.toml"]);
    assert_eq!(code(&out), USAGE, "{}", describe(&out));
    let report = stdout(&out);
    let lines: Vec<&str> = report.lines().collect();
    for expected in ["colour", "model", "limits.timeout", "name"] {
        assert!(
            lines.iter().any(|l| l.contains(&format!(" {expected}: "))),
            "no line for `{expected}`:\n{report}"
        );
    }
    assert!(lines.iter().all(|l| l.contains("broken.toml")), "{report}");

    let json = validate_json(&env, "agents/broken.toml", USAGE);
    let keys: Vec<&str> = json[0]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    for expected in ["colour", "model", "limits.timeout", "name"] {
        assert!(
            keys.contains(&expected),
            "no problem for `{expected}`: {keys:?}"
        );
    }
}

#[test]
fn validate_reports_every_problem_with_a_key_each_on_a_line_naming_the_file() {
    let env = TestEnv::new();
    env.write_agent("broken", BROKEN_AGENT_RIGHT_NAME);
    let out = env.run(&["agents", "validate", "agents/broken.toml"]);
    assert_eq!(code(&out), USAGE, "{}", describe(&out));
    assert_no_panic(&stderr(&out), "agents validate");
    let report = stdout(&out);
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 3, "one line per problem:\n{report}");
    assert!(lines.iter().all(|l| l.contains("broken.toml")), "{report}");
    for (key, says) in [
        ("colour", "unknown key"),
        ("model", "missing"),
        ("limits.timeout", "soon"),
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!(" {key}: ")) && l.contains(says)),
            "no line saying `{key}: ...{says}`:\n{report}"
        );
    }
}

#[test]
fn validate_checks_the_keys_of_done_when_checks() {
    let env = TestEnv::new();
    let checks = |body: &str| {
        format!(
            "name = \"ci\"\n[model]\nprovider = \"scripted\"\n[[model.script]]\ntext = \"done\"\n[limits]\nmax_check_rounds = 2\n{body}"
        )
    };
    env.write_agent(
        "ci",
        &checks("[[checks]]\nname = \"tests\"\nargv = [\"cargo\", \"test\"]\ntimeout = \"5m\"\ncwd = \"crate\"\n"),
    );
    env.ok(&["agents", "validate", "agents/ci.toml"]);

    env.write_agent(
        "ci",
        &checks(
            "[[checks]]\nname = \"tests\"\nargv = [\"true\"]\n[[checks]]\nname = \"tests\"\nargv = []\ncwd = \"../up\"\n",
        ),
    );
    let json = validate_json(&env, "agents/ci.toml", USAGE);
    let keys: Vec<&str> = json[0]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["checks[1].name", "checks[1].argv", "checks[1].cwd"]);

    env.write_agent(
        "ci",
        &checks("[[checks]]\nname = \"tests\"\nargv = [\"true\"]\nshell = true\n")
            .replace("max_check_rounds = 2", "max_check_rounds = 0"),
    );
    let json = validate_json(&env, "agents/ci.toml", USAGE);
    let keys: Vec<&str> = json[0]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["checks[0].shell", "limits.max_check_rounds"]);
}

#[test]
fn validate_checks_the_output_schema_itself() {
    let env = TestEnv::new();
    let agent = |body: &str| {
        format!(
            "name = \"shaped\"\n[model]\nprovider = \"scripted\"\n[[model.script]]\ntext = \"{{}}\"\n[output]\n{body}"
        )
    };
    let problems = |env: &TestEnv| -> Vec<(String, String)> {
        validate_json(env, "agents/shaped.toml", USAGE)[0]["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["key"].as_str().unwrap().to_owned(),
                    p["message"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    // Good: a table, a string holding JSON, a file next to the definition.
    env.write_agent(
        "shaped",
        &agent("schema = { type = \"object\", required = [\"n\"] }\n"),
    );
    env.ok(&["agents", "validate", "agents/shaped.toml"]);
    env.write_agent(
        "shaped",
        &agent("schema = '{\"type\": [\"string\", \"null\"]}'\n"),
    );
    env.ok(&["agents", "validate", "agents/shaped.toml"]);
    std::fs::write(
        env.home().join("agents/answer.json"),
        r#"{"type": "array", "items": {"type": "integer"}}"#,
    )
    .unwrap();
    env.write_agent("shaped", &agent("schema_file = \"answer.json\"\n"));
    env.ok(&["agents", "validate", "agents/shaped.toml"]);

    // Broken: a schema its meta-schema refuses, a string that is not JSON, a remote
    // `$ref` (nothing is fetched), a missing file, both keys, neither.
    env.write_agent("shaped", &agent("schema = { type = \"integr\" }\n"));
    let found = problems(&env);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "output.schema");
    assert!(
        found[0].1.contains("is not a valid JSON Schema"),
        "{found:?}"
    );
    env.write_agent("shaped", &agent("schema = '{\"type\": '\n"));
    let found = problems(&env);
    assert_eq!(found[0].0, "output.schema");
    assert!(found[0].1.contains("is not JSON"), "{found:?}");
    env.write_agent(
        "shaped",
        &agent("schema = { \"$ref\" = \"https://example.com/answer.json\" }\n"),
    );
    assert_eq!(problems(&env)[0].0, "output.schema");
    env.write_agent("shaped", &agent("schema_file = \"nowhere.json\"\n"));
    let found = problems(&env);
    assert_eq!(found[0].0, "output.schema_file");
    assert!(found[0].1.contains("cannot read"), "{found:?}");
    env.write_agent("shaped", &agent("schema_file = \"../answer.json\"\n"));
    assert_eq!(problems(&env)[0].0, "output.schema_file");
    env.write_agent(
        "shaped",
        &agent("schema = {}\nschema_file = \"answer.json\"\n"),
    );
    assert_eq!(problems(&env)[0].0, "output");
    env.write_agent("shaped", &agent(""));
    assert_eq!(problems(&env)[0].0, "output");
    env.write_agent("shaped", &agent("schema = 3\n"));
    assert_eq!(problems(&env)[0].0, "output.schema");
    env.write_agent(
        "shaped",
        &agent("schema = { type = \"object\" }\nconstrain = \"yes\"\n"),
    );
    assert_eq!(problems(&env)[0].0, "output.constrain");
    env.write_agent(
        "shaped",
        &agent("schema = { type = \"object\" }\n")
            .replace("[model]\n", "[model]\nresponse_format = \"xml\"\n"),
    );
    let found = problems(&env);
    assert_eq!(found[0].0, "model.response_format");
    assert!(found[0].1.contains("json_schema, json_object"), "{found:?}");

    // The text refusal names the key too.
    env.write_agent("shaped", &agent("schema = { type = \"integr\" }\n"));
    let out = env.run(&["agents", "validate", "agents/shaped.toml"]);
    assert_eq!(code(&out), USAGE, "{}", describe(&out));
    assert!(
        stdout(&out).contains("output.schema: "),
        "{}",
        describe(&out)
    );
}

#[test]
fn validate_json_marks_the_definition_invalid_and_lists_its_problems() {
    let env = TestEnv::new();
    env.write_agent("broken", BROKEN_AGENT_RIGHT_NAME);
    let json = validate_json(&env, "agents/broken.toml", USAGE);
    let checked = json.as_array().expect("an array of checked files");
    assert_eq!(checked.len(), 1);
    assert_eq!(checked[0]["valid"], false);
    assert!(
        checked[0]["file"]
            .as_str()
            .unwrap()
            .ends_with("broken.toml")
    );
    let problems = checked[0]["problems"].as_array().unwrap();
    let keys: Vec<&str> = problems
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 3, "{problems:?}");
    for expected in ["colour", "model", "limits.timeout"] {
        assert!(keys.contains(&expected), "{keys:?}");
    }
    assert!(
        problems
            .iter()
            .all(|p| p["message"].as_str().is_some_and(|m| !m.is_empty()))
    );
}

#[test]
fn a_name_that_does_not_match_the_file_stem_is_invalid() {
    let env = TestEnv::new();
    env.write_agent("renamed", ECHO_AGENT);
    let out = env.run(&["agents", "validate", "agents/renamed.toml"]);
    assert_eq!(code(&out), USAGE, "{}", describe(&out));
    let report = stdout(&out);
    assert!(
        report.contains("renamed.toml") && report.contains("name"),
        "{report}"
    );

    let message = refuses(&env, &["session", "new", "--agent", "renamed"], USAGE);
    assert_mentions(&message, &["renamed.toml", "name"]);
    assert_eq!(session_count(&env), 0);
}

#[test]
fn a_valid_definition_passes_validation_with_exit_0() {
    let env = TestEnv::new();
    let report = env.ok(&["agents", "validate", "agents/echo.toml"]);
    assert!(
        report.starts_with("ok") && report.contains("echo.toml"),
        "{report}"
    );
    let json = env.json(&["agents", "validate", "agents/echo.toml", "--json"]);
    assert_eq!(json[0]["valid"], true);
    assert_eq!(json[0]["problems"], serde_json::json!([]));
}

#[test]
fn invalid_toml_syntax_is_reported_with_its_line_and_column() {
    let env = TestEnv::new();
    env.write_agent(
        "syntax",
        "name = \"syntax\"\n[model\nprovider = \"scripted\"\n",
    );
    let out = env.run(&["agents", "validate", "agents/syntax.toml"]);
    assert_eq!(code(&out), USAGE, "{}", describe(&out));
    let report = stdout(&out);
    assert!(report.contains("syntax.toml"), "{report}");
    assert!(report.contains("line 2, column 7"), "{report}");

    let message = refuses(&env, &["session", "new", "--agent", "syntax"], USAGE);
    assert_mentions(&message, &["syntax.toml", "line 2, column 7"]);
}

#[test]
fn validating_a_missing_file_reports_it_with_exit_2() {
    let env = TestEnv::new();
    let out = env.run(&["agents", "validate", "agents/nosuch.toml"]);
    assert_eq!(code(&out), USAGE, "{}", describe(&out));
    assert!(stdout(&out).contains("nosuch.toml"), "{}", describe(&out));
}

#[test]
fn showing_an_unknown_agent_is_refused() {
    let env = TestEnv::new();
    let message = refuses(&env, &["agents", "show", "nosuch"], USAGE);
    assert_mentions(&message, &["nosuch"]);
    let message = refuses(&env, &["agents", "show", "../echo"], USAGE);
    assert_mentions(&message, &["not an agent name"]);
}

// ---------------------------------------------------------------------------------
// session lifecycle and the other commands

#[test]
fn a_closed_session_can_be_neither_resumed_nor_paused() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    env.ok(&["session", "close", &id]);
    let before = snapshot(env.home());
    for verb in ["resume", "pause"] {
        let message = refuses(&env, &["session", verb, &id], USAGE);
        assert_mentions(&message, &[&id, "closed"]);
    }
    assert_unchanged(&before, &snapshot(env.home()));
    let shown = env.json(&["session", "show", &id, "--json"]);
    assert_eq!(shown["session"]["status"], "closed");
}

#[test]
fn commands_on_an_unknown_session_are_refused() {
    let env = TestEnv::new();
    env.new_session("echo");
    for id in [UNKNOWN_ID, "ffff"] {
        for args in [
            vec!["session", "rm", id],
            vec!["session", "show", id],
            vec!["session", "show", id, "--json"],
            vec!["session", "messages", id],
            vec!["session", "close", id],
            vec!["session", "pause", id],
            vec!["session", "resume", id],
            vec!["cancel", id],
        ] {
            let message = refuses(&env, &args, USAGE);
            assert_mentions(&message, &["no session", id]);
        }
        for args in [
            vec!["watch", id],
            vec!["watch", id, "--exit-on-idle"],
            vec!["worker", "--session", id],
            vec!["run", "--agent", "echo", "--session", id, "hi"],
        ] {
            let message = refuses_promptly(&env, &args, USAGE);
            assert_mentions(&message, &["no session", id]);
        }
    }
    assert_eq!(session_count(&env), 1);
}

#[test]
fn durations_without_a_known_unit_are_refused() {
    let env = TestEnv::new();
    let id = env.new_session("echo");

    let message = refuses_promptly(&env, &["worker", "--max-duration", "soon"], USAGE);
    assert_mentions(&message, &["--max-duration", "soon"]);
    let message = refuses_promptly(&env, &["worker", "--poll", "soon"], USAGE);
    assert_mentions(&message, &["--poll", "soon"]);
    let message = refuses_promptly(&env, &["send", &id, "x", "--wait", "--timeout", "5"], USAGE);
    assert_mentions(&message, &["--timeout", "5", "unit"]);

    assert_eq!(inbox_len(&env, &id), 0, "a refused --wait queues nothing");
}

#[test]
fn running_an_unknown_agent_is_refused() {
    let env = TestEnv::new();
    let message = refuses_promptly(&env, &["run", "--agent", "nosuch", "hi"], USAGE);
    assert_mentions(&message, &["nosuch"]);
    assert_eq!(session_count(&env), 0);
}

// ---------------------------------------------------------------------------------
// Nothing changes

#[test]
fn refusals_leave_every_file_in_the_home_as_it_was() {
    let Some(env) =
        TestEnv::files_only("it snapshots the home's files, where Postgres keeps no sessions")
    else {
        return;
    };
    write_config(&env, "[inbox]\nmax_message_bytes = 10\n");
    env.write_agent("broken", BROKEN_AGENT);
    let open = env.new_session("echo");
    env.ok(&["send", &open, "queued", "--key", "k1"]);
    let closed = env.new_session("echo");
    env.send(&closed, "hi");
    env.ok(&["session", "close", &closed]);
    let third = env.new_session("echo");
    let prefix = &third[..4];
    assert!(open.starts_with(prefix) && closed.starts_with(prefix));
    let short = &open[..3];
    let before = snapshot(env.home());

    let refusals: Vec<Vec<&str>> = vec![
        vec!["send", &open, ""],
        vec!["send", &open, "   "],
        vec!["send", &open, "12345678901"],
        vec!["send", &open, "--file", "missing.md"],
        vec!["send", &open],
        vec!["send", &open, "x", "--key", ""],
        vec!["send", &closed, "hello"],
        vec!["send", &closed, "hello", "--key", "k2"],
        vec!["send", UNKNOWN_ID, "hello"],
        vec!["send", "../etc", "hello"],
        vec!["send", "/etc/passwd", "hello"],
        vec!["send", "abc def", "hello"],
        vec!["send", "zzzz", "hello"],
        vec!["send", short, "hello"],
        vec!["send", prefix, "hello"],
        vec!["session", "new", "--agent", "nosuch"],
        vec!["session", "new", "--agent", "../x"],
        vec!["session", "new", "--agent", "a/b"],
        vec!["session", "new", "--agent", "broken"],
        new_echo_session(&["--set", "nothing"]),
        new_echo_session(&["--set", "limits.max_stepz=3"]),
        new_echo_session(&["--set", "limits.max_steps=-1"]),
        vec!["session", "resume", &closed],
        vec!["session", "pause", &closed],
        vec!["session", "rm", prefix],
        vec!["session", "rm", UNKNOWN_ID],
        vec!["session", "show", UNKNOWN_ID],
        vec!["session", "messages", UNKNOWN_ID],
        vec!["cancel", UNKNOWN_ID],
        vec!["agents", "show", "nosuch"],
    ];
    for args in &refusals {
        refuses(&env, args, USAGE);
    }
    refuses_with_stdin(&env, &["send", &open, "-"], b"\xff\xfe", USAGE);
    refuses_with_stdin(&env, &["send", &open, "-"], b"01234567890", USAGE);
    for args in [
        vec!["watch", UNKNOWN_ID],
        vec!["worker", "--max-duration", "soon"],
        vec!["send", &open, "x", "--wait", "--timeout", "5"],
        vec!["run", "--agent", "nosuch", "hi"],
    ] {
        refuses_promptly(&env, &args, USAGE);
    }
    refuses(&env, &new_echo_session(&["--events", "loud"]), USAGE);
    let out = env.run(&["agents", "validate", "agents/broken.toml", "--json"]);
    assert_eq!(code(&out), USAGE, "{}", describe(&out));

    assert_unchanged(&before, &snapshot(env.home()));

    // The snapshot does see writes: an accepted message changes the home.
    env.send(&open, "accepted");
    assert_ne!(before, snapshot(env.home()));
}
