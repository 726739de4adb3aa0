//! Class 6: values that cannot work are refused with the key, the value and the valid range.
//!
//! Every numeric, duration and enum key of an agent definition and of `agentq.toml`, and
//! every flag of the same meaning, with every kind of value that cannot work (zero,
//! negative, NaN, infinite, out of range, listed twice). Each is refused at every place
//! that reads it: `agents validate`, `session new` (in the file and through `--set`),
//! `run`, and the worker before an execution, which fails with exit 2 saying so.

use super::*;

/// Where in a definition a case's line goes.
#[derive(Clone, Copy)]
enum Place {
    Model,
    Script,
    Limits,
    Tools,
    Command,
}

/// A scripted definition of agent `name` with `line` in its `place`.
fn definition(name: &str, place: Place, line: &str) -> String {
    let at = |p: Place| {
        if std::mem::discriminant(&p) == std::mem::discriminant(&place) {
            line
        } else {
            ""
        }
    };
    format!(
        "name = \"{name}\"\n[model]\nprovider = \"scripted\"\n{}\n[[model.script]]\ntext = \"fine\"\n{}\n[limits]\n{}\n[tools]\n{}\n[[tools.command]]\nname = \"check\"\nargv = [\"true\"]\n{}\n",
        at(Place::Model),
        at(Place::Script),
        at(Place::Limits),
        at(Place::Tools),
        at(Place::Command),
    )
}

/// Every key of an agent definition with a range, with the values that cannot work:
/// (where, key as reported, value as written, a word of the range).
const DEFINITION_CASES: &[(Place, &str, &str, &str)] = &[
    (Place::Model, "model.temperature", "-5.0", "at least 0"),
    (Place::Model, "model.temperature", "2.5", "at most 2"),
    (Place::Model, "model.temperature", "nan", "at least 0"),
    (Place::Model, "model.temperature", "inf", "at least 0"),
    (Place::Model, "model.max_output_tokens", "0", "1 or more"),
    (Place::Model, "model.max_output_tokens", "-1", "1 or more"),
    (
        Place::Model,
        "model.max_output_tokens",
        "5000000000",
        "from 1 to",
    ),
    (Place::Model, "model.max_attempts", "0", "1 or more"),
    (
        Place::Model,
        "model.idle_timeout",
        "\"0s\"",
        "longer than 0",
    ),
    (
        Place::Model,
        "model.idle_timeout",
        "\"0ms\"",
        "longer than 0",
    ),
    (Place::Model, "model.idle_timeout", "\"9000h\"", "at most"),
    (Place::Model, "model.context_window", "0", "1 or more"),
    (Place::Model, "model.compact_threshold", "5.0", "at most 1"),
    (
        Place::Model,
        "model.compact_threshold",
        "0.0",
        "more than 0",
    ),
    (
        Place::Model,
        "model.compact_threshold",
        "-0.5",
        "more than 0",
    ),
    (
        Place::Model,
        "model.compact_threshold",
        "nan",
        "more than 0",
    ),
    (Place::Script, "model.script[0].delay_ms", "-1", "0 or more"),
    (
        Place::Script,
        "model.script[0].error.status",
        "0",
        "from 100 to 599",
    ),
    (
        Place::Script,
        "model.script[0].error.status",
        "1000",
        "from 100 to 599",
    ),
    (
        Place::Script,
        "model.script[0].usage.input",
        "-3",
        "0 or more",
    ),
    (Place::Limits, "limits.max_steps", "0", "1 or more"),
    (Place::Limits, "limits.max_steps", "-2", "1 or more"),
    (Place::Limits, "limits.max_tokens", "0", "1 or more"),
    (Place::Limits, "limits.session_max_tokens", "0", "1 or more"),
    (Place::Limits, "limits.timeout", "\"0s\"", "longer than 0"),
    (Place::Limits, "limits.timeout", "\"100000h\"", "at most"),
    (Place::Limits, "limits.max_cost_usd", "inf", "more than 0"),
    (Place::Limits, "limits.max_cost_usd", "nan", "more than 0"),
    (Place::Limits, "limits.max_cost_usd", "0.0", "more than 0"),
    (Place::Limits, "limits.max_cost_usd", "-1", "more than 0"),
    (
        Place::Limits,
        "limits.max_consecutive_errors",
        "0",
        "2 or more",
    ),
    (
        Place::Limits,
        "limits.max_consecutive_errors",
        "1",
        "2 or more",
    ),
    (
        Place::Tools,
        "tools.builtin[1]",
        "[\"read_file\", \"read_file\"]",
        "listed once",
    ),
    (
        Place::Command,
        "tools.command[0].timeout",
        "\"0s\"",
        "longer than 0",
    ),
];

/// The line of a case: `error.status` and `usage.input` are inline tables.
fn line_of(key: &str, value: &str) -> String {
    let field = key.rsplit('.').next().unwrap();
    if key.contains(".error.") {
        format!("error = {{ {field} = {value} }}")
    } else if key.contains(".usage.") {
        format!("usage = {{ {field} = {value} }}")
    } else if key.starts_with("tools.builtin") {
        format!("builtin = {value}")
    } else {
        format!("{field} = {value}")
    }
}

/// What a refusal must say: `KEY = VALUE: must be RANGE`.
fn says_range(key: &str, value: &str) -> String {
    if key.starts_with("tools.builtin") {
        format!("{key} = \"read_file\": must be")
    } else {
        format!("{key} = {value}: must be")
    }
}

#[test]
fn every_definition_value_that_cannot_work_is_refused_with_key_value_and_range_everywhere() {
    let env = TestEnv::new();
    let mut checked = 0u64;
    // Agents that are valid when their sessions are made, and broken while a message
    // waits: the worker must refuse them too.
    let mut waiting = Vec::new();
    for (i, (place, key, value, range)) in DEFINITION_CASES.iter().enumerate() {
        let name = format!("v{i}");
        env.write_agent(&name, &definition(&name, *place, ""));
        let id = env.new_session(&name);
        env.send(&id, "hello");
        waiting.push((id, name, *place, *key, *value, *range));
    }
    let sessions = env.home().join("sessions");
    let before = snapshot(&sessions);
    for (_, name, place, key, value, range) in &waiting {
        env.write_agent(name, &definition(name, *place, &line_of(key, value)));
        let what = format!("{key} = {value}");
        let says = says_range(key, value);

        let out = env.run(&[
            "agents",
            "validate",
            &format!("agents/{name}.toml"),
            "--json",
        ]);
        assert_eq!(code(&out), 2, "validate, {what}:\n{}", describe(&out));
        let listed: Value = serde_json::from_slice(&out.stdout).expect("validate --json");
        let problems = listed[0]["problems"].as_array().unwrap();
        assert!(
            problems.iter().any(|p| p["key"] == *key
                && p["message"].as_str().unwrap().contains(&says)
                && p["message"].as_str().unwrap().contains(range)),
            "validate, {what}: {problems:?}"
        );
        let out = env.run(&["agents", "validate", &format!("agents/{name}.toml")]);
        assert!(stdout(&out).contains(&says), "{what}:\n{}", describe(&out));

        let out = env.run(&["session", "new", "--agent", name]);
        assert_refused(&out, 2, &[&format!("{name}.toml"), &says, range], &what);
        let out = env.run(&["run", "--agent", name, "hi"]);
        assert_refused(&out, 2, &[&format!("{name}.toml"), &says], &what);
        checked += 1;
    }
    assert_unchanged("refused values", &before, &snapshot(&sessions));

    let out = env.run(&["worker", "--once", "--concurrency", "8"]);
    assert_eq!(code(&out), 2, "worker --once:\n{}", describe(&out));
    for (id, _, _, key, value, _) in &waiting {
        let finished = env.finished(id);
        assert_eq!(finished.len(), 1, "{key} = {value}");
        let done = &finished[0];
        assert_eq!(done["status"], "failed", "{key} = {value}: {done}");
        assert_eq!(done["stop_reason"], "invalid_definition", "{done}");
        assert_eq!(done["exit_code"], 2, "{key} = {value}: {done}");
        let error = done["error"].as_str().unwrap();
        assert!(error.contains(&says_range(key, value)), "{error}");
        checked += 1;
    }
    report("bad_values_definitions", &[("cases", checked)]);
}

#[test]
fn every_set_override_that_cannot_work_is_refused_and_one_set_is_one_key() {
    let env = TestEnv::new();
    let before = snapshot(env.home());
    let mut checked = 0u64;
    // The same table through `--set`, for the keys a dotted name can reach.
    for (_, key, value, range) in DEFINITION_CASES.iter().filter(|c| !c.1.contains('[')) {
        let set = format!("{key}={value}");
        let out = env.run(&["session", "new", "--agent", "echo", "--set", &set]);
        if matches!(*value, "nan" | "inf") {
            // Refused before the definition is looked at: session.json keeps overrides
            // as JSON, which cannot hold them.
            assert_refused(&out, 2, &["--set", key, "must be a finite number"], &set);
        } else {
            assert_refused(&out, 2, &["--set", &says_range(key, value), range], &set);
        }
        checked += 1;
    }
    // A value that is a TOML document of its own sets nothing, not its first key.
    // Typed as in the issue, with a literal backslash-n: a string, not a count.
    let literal = "limits.max_steps=3\\nname=\"x\"";
    let out = env.run(&["session", "new", "--agent", "echo", "--set", literal]);
    assert_refused(
        &out,
        2,
        &["--set", "limits.max_steps", "whole number"],
        literal,
    );
    checked += 1;
    for smuggled in [
        "limits.max_steps=3\nname=\"x\"",
        "limits.max_steps=3\n[tools]\nbuiltin=[\"write_file\"]",
        "model.name=\"a\"\nlimits.timeout=\"1s\"",
    ] {
        let out = env.run(&["session", "new", "--agent", "echo", "--set", smuggled]);
        assert_refused(&out, 2, &["--set", "its own --set"], smuggled);
        checked += 1;
    }
    assert_unchanged("refused overrides", &before, &snapshot(env.home()));
    // A multi-line string is still one value.
    let id = env
        .ok(&[
            "session",
            "new",
            "--agent",
            "echo",
            "--set",
            "system=\"\"\"two\nlines\"\"\"",
        ])
        .trim()
        .to_owned();
    assert!(env.session_dir(&id).is_dir());
    report("bad_values_overrides", &[("cases", checked)]);
}

/// Every key of `agentq.toml` with a range, with the values that cannot work.
const CONFIG_CASES: &[(&str, &str, &str)] = &[
    (
        "[inbox]\nmax_message_bytes = 0\n",
        "inbox.max_message_bytes = 0: must be",
        "1 or more",
    ),
    (
        "[inbox]\nmax_message_bytes = -1\n",
        "max_message_bytes = -1",
        "invalid value",
    ),
    (
        "[providers.local]\nkind = \"openai\"\nmax_attempts = 0\n",
        "providers.local.max_attempts = 0: must be",
        "1 or more",
    ),
    (
        "[providers.local]\nkind = \"openai\"\nidle_timeout = \"0s\"\n",
        "providers.local.idle_timeout = \"0s\": must be",
        "longer than 0",
    ),
    (
        "[providers.local]\nkind = \"openai\"\nidle_timeout = \"soon\"\n",
        "providers.local.idle_timeout",
        "not a duration",
    ),
    (
        "[providers.local]\nkind = \"gemini\"\n",
        "kind = \"gemini\"",
        "openai",
    ),
    (
        "[prices.\"gpt-4o\"]\ninput_per_mtok = -1.0\noutput_per_mtok = 1.0\n",
        "prices.gpt-4o.input_per_mtok = -1.0: must be",
        "at least 0",
    ),
    (
        "[prices.\"gpt-4o\"]\ninput_per_mtok = 1.0\noutput_per_mtok = nan\n",
        "prices.gpt-4o.output_per_mtok = nan: must be",
        "at least 0",
    ),
    (
        "[prices.\"gpt-4o\"]\ninput_per_mtok = inf\noutput_per_mtok = 1.0\n",
        "prices.gpt-4o.input_per_mtok = inf: must be",
        "finite",
    ),
    // A named provider may not take a built-in's name: every agent saying `openai`
    // would silently speak another protocol to another server.
    (
        "[providers.openai]\nkind = \"anthropic\"\n",
        "providers.openai",
        "built-in provider",
    ),
    (
        "[providers.anthropic]\nkind = \"anthropic\"\nbase_url = \"http://127.0.0.1:9\"\n",
        "providers.anthropic",
        "built-in provider",
    ),
];

#[test]
fn every_config_value_that_cannot_work_is_refused_by_every_command_that_reads_it() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    env.send(&id, "waiting");
    let mut checked = 0u64;
    for (config, says, range) in CONFIG_CASES {
        std::fs::write(env.home().join("agentq.toml"), config).unwrap();
        let before = snapshot(env.home());
        for args in [
            &["agents", "validate"][..],
            &["agents", "list"],
            &["session", "new", "--agent", "echo"],
            &["send", &id, "more"],
            &["run", "--agent", "echo", "hi"],
            &["worker", "--once"],
        ] {
            let out = env.run(args);
            let what = format!("{args:?} with agentq.toml:\n{config}");
            assert_refused(&out, 2, &["agentq.toml", says, range], &what);
            checked += 1;
        }
        assert_unchanged(config, &before, &snapshot(env.home()));
    }
    std::fs::remove_file(env.home().join("agentq.toml")).unwrap();
    // Nothing was lost: the waiting message runs once the file is fixed.
    env.worker_once();
    assert_eq!(env.responses(&id).len(), 1);
    report("bad_values_config", &[("cases", checked)]);
}

#[test]
fn every_flag_value_that_cannot_work_is_refused_naming_the_flag() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let before = snapshot(env.home());
    let cases: &[(&[&str], &str)] = &[
        (
            &["worker", "--once", "--max-duration", "0s"],
            "--max-duration",
        ),
        (
            &["worker", "--once", "--max-duration", "0ms"],
            "--max-duration",
        ),
        (
            &["worker", "--once", "--max-duration", "100000h"],
            "--max-duration",
        ),
        (
            &["worker", "--once", "--max-duration", "soon"],
            "--max-duration",
        ),
        (&["worker", "--once", "--poll", "0s"], "--poll"),
        (&["worker", "--once", "--concurrency", "0"], "--concurrency"),
        (&["worker", "--once", "--max-workers", "0"], "--max-workers"),
        (
            &["send", &id, "x", "--wait", "--timeout", "0s"],
            "--timeout",
        ),
        (
            &["send", &id, "x", "--wait", "--timeout", "100000h"],
            "--timeout",
        ),
        (
            &["send", &id, "--continue", "--raise-budget", "0"],
            "--raise-budget",
        ),
    ];
    for (args, flag) in cases {
        let out = env.run(args);
        assert_refused(&out, 2, &[flag], &format!("{args:?}"));
        assert!(
            stderr(&out).contains(args.last().unwrap()),
            "names the value: {}",
            describe(&out)
        );
    }
    assert_unchanged("refused flags", &before, &snapshot(env.home()));
    report("bad_values_flags", &[("cases", cases.len() as u64)]);
}
