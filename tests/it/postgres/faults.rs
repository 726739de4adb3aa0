//! The store's faults, each a one-line error naming the URL without its password, with
//! the exit code of ARCHITECTURE.md §7: 2 where the URL or the database needs a fix,
//! 75 where trying again later can help.

use std::process::Output;
use std::time::{Duration, Instant};

use super::server;
use crate::it::*;

/// An answer of thirty words streamed at 100 ms each.
const SLOW_AGENT: &str = r#"
name = "slow"
[model]
provider = "scripted"
[[model.script]]
text = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20 w21 w22 w23 w24 w25 w26 w27 w28 w29 w30"
delay_ms = 100
"#;

/// A client on the database at `url` as the trusted superuser, for the test's setup.
fn admin(url: &str) -> ::postgres::Client {
    ::postgres::Client::connect(url, ::postgres::NoTls).expect("the admin connection")
}

const PASSWORD: &str = "the-r1ght-s3cret";

/// Creates [`server::PASSWORD_USER`], whose password is [`PASSWORD`], unless another
/// test of this process did.
fn password_role(url: &str) {
    let _ = admin(url).batch_execute(&format!(
        "CREATE ROLE {} LOGIN SUPERUSER PASSWORD '{PASSWORD}'",
        server::PASSWORD_USER
    ));
}

/// `url` with its user replaced by `user:password`.
fn as_user(url: &str, user: &str, password: &str) -> String {
    url.replacen(
        &format!("//{}@", server::USER),
        &format!("//{user}:{password}@"),
        1,
    )
}

fn on(env: &TestEnv, url: &str, args: &[&str]) -> Output {
    env.cmd()
        .arg("--store")
        .arg(url)
        .args(args)
        .output()
        .unwrap()
}

/// One line, exit `expected`, naming `shown` and never `secret`.
fn refused(out: &Output, expected: i32, shown: &str, secret: &str) -> String {
    assert_eq!(code(out), expected, "{}", describe(out));
    let err = stderr(out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(shown), "names {shown}: {err}");
    assert!(!err.contains(secret), "no password: {err}");
    assert!(
        !stdout(out).contains(secret),
        "no password: {}",
        stdout(out)
    );
    err
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_wrong_password_is_exit_2_naming_the_url_without_the_password() {
    let url = server::new_database();
    let env = TestEnv::on_store(&url);
    password_role(&url);
    let wrong = as_user(&url, server::PASSWORD_USER, "wr0ng-s3cret");
    let out = on(&env, &wrong, &["session", "list"]);
    let shown = as_user(&url, server::PASSWORD_USER, "***");
    let err = refused(&out, 2, &shown, "wr0ng-s3cret");
    assert!(err.contains("password"), "says why: {err}");
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_read_only_replica_is_exit_75_naming_the_url() {
    let url = server::new_database();
    let env = TestEnv::on_store(&url);
    let id = env.new_session("echo");
    let database = url.rsplit('/').next().unwrap();
    admin(&url)
        .batch_execute(&format!(
            "ALTER DATABASE {database} SET default_transaction_read_only = on"
        ))
        .unwrap();
    let err = refused(&env.run(&["send", &id, "hello"]), 75, &url, "s3cret");
    assert!(err.contains("queueing a message"), "says what: {err}");
    assert!(err.contains("read-only"), "says why: {err}");
    // Reading still works on a replica.
    assert_eq!(env.pending(&id), 0);
    refused(
        &env.run(&["session", "new", "--agent", "echo"]),
        75,
        &url,
        "s3cret",
    );
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_statement_timeout_on_a_locked_session_is_exit_75_naming_the_url() {
    let url = server::new_database();
    let env = TestEnv::on_store(&url);
    let id = env.new_session("echo");
    let mut holder = admin(&url);
    let mut lock = holder.transaction().unwrap();
    lock.execute(
        "SELECT id FROM sessions WHERE id = $1::text::uuid FOR UPDATE",
        &[&id],
    )
    .unwrap();
    let impatient = format!("{url}?options=-c%20statement_timeout%3D200");
    let out = on(&env, &impatient, &["send", &id, "hello"]);
    let err = refused(&out, 75, &impatient, "s3cret");
    assert!(err.contains("statement timeout"), "says why: {err}");
    lock.rollback().unwrap();
    // Once the lock is gone, the same command goes through.
    let out = on(&env, &impatient, &["send", &id, "hello"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_worker_whose_connections_are_cut_mid_execution_connects_again_and_completes_the_message_once()
{
    let plain = server::new_database();
    password_role(&plain);
    let url = as_user(&plain, server::PASSWORD_USER, PASSWORD);
    let env = TestEnv::on_store(&url);
    // Three seconds of streaming to cut into.
    env.write_agent("slow", SLOW_AGENT);
    let id = env.new_session("slow");
    let worker = env.spawn_worker(&[]);
    env.send(&id, "take long");
    let mut db = admin(&plain);
    let mut count = |kind: &str, status: Option<&str>| -> i64 {
        db.query_one(
            "SELECT count(*) FROM events WHERE session_id = $1::text::uuid AND type = $2
             AND ($3::text IS NULL OR body::jsonb->'payload'->>'status' = $3)",
            &[&id, &kind, &status],
        )
        .unwrap()
        .get(0)
    };
    wait_until("the execution streams", Duration::from_secs(20), || {
        count("agent.stream.chunk", None) > 0
    });
    let database = plain.rsplit('/').next().unwrap();
    let cut: i64 = admin(&plain)
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = $1 AND usename = $2",
            &[&database, &server::PASSWORD_USER],
        )
        .unwrap()
        .get(0);
    assert!(cut > 0, "the worker's connections were cut");
    let cut_at = Instant::now();
    while count("execution.finished", None) == 0 {
        if cut_at.elapsed() > Duration::from_secs(60) {
            worker.signal(15);
            let log = stderr(&worker.wait(Duration::from_secs(30)));
            panic!("the message did not complete within 60 s of the cut; the worker said:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "completed {} ms after the cut",
        cut_at.elapsed().as_millis()
    );
    worker.signal(15);
    let out = worker.wait(Duration::from_secs(30));
    let log = stderr(&out);
    assert!(log.contains("lost the connection to"), "{log}");
    assert!(log.contains("again after"), "{log}");
    assert_eq!(
        count("execution.finished", Some("completed")),
        1,
        "completed once"
    );
    assert_eq!(count("agent.message.completed", None), 1, "answered once");
    assert_eq!(env.pending(&id), 0);
    let shown = env.ok(&["session", "show", &id, "--json"]);
    let events = env.ok(&["watch", &id, "--from-start", "--json", "--exit-on-idle"]);
    for text in [&log, &shown, &events] {
        assert!(!text.contains(PASSWORD), "the password is shown: {text}");
    }
    assert!(
        log.contains(&format!("{}:***@", server::PASSWORD_USER)),
        "{log}"
    );
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_worker_whose_lease_was_taken_over_while_it_was_stopped_says_so_and_goes_on() {
    let env = TestEnv::on_store(&server::new_database());
    std::fs::write(env.home().join("agentq.toml"), "[store]\nlease = \"2s\"\n").unwrap();
    // Three seconds of streaming: long enough to be stopped in, and resumed.
    env.write_agent("slow", SLOW_AGENT);
    let id = env.new_session("slow");
    env.send(&id, "take long");
    let log = env.home().join("first.log");
    let first = env.spawn_worker(&["--log-file", log.to_str().unwrap()]);
    let first_pid = u64::from(first.child.id());
    wait_until("the first worker streaming", LONG, || {
        !env.events_of(&id, "agent.stream.chunk").is_empty()
    });
    first.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let second = env.spawn_worker(&[]);
    let second_pid = u64::from(second.child.id());
    wait_until("the second worker resuming it", LONG, || {
        env.events_of(&id, "execution.started").len() == 2
    });
    // A stopped worker is alive: its lease is taken once it runs out, not at once.
    assert!(
        stopped.elapsed() >= Duration::from_secs(1),
        "taken after {:?}",
        stopped.elapsed()
    );
    let starts = env.payloads(&id, "execution.started");
    assert_eq!(starts[1]["worker"]["pid"], second_pid);
    assert_eq!(starts[1]["attempt"], 2);

    // Woken, the first worker finds its lease gone: it stops that execution, says so,
    // and counts no failure.
    first.signal(libc::SIGCONT);
    let took = format!("another worker took session {id} over; stopped its execution here");
    wait_until("the first worker noticing", LONG, || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains(&took))
    });
    wait_until("the second worker finishing it", LONG, || {
        !env.finished(&id).is_empty()
    });
    second.signal(15);
    assert_eq!(code(&second.wait(LONG)), 0);
    let done = env.finished(&id);
    assert_eq!(done.len(), 1, "settled once");
    assert_eq!(done[0]["status"], "completed");
    assert_eq!(env.events_of(&id, "agent.message.completed").len(), 1);

    // It goes on with other sessions.
    let other = env.new_session("echo");
    env.send(&other, "still here");
    wait_until("the first worker running another session", LONG, || {
        !env.finished(&other).is_empty()
    });
    assert_eq!(
        env.payloads(&other, "execution.started")[0]["worker"]["pid"],
        first_pid
    );
    first.signal(15);
    let out = first.wait(LONG);
    assert_eq!(
        code(&out),
        0,
        "a lost lease is no failure: {}",
        describe(&out)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text.lines().find(|l| l.contains(&took)).unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(!text.contains("repair or remove"), "{text}");
}
