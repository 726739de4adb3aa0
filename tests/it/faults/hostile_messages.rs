//! Classes 7 and 9: counters, messages and README promises that must agree with what happens.
//!
//! Each test walks every site of one kind: every hint an error gives, every flag that
//! needs another, every count that can be 1, every example in `--help` and in the
//! README, every file agentq creates, every way a task can be queued again.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

use super::*;

// ---------------------------------------------------------------------------------
// Helpers

/// A scripted agent whose first model call fails with `status`, then answers.
fn failing_agent(name: &str, status: u16, max_attempts: u32) -> String {
    format!(
        r#"
name = "{name}"
[model]
provider = "scripted"
max_attempts = {max_attempts}
[[model.script]]
error = {{ status = {status}, message = "injected {status}" }}
[[model.script]]
text = "ok: {{input}}"
"#
    )
}

/// stderr of a refusal: one line, `agentq: …`, no panic. Returns the message.
fn one_line_error(out: &Output, expected: i32, what: &str) -> String {
    assert_eq!(code(out), expected, "{what}:\n{}", describe(out));
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: one line:\n{}", describe(out));
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{what}: {err}"
    );
    lines[0]
        .strip_prefix("agentq: ")
        .unwrap_or_else(|| panic!("{what}: starts with `agentq: `: {err}"))
        .to_owned()
}

/// The long flags `agentq <command…> --help` lists.
fn flags_of(env: &TestEnv, command: &[&str]) -> Vec<String> {
    let mut args = command.to_vec();
    args.push("--help");
    let help = env.ok(&args);
    let mut flags = Vec::new();
    for word in help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
        if word.starts_with("--") && word.len() > 2 {
            flags.push(word.to_owned());
        }
    }
    flags
}

/// Every `--flag` written in `text`.
fn flags_named(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2 && w.as_bytes()[2].is_ascii_alphabetic())
        .map(str::to_owned)
        .collect()
}

/// Every command quoted in `text` as `` `agentq …` ``.
fn commands_named(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|quoted| quoted.starts_with("agentq "))
        .map(str::to_owned)
        .collect()
}

/// The agentq invocations in one line of shell: split at `&&`, `||`, `|` and `;`, the
/// inside of `$( … )` taken as a command of its own, redirections and `#` comments
/// dropped, quotes removed and `$id` replaced by `id`. `cargo run -q --` counts as
/// agentq; a command starts at its `agentq` word (a crontab line has fields before it).
fn agentq_commands(line: &str, id: &str) -> Vec<Vec<String>> {
    let mut segments: Vec<Vec<String>> = vec![Vec::new()];
    let mut word: Option<String> = None;
    let mut chars = line.chars().peekable();
    let mut redirect = false;
    let end_word =
        |word: &mut Option<String>, segments: &mut Vec<Vec<String>>, redirect: &mut bool| {
            if let Some(w) = word.take() {
                if *redirect {
                    *redirect = false;
                } else {
                    segments.last_mut().unwrap().push(w);
                }
            }
        };
    while let Some(c) = chars.next() {
        match c {
            '#' if word.is_none() => break,
            ' ' | '\t' => end_word(&mut word, &mut segments, &mut redirect),
            '&' | '|' | ';' | ')' => {
                end_word(&mut word, &mut segments, &mut redirect);
                if chars.peek() == Some(&c) {
                    chars.next();
                }
                segments.push(Vec::new());
            }
            '>' => {
                end_word(&mut word, &mut segments, &mut redirect);
                redirect = true;
            }
            '$' if chars.peek() == Some(&'(') => {
                chars.next();
                end_word(&mut word, &mut segments, &mut redirect);
                segments.push(Vec::new());
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                let mut inner = String::new();
                for c in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                    inner.push(c);
                }
                w.push_str(&inner.replace("$id", id));
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    w.push(c);
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    end_word(&mut word, &mut segments, &mut redirect);
    segments
        .into_iter()
        .filter_map(|words| {
            let words: Vec<String> = words.into_iter().map(|w| w.replace("$id", id)).collect();
            if let Some(at) = words.iter().position(|w| w == "agentq") {
                return Some(words[at..].to_vec());
            }
            let cargo = ["cargo", "run", "-q", "--"];
            (words.len() >= 4 && words[..4] == cargo).then(|| {
                let mut command = vec!["agentq".to_owned()];
                command.extend_from_slice(&words[4..]);
                command
            })
        })
        .collect()
}

/// Whether `word` looks like an abbreviated session id (hex digits and letters, shorter
/// than a whole id), which the README calls ambiguous.
fn is_id_prefix(word: &str) -> bool {
    (4..36).contains(&word.len())
        && word.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        && word.chars().any(|c| c.is_ascii_digit())
        && word.chars().any(|c| c.is_ascii_alphabetic())
}

/// Requires an agentq command line to parse as the CLI defines it. A bare command
/// name (`agentq send`, as prose mentions one) needs no arguments.
fn assert_parses(words: &[String], whence: &str) {
    use clap::Parser;
    use clap::error::ErrorKind;
    let mention = words
        .iter()
        .all(|w| w.chars().all(|c| c.is_ascii_lowercase()));
    match agentq::cli::Cli::try_parse_from(words) {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {}
        Err(e)
            if mention
                && matches!(
                    e.kind(),
                    ErrorKind::MissingRequiredArgument
                        | ErrorKind::MissingSubcommand
                        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                ) => {}
        Err(e) => panic!("{whence}: `{}` does not parse: {e}", words.join(" ")),
    }
    for word in words {
        assert!(
            !is_id_prefix(word),
            "{whence}: `{}` names a session by a prefix ({word}); use a whole id or \"$id\"",
            words.join(" ")
        );
    }
}

/// `count` of the words with a number before them that disagree with it: `1 problems`.
fn singular_mistakes(text: &str) -> Vec<String> {
    const NOUNS: &[&str] = &[
        "problems",
        "executions",
        "steps",
        "tokens",
        "messages",
        "sessions",
        "attempts",
        "bytes",
        "lines",
        "tasks",
        "calls",
        "errors",
        "matches",
        "entries",
    ];
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .filter(|pair| {
            let number = pair[0].trim_start_matches(['(', '~', '[']);
            let noun = pair[1].trim_end_matches([',', '.', ':', ';', ')']);
            number == "1" && NOUNS.contains(&noun)
        })
        .map(|pair| pair.join(" "))
        .collect()
}

fn queued_text(env: &TestEnv, id: &str) -> Vec<String> {
    env.payloads(id, "message.queued")
        .iter()
        .map(|p| p["content_preview"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn user_messages(env: &TestEnv, id: &str) -> Vec<String> {
    env.json(&["session", "messages", id, "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["role"] == "user")
        .map(|l| l["content"].as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------
// Class 7: hints, flags, counts, help examples, modes

#[test]
fn every_hint_in_an_error_names_a_flag_and_a_command_that_exist() {
    let env = TestEnv::new();
    env.write_agent("fragile", &failing_agent("fragile", 400, 1));
    let id = env.new_session("echo");
    let paused = env.new_session("echo");
    env.ok(&["session", "pause", &paused]);
    let closed = env.new_session("echo");
    env.ok(&["session", "close", &closed]);
    let done = env.new_session("echo");
    env.send(&done, "hi");
    env.worker_once();
    let long_key = "k".repeat(200);
    std::fs::write(env.home().join("agents/broken.toml"), "name = 1\n").unwrap();

    // (the command whose flags a bare `--flag` refers to, its arguments, exit code)
    let cases: Vec<(&[&str], Vec<&str>, i32)> = vec![
        (&["run"], vec!["run", "--agent", "echo"], 2),
        (&["run"], vec!["run", "--session", &paused, "hi"], 2),
        (&["run"], vec!["run", "--agent", "nobody", "hi"], 2),
        (
            &["run"],
            vec!["run", "--agent", "echo", "hi", "--file", "x"],
            2,
        ),
        (&["send"], vec!["send", &id], 2),
        (&["send"], vec!["send", &id, "hi", "--file", "x"], 2),
        (&["send"], vec!["send", &id, "--file", "missing.md"], 2),
        (&["send"], vec!["send", &closed, "hi"], 2),
        (&["send"], vec!["send", &id, "--continue"], 2),
        (&["send"], vec!["send", &done, "--continue"], 2),
        (&["send"], vec!["send", &id, "hi", "--key", &long_key], 2),
        (
            &["send"],
            vec!["send", &id, "hi", "--wait", "--timeout", "soon"],
            2,
        ),
        (
            &["send"],
            vec!["send", &paused, "hi", "--wait", "--timeout", "300ms"],
            75,
        ),
        (
            &["send"],
            vec!["send", &id, "hi", "--wait", "--timeout", "300ms"],
            75,
        ),
        (&["send"], vec!["send", &id, "hi", "--raise-budget", "5"], 2),
        (
            &["watch"],
            vec!["watch", &paused, "--exit-on-idle", "--timeout", "300ms"],
            75,
        ),
        (&["watch"], vec!["watch", &id, "--timeout", "1s"], 2),
        (&["retry"], vec!["retry", &id], 2),
        (&["worker"], vec!["worker", "--once", "--poll", "0ms"], 2),
        (
            &["session", "new"],
            vec!["session", "new", "--agent", "echo", "--set", "x"],
            2,
        ),
        (
            &["session", "new"],
            vec!["session", "new", "--agent", "broken"],
            2,
        ),
        (&["agents", "show"], vec!["agents", "show", "nobody"], 2),
    ];
    let mut hints = 0;
    for (command, args, expected) in &cases {
        let out = env.run(args);
        let what = args.join(" ");
        // `send --wait` may print a waiting note before its error; the error is last.
        let message = if *expected == 75 {
            assert_eq!(code(&out), 75, "{what}:\n{}", describe(&out));
            stderr(&out).lines().last().unwrap().to_owned()
        } else {
            one_line_error(&out, *expected, &what)
        };
        let own = flags_of(&env, command);
        let quoted = commands_named(&message);
        let outside: String = message.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        for flag in flags_named(&outside) {
            assert!(
                own.contains(&flag),
                "`agentq {what}` says {message:?}: `{}` has no {flag}",
                command.join(" ")
            );
            hints += 1;
        }
        for suggested in quoted {
            let words = agentq_commands(&suggested, &id);
            assert_eq!(words.len(), 1, "{what}: {suggested}");
            assert_parses(&words[0], &format!("the hint of `agentq {what}`"));
            hints += 1;
        }
    }
    // `agents list` shows an invalid definition with the command that explains it.
    let listing = env.ok(&["agents", "list"]);
    let line = listing.lines().find(|l| l.contains("broken")).unwrap();
    for suggested in commands_named(&format!("`{}`", line.split(": ").last().unwrap())) {
        assert_parses(&agentq_commands(&suggested, &id)[0], "agents list");
        hints += 1;
    }
    assert!(hints >= 20, "hints checked: {hints}");
    report(
        "every_hint_names_what_exists",
        &[("cases", cases.len() as u64 + 1)],
    );
}

#[test]
fn flags_that_only_make_sense_with_another_are_refused_without_it() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    std::fs::write(env.home().join("prompt.md"), "from a file").unwrap();
    // (arguments, a flag the refusal names)
    let cases: &[(&[&str], &str)] = &[
        (
            &["send", &id, "hi", "--raise-budget", "5"],
            "--raise-budget",
        ),
        (
            &["send", &id, "--file", "prompt.md", "--raise-budget", "5"],
            "--raise-budget",
        ),
        (&["send", &id, "--raise-budget", "5"], "--continue"),
        (&["send", &id, "hi", "--timeout", "5s"], "--wait"),
        (&["send", &id, "--continue", "hi"], "--continue"),
        (
            &["send", &id, "--continue", "--file", "prompt.md"],
            "--continue",
        ),
        (&["send", &id, "hi", "--file", "prompt.md"], "--file"),
        (
            &["run", "--agent", "echo", "hi", "--file", "prompt.md"],
            "--file",
        ),
        (&["watch", &id, "--timeout", "5s"], "--exit-on-idle"),
        (
            &["watch", &id, "--since", "3", "--from-start"],
            "--from-start",
        ),
        (&["watch", &id, "--json", "--plain"], "--plain"),
    ];
    for (args, flag) in cases {
        let message = one_line_error(&env.run(args), 2, &args.join(" "));
        assert!(message.contains(flag), "{args:?}: {message}");
    }
    assert_eq!(env.pending(&id), 0, "nothing was queued by a refused send");

    // --raise-budget needs a session_max_tokens to raise.
    let stops = |name: &str, extra: &str| {
        format!(
            "name = \"{name}\"\n[model]\nprovider = \"scripted\"\n[[model.script]]\ntool_calls = [{{ name = \"list_dir\", arguments = {{ path = \".\" }} }}]\nusage = {{ input = 10, output = 10 }}\n[limits]\nmax_steps = 1\n{extra}[tools]\nbuiltin = [\"list_dir\"]\n"
        )
    };
    env.write_agent("uncapped", &stops("uncapped", ""));
    env.write_agent("capped", &stops("capped", "session_max_tokens = 1000\n"));
    let uncapped = env.new_session("uncapped");
    env.run(&["run", "--session", &uncapped, "go"]);
    let message = one_line_error(
        &env.run(&["send", &uncapped, "--continue", "--raise-budget", "5"]),
        2,
        "raise without a budget",
    );
    assert!(message.contains("session_max_tokens"), "{message}");
    assert_eq!(env.pending(&uncapped), 0);
    let capped = env.new_session("capped");
    env.run(&["run", "--session", &capped, "go"]);
    env.ok(&["send", &capped, "--continue", "--raise-budget", "5"]);
    // The same flags with what they need are accepted.
    env.ok(&["send", &id, "--file", "prompt.md"]);
    env.ok(&["run", "--session", &id, "--file", "prompt.md"]);
    assert_eq!(user_messages(&env, &id), vec!["from a file", "from a file"]);
    report(
        "flags_need_their_partner",
        &[("cases", cases.len() as u64 + 2)],
    );
}

#[test]
fn waiting_on_a_paused_session_says_it_is_paused_not_that_no_worker_runs() {
    let env = TestEnv::new();
    let paused = env.new_session("echo");
    env.ok(&["session", "pause", &paused]);
    let idle = env.new_session("echo");
    let mut cases = 0;

    // A worker is running and would take the message: only the pause holds it back.
    let _worker = env.spawn_worker(&[]);
    for args in [
        vec!["send", &paused, "hi", "--wait", "--timeout", "500ms"],
        vec!["watch", &paused, "--exit-on-idle", "--timeout", "500ms"],
    ] {
        let out = env.run(&args);
        assert_eq!(code(&out), 75, "{args:?}:\n{}", describe(&out));
        let err = stderr(&out);
        assert!(err.contains("is paused"), "{args:?}: {err}");
        assert!(
            err.contains(&format!("agentq session resume {paused}")),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("no worker"),
            "{args:?} blames no worker: {err}"
        );
        cases += 1;
    }
    let messages = env.ok(&["session", "messages", &paused]);
    assert!(messages.contains("paused"), "{messages}");
    cases += 1;

    // Resumed, the worker answers what waited.
    env.ok(&["session", "resume", &paused]);
    let out = env.run(&["watch", &paused, "--exit-on-idle", "--timeout", "30s"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(env.responses(&paused), vec!["echo: hi"]);
    cases += 1;
    drop(_worker);

    // Not paused, with no worker: then it is the worker that is missing.
    let out = env.run(&["send", &idle, "hi", "--wait", "--timeout", "300ms"]);
    assert_eq!(code(&out), 75, "{}", describe(&out));
    assert!(stderr(&out).contains("no worker"), "{}", describe(&out));
    cases += 1;
    report("waits_name_a_paused_session", &[("cases", cases)]);
}

#[test]
fn session_messages_counts_the_messages_still_queued() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let quiet = |env: &TestEnv| env.ok(&["session", "messages", &id]);

    assert_eq!(quiet(&env).trim(), "no messages yet");
    env.send(&id, "one");
    let one = quiet(&env);
    assert!(one.contains("1 message queued"), "{one}");
    assert!(!one.contains("no messages yet"), "{one}");
    assert!(one.contains("agentq worker"), "{one}");
    env.send(&id, "two");
    assert!(quiet(&env).contains("2 messages queued"), "{}", quiet(&env));
    env.ok(&["session", "pause", &id]);
    let paused = quiet(&env);
    assert!(
        paused.contains(&format!("agentq session resume {id}")),
        "{paused}"
    );
    env.ok(&["session", "resume", &id]);
    env.worker_once();
    let answered = quiet(&env);
    assert!(answered.contains("user: one"), "{answered}");
    assert!(!answered.contains("queued"), "{answered}");
    env.send(&id, "three");
    let behind = quiet(&env);
    assert!(behind.contains("user: two"), "{behind}");
    assert!(behind.contains("1 message queued"), "{behind}");
    // --json stays the transcript, exactly.
    assert_eq!(user_messages(&env, &id), vec!["one", "two"]);
    report("session_messages_counts_queued", &[("cases", 6)]);
}

#[test]
fn a_count_of_one_takes_the_singular_everywhere() {
    let env = TestEnv::new();
    // One problem in a definition.
    std::fs::write(
        env.home().join("agents/oneproblem.toml"),
        "name = \"oneproblem\"\n[model]\nprovider = \"scripted\"\nunknown_key = 1\n",
    )
    .unwrap();
    // One step, one token, a file of one byte and one line, one task, one attempt.
    env.write_agent(
        "single",
        r#"
name = "single"
[model]
provider = "scripted"
max_attempts = 1
[[model.script]]
tool_calls = [
  { name = "write_file", arguments = { path = "b.txt", content = "x" } },
  { name = "read_file", arguments = { path = "b.txt", offset = 2 } },
  { name = "todo_write", arguments = { todos = [{ content = "one", status = "pending" }] } },
]
usage = { input = 1, output = 0 }
[[model.script]]
text = "done"
usage = { input = 0, output = 1 }
[[model.script]]
error = { status = 503, message = "down" }
[limits]
max_steps = 1
[tools]
builtin = ["write_file", "read_file", "todo_write"]
"#,
    );
    let id = env.new_session("single");
    let mut outputs = Vec::new();
    outputs.push(env.ok(&["agents", "list"]));
    // Stopped after 1 step; the continuation answers in 1 step with 1 token.
    outputs.push(stderr(&env.run(&["run", "--session", &id, "go"])));
    outputs.push(env.ok(&["session", "show", &id]));
    env.ok(&["send", &id, "--continue"]);
    env.ok(&["session", "pause", &id]);
    outputs.push(env.ok(&["session", "messages", &id]));
    outputs.push(env.ok(&["status"]));
    env.ok(&["session", "resume", &id]);
    env.worker_once();
    env.send(&id, "fails once");
    env.run(&["worker", "--once"]);
    outputs.push(env.ok(&["session", "show", &id]));
    // The last execution failed with the provider unavailable: exit 75.
    let watched = env.run(&["watch", &id, "--from-start", "--plain", "--exit-on-idle"]);
    assert_eq!(code(&watched), 75, "{}", describe(&watched));
    outputs.push(stdout(&watched));
    outputs.push(env.ok(&["session", "messages", &id]));
    let failed = env.finished(&id);
    outputs.push(failed.last().unwrap()["error"].to_string());

    let all = outputs.join("\n");
    for (needle, what) in [
        ("1 problem", "agents list"),
        ("1 step", "footer"),
        ("1 execution", "session show"),
        ("wrote 1 byte", "write_file"),
        ("of 1 line", "read_file"),
        ("1 task", "todo_write"),
        ("gave up after 1 attempt", "a provider error"),
        ("1 message", "session messages / status"),
        ("1 session", "status"),
    ] {
        assert!(all.contains(needle), "{what} ({needle}):\n{all}");
    }
    let mistakes = singular_mistakes(&all);
    assert!(mistakes.is_empty(), "{mistakes:?} in:\n{all}");
    report("singular_counts", &[("cases", 9)]);
}

#[test]
fn every_help_example_parses_names_sessions_by_a_whole_id_and_runs() {
    let env = TestEnv::new();
    let id = "01900000-0000-7000-8000-000000000000";
    // Every command path, found from the help itself.
    let mut paths: Vec<Vec<String>> = vec![vec![]];
    let mut lines: Vec<String> = Vec::new();
    let mut i = 0;
    while i < paths.len() {
        let path = paths[i].clone();
        i += 1;
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let help = env.ok(&args);
        let mut section = "";
        for line in help.lines() {
            if !line.starts_with(' ') {
                section = line.trim_end_matches(':');
                continue;
            }
            let trimmed = line.trim();
            if section == "Commands" {
                let name = trimmed.split_whitespace().next().unwrap();
                if name != "help" {
                    let mut sub = path.clone();
                    sub.push(name.to_owned());
                    paths.push(sub);
                }
            } else if section.starts_with("Example") {
                let commands = agentq_commands(trimmed, id);
                assert!(
                    !commands.is_empty(),
                    "{path:?}: example without agentq: {trimmed}"
                );
                for words in commands {
                    assert_parses(&words, &format!("agentq {} --help", path.join(" ")));
                }
                lines.push(trimmed.to_owned());
            }
        }
    }
    assert!(paths.len() > 20, "commands found: {paths:?}");
    assert!(lines.len() > 30, "examples found: {}", lines.len());

    // Each example, run as written in a home with a worker, `$id` a new session. Not
    // run: those that go on until stopped (a worker without --once, a watch without
    // --exit-on-idle, a server: tests/it/serve.rs runs it), those that write into the user's shell set-up, and those that
    // name a database (`store migrate|copy` on Postgres: tests/it/postgres/copy.rs).
    std::fs::write(env.home().join("prompt.md"), "a prompt").unwrap();
    let _worker = env.spawn_worker(&[]);
    let mut ran = 0;
    for line in &lines {
        let command = line.split(" #").next().unwrap();
        let endless = (command.contains("agentq worker") && !command.contains("--once"))
            || (command.contains("agentq watch") && !command.contains("--exit-on-idle"))
            || command.contains("agentq serve");
        if endless || command.contains("completions") || command.contains("postgres://") {
            continue;
        }
        let script = format!("set -e\nid=$(agentq session new --agent demo)\n{command}\n");
        let out = shell(&env, &script, LONG);
        // Examples for a state the new session is not in are refused as such.
        let not_now = [
            "no failed execution",
            "nothing to continue",
            "no call waiting for approval",
        ]
        .iter()
        .any(|m| stderr(&out).contains(m));
        assert!(
            code(&out) == 0 || (code(&out) == 2 && not_now),
            "the example `{line}`:\n{}",
            describe(&out)
        );
        ran += 1;
    }
    assert!(ran > 25, "examples run: {ran}");
    report("help_examples_run", &[("cases", lines.len() as u64 + ran)]);
}

/// Runs `script` with `sh` in the home, `agentq` on the PATH; waits at most `timeout`.
/// Its background jobs are killed with it.
fn shell(env: &TestEnv, script: &str, timeout: Duration) -> Output {
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        assert_cmd::cargo::cargo_bin("agentq"),
        bin.path().join("agentq"),
    )
    .unwrap();
    let mut prelude = String::new();
    if std::process::Command::new("jq")
        .arg("--version")
        .output()
        .is_err()
    {
        // jq is not part of a fresh machine: the line still runs, its output unread.
        prelude.push_str("jq() { cat >/dev/null; }\n");
    }
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(prelude + script)
        .env("PATH", path)
        .env("AGENTQ_HOME", env.home())
        .env("HOME", env.home())
        .env("NO_COLOR", "1")
        .current_dir(env.home())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let group = Group(child.id());
    let out = Background { child }.wait(timeout);
    drop(group);
    out
}

#[test]
fn files_agentq_creates_keep_their_modes_under_a_permissive_umask() {
    let env = TestEnv::empty();
    let open = |args: &[&str]| {
        let mut cmd = env.cmd();
        cmd.args(args).stdin(Stdio::null());
        // SAFETY: umask(2) is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        assert_eq!(code(&out), 0, "{args:?}:\n{}", describe(&out));
        stdout(&out).trim().to_owned()
    };
    open(&["init"]);
    env.write_agent(
        "writer",
        r#"
name = "writer"
[model]
provider = "scripted"
[[model.script]]
tool_calls = [{ name = "write_file", arguments = { path = "deep/er/note.md", content = "n" } }]
[[model.script]]
text = "written"
[tools]
builtin = ["write_file"]
"#,
    );
    let id = open(&["session", "new", "--agent", "writer"]);
    open(&["send", &id, "write", "--key", "k1"]);
    open(&["send", &id, "again"]);
    let log = env.home().join("worker.log");
    // With slots, the worker's file in sessions/.workers/ stays to be checked.
    open(&[
        "worker",
        "--once",
        "--max-workers",
        "2",
        "--log-file",
        log.to_str().unwrap(),
    ]);
    open(&["session", "pause", &id]);
    open(&["session", "resume", &id]);
    open(&["run", "--agent", "demo", "hello"]);

    let mode = |path: &Path| {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    let sessions = env.home().join("sessions");
    // `sessions/<id>/workspace/…`: what the tools wrote.
    let in_workspace = |path: &Path| {
        let parts: Vec<_> = path.strip_prefix(&sessions).unwrap().components().collect();
        parts.len() > 2 && parts[1].as_os_str() == "workspace"
    };
    let mut checked = 0;
    let mut stack = vec![sessions.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let is_dir = std::fs::symlink_metadata(&path).unwrap().is_dir();
            let expected = match (in_workspace(&path), is_dir) {
                (false, true) => 0o700,
                (false, false) => 0o600,
                (true, true) => 0o755,
                (true, false) => 0o644,
            };
            assert_eq!(mode(&path), expected, "{}", path.display());
            checked += 1;
            if is_dir {
                stack.push(path);
            }
        }
    }
    assert!(
        env.session_dir(&id)
            .join("workspace/deep/er/note.md")
            .exists()
    );
    assert!(
        sessions.join(".workers/slot-0").exists(),
        "a slot was checked"
    );
    for (path, expected) in [
        (env.home().join("agents"), 0o700),
        (env.home().join("sessions"), 0o700),
        (env.home().join("agents/demo.toml"), 0o644),
        (log, 0o600),
    ] {
        assert_eq!(mode(&path), expected, "{}", path.display());
        checked += 1;
    }
    assert!(checked > 30, "files checked: {checked}");
    report("modes_under_umask_000", &[("cases", checked)]);
}

// ---------------------------------------------------------------------------------
// Class 9: what the README promises

#[test]
fn retry_queues_the_failed_text_again_and_a_task_is_queued_again_only_once() {
    let env = TestEnv::new();
    env.write_agent("fragile", &failing_agent("fragile", 400, 1));
    env.write_agent(
        "limited",
        "name = \"limited\"\n[model]\nprovider = \"scripted\"\n[[model.script]]\ntool_calls = [{ name = \"list_dir\", arguments = { path = \".\" } }]\n[[model.script]]\ntext = \"done: {input}\"\n[limits]\nmax_steps = 1\n[tools]\nbuiltin = [\"list_dir\"]\n",
    );
    let mut cases = 0;

    // retry, then send --continue: the second is refused.
    let a = env.new_session("fragile");
    env.send(&a, "the task");
    env.worker_once_exiting(1);
    env.ok(&["retry", &a]);
    assert_eq!(queued_text(&env, &a), vec!["the task", "the task"]);
    let refused = one_line_error(
        &env.run(&["send", &a, "--continue"]),
        2,
        "continue after retry",
    );
    assert!(refused.contains("already queued"), "{refused}");
    let refused = one_line_error(&env.run(&["retry", &a]), 2, "retry twice");
    assert!(refused.contains("already queued"), "{refused}");
    env.worker_once();
    assert_eq!(env.responses(&a), vec!["ok: the task"]);
    assert_eq!(user_messages(&env, &a), vec!["the task", "the task"]);
    one_line_error(
        &env.run(&["retry", &a]),
        2,
        "retry after the retry answered",
    );
    one_line_error(
        &env.run(&["send", &a, "--continue"]),
        2,
        "continue after it answered",
    );
    cases += 4;

    // send --continue, then retry: the second is refused.
    let b = env.new_session("fragile");
    env.send(&b, "other task");
    env.worker_once_exiting(1);
    env.ok(&["send", &b, "--continue"]);
    let refused = one_line_error(&env.run(&["retry", &b]), 2, "retry after continue");
    assert!(refused.contains("already queued"), "{refused}");
    env.worker_once();
    assert_eq!(env.responses(&b), vec!["ok: other task"]);
    one_line_error(
        &env.run(&["retry", &b]),
        2,
        "retry after the continuation answered",
    );
    cases += 2;

    // A task stopped by a limit is continued once at a time.
    let c = env.new_session("limited");
    env.send(&c, "long task");
    env.worker_once_exiting(3);
    env.ok(&["send", &c, "--continue"]);
    let refused = one_line_error(&env.run(&["send", &c, "--continue"]), 2, "continue twice");
    assert!(refused.contains("already queued"), "{refused}");
    env.worker_once();
    assert_eq!(env.responses(&c), vec!["done: long task"]);
    cases += 1;

    // A retry that failed again is retried with the same text; its first failure is
    // then taken care of, and is not retried a second time.
    env.write_agent(
        "broken",
        &failing_agent("broken", 400, 1).replace(
            "text = \"ok: {input}\"",
            "error = { status = 400, message = \"still\" }",
        ),
    );
    let d = env.new_session("broken");
    env.send(&d, "hopeless");
    env.worker_once_exiting(1);
    env.ok(&["retry", &d]);
    env.worker_once_exiting(1);
    env.ok(&["retry", &d]);
    env.worker_once_exiting(1);
    assert_eq!(queued_text(&env, &d), vec!["hopeless"; 3]);
    let statuses: Vec<Value> = env
        .finished(&d)
        .iter()
        .map(|f| f["status"].clone())
        .collect();
    assert_eq!(statuses, vec!["failed"; 3]);
    let shown = env.json(&["session", "show", &d, "--json"]);
    assert_eq!(
        shown["failed"].as_array().unwrap().len(),
        3,
        "every failure is listed"
    );
    env.ok(&["retry", &d]);
    let refused = one_line_error(&env.run(&["retry", &d]), 2, "retry while one is queued");
    assert!(refused.contains("already queued"), "{refused}");
    cases += 2;
    report("retry_and_continue_once", &[("cases", cases)]);
}

#[test]
fn the_scripted_providers_injected_errors_are_retried_like_a_servers() {
    let env = TestEnv::new();
    let mut cases = 0;
    // (status, max_attempts, exit code, retries expected)
    for (status, attempts, exit, retries) in [
        (503, 3, 75, 2),
        (429, 2, 75, 1),
        (500, 1, 75, 0),
        (408, 2, 75, 1),
        (400, 3, 1, 0),
        (404, 3, 1, 0),
    ] {
        let name = format!("e{status}x{attempts}");
        env.write_agent(&name, &failing_agent(&name, status, attempts));
        let out = env.run(&["run", "--agent", &name, "x", "--json"]);
        assert_eq!(code(&out), exit, "{name}:\n{}", describe(&out));
        let result: Value = serde_json::from_slice(&out.stdout).unwrap();
        let id = result["session_id"].as_str().unwrap();
        let seen = env.payloads(id, "provider.retry");
        assert_eq!(seen.len(), retries, "{name}: {seen:?}");
        for (i, retry) in seen.iter().enumerate() {
            assert_eq!(retry["attempt"], i as u64 + 2, "{name}");
            assert_eq!(retry["http_status"], status, "{name}");
        }
        let error = result["error"].as_str().unwrap();
        if exit == 75 {
            let tries = if attempts == 1 { "attempt" } else { "attempts" };
            assert!(
                error.contains(&format!("gave up after {attempts} {tries}")),
                "{name}: {error}"
            );
        }
        cases += 1;
    }
    report("scripted_errors_retried", &[("cases", cases)]);
}

#[test]
fn watch_exit_on_idle_gives_up_after_its_timeout_like_send_wait() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    env.send(&id, "nobody takes this");
    let out = env.run(&["watch", &id, "--exit-on-idle", "--timeout", "300ms"]);
    assert_eq!(code(&out), 75, "{}", describe(&out));
    let err = stderr(&out);
    assert!(err.contains("no worker"), "{err}");
    assert!(err.contains("agentq worker"), "{err}");
    let out = env.run(&["watch", &id, "--exit-on-idle", "--timeout", "soon"]);
    one_line_error(&out, 2, "a bad --timeout");
    // With a worker it ends with the execution's code, well before its timeout.
    let _worker = env.spawn_worker(&[]);
    let out = env.run(&["watch", &id, "--exit-on-idle", "--timeout", "30s"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(env.responses(&id), vec!["echo: nobody takes this"]);
    report("watch_exit_on_idle_timeout", &[("cases", 3)]);
}

#[test]
fn first_hour_traps_input_in_tool_arguments_and_compaction_in_small_windows() {
    let env = TestEnv::new();
    env.write_agent(
        "noter",
        r#"
name = "noter"
[model]
provider = "scripted"
[[model.script]]
tool_calls = [{ name = "write_file", arguments = { path = "{input}.md", content = "asked: {input}" } }]
[[model.script]]
text = "noted {input}"
[tools]
builtin = ["write_file"]
"#,
    );
    let out = env.run(&["run", "--agent", "noter", "groceries", "--json"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let note = env.session_dir(&id).join("workspace/groceries.md");
    assert_eq!(std::fs::read_to_string(&note).unwrap(), "asked: groceries");

    // A window of 600 tokens: each message is about 100, so the sixth passes 80%.
    env.write_agent(
        "small",
        r#"
name = "small"
[model]
provider = "scripted"
context_window = 600
[[model.script]]
text = "summary"
usage = { input = 1, output = 1 }
"#,
    );
    let id = env.new_session("small");
    let long = "w".repeat(400);
    for _ in 0..6 {
        env.send(&id, &long);
    }
    env.worker_once();
    let compacted = env.payloads(&id, "context.compacted");
    assert!(!compacted.is_empty(), "a small window compacts");
    report("first_hour_traps", &[("cases", 2)]);
}

/// The README's shell blocks, in order, each as its lines.
fn readme_shell_blocks(readme: &str) -> Vec<Vec<&str>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in readme.lines() {
        match (line.strip_prefix("```"), current.take()) {
            (Some("sh"), None) => current = Some(Vec::new()),
            (Some(_), Some(block)) => blocks.push(block),
            (Some(_), None) => {}
            (None, Some(mut block)) => {
                block.push(line);
                current = Some(block);
            }
            (None, None) => {}
        }
    }
    blocks
}

#[test]
fn the_readmes_tour_runs_as_written_and_every_command_it_shows_parses() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let id = "01900000-0000-7000-8000-000000000000";
    let blocks = readme_shell_blocks(&readme);
    let mut commands = 0;
    for line in blocks.iter().flatten() {
        for words in agentq_commands(line, id) {
            assert_parses(&words, &format!("README: {line}"));
            commands += 1;
        }
    }
    // Commands quoted in the text, with ID, N, TEXT… standing for values.
    for quoted in commands_named(&readme.replace('\n', " ")) {
        for words in agentq_commands(&quoted, id) {
            assert_parses(&words, &format!("README: `{quoted}`"));
            commands += 1;
        }
    }
    assert!(commands > 25, "commands found: {commands}");

    // The tour, then the CI lines, in one shell with agentq on the PATH: every line as
    // written, except those for "a second terminal", which run beside the rest.
    let tour = blocks
        .iter()
        .find(|b| b.iter().any(|l| l.starts_with("agentq init")))
        .expect("the tour");
    let ci = blocks
        .iter()
        .find(|b| b.iter().any(|l| l.contains("--exit-on-idle")))
        .expect("the CI lines");
    let env = TestEnv::empty();
    let mut script = String::from("set -e\n");
    let mut lines = 0;
    for line in tour.iter().chain(ci.iter()) {
        if line.starts_with("alias ") || line.trim().is_empty() {
            continue;
        }
        let (command, comment) = line.split_once(" #").unwrap_or((line, ""));
        let mut command = command.trim_end().to_owned();
        if comment.contains("second terminal") {
            command.push_str(" &");
        }
        script.push_str(&command);
        if command.ends_with('&') {
            script.push_str(" jobs=\"$jobs $!\"");
        }
        script.push('\n');
        lines += 1;
    }
    script.push_str("kill $jobs\nwait\n");
    let out = shell(&env, &script, Duration::from_secs(60));
    assert_eq!(code(&out), 0, "the tour:\n{script}\n{}", describe(&out));
    assert!(
        stdout(&out).contains("You asked: \"Summarise\""),
        "{}",
        describe(&out)
    );

    // Every TOML example is valid where it goes: the agent definitions (the
    // alternatives of one block, each alone) and agentq.toml.
    let mut tomls = 0;
    let mut config = String::new();
    for block in readme.split("```toml\n").skip(1) {
        let block = &block[..block.find("```").unwrap()];
        if block.starts_with("# agentq.toml") || block.starts_with("[providers.") {
            config.push_str(block);
            continue;
        }
        // A whole definition may open with the file it goes in: `# agents/NAME.toml…`.
        let (block, stem) = match block
            .strip_prefix("# agents/")
            .and_then(|rest| rest.split_once('\n'))
        {
            Some((file, body)) => (body, file.split(".toml").next().unwrap_or("demo")),
            None => (block, "demo"),
        };
        // A block that is not a whole definition shows alternatives, blank-line apart.
        let parts: Vec<&str> = if block.starts_with("name = ") {
            vec![block]
        } else {
            block.split("\n\n").collect()
        };
        for (i, part) in parts.into_iter().enumerate() {
            let name = format!("readme{tomls}x{i}");
            let text = if part.starts_with("name = ") {
                part.replacen(
                    &format!("name = \"{stem}\""),
                    &format!("name = \"{name}\""),
                    1,
                )
            } else {
                format!("name = \"{name}\"\n{part}")
            };
            std::fs::create_dir_all(env.home().join("agents")).unwrap();
            env.write_agent(&name, &text);
            env.ok(&["agents", "validate", &format!("agents/{name}.toml")]);
        }
        tomls += 1;
    }
    std::fs::write(env.home().join("agentq.toml"), &config).unwrap();
    env.ok(&["status"]);
    assert!(
        tomls >= 2 && config.contains("[providers.local]"),
        "{tomls}: {config}"
    );
    report(
        "readme_tour_and_commands",
        &[("cases", commands + lines + tomls + 1)],
    );
}

/// A process group, killed when dropped (a script's background jobs with it).
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kill(2) has no memory-safety preconditions; the group is this test's.
        unsafe {
            libc::kill(-(self.0 as libc::pid_t), libc::SIGKILL);
        }
    }
}
