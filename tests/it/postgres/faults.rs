//! The store's faults, each a one-line error naming the URL without its password, with
//! the exit code of ARCHITECTURE.md §7: 2 where the URL or the database needs a fix,
//! 75 where trying again later can help.

use std::process::Output;

use super::server;
use crate::it::*;

/// A client on the database at `url` as the trusted superuser, for the test's setup.
fn admin(url: &str) -> ::postgres::Client {
    ::postgres::Client::connect(url, ::postgres::NoTls).expect("the admin connection")
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
    // The role may exist already, from another test of this process.
    let _ = admin(&url).batch_execute(&format!(
        "CREATE ROLE {} LOGIN PASSWORD 'the-r1ght-one'",
        server::PASSWORD_USER
    ));
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
    assert!(err.contains("read-only"), "says why: {err}");
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
