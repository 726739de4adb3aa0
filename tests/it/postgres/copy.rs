//! `agentq store copy` between the files and Postgres, and `agentq store migrate`:
//! a copied session is the same session (what `session show`, `session messages` and
//! `watch` print, its keys, its seqs), workers carry on with it, and nothing is ever
//! copied over a session or out of one a worker owns.

use std::time::Duration;

use serde_json::Value;

use super::server;
use crate::it::*;

const FAILING: &str = "name = \"failing\"\n[model]\nprovider = \"scripted\"\n[[model.script]]\nerror = { status = 400, message = \"injected\" }\n";

/// What a session looks like from the outside, on whichever store the env uses.
fn observed(env: &TestEnv, id: &str) -> (Value, Value, String) {
    let shown = env.json(&["session", "show", id, "--json"]);
    let messages = env.json(&["session", "messages", id, "--json"]);
    // The whole log: a session with messages waiting is never idle, so the wait
    // gives up (75) after printing everything.
    let out = env.run(&[
        "watch",
        id,
        "--from-start",
        "--json",
        "--exit-on-idle",
        "--timeout",
        "500ms",
    ]);
    assert!([0, 1, 75].contains(&code(&out)), "{}", describe(&out));
    (shown, messages, stdout(&out))
}

fn with_store(env: &TestEnv, url: &str) -> TestEnv {
    let other = TestEnv::on_store(url);
    // The same home's definitions, so budgets and hashes read the same.
    for agent in ["echo", "failing"] {
        let from = env.home().join("agents").join(format!("{agent}.toml"));
        if let Ok(text) = std::fs::read_to_string(from) {
            other.write_agent(agent, &text);
        }
    }
    other
}

/// A home with a finished session (with tool calls), one with a keyed message
/// waiting, a paused one with a message waiting, and a failed one.
fn home_with_sessions(env: &TestEnv) -> Vec<String> {
    env.write_agent("failing", FAILING);
    let finished = env.new_session("echo");
    env.send(&finished, "hello");
    let failed = env.new_session("failing");
    env.send(&failed, "break");
    env.worker_once_exiting(1);
    let keyed = env.new_session("echo");
    env.ok(&["send", &keyed, "keyed", "--key", "k1"]);
    let paused = env.new_session("echo");
    env.send(&paused, "later");
    env.ok(&["session", "pause", &paused]);
    vec![finished, keyed, paused, failed]
}

fn seqs(log: &str) -> Vec<u64> {
    log.lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn sessions_copied_to_postgres_and_back_are_the_same_sessions() {
    let files = TestEnv::new();
    let ids = home_with_sessions(&files);
    let before: Vec<_> = ids.iter().map(|id| observed(&files, id)).collect();
    let url = server::new_database();

    let copied = files.json(&["store", "copy", "--to", &url, "--json"]);
    assert_eq!(copied["sessions"].as_array().unwrap().len(), 4, "{copied}");
    let pg = with_store(&files, &url);
    for (id, seen) in ids.iter().zip(&before) {
        assert_eq!(&observed(&pg, id), seen, "session {id} on Postgres");
    }
    // The source keeps its sessions.
    assert!(files.session_dir(&ids[0]).is_dir());

    // And back, into another home's files.
    let back = TestEnv::new();
    back.write_agent("failing", FAILING);
    let out = back
        .cmd()
        .args(["--store", &url, "store", "copy", "--to", "files"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", describe(&out));
    for (id, seen) in ids.iter().zip(&before) {
        assert_eq!(&observed(&back, id), seen, "session {id} back on the files");
        back.assert_gapless(id);
    }
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_worker_on_the_target_runs_the_copied_messages_and_keys_still_deduplicate() {
    let files = TestEnv::new();
    let ids = home_with_sessions(&files);
    let (keyed, paused) = (&ids[1], &ids[2]);
    let first_id = files.payloads(keyed, "message.queued")[0]["message_id"].clone();
    let url = server::new_database();
    files.ok(&["store", "copy", "--to", &url]);
    let pg = with_store(&files, &url);

    let again = pg.ok(&["send", keyed, "keyed", "--key", "k1"]);
    assert_eq!(
        again.trim(),
        first_id.as_str().unwrap(),
        "the key came along"
    );
    pg.ok(&["session", "resume", paused]);
    pg.worker_once();
    for id in [keyed, paused] {
        let (shown, _, log) = observed(&pg, id);
        assert_eq!(shown["pending"], 0, "{shown}");
        assert_eq!(shown["last_execution"]["status"], "completed", "{shown}");
        let seqs = seqs(&log);
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "gapless: {log}"
        );
    }
    // The file store's copy is untouched: its messages still wait there.
    assert_eq!(files.pending(keyed), 1);
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_copy_over_an_existing_session_is_refused_and_writes_nothing() {
    let files = TestEnv::new();
    let ids = home_with_sessions(&files);
    let url = server::new_database();
    files.ok(&["store", "copy", "--to", &url, "--session", &ids[0]]);
    let pg = with_store(&files, &url);
    let events_before = observed(&pg, &ids[0]).2;

    let err = files.fails(&["store", "copy", "--to", &url], 2);
    assert!(
        err.contains(&ids[0]) && err.contains("already exists"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let listed = pg.json(&["session", "list", "--json"]);
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "nothing more: {listed}"
    );
    assert_eq!(observed(&pg, &ids[0]).2, events_before);
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_session_a_worker_owns_is_not_copied() {
    let files = TestEnv::new();
    files.write_agent(
        "hanging",
        "name = \"hanging\"\n[model]\nprovider = \"scripted\"\n[[model.script]]\ntext = \"waiting\"\ntool_calls = [{ name = \"hang\", arguments = {} }]\n[[model.script]]\ntext = \"done\"\n[[tools.command]]\nname = \"hang\"\nargv = [\"sleep\", \"29.4417\"]\ntimeout = \"60s\"\n",
    );
    let id = files.new_session("hanging");
    files.send(&id, "hang on");
    let worker = files.spawn_worker(&[]);
    wait_until("the command running", LONG, || {
        !files.events_of(&id, "agent.tool.started").is_empty()
    });
    let url = server::new_database();
    let err = files.fails(&["store", "copy", "--to", &url], 75);
    assert!(
        err.contains(&id) && err.contains("being worked on"),
        "{err}"
    );
    let pg = with_store(&files, &url);
    assert_eq!(
        pg.json(&["session", "list", "--json"]),
        serde_json::json!([])
    );
    // Stopped, the worker leaves it at a checkpoint; then it copies, and resumes there.
    worker.signal(15);
    let out = worker.wait(Duration::from_secs(20));
    assert_eq!(code(&out), 0, "{}", describe(&out));
    files.ok(&["store", "copy", "--to", &url]);
    let shown = pg.json(&["session", "show", &id, "--json"]);
    assert_eq!(shown["pending"], 1, "{shown}");
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn store_migrate_says_what_it_did_and_refuses_a_newer_schema() {
    let url = server::new_database();
    let env = TestEnv::empty();
    let migrate = |json: bool| {
        let mut args = vec!["--store", &url, "store", "migrate"];
        if json {
            args.push("--json");
        }
        env.run(&args)
    };
    let first = migrate(true);
    assert_eq!(code(&first), 0, "{}", describe(&first));
    let done: Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(done["from"], 0, "{done}");
    assert_eq!(done["to"], agentq::store::pg::schema::VERSION, "{done}");
    assert_eq!(done["migrated"], true, "{done}");
    let again = migrate(false);
    assert_eq!(
        stdout(&again),
        format!(
            "agentq's schema in {url} is already at version {}\n",
            agentq::store::pg::schema::VERSION
        )
    );
    let newer = agentq::store::pg::schema::VERSION + 1;
    let db = agentq::store::pg::Db::connect(&agentq::store::pg::DbUrl::parse(&url).unwrap())
        .unwrap_or_else(|e| panic!("{}", e.message));
    db.call("pretending to be newer", move |c| {
        c.execute("INSERT INTO agentq_schema (version) VALUES ($1)", &[&newer])
            .map(drop)
    })
    .unwrap();
    let refused = migrate(false);
    assert_eq!(code(&refused), 2, "{}", describe(&refused));
    let err = stderr(&refused);
    assert!(err.contains(&format!("schema version {newer}")), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_session_a_worker_owns_in_postgres_is_not_copied_to_the_files() {
    let url = server::new_database();
    let pg = TestEnv::on_store(&url);
    pg.write_agent(
        "hanging",
        "name = \"hanging\"\n[model]\nprovider = \"scripted\"\n[[model.script]]\ntext = \"waiting\"\ntool_calls = [{ name = \"hang\", arguments = {} }]\n[[model.script]]\ntext = \"done\"\n[[tools.command]]\nname = \"hang\"\nargv = [\"sleep\", \"29.4418\"]\ntimeout = \"60s\"\n",
    );
    let id = pg.new_session("hanging");
    pg.send(&id, "hang on");
    let worker = pg.spawn_worker(&[]);
    wait_until("the execution running", LONG, || {
        !pg.json(&["session", "show", &id, "--json"])["running"].is_null()
    });
    let err = pg.fails(&["store", "copy", "--to", "files"], 75);
    assert!(
        err.contains(&id) && err.contains("being worked on"),
        "{err}"
    );
    assert!(
        !pg.session_dir(&id).exists(),
        "nothing written to the files"
    );
    worker.signal(15);
    let out = worker.wait(Duration::from_secs(20));
    assert_eq!(code(&out), 0, "{}", describe(&out));
}
