//! Class 1: text from outside (model, tools, providers, definitions) never reaches a terminal raw; single-line fields stay on one line, capped; `--json` stays exact.
//!
//! Every test feeds every kind of hostile text ([`HOSTILE`]) through one source of
//! outside text and reads every view that shows it: no control character but newline
//! and tab, no format character (bidi, zero-width, tags) and no line separator may come
//! out, a single-line field keeps its row, and `--json` gives the text back exactly.

#[allow(unused_imports)]
use super::*;

use crate::it::fake_server::{FakeServer, OpenAiSse, Reply};
use crate::it::watching::{in_pty, script_available};

/// Every kind of hostile text, by name: terminal escapes (CSI, OSC 52 writing the
/// clipboard, OSC 8 hyperlinks), C1 controls, other C0 controls and DEL,
/// bidirectional controls (Trojan Source), zero-width and invisible characters, line
/// and paragraph separators, and tag characters (invisible ASCII).
const HOSTILE: &[(&str, &str)] = &[
    ("csi", "\x1b[2J\x1b[31mred"),
    ("osc52", "x\x1b]52;c;aGVsbG8=\x07"),
    (
        "osc8",
        "\x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\",
    ),
    ("c1", "\u{9b}31m\u{85}\u{9d}0;t\u{9c}"),
    ("c0", "bell\x07back\x08cr\rdel\x7f"),
    (
        "bidi",
        "\u{202e}evil\u{202c}\u{2066}\u{2067}\u{2068}\u{2069}\u{200e}\u{200f}\u{61c}",
    ),
    (
        "invisible",
        "a\u{200b}b\u{200c}c\u{200d}d\u{2060}e\u{feff}f\u{ad}g",
    ),
    ("separators", "one\u{2028}two\u{2029}three"),
    ("tags", "\u{e0001}\u{e0041}\u{e0042}\u{e007f}"),
];

/// The characters no view but `--json` may print: controls other than newline and
/// tab, Unicode format characters (category Cf) and the line and paragraph separators.
fn raw_chars(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| {
            (c.is_control() && c != '\n' && c != '\t')
                || matches!(
                    c,
                    '\u{ad}'
                        | '\u{600}'..='\u{605}'
                        | '\u{61c}'
                        | '\u{200b}'..='\u{200f}'
                        | '\u{2028}'..='\u{202e}'
                        | '\u{2060}'..='\u{206f}'
                        | '\u{feff}'
                        | '\u{fff9}'..='\u{fffb}'
                        | '\u{e0000}'..='\u{e007f}'
                )
        })
        .collect()
}

/// Requires that `text`, printed by `what` for the hostile text `kind`, holds no raw
/// character; returns 1, the case it checked.
fn assert_neutral(text: &str, what: &str, kind: &str) -> u64 {
    let raw = raw_chars(text);
    assert!(
        raw.is_empty(),
        "{what} printed {raw:?} raw for the {kind} text:\n{text}"
    );
    1
}

/// What a terminal received (stdout and stderr together, colours off): the spinner's
/// own cursor movements are allowed, nothing else that a terminal obeys.
fn assert_terminal_neutral(raw: &str, what: &str, kind: &str) -> u64 {
    let ours = regex::Regex::new(r"\x1b\[(\?25[hl]|[0-9]*[A-DGK])").unwrap();
    let rest = ours.replace_all(raw, "").replace('\r', "");
    assert_neutral(&rest, what, kind)
}

/// Both streams of a command, checked.
fn assert_output_neutral(out: &Output, what: &str, kind: &str) -> u64 {
    assert_neutral(&stdout(out), &format!("{what} (stdout)"), kind)
        + assert_neutral(&stderr(out), &format!("{what} (stderr)"), kind)
}

/// A TOML basic string holding `text` exactly: everything but printable ASCII escaped.
fn toml_str(text: &str) -> String {
    let mut s = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            ' '..='~' => s.push(c),
            c if (c as u32) <= 0xffff => s.push_str(&format!("\\u{:04x}", c as u32)),
            c => s.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    s.push('"');
    s
}

/// A scripted agent whose every piece of text comes from `text`: its description, the
/// streamed text, a tool call to a tool named after it (refused: unknown) with it as
/// the argument, a todo item with a newline and a tab, then an answer of two lines.
fn hostile_agent(name: &str, text: &str) -> String {
    let t = |suffix: &str| toml_str(&format!("{text}{suffix}"));
    format!(
        r#"name = "{name}"
description = {description}
[model]
provider = "scripted"
[[model.script]]
text = {streamed}
tool_calls = [
  {{ name = {tool}, arguments = {{ path = {path} }} }},
  {{ name = "todo_write", arguments = {{ todos = [{{ content = {todo}, status = "pending" }}] }} }},
]
[[model.script]]
text = {answer}
[tools]
builtin = ["read_file", "todo_write"]
"#,
        description = t(" description"),
        streamed = t(" streamed "),
        tool = toml_str(&format!("tool{text}")),
        path = t("\npath"),
        todo = t("\n\tsecond half of the todo"),
        answer = toml_str(&format!("answer {text}\nline two of the answer")),
    )
}

/// The title every hostile session gets: the text, then a forged second row.
fn hostile_title(text: &str) -> String {
    format!("{text}\n\tforged row")
}

/// One hostile session per kind, each with one settled message.
fn hostile_sessions(env: &TestEnv) -> Vec<(&'static str, String)> {
    let sessions: Vec<(&str, String)> = HOSTILE
        .iter()
        .enumerate()
        .map(|(i, (kind, text))| {
            let agent = format!("hostile{i}");
            env.write_agent(&agent, &hostile_agent(&agent, text));
            let title = hostile_title(text);
            let id = env
                .ok(&["session", "new", "--agent", &agent, "--title", &title])
                .trim()
                .to_owned();
            env.send(&id, &format!("hello {text}"));
            (*kind, id)
        })
        .collect();
    env.worker_once();
    sessions
}

#[test]
fn every_view_of_a_session_shows_hostile_model_and_tool_text_neutralised_and_in_its_row() {
    let env = TestEnv::new();
    let sessions = hostile_sessions(&env);
    // For `send --wait`, later on.
    let _worker = env.spawn_worker(&[]);
    let mut cases = 0;

    // `session list`: one row per session, however many lines a title has.
    let out = env.run(&["session", "list"]);
    for (kind, _) in HOSTILE {
        cases += assert_output_neutral(&out, "session list", kind);
    }
    let rows = stdout(&out);
    assert_eq!(rows.lines().count(), 1 + sessions.len(), "{rows}");
    assert!(
        rows.lines().skip(1).all(|row| row.contains("forged row")),
        "a title left its row:\n{rows}"
    );

    for (i, (kind, id)) in sessions.iter().enumerate() {
        let text = HOSTILE[i].1;
        let views: &[&[&str]] = &[
            &["session", "show", id],
            &["session", "messages", id],
            &["status"],
            &["agents", "list"],
            &["agents", "show", &format!("hostile{i}")],
            &["watch", id, "--plain", "--from-start", "--exit-on-idle"],
        ];
        for args in views {
            cases += assert_output_neutral(&env.run(args), &args.join(" "), kind);
        }

        // `session show`: the title and the todo item keep their rows.
        let shown = env.ok(&["session", "show", id]);
        let labelled = |label: &str| {
            shown
                .lines()
                .find(|l| l.starts_with(label))
                .unwrap_or_else(|| panic!("no {label} line:\n{shown}"))
                .to_owned()
        };
        assert!(labelled("title ").contains("forged row"), "{shown}");
        assert!(labelled("todo ").contains("second half"), "{shown}");
        assert!(
            shown
                .lines()
                .all(|l| l.starts_with(|c: char| c.is_ascii_lowercase())),
            "a field left its row:\n{shown}"
        );

        // `session messages`: the refused call and its result keep their rows.
        let messages = env.ok(&["session", "messages", id]);
        let call = messages
            .lines()
            .find(|l| l.starts_with("  → tool"))
            .unwrap_or_else(|| panic!("no call line:\n{messages}"));
        assert!(call.contains("path"), "{messages}");
        assert!(
            messages
                .lines()
                .any(|l| l.starts_with("  ✗ tool") && l.contains("unknown tool")),
            "{messages}"
        );

        // `--json` gives every field back exactly.
        let show = env.json(&["session", "show", id, "--json"]);
        assert_eq!(show["session"]["title"], hostile_title(text));
        assert_eq!(
            show["todos"][0]["content"],
            format!("{text}\n\tsecond half of the todo")
        );
        let lines = env.json(&["session", "messages", id, "--json"]);
        let names: Vec<&str> = lines
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["tool_calls"].as_array())
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert!(names.contains(&format!("tool{text}").as_str()), "{lines}");
        let watched = env.ok(&["watch", id, "--json", "--from-start", "--exit-on-idle"]);
        let started: Vec<Value> = watched
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("an event"))
            .filter(|e| e["type"] == "agent.tool.started")
            .collect();
        assert_eq!(started[0]["payload"]["tool_name"], format!("tool{text}"));
        cases += 3;

        // The answer as `send --wait` prints it (multi-line, so its lines are kept)...
        let out = env.run(&["send", id, "again", "--wait", "--timeout", "30s"]);
        assert_eq!(code(&out), 0, "{}", describe(&out));
        assert!(
            stdout(&out).contains("\nline two of the answer"),
            "{}",
            describe(&out)
        );
        cases += assert_output_neutral(&out, "send --wait", kind);
        // ...and `run`, its progress on stderr, then in a terminal (stdout and stderr).
        let agent = format!("hostile{i}");
        let out = env.run(&["run", "--agent", &agent, "hi"]);
        assert_eq!(code(&out), 0, "{}", describe(&out));
        cases += assert_output_neutral(&out, "run", kind);
        if script_available() {
            for args in [
                &["run", "--agent", &agent, "hi"][..],
                &["watch", id, "--from-start", "--exit-on-idle"][..],
            ] {
                let pty = in_pty(&env, args, &[("NO_COLOR", "1")]);
                assert_eq!(pty.code, 0, "{}", pty.raw);
                cases += assert_terminal_neutral(&pty.raw, &args.join(" "), kind);
            }
        }
    }
    report("text_session_views", &[("cases", cases)]);
}

#[test]
fn a_100_kb_title_prints_a_short_row_in_every_view_and_whole_in_json() {
    let env = TestEnv::new();
    let title = format!("{}\u{202e}", "t".repeat(100_000));
    let id = env
        .ok(&["session", "new", "--agent", "echo", "--title", &title])
        .trim()
        .to_owned();
    env.send(&id, "hi");
    env.worker_once();
    let mut cases = 0;
    let views: &[&[&str]] = &[
        &["session", "list"],
        &["session", "show", &id],
        &["watch", &id, "--plain", "--from-start", "--exit-on-idle"],
    ];
    for args in views {
        let out = env.run(args);
        assert_eq!(code(&out), 0, "{}", describe(&out));
        cases += assert_output_neutral(&out, &args.join(" "), "100 KB title");
        let text = stdout(&out);
        let longest = text.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        assert!(
            longest < 400,
            "{args:?} printed a row of {longest} characters"
        );
        assert!(
            text.contains("…(99803 more bytes)"),
            "{args:?} does not say how much of the title it left out:\n{text}"
        );
    }
    if script_available() {
        let args = ["watch", &id, "--from-start", "--exit-on-idle"];
        let pty = in_pty(&env, &args, &[("NO_COLOR", "1")]);
        assert!(pty.raw.contains("…(99803 more bytes)"), "{}", pty.raw);
        assert!(pty.raw.lines().all(|l| l.chars().count() < 400));
        cases += assert_terminal_neutral(&pty.raw, "watch (terminal)", "100 KB title");
    }
    let show = env.json(&["session", "show", &id, "--json"]);
    assert_eq!(show["session"]["title"], title);
    let list = env.json(&["session", "list", "--json"]);
    assert_eq!(list[0]["title"], title);
    report("text_long_title", &[("cases", cases + 2)]);
}

/// A scripted agent whose model call fails with `status` and `message`.
fn failing_agent(name: &str, status: u16, message: &str) -> String {
    format!(
        "name = \"{name}\"\n[model]\nprovider = \"scripted\"\n[[model.script]]\nerror = {{ status = {status}, message = {} }}\n",
        toml_str(message)
    )
}

/// The one line of an error on stderr: `agentq: …`, short, nothing after it.
fn assert_one_error_line(out: &Output, what: &str) {
    let err = stderr(out);
    let line = err
        .lines()
        .rfind(|l| l.starts_with("agentq: "))
        .unwrap_or_else(|| panic!("{what}: no error line:\n{}", describe(out)));
    assert!(
        line.chars().count() <= 1200,
        "{what}: an error line of {} characters",
        line.chars().count()
    );
    assert!(
        err.ends_with(&format!("{line}\n")),
        "{what}: the error line is not last:\n{err}"
    );
}

#[test]
fn provider_error_text_is_one_neutral_capped_line_wherever_it_is_shown() {
    let env = TestEnv::new();
    let mut cases = 0;
    for (i, (kind, text)) in HOSTILE.iter().enumerate() {
        // A server's error body: hostile, several lines, 100 KB.
        let body = format!("{text}\nsecond line of the body\n{}", "b".repeat(100_000));
        for status in [400, 503] {
            let agent = format!("failing{i}x{status}");
            env.write_agent(&agent, &failing_agent(&agent, status, &body));
            let out = env.run(&["run", "--agent", &agent, "hi"]);
            assert_ne!(code(&out), 0, "{}", describe(&out));
            cases += assert_output_neutral(&out, "run", kind);
            assert_one_error_line(&out, "run");
            // `--json` gives the provider's text back as it was sent.
            let out = env.run(&["run", "--agent", &agent, "hi", "--json"]);
            let result: Value = serde_json::from_slice(&out.stdout).expect("JSON");
            let error = result["error"].as_str().unwrap_or_default();
            assert!(error.contains(&format!("{text}\nsecond line")), "{result}");
            cases += 1;

            let id = env.new_session(&agent);
            env.send(&id, "hi");
            let worker = env.spawn_worker(&["--session", &id]);
            let out = env.run(&["send", &id, "again", "--wait", "--timeout", "30s"]);
            // The answer is out before the entry leaves the inbox: stop the worker only
            // once it has, or `watch --exit-on-idle` below would wait for it forever.
            wait_until("the inbox to drain", LONG, || env.pending(&id) == 0);
            drop(worker);
            cases += assert_output_neutral(&out, "send --wait", kind);
            assert_one_error_line(&out, "send --wait");
            for args in [
                &["session", "show", &id][..],
                &["status"][..],
                &["watch", &id, "--plain", "--from-start", "--exit-on-idle"][..],
            ] {
                let out = env.run(args);
                cases += assert_output_neutral(&out, &args.join(" "), kind);
                let longest = stdout(&out).lines().map(|l| l.chars().count()).max();
                assert!(longest < Some(1200), "{args:?}: {longest:?}");
            }
        }
    }

    // The same through a real provider: an OpenAI-compatible server that fails twice
    // with a hostile body (once retried, once final).
    for (kind, text) in HOSTILE {
        let server = FakeServer::start(vec![
            Reply::error(503, &format!("busy {text}\nline two")).header("Retry-After", "0"),
            Reply::error(400, &format!("bad {text}\nline two")),
        ]);
        env.write_agent(
            "remote",
            &format!(
                "name = \"remote\"\n[model]\nprovider = \"openai\"\nname = \"m\"\nbase_url = \"{}\"\nmax_attempts = 2\n",
                server.openai_url()
            ),
        );
        let mut cmd = env.cmd();
        for name in OUTSIDE_VARS {
            cmd.env_remove(name);
        }
        let out = cmd
            .env("OPENAI_API_KEY", "sk-test")
            .args(["run", "--agent", "remote", "hi"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(code(&out), 1, "{}", describe(&out));
        assert!(stderr(&out).contains("retry"), "{}", describe(&out));
        cases += assert_output_neutral(&out, "run (openai)", kind);
        assert_one_error_line(&out, "run (openai)");
    }
    report("text_provider_errors", &[("cases", cases)]);
}

#[test]
fn agents_validate_list_and_show_neutralise_key_names_and_file_names_from_definitions() {
    // CI validates the definitions of an untrusted pull request: every name in them,
    // and the file names, are outside text.
    let env = TestEnv::new();
    let mut cases = 0;
    for (i, (kind, text)) in HOSTILE.iter().enumerate() {
        let name = format!("bad{i}");
        let key = toml_str(&format!("key{text}\nforged"));
        env.write_agent(
            &name,
            &format!(
                "name = \"{name}\"\n{key} = 1\n[model]\nprovider = \"scripted\"\n{key} = 2\n[limits]\nmax_steps = {}\n",
                toml_str(text)
            ),
        );
        // A file whose name is hostile too (its stem is not its name: one more problem).
        let file = env.home().join("agents").join(format!("file{text}.toml"));
        let file_ok = std::fs::write(&file, "name = \"x\"\n").is_ok();

        let out = env.run(&["agents", "validate"]);
        assert_eq!(code(&out), 2, "{}", describe(&out));
        cases += assert_output_neutral(&out, "agents validate", kind);
        let listing = stdout(&out);
        let problems = listing
            .lines()
            .filter(|l| l.contains(&format!("{name}.toml")))
            .count();
        assert!(problems >= 2, "both unknown keys are reported:\n{listing}");
        assert!(
            listing
                .lines()
                .all(|l| l.starts_with("ok ") || l.starts_with("invalid ")),
            "a key name left its row:\n{listing}"
        );
        for args in [&["agents", "list"][..], &["agents", "show", &name][..]] {
            cases += assert_output_neutral(&env.run(args), &args.join(" "), kind);
        }
        let json = env.run(&["agents", "validate", "--json"]);
        let json: Value = serde_json::from_slice(&json.stdout).expect("JSON");
        assert!(
            json.to_string()
                .contains(&serde_json::to_string(&format!("key{text}\nforged")).unwrap()[1..]),
            "the key is not given back exactly: {json}"
        );
        cases += 1;
        std::fs::remove_file(env.home().join("agents").join(format!("{name}.toml"))).unwrap();
        if file_ok {
            std::fs::remove_file(&file).unwrap();
        }
    }
    report("text_definitions", &[("cases", cases)]);
}

#[test]
fn watch_json_passes_every_event_exactly_and_no_line_that_is_not_one() {
    let env = TestEnv::new();
    let mut cases = 0;
    for (kind, text) in HOSTILE {
        let id = env.new_session("echo");
        env.send(&id, &format!("hello {text}"));
        env.worker_once();
        let log = env.session_dir(&id).join("events.ndjson");
        let events = std::fs::read_to_string(&log).unwrap();
        let event = |seq: u64, kind: &str, payload: Value| {
            json!({"v": 1, "seq": seq, "type": kind, "session_id": id,
                   "execution_id": null, "timestamp": "2026-11-21T06:00:00.123Z",
                   "payload": payload})
            .to_string()
        };
        let next = events.lines().count() as u64 + 1;
        let garbage = [
            format!("not an event {text}"),
            "{\"v\":1}".to_owned(),
            format!("[\"{}\"]", "x".repeat(10)),
            // A type this version knows, with a payload that is not its payload.
            event(next, "agent.tool.started", json!({"tool_name": 7})),
        ];
        // A type from a newer version is an event: `--json` passes it on.
        let future = event(next + 1, "agent.future", json!({"note": text}));
        let mut appended = events.clone();
        for line in garbage.iter().chain([&future]) {
            appended.push_str(line);
            appended.push('\n');
        }
        std::fs::write(&log, &appended).unwrap();

        let out = env.run(&["watch", &id, "--json", "--from-start", "--exit-on-idle"]);
        assert_eq!(code(&out), 0, "{}", describe(&out));
        let expected: Vec<&str> = events.lines().chain([future.as_str()]).collect();
        let printed = stdout(&out);
        assert_eq!(
            printed.lines().collect::<Vec<_>>(),
            expected,
            "{}",
            describe(&out)
        );
        let skipped = stderr(&out);
        assert_eq!(
            skipped.matches("not an event").count(),
            garbage.len(),
            "each skipped line is reported:\n{skipped}"
        );
        cases += assert_neutral(&skipped, "watch --json (stderr)", kind);

        let out = env.run(&["watch", &id, "--plain", "--from-start", "--exit-on-idle"]);
        assert_eq!(code(&out), 0, "{}", describe(&out));
        assert!(!stdout(&out).contains("not an event"), "{}", describe(&out));
        cases += assert_output_neutral(&out, "watch --plain", kind) + garbage.len() as u64;
    }
    report("text_watch_json", &[("cases", cases)]);
}

#[test]
fn worker_log_lines_quote_outside_text_neutralised_one_line_each() {
    let env = TestEnv::new();
    let mut cases = 0;
    for (kind, text) in HOSTILE {
        // A provider that fails once with a hostile body (logged as a retry), then
        // answers.
        let busy =
            Reply::error(503, &format!("busy {text}\nforged log line")).header("Retry-After", "0");
        let answer = OpenAiSse::answer(&[text, "\nsecond line"], 5, 5).reply(Duration::ZERO);
        // One message on stderr, one into the log file: each is retried once.
        let server = FakeServer::start(vec![busy.clone(), answer.clone(), busy, answer]);
        env.write_agent(
            "remote",
            &format!(
                "name = \"remote\"\ndescription = {}\n[model]\nprovider = \"openai\"\nname = \"m\"\nbase_url = \"{}\"\n",
                toml_str(text),
                server.openai_url()
            ),
        );
        let id = env.new_session("remote");
        env.send(&id, text);
        let log = env.home().join("worker.log");
        let _ = std::fs::remove_file(&log);
        for to_file in [false, true] {
            if to_file {
                // Once more, into the log file.
                env.send(&id, text);
            }
            let mut cmd = env.cmd();
            for name in OUTSIDE_VARS {
                cmd.env_remove(name);
            }
            cmd.env("OPENAI_API_KEY", "sk-test")
                .args(["worker", "--once", "-v"])
                .stdin(Stdio::null());
            if to_file {
                cmd.arg("--log-file").arg(&log);
            }
            let out = cmd.output().unwrap();
            assert_eq!(code(&out), 0, "{}", describe(&out));
            let lines = if to_file {
                std::fs::read_to_string(&log).unwrap()
            } else {
                stderr(&out)
            };
            assert!(lines.contains("retrying the model call"), "{lines}");
            cases += assert_neutral(&lines, "the worker log", kind);
            assert!(
                lines.lines().all(|l| l.starts_with("20")),
                "a log line that is not a record (forged by a newline):\n{lines}"
            );
        }
    }
    report("text_worker_log", &[("cases", cases)]);
}

#[test]
fn every_error_line_is_one_neutral_line_whatever_it_quotes() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let mut cases = 0;
    for (kind, text) in HOSTILE {
        let line = format!("{text}\nforged error line");
        let missing = env.home().join(format!("missing{text}"));
        let missing = missing.to_str().unwrap();
        let bad_log = env.home().join(format!("no{text}/dir/worker.log"));
        let bad_log = bad_log.to_str().unwrap();
        let commands: &[(&[&str], i32)] = &[
            (&["session", "show", &line], 2),
            (&["session", "messages", &line], 2),
            (&["send", &line, "hi"], 2),
            (&["watch", &line], 2),
            (&["agents", "show", &line], 2),
            (&["session", "new", "--agent", &line], 2),
            (&["send", &id, "--file", missing], 2),
            (&["session", "list", "--status", &line], 2),
            (&["run", "--agent", &line, "hi"], 2),
            (&["worker", "--once", "--log-file", bad_log], 2),
        ];
        for (args, expected) in commands {
            let out = env.run(args);
            assert_eq!(code(&out), *expected, "{args:?}: {}", describe(&out));
            cases += assert_output_neutral(&out, &args.join(" "), kind);
            let err = stderr(&out);
            assert!(
                err.starts_with("agentq: ") && err.lines().count() == 1,
                "{args:?}: not one error line:\n{err}"
            );
        }
        // `agents validate` reports a file it cannot read on its row of stdout.
        let out = env.run(&["agents", "validate", missing]);
        assert_eq!(code(&out), 2, "{}", describe(&out));
        assert_eq!(stdout(&out).lines().count(), 1, "{}", describe(&out));
        cases += assert_output_neutral(&out, "agents validate", kind);
        // A home that is not one, named by outside text.
        let out = env
            .cmd()
            .args(["--home", missing, "session", "list"])
            .output()
            .unwrap();
        cases += assert_output_neutral(&out, "--home", kind);
    }
    report("text_error_lines", &[("cases", cases)]);
}
