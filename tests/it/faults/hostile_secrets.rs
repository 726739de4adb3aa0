//! Class 5: secrets in the environment never reach command tools.
//!
//! agentq runs with an environment full of credentials under every common name (and
//! some under innocent names, recognisable by their value); a declared command that
//! prints its environment must show none of them, in either `[tools] env` mode, and
//! exactly what `env_pass` opts in to. `agents validate` checks the two keys.

use super::*;

/// Credentials a developer's shell or a CI job commonly holds. Every value contains
/// `s3cr3t`, which must appear nowhere a command or the session's files could show it.
const SECRETS: &[(&str, &str)] = &[
    ("GITHUB_PAT", "ghp_s3cr3t01"),
    ("GITHUB_TOKEN", "ghs_s3cr3t02"),
    ("NPM_TOKEN", "s3cr3t03"),
    ("OPENAI_API_KEY", "sk-s3cr3t04"),
    ("APIKEY", "s3cr3t05"),
    ("AWS_ACCESS_KEY_ID", "AKIAs3cr3t06"),
    ("AWS_SECRET_ACCESS_KEY", "s3cr3t07"),
    ("STRIPE_SECRET", "s3cr3t08"),
    ("DB_PASSWORD", "s3cr3t09"),
    ("PGPASSWORD", "s3cr3t10"),
    ("LDAP_PASSWD", "s3cr3t11"),
    ("MYSQL_PWD", "s3cr3t12"),
    ("SENTRY_DSN", "https://s3cr3t13@o1.ingest.sentry.io/2"),
    (
        "SLACK_WEBHOOK_URL",
        "https://hooks.slack.com/services/s3cr3t14",
    ),
    ("CREDENTIALS", "s3cr3t15"),
    ("GOOGLE_APPLICATION_CREDENTIALS", "/home/me/s3cr3t16.json"),
    ("JWT", "s3cr3t17"),
    ("NPM_CONFIG__AUTH", "s3cr3t18"),
    ("SSH_AUTH_SOCK", "/tmp/ssh-s3cr3t19/agent.1"),
    // Innocent names, secret values: a URL with a password, a JSON Web Token.
    ("DATABASE_URL", "postgres://u:s3cr3t20@h/db"),
    ("REDIS_URL", "redis://:s3cr3t21@localhost:6379/0"),
    (
        "SESSION_BLOB",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzM2NyM3QifQ.s3cr3t22",
    ),
    // The agent's own api_key_env, named like nothing secret.
    ("LOCAL_GATEWAY", "s3cr3t23"),
];

/// Variables that are not secrets and reach commands in the default mode; the first
/// five are all `env = "clean"` keeps.
const PLAIN: &[(&str, &str)] = &[
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("HOME", "/home/agentq-test"),
    ("LANG", "C.UTF-8"),
    ("TZ", "UTC"),
    ("TMPDIR", "/tmp"),
    ("EDITOR", "vi"),
    ("KEYBOARD", "us"),
    ("TOKENIZER_PATH", "/opt/tokenizer"),
    ("PLAIN_URL", "postgres://h/db"),
    ("GIT_REMOTE", "ssh://git@github.com/o/r"),
    ("PWD", "/home/agentq-test/project"),
];

/// An agent whose one step runs `env`, with `tools` added to its `[tools]` table.
fn env_agent(name: &str, tools: &str) -> String {
    format!(
        r#"name = "{name}"
[model]
provider = "scripted"
api_key_env = "LOCAL_GATEWAY"
[[model.script]]
text = "looking around"
tool_calls = [{{ name = "show_env", arguments = {{}} }}]
[[model.script]]
text = "done"
[tools]
{tools}
[[tools.command]]
name = "show_env"
argv = ["env"]
"#
    )
}

/// What `show_env` printed when agent `name` ran with the hostile environment, as
/// name → value, and the session it ran in. Of the secrets' values, only those of
/// `passed` may appear in what the model is told.
fn command_env(env: &TestEnv, name: &str, passed: &[&str]) -> (BTreeMap<String, String>, String) {
    let out = env
        .cmd()
        .env_clear()
        .envs(SECRETS.iter().chain(PLAIN).copied())
        .args(["run", "--agent", name, "go", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("run agentq");
    assert_eq!(code(&out), 0, "{name}: {}", describe(&out));
    let result: Value = serde_json::from_slice(&out.stdout).expect("run --json");
    let id = result["session_id"].as_str().unwrap().to_owned();
    let messages = env.json(&["session", "messages", &id, "--json"]);
    let tool = messages
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .expect("the command's result");
    let content = tool["content"].as_str().unwrap();
    assert_eq!(tool["is_error"], false, "{name}: {content}");
    for (secret, value) in SECRETS {
        assert!(
            passed.contains(secret) || !content.contains(value),
            "{name}: {secret} reached the command:\n{content}"
        );
    }
    let printed = content
        .split_once("--- stdout\n")
        .map_or("", |(_, rest)| rest);
    let vars = printed
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (vars, id)
}

#[test]
fn command_tools_see_no_variable_that_looks_like_a_secret_in_either_env_mode() {
    let env = TestEnv::new();
    env.write_agent("scrubbed", &env_agent("scrubbed", ""));
    env.write_agent(
        "clean",
        &env_agent(
            "clean",
            "env = \"clean\"\nenv_pass = [\"EDITOR\", \"GITHUB_PAT\"]",
        ),
    );
    env.write_agent(
        "opted",
        &env_agent("opted", "env_pass = [\"GITHUB_PAT\", \"DATABASE_URL\"]"),
    );
    let mut cases = 0;
    let mut sessions = Vec::new();

    // The default: everything but what looks like a secret, by name or by value.
    let (vars, id) = command_env(&env, "scrubbed", &[]);
    sessions.push(id);
    for (name, _) in SECRETS {
        assert!(
            !vars.contains_key(*name),
            "scrubbed: {name} reached the command"
        );
        cases += 1;
    }
    for (name, value) in PLAIN {
        assert_eq!(
            vars.get(*name).map(String::as_str),
            Some(*value),
            "scrubbed: {name}"
        );
    }

    // `clean`: the five basics, what env_pass names (secret-looking or not), and the
    // session marker agentq sets for every command (its session's id).
    let (vars, id) = command_env(&env, "clean", &["GITHUB_PAT"]);
    sessions.push(id);
    let names: BTreeSet<&str> = vars.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = PLAIN[..5]
        .iter()
        .map(|(name, _)| *name)
        .chain(["EDITOR", "GITHUB_PAT", "AGENTQ_SESSION_ID"])
        .collect();
    assert_eq!(names, expected, "clean");
    assert_eq!(vars["AGENTQ_SESSION_ID"], sessions[1]);
    assert_eq!(vars["GITHUB_PAT"], "ghp_s3cr3t01");
    cases += 1;

    // env_pass opts in by name in the default mode too; the rest stays withheld.
    let (vars, id) = command_env(&env, "opted", &["GITHUB_PAT", "DATABASE_URL"]);
    sessions.push(id);
    for (name, _) in SECRETS {
        let passed = matches!(*name, "GITHUB_PAT" | "DATABASE_URL");
        assert_eq!(vars.contains_key(*name), passed, "opted: {name}");
        cases += 1;
    }

    // What a command was not given is not recorded anywhere either (the opted-in
    // values are, by choice: they were printed).
    for (name, value) in SECRETS {
        if matches!(*name, "GITHUB_PAT" | "DATABASE_URL") {
            continue;
        }
        let found = files_containing(env.home(), value.as_bytes());
        assert!(found.is_empty(), "{name} was recorded in {found:?}");
    }
    report("hostile_secrets", &[("cases", cases)]);
}

#[test]
fn agents_validate_checks_the_env_mode_and_every_env_pass_name() {
    let env = TestEnv::new();
    let with = |tools: &str| env_agent("bad", tools);
    let cases = [
        ("env = \"bare\"", "tools.env", "one of scrubbed, clean"),
        ("env = true", "tools.env", "one of scrubbed, clean"),
        (
            "env_pass = \"EDITOR\"",
            "tools.env_pass",
            "a list of strings",
        ),
        ("env_pass = [3]", "tools.env_pass[0]", "a string"),
        (
            "env_pass = [\"EDITOR\", \"A-B\"]",
            "tools.env_pass[1]",
            "`A-B` is not an environment variable name",
        ),
        (
            "env_pass = [\"1X\"]",
            "tools.env_pass[0]",
            "not an environment variable name",
        ),
        (
            "env_pass = [\"\"]",
            "tools.env_pass[0]",
            "not an environment variable name",
        ),
        (
            "env_pass = [\"A=B\"]",
            "tools.env_pass[0]",
            "not an environment variable name",
        ),
        (
            "env_pass = [\"LOCAL_GATEWAY\"]",
            "tools.env_pass[0]",
            "is where an API key of the agent is read from, which is never passed",
        ),
        (
            "env_pass = [\"OPENAI_API_KEY\"]",
            "tools.env_pass[0]",
            "never passed",
        ),
    ];
    for (tools, key, says) in cases {
        env.write_agent("bad", &with(tools));
        let out = env.run(&["agents", "validate", "agents/bad.toml", "--json"]);
        assert_eq!(code(&out), 2, "{tools}:\n{}", describe(&out));
        let report: Value = serde_json::from_slice(&out.stdout).expect("validate --json");
        let problems = report[0]["problems"].as_array().unwrap();
        assert!(
            problems
                .iter()
                .any(|p| p["key"] == key && p["message"].as_str().unwrap().contains(says)),
            "{tools}: expected `{key}: …{says}…` in {problems:?}"
        );
        let out = env.run(&["session", "new", "--agent", "bad"]);
        assert_refused(&out, 2, &["bad.toml", key, says], tools);
    }
    for tools in [
        "env = \"clean\"\nenv_pass = [\"EDITOR\", \"GITHUB_PAT\", \"_X1\"]",
        "env = \"scrubbed\"",
    ] {
        env.write_agent("good", &env_agent("good", tools));
        env.ok(&["agents", "validate", "agents/good.toml"]);
    }
    report("env_keys", &[("cases", cases.len() as u64 + 2)]);
}
