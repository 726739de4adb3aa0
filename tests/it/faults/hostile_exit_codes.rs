//! Class 4: exit codes tell cron and CI the truth (`worker --once`, definitions that cannot run, closed or full output, a home that is not one).

use assert_cmd::cargo::CommandCargoExt;

use super::*;

/// A scripted agent whose one execution ends with `outcome`.
fn ending(name: &str, outcome: &str) -> String {
    let head = format!("name = \"{name}\"\n[model]\nprovider = \"scripted\"\n");
    match outcome {
        "completed" => format!("{head}[[model.script]]\ntext = \"done\"\n"),
        // A tool call, then the step limit.
        "stopped" => format!(
            "{head}[[model.script]]\ntool_calls = [{{ name = \"list_dir\", arguments = {{ path = \".\" }} }}]\n[[model.script]]\ntext = \"never\"\n[limits]\nmax_steps = 1\n[tools]\nbuiltin = [\"list_dir\"]\n"
        ),
        "unavailable" => format!("{head}[[model.script]]\nerror = {{ status = 503 }}\n"),
        "failed" => format!("{head}[[model.script]]\nerror = {{ status = 400 }}\n"),
        // Streams slowly, so it can be cancelled while it runs.
        "cancelled" => format!(
            "{head}[[model.script]]\ntext = \"{}\"\ndelay_ms = 150\n",
            "word ".repeat(40).trim_end()
        ),
        // Valid when its session is made; deleted before the worker runs.
        "invalid" => format!("{head}[[model.script]]\ntext = \"done\"\n"),
        other => panic!("no outcome {other}"),
    }
}

/// The exit code of `worker --once` for executions ending each way, and the
/// `exit_code` each execution records.
const OUTCOMES: &[(&str, i32)] = &[
    ("completed", 0),
    ("cancelled", 130),
    ("stopped", 3),
    ("unavailable", 75),
    ("failed", 1),
    ("invalid", 2),
];

/// Runs one `worker --once` over one session per outcome and returns its exit code.
fn worker_once_over(outcomes: &[&str]) -> i32 {
    let env = TestEnv::new();
    let mut sessions = Vec::new();
    for (i, outcome) in outcomes.iter().enumerate() {
        let name = format!("{outcome}{i}");
        env.write_agent(&name, &ending(&name, outcome));
        let id = env.new_session(&name);
        env.send(&id, "go");
        sessions.push((id, name, *outcome));
    }
    for (_, name, outcome) in &sessions {
        if *outcome == "invalid" {
            std::fs::remove_file(env.home().join(format!("agents/{name}.toml"))).unwrap();
        }
    }
    let worker = env.spawn(&["worker", "--once", "--concurrency", "8"]);
    for (id, _, outcome) in &sessions {
        if *outcome == "cancelled" {
            wait_until("the slow execution streaming", LONG, || {
                env.events_of(id, "agent.stream.chunk").len() >= 2
            });
            env.ok(&["cancel", id]);
        }
    }
    let out = worker.wait(LONG);
    assert!(!stderr(&out).contains("panicked"), "{}", describe(&out));
    for (id, _, outcome) in &sessions {
        let expected = OUTCOMES.iter().find(|(o, _)| o == outcome).unwrap().1;
        let finished = env.finished(id);
        assert_eq!(finished.len(), 1, "{outcome}: {}", describe(&out));
        assert_eq!(
            finished[0]["exit_code"], expected,
            "{outcome}: {}",
            finished[0]
        );
    }
    code(&out)
}

#[test]
fn worker_once_exits_with_the_worst_outcome_of_what_it_ran() {
    let mut rows = 0;
    // Each outcome alone: the execution's own exit code.
    for (outcome, expected) in OUTCOMES {
        assert_eq!(worker_once_over(&[outcome]), *expected, "{outcome} alone");
        rows += 1;
    }
    // Beside each milder outcome, a worse one decides: a failure is never hidden.
    for (i, (worse, expected)) in OUTCOMES.iter().enumerate() {
        for (milder, _) in &OUTCOMES[..i] {
            assert_eq!(
                worker_once_over(&[milder, worse]),
                *expected,
                "{milder} and {worse}"
            );
            rows += 1;
        }
    }
    assert_eq!(
        worker_once_over(&["completed", "failed", "completed"]),
        1,
        "one failure among successes"
    );
    rows += 1;
    report("exit_codes_worker_once", &[("cases", rows)]);
}

/// Definitions the schema accepts but no run could use; each must be refused by
/// `agents validate`, `session new` and `run` (exit 2), and fail a waiting message's
/// execution with exit 2, saying why. (key, the line, what the refusal says)
const CANNOT_RUN: &[(&str, &str, &str)] = &[
    ("model.base_url", "base_url = \"not a url\"", "not a URL"),
    (
        "model.base_url",
        "base_url = \"file:///etc/passwd\"",
        "http:// or https://",
    ),
    (
        "model.base_url",
        "base_url = \"ftp://127.0.0.1/v1\"",
        "http:// or https://",
    ),
    ("model.base_url", "base_url = \"http://\"", "host"),
    ("model.base_url", "base_url = \"http://:8080/v1\"", "host"),
    (
        "model.api_key_env",
        "api_key_env = \"sk-live-1234567890\"",
        "environment variable name",
    ),
    (
        "model.api_key_env",
        "api_key_env = \"MY KEY\"",
        "environment variable name",
    ),
    (
        "model.api_key_env",
        "api_key_env = \"\"",
        "environment variable name",
    ),
    ("model.name", "name = \"\"", "not a model name"),
    ("model.name", "name = \"  \"", "not a model name"),
    ("model.temperature", "temperature = 1.5", "anthropic"),
    (
        "model.provider",
        "provider = \"nobody\"",
        "unknown provider",
    ),
    (
        "model.tool_choice",
        "tool_choice = \"required\"",
        "needs a tool",
    ),
    (
        "model.tool_choice",
        "tool_choice = \"grep\"",
        "a tool this agent has",
    ),
];

/// An openai-protocol agent `name` on a local port nobody listens on, with `line` in
/// its `[model]` (a `provider` line replaces the default one).
fn remote_agent(name: &str, line: &str) -> String {
    let provider = if line.starts_with("provider") {
        line.to_owned()
    } else if line.starts_with("temperature") {
        "provider = \"anthropic\"".to_owned()
    } else {
        "provider = \"openai\"".to_owned()
    };
    let model_line = if line.starts_with("provider") {
        ""
    } else {
        line
    };
    let name_line = if line.starts_with("name") {
        ""
    } else {
        "name = \"m\""
    };
    let url = if line.starts_with("base_url") {
        ""
    } else {
        "base_url = \"http://127.0.0.1:9/v1\""
    };
    format!("name = \"{name}\"\n[model]\n{provider}\n{name_line}\n{url}\n{model_line}\n")
}

#[test]
fn a_definition_that_cannot_run_is_refused_by_validate_session_new_run_and_the_worker() {
    let env = TestEnv::new();
    let mut checked = 0u64;
    let mut waiting = Vec::new();
    for (i, (key, line, says)) in CANNOT_RUN.iter().enumerate() {
        let name = format!("r{i}");
        // Made with a scripted definition, broken while a message waits.
        env.write_agent(&name, &ending(&name, "completed"));
        let id = env.new_session(&name);
        env.send(&id, "go");
        env.write_agent(&name, &remote_agent(&name, line));
        waiting.push((id, *key, *line, *says));

        let what = format!("{key}: {line}");
        let out = env.run(&[
            "agents",
            "validate",
            &format!("agents/{name}.toml"),
            "--json",
        ]);
        assert_eq!(code(&out), 2, "validate passes {what}:\n{}", describe(&out));
        let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
        let problems = listed[0]["problems"].as_array().unwrap();
        assert!(
            problems
                .iter()
                .any(|p| p["key"] == *key && p["message"].as_str().unwrap().contains(says)),
            "{what}: {problems:?}"
        );
        let out = env.run(&["session", "new", "--agent", &name]);
        assert_refused(&out, 2, &[&format!("{name}.toml"), key, says], &what);
        let out = env.run(&["run", "--agent", &name, "hi"]);
        assert_refused(&out, 2, &[&format!("{name}.toml"), key, says], &what);
        checked += 1;
    }
    // The control: the same definition with nothing wrong passes validate.
    env.write_agent("fine", &remote_agent("fine", ""));
    env.ok(&["agents", "validate", "agents/fine.toml"]);

    // Deleted while a message waits, too.
    env.write_agent("gone", &ending("gone", "completed"));
    let gone = env.new_session("gone");
    env.send(&gone, "go");
    std::fs::remove_file(env.home().join("agents/gone.toml")).unwrap();
    waiting.push((gone, "gone.toml", "", "does not exist"));

    let out = env.run(&["worker", "--once", "--concurrency", "8"]);
    assert_eq!(code(&out), 2, "{}", describe(&out));
    for (id, key, line, says) in &waiting {
        let done = &env.finished(id)[0];
        assert_eq!(done["status"], "failed", "{key}: {line}: {done}");
        assert_eq!(done["stop_reason"], "invalid_definition", "{done}");
        assert_eq!(done["exit_code"], 2, "{key}: {line}: {done}");
        let error = done["error"].as_str().unwrap();
        assert!(error.contains(key) && error.contains(says), "{error}");
        checked += 1;
    }
    report("exit_codes_cannot_run", &[("cases", checked)]);
}

/// `agentq.toml` files every command that reads them must refuse (exit 2, naming the
/// file); a worker refuses to start instead of failing every message it claims.
const BAD_CONFIGS: &[(&str, &str)] = &[
    ("[inbox\n", "agentq.toml"),
    (
        "[providers.local]\nkind = \"openai\"\nbase_url = \"not a url\"\n",
        "providers.local.base_url",
    ),
    (
        "[providers.local]\nkind = \"openai\"\nbase_url = \"file:///etc/passwd\"\n",
        "http:// or https://",
    ),
    (
        "[providers.local]\nkind = \"openai\"\napi_key_env = \"sk live\"\n",
        "providers.local.api_key_env",
    ),
    (
        "[providers.openai]\nkind = \"anthropic\"\n",
        "built-in provider",
    ),
    (
        "[providers.\"no way\"]\nkind = \"openai\"\n",
        "providers.no way",
    ),
    (
        "[providers.local]\nkind = \"openai\"\nheaders = { \"X Team\" = \"a\" }\n",
        "providers.local.headers.X Team",
    ),
    (
        "[providers.local]\nkind = \"openai\"\nheaders = { X-Team = \"a\\nb\" }\n",
        "not an HTTP header",
    ),
];

#[test]
fn a_worker_refuses_to_start_on_an_invalid_agentq_toml_and_loses_nothing() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    env.send(&id, "waiting");
    let mut checked = 0u64;
    for (config, says) in BAD_CONFIGS {
        std::fs::write(env.home().join("agentq.toml"), config).unwrap();
        let before = snapshot(env.home());
        for args in [
            &["worker", "--once"][..],
            &["worker"],
            &["agents", "validate"],
        ] {
            let out = env.run(args);
            assert_refused(
                &out,
                2,
                &["agentq.toml", says],
                &format!("{args:?}: {config}"),
            );
            checked += 1;
        }
        assert_unchanged(config, &before, &snapshot(env.home()));
    }
    std::fs::remove_file(env.home().join("agentq.toml")).unwrap();
    env.worker_once();
    assert_eq!(env.responses(&id), vec!["echo: waiting"]);

    // Broken while a worker runs: what it would claim stays queued, the log names the
    // file, and it runs once the file is fixed. (A worker stopped at each case: one
    // that failed on a session retries it only at its next full scan.)
    for (i, (config, says)) in BAD_CONFIGS.iter().enumerate() {
        // What the last case left queued runs now, with the file fixed.
        env.worker_once();
        let ran = env.finished(&id).len();
        let log = env.home().join(format!("worker-{i}.log"));
        let mut worker = Logged::spawn(&env, &["worker"], log.clone());
        // Queued while paused, so the worker waits for the file to break first.
        env.ok(&["session", "pause", &id]);
        env.send(&id, "while broken");
        std::fs::write(env.home().join("agentq.toml"), config).unwrap();
        env.ok(&["session", "resume", &id]);
        wait_until("the worker to name agentq.toml", LONG, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("agentq.toml") && text.contains(says)
        });
        assert_eq!(env.finished(&id).len(), ran, "nothing ran: {config}");
        signal(worker.child.id(), libc::SIGTERM);
        let (_, text) = worker.wait(LONG);
        assert!(!text.contains("panicked"), "{text}");
        std::fs::remove_file(env.home().join("agentq.toml")).unwrap();
        checked += 1;
    }
    env.worker_once();
    let failed: Vec<Value> = env
        .finished(&id)
        .into_iter()
        .filter(|f| f["status"] != "completed")
        .collect();
    assert!(
        failed.is_empty(),
        "no message failed on the broken file: {failed:?}"
    );
    let answers = env.responses(&id);
    assert_eq!(
        answers.len(),
        1 + BAD_CONFIGS.len(),
        "every queued message ran: {answers:?}"
    );
    report("exit_codes_bad_config_at_start", &[("cases", checked)]);
}

/// Every command, with the arguments it needs in `env`: a session `id` with a failed
/// execution (for `retry`), and `spare` sessions for the commands that use one up.
fn every_command(id: &str, spare: &str) -> Vec<Vec<String>> {
    let lines: Vec<String> = vec![
        "agents list".into(),
        "agents list --json".into(),
        "agents show echo".into(),
        "agents show echo --json".into(),
        "agents validate".into(),
        "agents validate --json".into(),
        "session new --agent echo".into(),
        "session new --agent echo --json".into(),
        "session list".into(),
        "session list --json".into(),
        format!("session show {id}"),
        format!("session show {id} --json"),
        format!("session messages {id}"),
        format!("session messages {id} --json"),
        format!("session pause {spare}"),
        format!("session resume {spare}"),
        format!("send {id} more"),
        format!("send {id} more --json"),
        format!("cancel {id}"),
        format!("cancel {id} --json"),
        format!("watch {id} --from-start --plain --exit-on-idle"),
        format!("watch {id} --from-start --json --exit-on-idle"),
        "status".into(),
        "status --json".into(),
        "schema events".into(),
        "completions bash".into(),
        "completions zsh".into(),
        "completions fish".into(),
        "completions elvish".into(),
        "completions powershell".into(),
        "worker --once".into(),
        "init".into(),
        "--help".into(),
        "--version".into(),
        "session --help".into(),
    ];
    lines
        .iter()
        .map(|l| l.split(' ').map(str::to_owned).collect())
        .collect()
}

/// Standard output that is a pipe whose reader has gone.
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    writer.into()
}

fn full_disk() -> Stdio {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full")
        .into()
}

#[test]
fn no_command_panics_on_a_closed_or_full_standard_output() {
    let env = TestEnv::new();
    env.write_agent("failing", &ending("failing", "failed"));
    let failed = env.new_session("failing");
    env.send(&failed, "go");
    let id = env.new_session("echo");
    env.send(&id, "hello");
    let spare = env.new_session("echo");
    let _ = env.run(&["worker", "--once"]);
    // For `send --wait` and `watch --exit-on-idle`, which wait for executions.
    let _worker = env.spawn_worker(&[]);
    let mut checked = 0u64;
    for (output, name) in [
        (closed_pipe as fn() -> Stdio, "closed"),
        (full_disk, "full"),
    ] {
        let mut commands = every_command(&id, &spare);
        // Those that use up what they act on get one of their own each time.
        let (rm, close) = (env.new_session("echo"), env.new_session("echo"));
        commands.extend([
            vec!["session".into(), "rm".into(), rm],
            vec!["session".into(), "close".into(), close],
            vec!["run".into(), "--agent".into(), "echo".into(), "hi".into()],
            vec![
                "run".into(),
                "--agent".into(),
                "echo".into(),
                "hi".into(),
                "--json".into(),
            ],
            ["send", &id, "x", "--wait", "--timeout", "30s"]
                .map(String::from)
                .to_vec(),
        ]);
        wait_until("the failed execution settled", LONG, || {
            env.json(&["session", "show", &failed, "--json"])["pending"] == 0
        });
        commands.push(vec!["retry".into(), failed.clone()]);
        for args in &commands {
            let out = env
                .cmd()
                .args(args)
                .stdin(Stdio::null())
                .stdout(output())
                .stderr(Stdio::piped())
                .output()
                .expect("run agentq");
            let what = format!("agentq {} > {name} output", args.join(" "));
            let err = stderr(&out);
            assert!(!err.contains("panicked"), "{what}: {err}");
            if name == "closed" {
                // Like `head` closing the pipe: nothing more to do, nothing to say.
                assert_eq!(code(&out), 0, "{what}: {err}");
                assert!(!err.contains("standard output"), "{what}: {err}");
            } else if args[0] == "worker" {
                // Prints nothing on standard output.
                assert_eq!(code(&out), 0, "{what}: {err}");
            } else {
                assert_eq!(code(&out), 1, "{what}: {err}");
                // `run` renders its execution on stderr first; the error is the last line.
                let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("agentq: ")).collect();
                assert!(
                    errors.len() == 1
                        && err.lines().last() == Some(errors[0])
                        && errors[0].contains("writing to standard output")
                        && errors[0].contains("No space left"),
                    "{what}: one line naming standard output: {err}"
                );
            }
            checked += 1;
        }
    }
    // Standard error closed or full: its lines are lost, never the exit code. Every
    // command, and the refusals, whose one line goes there.
    let refusals: Vec<Vec<String>> = [
        "session show nope",
        "agents show nobody",
        "send nope hi",
        "--bogus",
        "worker --once --max-duration 0s",
    ]
    .iter()
    .map(|l| l.split(' ').map(str::to_owned).collect())
    .collect();
    for (output, name) in [
        (closed_pipe as fn() -> Stdio, "closed"),
        (full_disk, "full"),
    ] {
        for args in every_command(&id, &spare).iter().chain(&refusals) {
            let run = |stderr: Stdio| {
                env.cmd()
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(stderr)
                    .output()
                    .expect("run agentq")
            };
            // The same command with stderr discarded says what the code should be
            // (`watch --exit-on-idle` gives the last execution's).
            let expected = code(&run(Stdio::null()));
            let out = run(output());
            let what = format!("agentq {} 2> {name} output", args.join(" "));
            assert_eq!(code(&out), expected, "{what}: {:?}", out.status);
            if refusals.contains(args) {
                assert_eq!(expected, 2, "{what}");
            }
            checked += 1;
        }
    }
    report("exit_codes_closed_output", &[("cases", checked)]);
}

#[test]
fn a_home_that_does_not_exist_or_is_not_one_is_refused_by_every_command() {
    let base = TestEnv::new();
    let id = base.new_session("echo");
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo");
    let file = dir.path().join("hostname");
    std::fs::write(&file, "box\n").unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let homes = [
        (&typo, "does not exist"),
        (&file, "not a directory"),
        (&empty, "not an agentq home"),
    ];
    let mut checked = 0u64;
    let commands: Vec<Vec<String>> = every_command(&id, &id)
        .into_iter()
        .chain([
            vec!["retry".into(), id.clone()],
            vec!["session".into(), "rm".into(), id.clone()],
            vec!["session".into(), "close".into(), id.clone()],
            vec!["run".into(), "--agent".into(), "echo".into(), "hi".into()],
            vec!["worker".into()],
        ])
        // These need no home; `init` makes one.
        .filter(|args| {
            !matches!(args[0].as_str(), "schema" | "completions" | "init")
                && !args
                    .iter()
                    .any(|a| a.starts_with("--help") || a == "--version")
        })
        .collect();
    // A database named for the sessions changes nothing: the home is refused before
    // any store is opened, even one that cannot be reached (port 9: nothing listens).
    let stores = [None, Some("postgres://agentq@127.0.0.1:9/agentq")];
    for (home, says) in homes {
        let before = snapshot(dir.path());
        for args in &commands {
            for (by_env, store) in [(false, stores[0]), (true, stores[0]), (false, stores[1])] {
                let mut cmd = std::process::Command::cargo_bin("agentq").unwrap();
                match store {
                    Some(url) => cmd.env("AGENTQ_STORE", url),
                    None => cmd.env_remove("AGENTQ_STORE"),
                };
                if by_env {
                    cmd.env("AGENTQ_HOME", home);
                } else {
                    cmd.arg("--home").arg(home).env_remove("AGENTQ_HOME");
                }
                let out = cmd
                    .args(args)
                    .env("NO_COLOR", "1")
                    .current_dir(dir.path())
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                let what = format!(
                    "agentq {} in {} (store {store:?})",
                    args.join(" "),
                    home.display()
                );
                assert_refused(&out, 2, &[&home.display().to_string(), says], &what);
                checked += 1;
            }
        }
        assert_unchanged("commands refused a home", &before, &snapshot(dir.path()));
    }
    // `init` makes a home where there was none, and then it is one.
    let out = std::process::Command::cargo_bin("agentq")
        .unwrap()
        .arg("--home")
        .arg(&empty)
        .args(["init"])
        .env_remove("AGENTQ_HOME")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let out = std::process::Command::cargo_bin("agentq")
        .unwrap()
        .arg("--home")
        .arg(&empty)
        .args(["status", "--json"])
        .env_remove("AGENTQ_HOME")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", describe(&out));
    report("exit_codes_not_a_home", &[("cases", checked)]);
}
