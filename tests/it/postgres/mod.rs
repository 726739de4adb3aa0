//! The Postgres store against a real PostgreSQL, started by the tests themselves
//! ([`server`]). They are `#[ignore]`d, so `cargo test` lists them as ignored where no
//! server can run, never as passed; `scripts/postgres test` (which `.ci/run` calls)
//! installs PostgreSQL from Debian's packages and runs them, or says in one line why it
//! cannot.

pub(crate) mod server;

use agentq::store::pg::{Db, DbUrl, schema};

fn db(url: &str) -> Db {
    Db::connect(&DbUrl::parse(url).expect("a URL")).unwrap_or_else(|e| panic!("{}", e.message))
}

fn tables(db: &Db) -> Vec<String> {
    db.call("listing the tables of", |client| {
        Ok(client
            .query(
                "SELECT table_name::text FROM information_schema.tables
                 WHERE table_schema = 'public' ORDER BY 1",
                &[],
            )?
            .iter()
            .map(|row| row.get(0))
            .collect())
    })
    .expect("tables")
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn migrating_an_empty_database_creates_agentqs_tables_at_its_version() {
    let db = db(&server::new_database());
    assert_eq!(schema::version(&db).unwrap(), 0);
    let migrated = schema::migrate(&db).unwrap();
    assert_eq!(
        migrated,
        schema::Migrated {
            from: 0,
            to: schema::VERSION
        }
    );
    assert_eq!(schema::version(&db).unwrap(), schema::VERSION);
    assert_eq!(
        tables(&db),
        [
            "agentq_schema",
            "events",
            "executions",
            "inbox",
            "keys",
            "sessions",
            "transcript",
            "workers"
        ]
    );
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn migrating_again_changes_nothing() {
    let db = db(&server::new_database());
    schema::migrate(&db).unwrap();
    let again = schema::migrate(&db).unwrap();
    assert_eq!(again.from, schema::VERSION);
    assert_eq!(again.to, schema::VERSION);
    let rows: i64 = db
        .call("counting", |c| {
            Ok(c.query_one("SELECT count(*) FROM agentq_schema", &[])?
                .get(0))
        })
        .unwrap();
    assert_eq!(rows, i64::from(schema::VERSION), "one row per migration");
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn workers_migrating_at_once_migrate_once() {
    let url = server::new_database();
    let migrations: Vec<schema::Migrated> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| schema::migrate(&db(&url)).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let first = migrations.iter().filter(|m| m.from == 0).count();
    assert_eq!(first, 1, "exactly one of them migrated: {migrations:?}");
    assert!(migrations.iter().all(|m| m.to == schema::VERSION));
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_database_at_a_newer_schema_version_is_refused_naming_it() {
    let url = server::new_database();
    let db = db(&url);
    schema::migrate(&db).unwrap();
    let newer = schema::VERSION + 1;
    db.call("pretending to be newer", move |c| {
        c.execute("INSERT INTO agentq_schema (version) VALUES ($1)", &[&newer])
            .map(drop)
    })
    .unwrap();
    let err = schema::migrate(&db).unwrap_err();
    assert_eq!(err.kind.code(), 2, "{}", err.message);
    assert!(
        err.message.contains(&format!("schema version {newer}"))
            && err.message.contains(&url)
            && err.message.contains("newer agentq"),
        "{}",
        err.message
    );
    assert_eq!(schema::version(&db).unwrap(), newer, "nothing was undone");
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_missing_database_is_refused_naming_the_url() {
    let server = server::server().unwrap_or_else(|why| panic!("{why}"));
    let url = format!(
        "postgres://{}:not-this@127.0.0.1:{}/no_such_database",
        server::USER,
        server.port
    );
    let err = Db::connect(&DbUrl::parse(&url).unwrap())
        .err()
        .expect("refused");
    assert_eq!(err.kind.code(), 2, "{}", err.message);
    assert!(
        err.message.contains("no_such_database") && err.message.contains(":***@"),
        "{}",
        err.message
    );
    assert!(!err.message.contains("not-this"), "{}", err.message);
}

/// Needs no server: nothing listens on the port.
#[test]
fn an_unreachable_database_is_exit_75_naming_the_url_without_its_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("postgres://agentq:s3cret@127.0.0.1:{port}/agentq?connect_timeout=2");
    let err = Db::connect(&DbUrl::parse(&url).unwrap())
        .err()
        .expect("refused");
    assert_eq!(err.kind.code(), 75, "{}", err.message);
    assert!(
        err.message.starts_with(&format!(
            "cannot connect to postgres://agentq:***@127.0.0.1:{port}/agentq"
        )),
        "{}",
        err.message
    );
    assert!(!err.message.contains("s3cret"), "{}", err.message);
    assert!(!err.message.contains('\n'), "one line: {}", err.message);
}
mod cli;
mod store;
