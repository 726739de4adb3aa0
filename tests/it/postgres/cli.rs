//! The CLI on a Postgres store (`--store` / `AGENTQ_STORE`): the same commands, the
//! same output and events as on the files, and no session under `sessions/`.

use serde_json::Value;

use super::server;
use crate::it::*;

fn types(lines: &str) -> Vec<String> {
    lines
        .lines()
        .map(|l| {
            let event: Value = serde_json::from_str(l).expect("an event line");
            event["type"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

/// A message queued, run by `worker --once`, shown and watched, on each store.
fn one_message(env: &TestEnv) -> (String, String, Value) {
    let id = env.new_session("echo");
    env.send(&id, "hello");
    env.worker_once();
    let watched = env.ok(&["watch", &id, "--from-start", "--json", "--exit-on-idle"]);
    let shown = env.json(&["session", "show", &id, "--json"]);
    (id, watched, shown)
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_message_runs_on_postgres_as_it_does_on_the_files() {
    let files = TestEnv::new();
    let pg = TestEnv::on_store(&server::new_database());
    let (_, on_files, _) = one_message(&files);
    let (id, on_pg, shown) = one_message(&pg);
    assert_eq!(types(&on_pg), types(&on_files), "the same events, in order");
    let seqs: Vec<u64> = on_pg
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "gapless");
    assert!(on_pg.contains("echo: hello"), "{on_pg}");
    assert_eq!(shown["session"]["status"], "active", "{shown}");
    assert_eq!(shown["last_execution"]["status"], "completed", "{shown}");
    assert!(
        !pg.session_dir(&id).exists(),
        "the session is in the database, not under sessions/"
    );
    let listed = pg.ok(&["session", "list"]);
    assert!(listed.contains(&id[..8]), "{listed}");
}

#[test]
fn a_store_that_is_not_a_postgres_url_is_refused_naming_it() {
    let env = TestEnv::new();
    let out = env
        .cmd()
        .args([
            "--store",
            "mysql://root:s3cret@db/agentq",
            "session",
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", describe(&out));
    let err = stderr(&out);
    assert!(err.contains("mysql://root:***@db/agentq"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn an_unreachable_store_is_exit_75_and_names_it_without_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let env = TestEnv::new();
    let url = format!("postgres://agentq:s3cret@127.0.0.1:{port}/agentq?connect_timeout=2");
    let out = env
        .cmd()
        .args(["--store", &url, "session", "list"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 75, "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("postgres://agentq:***@127.0.0.1:{port}/agentq")),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn the_store_named_in_agentq_toml_is_used_and_the_flag_overrides_it() {
    let env = TestEnv::new();
    std::fs::write(
        env.home().join("agentq.toml"),
        "[store]\nurl = \"mysql://root:s3cret@db/agentq\"\n",
    )
    .unwrap();
    let err = env.fails(&["session", "list"], 2);
    assert!(
        err.contains("mysql://root:***@db/agentq") && !err.contains("s3cret"),
        "{err}"
    );
    // `--store files` is the file store, whatever agentq.toml says.
    let listed = env.ok(&["--store", "files", "session", "list"]);
    assert!(!listed.contains("mysql"), "{listed}");
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn the_other_commands_work_on_postgres() {
    let env = TestEnv::on_store(&server::new_database());
    // `run`: one shot, in this process.
    let ran = env.json(&["run", "--agent", "echo", "--json", "one shot"]);
    assert_eq!(ran["status"], "completed", "{ran}");
    assert_eq!(ran["response"], "echo: one shot", "{ran}");
    // `send --key` twice queues once.
    let id = env.new_session("echo");
    let first = env.ok(&["send", &id, "keyed", "--key", "k1"]);
    let again = env.ok(&["send", &id, "keyed", "--key", "k1"]);
    assert_eq!(first.trim(), again.trim());
    assert_eq!(env.json(&["status", "--json"])["pending"], 1);
    // Paused, the message waits; resumed, it runs.
    env.ok(&["session", "pause", &id]);
    env.worker_once();
    assert_eq!(env.json(&["status", "--json"])["pending"], 1);
    env.ok(&["session", "resume", &id]);
    env.worker_once();
    assert_eq!(env.json(&["status", "--json"])["pending"], 0);
    let messages = env.ok(&["session", "messages", &id]);
    assert!(messages.contains("echo: keyed"), "{messages}");
    // A cancel with nothing running is consumed; closing refuses new messages.
    env.ok(&["cancel", &id]);
    env.worker_once();
    env.ok(&["session", "close", &id]);
    let refused = env.fails(&["send", &id, "more"], 2);
    assert!(refused.contains("is closed"), "{refused}");
    env.ok(&["session", "rm", &id]);
    let gone = env.fails(&["session", "show", &id], 2);
    assert!(gone.contains("no session"), "{gone}");
}
