//! `agentq store` on the file store, and `session show` naming the host that last ran
//! a session (the Postgres side is in `postgres::copy`).

use crate::it::*;

#[test]
fn store_migrate_on_the_files_says_there_is_nothing_to_migrate() {
    let env = TestEnv::new();
    let out = env.ok(&["store", "migrate"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("nothing to migrate"), "{out}");
    let json = env.json(&["store", "migrate", "--json"]);
    assert_eq!(json["schema"], false, "{json}");
    assert_eq!(json["migrated"], false, "{json}");
}

#[test]
fn session_show_names_the_host_and_worker_that_last_ran_the_session() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    let fresh = env.json(&["session", "show", &id, "--json"]);
    assert!(fresh["last_worker"].is_null(), "never run: {fresh}");
    assert!(!env.ok(&["session", "show", &id]).contains("host "));
    env.send(&id, "hello");
    env.worker_once();
    let shown = env.json(&["session", "show", &id, "--json"]);
    let host = shown["last_worker"]["host"]
        .as_str()
        .expect("a host")
        .to_owned();
    assert!(!host.is_empty(), "{shown}");
    assert!(shown["last_worker"]["pid"].as_u64().is_some(), "{shown}");
    let text = env.ok(&["session", "show", &id]);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("host      {host} (last run by worker "))),
        "{text}"
    );
}

#[test]
fn copying_the_files_onto_themselves_is_refused() {
    let env = TestEnv::new();
    env.new_session("echo");
    let err = env.fails(&["store", "copy", "--to", "files"], 2);
    assert!(err.contains("already"), "{err}");
}
