//! Workers on several hosts over one Postgres database (issue 18, "Multi-host
//! simulation"). Each host is a home of its own: its own copy of the agent definitions,
//! its own `agentq.toml` (with a short `[store] lease`, so takeovers come quickly), its
//! own workspaces, and no file shared with another; what they share is the database,
//! reached through `AGENTQ_STORE`. Each host names its connections
//! (`application_name=…` in the URL), so the database can tell which host wrote what.
//!
//! The scenarios: 4 hosts racing over 100 sessions; workers killed with SIGKILL at
//! random moments and started again; a worker stopped with SIGSTOP past its lease and a
//! worker cut off from the database by a network partition, each while it holds a
//! session (neither may commit anything once another worker took the session over,
//! which a trigger recording every write proves, nor run another tool call); and the
//! database restarted mid-run. The sessions are audited from the database (events,
//! execution records, transcript) and the tool calls against the effect lines every
//! host's workspaces hold, with the audits of the file-store scenarios.
//!
//! They need PostgreSQL: `#[ignore]`d in a plain `cargo test`, run by
//! `scripts/postgres test` and `scripts/fault-suite`, and each says in one line why it
//! skipped where no server can run (`FAULT-SUITE-SKIP`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::it::postgres::server::{self, PrivateServer};

use super::*;

/// The lease of every host: a stalled owner is taken over after this long.
const LEASE: &str = "2s";
const LEASE_TIME: Duration = Duration::from_secs(2);

/// A test's connection to the shared server, or `None` (one line printed) without one.
fn shared_server_or_skip(test: &str) -> Option<&'static server::Server> {
    match server::server() {
        Ok(server) => Some(server),
        Err(why) => {
            skip(test, &format!("no PostgreSQL server here ({why})"));
            None
        }
    }
}

/// The one line a scenario prints when it cannot run here.
fn skip(test: &str, why: &str) {
    println!("FAULT-SUITE-SKIP test={test} {why}");
}

/// `url` with the connection named `name` (pg_stat_activity's and the audit's
/// `application_name`).
fn named(url: &str, name: &str) -> String {
    let joint = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joint}application_name={name}")
}

/// A simulated host: a home of its own, its commands on the database at `url`.
struct Host {
    name: String,
    env: TestEnv,
}

impl Host {
    /// A home with the agents `agents` (name, definition), a lease of [`LEASE`], its
    /// connections named `name`.
    fn new(url: &str, name: &str, agents: &[(&str, &str)]) -> Host {
        let env = TestEnv::on_store(&named(url, name));
        std::fs::write(
            env.home().join("agentq.toml"),
            format!("[store]\nlease = \"{LEASE}\"\n"),
        )
        .expect("agentq.toml");
        for (agent, text) in agents {
            env.write_agent(agent, text);
        }
        Host {
            name: name.to_owned(),
            env,
        }
    }

    /// Starts `agentq worker ARGS`, its log in `logs`.
    fn worker(&self, logs: &Path, args: &[&str]) -> Logged {
        let mut all = vec!["worker"];
        all.extend_from_slice(args);
        let n = std::fs::read_dir(logs).map_or(0, Iterator::count);
        Logged::spawn(&self.env, &all, logs.join(format!("{}-{n}.log", self.name)))
    }

    /// The effect lines the tool calls of session `id` left on this host.
    fn effects(&self, id: &str) -> String {
        std::fs::read_to_string(self.env.workspace(id).join("effects.log")).unwrap_or_default()
    }
}

impl Logged {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit (at most [`LONG`]) and the log.
    fn stop(&mut self) -> (std::process::ExitStatus, String) {
        signal(self.pid(), libc::SIGTERM);
        self.wait(LONG)
    }
}

/// The test's own connection to the database at `url`.
fn client(url: &str) -> ::postgres::Client {
    ::postgres::Client::connect(&named(url, "audit"), ::postgres::NoTls)
        .expect("connecting to the store")
}

/// The sessions' rows read back: what [`audit_events`] and [`audit_tool_calls`] check.
fn audit_sessions(
    db: &mut ::postgres::Client,
    hosts: &[&Host],
    ids: &[String],
    sent: &[Vec<Sent>],
    answer: &dyn Fn(&str) -> String,
    effects: bool,
    tally: &mut Tally,
) {
    for (i, id) in ids.iter().enumerate() {
        let log = session_log(db, id);
        let records: Vec<(String, Result<Option<Value>, String>)> = db
            .query(
                "SELECT id::text, record::text FROM executions WHERE session_id = $1::text::uuid",
                &[id],
            )
            .expect("executions")
            .iter()
            .map(|row| {
                let name: String = row.get(0);
                let record = serde_json::from_str(row.get::<_, &str>(1))
                    .map(Some)
                    .map_err(|e| format!("execution {name} does not parse ({e})"));
                (name, record)
            })
            .collect();
        audit_events(id, &log, &records, &sent[i], answer, tally);
        if effects {
            let transcript = lines(
                db,
                "SELECT body::text FROM transcript WHERE session_id = $1::text::uuid ORDER BY line",
                id,
                "transcript",
            );
            let all: String = hosts.iter().map(|host| host.effects(id)).collect();
            audit_tool_calls(id, &transcript, &all, &sent[i], tally);
        }
        let queued: i64 = db
            .query_one(
                "SELECT count(*) FROM inbox WHERE session_id = $1::text::uuid",
                &[id],
            )
            .expect("inbox")
            .get(0);
        if queued != 0 {
            tally.problem(format!("session {id}: {queued} entries left in the inbox"));
        }
    }
}

fn session_log(db: &mut ::postgres::Client, id: &str) -> Ndjson {
    lines(
        db,
        "SELECT body FROM events WHERE session_id = $1::text::uuid ORDER BY seq",
        id,
        "events",
    )
}

/// The rows of `sql` (one text column, `$1` the session) as NDJSON lines.
fn lines(db: &mut ::postgres::Client, sql: &str, id: &str, origin: &str) -> Ndjson {
    let mut bytes = Vec::new();
    for row in db.query(sql, &[&id]).expect(origin) {
        bytes.extend_from_slice(row.get::<_, &str>(0).as_bytes());
        bytes.push(b'\n');
    }
    parse_ndjson(&bytes, &format!("{origin} of {id}"))
}

fn count(db: &mut ::postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).expect(sql).get(0)
}

/// Sessions made by `host`, `n` of them, from `threads` threads.
fn new_sessions(host: &Host, agent: &str, n: usize, threads: usize) -> Vec<String> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let count = n / threads + usize::from(t < n % threads);
                scope.spawn(move || {
                    (0..count)
                        .map(|_| host.env.new_session(agent))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("session thread"))
            .collect()
    })
}

/// Problems in the logs of workers: a panic, or (with `strict`) an ERROR line.
fn log_problems(logs: &[(String, String)], strict: bool) -> Vec<String> {
    logs.iter()
        .filter(|(_, log)| log.contains("panicked") || (strict && log.contains(" ERROR ")))
        .map(|(name, log)| format!("{name}:\n{log}"))
        .collect()
}

/// The workers' log lines about the sessions the audit's problems name (at most 60),
/// so that a failure says what the workers did with them.
fn logs_about(problems: &[String], logs: &[(String, String)]) -> String {
    let sessions: Vec<&str> = problems
        .iter()
        .filter_map(|p| p.strip_prefix("session ")?.split(':').next())
        .collect();
    logs.iter()
        .flat_map(|(host, log)| log.lines().map(move |line| (host, line)))
        .filter(|(_, line)| sessions.iter().any(|s| line.contains(s)))
        .take(60)
        .map(|(host, line)| format!("{host}: {line}\n"))
        .collect()
}

// ---------------------------------------------------------------------------------
// 4 hosts × 100 sessions × 10 messages

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn four_hosts_over_one_database_run_100_sessions_of_10_messages_once_in_order() {
    const TEST: &str = "multihost_race";
    if shared_server_or_skip(TEST).is_none() {
        return;
    }
    let started = Instant::now();
    let url = server::new_database();
    let client_host = Host::new(&url, "client", &[("fast", FAST_AGENT)]);
    let hosts: Vec<Host> = (0..RACE_WORKERS)
        .map(|w| Host::new(&url, &format!("host{w}"), &[("fast", FAST_AGENT)]))
        .collect();
    let ids = new_sessions(&client_host, "fast", RACE_SESSIONS, 4);
    let mut sent = send_all(&client_host.env, &ids, 0..RACE_MESSAGES - RACE_LATE, 4);
    let queued = started.elapsed();

    let logs = tempfile::tempdir().expect("log dir");
    let racing = Instant::now();
    let mut workers: Vec<Logged> = hosts
        .iter()
        .map(|host| host.worker(logs.path(), &["--concurrency", "2"]))
        .collect();
    let late = send_all(
        &client_host.env,
        &ids,
        RACE_MESSAGES - RACE_LATE..RACE_MESSAGES,
        2,
    );
    for (all, more) in sent.iter_mut().zip(late) {
        all.extend(more);
    }
    let mut db = client(&url);
    wait_until(
        "every inbox to be drained",
        Duration::from_secs(300),
        || count(&mut db, "SELECT count(*) FROM inbox") == 0,
    );
    let drained = racing.elapsed();
    let worker_logs: Vec<(String, String)> = workers
        .iter_mut()
        .zip(&hosts)
        .map(|(worker, host)| {
            let (status, log) = worker.stop();
            assert_eq!(status.code(), Some(0), "{}'s worker:\n{log}", host.name);
            (host.name.clone(), log)
        })
        .collect();

    let mut tally = Tally::default();
    audit_sessions(
        &mut db,
        &[],
        &ids,
        &sent,
        &|text| format!("echo: {text}"),
        false,
        &mut tally,
    );
    let mut pids = BTreeSet::new();
    for id in &ids {
        audit_one_owner_at_a_time(id, &session_log(&mut db, id), &mut pids, &mut tally);
    }
    report(
        TEST,
        &[
            ("hosts", RACE_WORKERS as u64),
            ("sessions", RACE_SESSIONS as u64),
            ("hosts_that_ran", pids.len() as u64),
            ("messages", tally.messages),
            ("completed", tally.completed),
            ("duplicates", tally.duplicates),
            ("losses", tally.losses),
            ("not_completed", tally.not_completed),
            ("out_of_order", tally.out_of_order),
            ("seq_gaps", tally.seq_gaps),
            ("unparsable", tally.unparsable),
            ("problems", tally.problems.len() as u64),
            ("queue_ms", queued.as_millis() as u64),
            ("drain_ms", drained.as_millis() as u64),
            ("total_ms", started.elapsed().as_millis() as u64),
        ],
    );
    let problems = log_problems(&worker_logs, true);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        tally.problems.is_empty(),
        "{} problems:\n{}\nwhat the workers said about them:\n{}",
        tally.problems.len(),
        tally.problems.join("\n"),
        logs_about(&tally.problems, &worker_logs)
    );
    assert_eq!(tally.messages, (RACE_SESSIONS * RACE_MESSAGES) as u64);
    assert_eq!(tally.completed, tally.messages);
    assert!(
        pids.len() >= 2,
        "the hosts raced: executions ran in {pids:?}"
    );
}

// ---------------------------------------------------------------------------------
// kill -9 on many hosts

const KILL_HOSTS: usize = 4;
const KILL_HOST_SESSIONS: usize = 24;
/// Each session is kept this many messages ahead of the workers.
const KILL_BACKLOG: i64 = 2;

/// What a worker held when it was stopped for its kill.
#[derive(Default)]
struct Held {
    /// Sessions it owned with an execution in hand.
    running: u64,
    /// Of those, with a side-effecting call marked as started.
    mid_tool: u64,
    /// Of those, at their last attempt: a kill now would fail them by design.
    at_limit: Vec<String>,
}

/// The sessions owned by the worker `pid` (the row's `owner` is `host:pid:lease`).
fn held_by(db: &mut ::postgres::Client, pid: u32) -> Held {
    let rows = db
        .query(
            "SELECT id::text, state::text FROM sessions
             WHERE split_part(owner, ':', 2) = $1 AND lease_until > now()",
            &[&pid.to_string()],
        )
        .expect("owned sessions");
    let mut held = Held::default();
    for row in rows {
        let state: Value = serde_json::from_str(row.get::<_, &str>(1)).expect("state is JSON");
        let current = &state["current"];
        if current.is_null() {
            continue;
        }
        held.running += 1;
        held.mid_tool += u64::from(current["open_step"]["tool_started"].is_string());
        if current["attempts"].as_u64().unwrap_or(0) >= MAX_ATTEMPTS {
            held.at_limit.push(row.get(0));
        }
    }
    held
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn kill_9_of_workers_on_four_hosts_loses_duplicates_and_reruns_nothing() {
    const TEST: &str = "multihost_kill9";
    if shared_server_or_skip(TEST).is_none() {
        return;
    }
    let iterations = env_number("FAULT_ITERATIONS").unwrap_or(100);
    let seed = env_number("FAULT_SEED").unwrap_or_else(fresh_seed);
    println!(
        "FAULT-SUITE-SEED {TEST} seed={seed} iterations={iterations} (replay: FAULT_SEED={seed} FAULT_ITERATIONS={iterations})"
    );
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let url = server::new_database();
    // Enough script for a session that keeps getting messages for the whole run.
    let most = 4.max(iterations as usize * 2 / KILL_HOST_SESSIONS);
    let agent = effects_agent(most);
    let client_host = Host::new(&url, "client", &[("effects", &agent)]);
    let hosts: Vec<Host> = (0..KILL_HOSTS)
        .map(|w| Host::new(&url, &format!("host{w}"), &[("effects", &agent)]))
        .collect();
    let ids = new_sessions(&client_host, "effects", KILL_HOST_SESSIONS, 4);
    let sent: Mutex<Vec<Vec<Sent>>> = Mutex::new(vec![Vec::new(); ids.len()]);
    let send = |i: usize| {
        let k = sent.lock().unwrap()[i].len();
        let text = format!("message {k} of session {i}");
        let id = client_host.env.send(&ids[i], &text);
        sent.lock().unwrap()[i].push(Sent { id, text });
    };
    for i in 0..ids.len() {
        send(i);
        send(i);
    }

    let logs = tempfile::tempdir().expect("log dir");
    let mut workers: Vec<Logged> = hosts
        .iter()
        .map(|host| host.worker(logs.path(), &["--concurrency", "3"]))
        .collect();
    let mut db = client(&url);
    let sending = AtomicBool::new(true);
    let mut worker_logs: Vec<(String, String)> = Vec::new();
    let mut kills = 0u64;
    let mut interrupted = 0u64;
    let mut mid_tool = 0u64;
    let mut deferred = 0u64;
    let killing = std::thread::scope(|scope| {
        // The messages are queued while the workers run and die: every session kept
        // KILL_BACKLOG ahead, until it got all its script has.
        scope.spawn(|| {
            let mut db = client(&url);
            while sending.load(Ordering::Relaxed) {
                let mut more = false;
                for (i, id) in ids.iter().enumerate() {
                    if sent.lock().unwrap()[i].len() >= most {
                        continue;
                    }
                    more = true;
                    let queued: i64 = db
                        .query_one(
                            "SELECT count(*) FROM inbox WHERE session_id = $1::text::uuid",
                            &[id],
                        )
                        .expect("inbox")
                        .get(0);
                    if queued < KILL_BACKLOG {
                        send(i);
                    }
                }
                if !more {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let killing = Instant::now();
        while kills < iterations {
            std::thread::sleep(Duration::from_millis(if rng.between(0, 4) == 0 {
                rng.between(0, 40)
            } else {
                rng.between(40, 300)
            }));
            // A host at random, but one running an execution when there is one: the
            // workers drain faster than the moments come, and a kill of an idle worker
            // tests little.
            let first = rng.between(0, KILL_HOSTS as u64 - 1) as usize;
            let w = (0..KILL_HOSTS)
                .map(|k| (first + k) % KILL_HOSTS)
                .find(|&w| held_by(&mut db, workers[w].pid()).running > 0)
                .unwrap_or(first);
            let pid = workers[w].pid();
            // Stopped first, so that what it holds is read as the kill leaves it.
            signal(pid, libc::SIGSTOP);
            wait_stopped(pid);
            let held = held_by(&mut db, pid);
            if !held.at_limit.is_empty() {
                // A fourth start would fail the execution by design (too_many_attempts):
                // this scenario is about crashes, not that limit. Let it settle first.
                deferred += 1;
                signal(pid, libc::SIGCONT);
                wait_until("an execution at its last attempt to settle", LONG, || {
                    held_by(&mut db, pid).at_limit.is_empty()
                });
                continue;
            }
            signal(pid, libc::SIGKILL);
            let (status, log) = workers[w].wait(LONG);
            if status.signal() != Some(libc::SIGKILL) {
                worker_logs.push((
                    format!("a worker of {} exited by itself", hosts[w].name),
                    log,
                ));
            } else {
                worker_logs.push((hosts[w].name.clone(), log));
            }
            kills += 1;
            interrupted += u64::from(held.running > 0);
            mid_tool += u64::from(held.mid_tool > 0);
            workers[w] = hosts[w].worker(logs.path(), &["--concurrency", "3"]);
        }
        let killing = killing.elapsed();
        sending.store(false, Ordering::Relaxed);
        killing
    });
    let sent = sent.into_inner().unwrap();
    let total: usize = sent.iter().map(Vec::len).sum();
    wait_until(
        "every inbox to be drained",
        Duration::from_secs(300),
        || count(&mut db, "SELECT count(*) FROM inbox") == 0,
    );
    for (worker, host) in workers.iter_mut().zip(&hosts) {
        let (_, log) = worker.stop();
        worker_logs.push((host.name.clone(), log));
    }

    let mut tally = Tally::default();
    let host_refs: Vec<&Host> = hosts.iter().collect();
    audit_sessions(
        &mut db,
        &host_refs,
        &ids,
        &sent,
        &|text| format!("done: {text}"),
        true,
        &mut tally,
    );
    // Executions started again by another worker after their owner's kill.
    let takeovers = count(
        &mut db,
        "SELECT count(*) FROM events WHERE type = 'execution.started'
         AND (body::jsonb -> 'payload' ->> 'attempt')::int > 1",
    ) as u64;
    report(
        TEST,
        &[
            ("seed", seed),
            ("iterations", iterations),
            ("hosts", KILL_HOSTS as u64),
            ("sessions", KILL_HOST_SESSIONS as u64),
            ("kills", kills),
            ("interrupted", interrupted),
            ("mid_tool", mid_tool),
            ("deferred", deferred),
            ("takeovers", takeovers),
            ("killing_ms", killing.as_millis() as u64),
            ("total_ms", started.elapsed().as_millis() as u64),
        ]
        .into_iter()
        .chain(tally.counts())
        .collect::<Vec<_>>(),
    );
    let replay = format!("replay with FAULT_SEED={seed} FAULT_ITERATIONS={iterations}");
    let problems = log_problems(&worker_logs, false);
    assert!(problems.is_empty(), "{replay}: {}", problems.join("\n"));
    let exited: Vec<&String> = worker_logs
        .iter()
        .filter(|(name, _)| name.contains("exited by itself"))
        .map(|(name, _)| name)
        .collect();
    assert!(exited.is_empty(), "{replay}: {exited:?}");
    assert!(
        tally.problems.is_empty(),
        "{replay}: {} problems:\n{}\nwhat the workers said about them:\n{}",
        tally.problems.len(),
        tally.problems.join("\n"),
        logs_about(&tally.problems, &worker_logs)
    );
    assert_eq!(tally.messages, total as u64, "{replay}");
    assert_eq!(tally.completed, tally.messages, "{replay}");
    assert!(
        interrupted * 2 >= kills,
        "{replay}: only {interrupted} of {kills} kills interrupted an execution"
    );
    assert!(takeovers > 0, "{replay}: no execution was taken over");
}

// ---------------------------------------------------------------------------------
// The fence: a worker stopped or cut off past its lease

/// A table of every row written to a session's tables, by whom (the connection's
/// `application_name`) and under which epoch of the session's lease (as the writing
/// transaction saw it), filled by triggers. A row is here only if its transaction
/// committed, which is what the fence must prevent.
const AUDIT_TRIGGERS: &str = r#"
CREATE TABLE audit_writes (
    id bigserial PRIMARY KEY,
    app text NOT NULL,
    tbl text NOT NULL,
    op text NOT NULL,
    session_id uuid,
    epoch bigint
);
CREATE FUNCTION audit_write() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
    sid uuid;
    ep bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    IF TG_TABLE_NAME = 'sessions' THEN
        sid := r.id;
        ep := r.epoch;
    ELSE
        sid := r.session_id;
        SELECT epoch INTO ep FROM sessions WHERE id = sid;
    END IF;
    INSERT INTO audit_writes (app, tbl, op, session_id, epoch)
    VALUES (current_setting('application_name'), TG_TABLE_NAME, TG_OP, sid, ep);
    RETURN NULL;
END $$;
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON sessions FOR EACH ROW EXECUTE FUNCTION audit_write();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON inbox FOR EACH ROW EXECUTE FUNCTION audit_write();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON executions FOR EACH ROW EXECUTE FUNCTION audit_write();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON transcript FOR EACH ROW EXECUTE FUNCTION audit_write();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON events FOR EACH ROW EXECUTE FUNCTION audit_write();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON keys FOR EACH ROW EXECUTE FUNCTION audit_write();
-- An owner's transactions are a few milliseconds long (its events are single
-- statements): a transcript line, always written inside one, takes 150 ms here, so the
-- moment "holding the row" lasts long enough to be caught.
CREATE FUNCTION slow_line() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(0.15);
    RETURN NULL;
END $$;
CREATE TRIGGER slow AFTER INSERT ON transcript FOR EACH ROW EXECUTE FUNCTION slow_line();
"#;

/// Messages of a fenced session: the owner is cut off in one of them, and the worker
/// taking over completes what is left.
const FENCE_MESSAGES: usize = 3;

/// Streams a word every 60 ms and spends 400 ms in each tool call before its effect:
/// long enough to catch a worker in either.
fn fence_agent(messages: usize) -> String {
    paced_effects_agent(messages, "effects.log", 60, 400)
}

/// Where the owner is when it is cut off.
#[derive(Clone, Copy, Debug, PartialEq)]
enum CutAt {
    /// Any moment of its execution (it streams most of the time).
    MidExecution,
    /// Inside a transaction: its connection holds the session's row locked.
    HoldingTheRow,
    /// Running a side-effecting tool call: its command pausing before its effect.
    MidTool,
}

impl CutAt {
    const ALL: [CutAt; 3] = [CutAt::MidExecution, CutAt::HoldingTheRow, CutAt::MidTool];
}

/// The session's owner as the row says: `(pid, epoch)`, while its lease holds.
fn owner(db: &mut ::postgres::Client, id: &str) -> Option<(u32, i64, Value)> {
    db.query_opt(
        "SELECT split_part(owner, ':', 2), epoch, state::text FROM sessions
         WHERE id = $1::text::uuid AND owner IS NOT NULL AND lease_until > now()",
        &[&id],
    )
    .expect("the owner")
    .map(|row| {
        (
            row.get::<_, &str>(0).parse().expect("a pid"),
            row.get(1),
            serde_json::from_str(row.get::<_, &str>(2)).expect("state is JSON"),
        )
    })
}

/// Whether a connection of `app` is inside a transaction: between its statements, or
/// in the 150 ms of a transcript line (`slow_line`).
fn in_transaction(db: &mut ::postgres::Client, app: &str) -> bool {
    count(
        db,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}'
             AND (state = 'idle in transaction' OR wait_event = 'PgSleep')"
        ),
    ) > 0
}

/// The child processes of `pid` that have not exited (a zombie is one that exited,
/// waiting for a stopped parent to reap it).
fn live_children(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|task| {
            std::fs::read_to_string(task.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|child| child.parse().ok())
                .collect::<Vec<u32>>()
        })
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            })
        })
        .collect()
}

/// Whether a tool command of the worker `pid` is in its pause before the effect (its
/// `sleep`): it read its arguments and runs on by itself.
fn tool_pausing(pid: u32) -> bool {
    live_children(pid).into_iter().any(|command| {
        live_children(command).into_iter().any(|grandchild| {
            std::fs::read_to_string(format!("/proc/{grandchild}/comm"))
                .is_ok_and(|comm| comm.trim() == "sleep")
        })
    })
}

/// What one cut-off owner did after another worker took its session over.
#[derive(Default)]
struct Fenced {
    rounds: u64,
    takeovers: u64,
    /// Rows the cut-off owner committed to the session after the takeover, under its
    /// old epoch: the fence broken.
    writes_after: u64,
    /// Writes it tried after it came back and that were refused (its log says it lost
    /// the lease).
    refused: u64,
    /// Tool calls it ran after it came back.
    tool_calls_after: u64,
    /// Tries at a moment that had passed by the time the owner was cut off.
    missed: u64,
    problems: Vec<String>,
}

/// How an owner is cut off from the database and let back.
trait Cut {
    fn cut(&mut self, worker: &Logged);
    fn restore(&mut self, worker: &Logged);
}

struct Sigstop;

impl Cut for Sigstop {
    fn cut(&mut self, worker: &Logged) {
        signal(worker.pid(), libc::SIGSTOP);
        wait_stopped(worker.pid());
    }
    fn restore(&mut self, worker: &Logged) {
        signal(worker.pid(), libc::SIGCONT);
    }
}

/// One round of the fence: `owner_host`'s worker (`spawn_owner`) holds a new session
/// of `client_host` at `moment`, is cut off (`cut`), `taker`'s worker takes the
/// session over past the lease and completes the message, and the owner comes back.
#[allow(clippy::too_many_arguments)]
fn fence_round(
    url: &str,
    client_host: &Host,
    owner_host: &Host,
    spawn_owner: &dyn Fn(&Path) -> Logged,
    taker: &Host,
    cut: &mut dyn Cut,
    moment: CutAt,
    logs: &Path,
    fenced: &mut Fenced,
) {
    let mut db = client(url);
    let id = client_host.env.new_session("effects");
    // Several, so that a moment missed comes again in a later message.
    let sent: Vec<Sent> = (0..FENCE_MESSAGES)
        .map(|k| {
            let text = format!("message {k} of the fenced session");
            let id = client_host.env.send(&id, &text);
            Sent { id, text }
        })
        .collect();
    let mut owner_worker = spawn_owner(logs);
    let pid = owner_worker.pid();
    // Cut off at the moment wanted, tried again when it passed before the cut landed.
    let epoch = loop {
        wait_until(&format!("the owner to be {moment:?}"), LONG, || {
            let Some((who, _, state)) = owner(&mut db, &id) else {
                return false;
            };
            let current = &state["current"];
            who == pid
                && !current.is_null()
                && match moment {
                    CutAt::MidExecution => current["steps"].as_u64() >= Some(1),
                    CutAt::HoldingTheRow => in_transaction(&mut db, &owner_host.name),
                    CutAt::MidTool => tool_pausing(pid),
                }
        });
        cut.cut(&owner_worker);
        let at = owner(&mut db, &id);
        let still = match (moment, &at) {
            (_, None) => false,
            (CutAt::HoldingTheRow, _) => {
                // Still inside its transaction a moment later: cut off there.
                std::thread::sleep(Duration::from_millis(100));
                in_transaction(&mut db, &owner_host.name)
            }
            (_, Some((who, _, state))) => *who == pid && !state["current"].is_null(),
        };
        if let (true, Some((_, epoch, _))) = (still, at) {
            break epoch;
        }
        fenced.missed += 1;
        assert!(fenced.missed < 200, "never caught the owner {moment:?}");
        cut.restore(&owner_worker);
    };
    fenced.rounds += 1;

    let mut taker_worker = taker.worker(logs, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while session_log(&mut db, &id)
        .values
        .iter()
        .filter(|e| e["type"] == "execution.finished")
        .count()
        < FENCE_MESSAGES
    {
        if Instant::now() >= deadline {
            let activity: Vec<String> = db
                .query(
                    "SELECT format('%s %s %s/%s: %s', application_name, state,
                            wait_event_type, wait_event, left(query, 120))
                     FROM pg_stat_activity WHERE datname = current_database()",
                    &[],
                )
                .expect("pg_stat_activity")
                .iter()
                .map(|row| row.get(0))
                .collect();
            cut.restore(&owner_worker);
            panic!(
                "{moment:?}: the other worker did not complete the messages within 60 s; \
                 the database's connections:\n  {}\nits log:\n{}",
                activity.join("\n  "),
                taker_worker.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    fenced.takeovers += 1;
    // The claim that took it over: the first row of a later epoch.
    let takeover: i64 = db
        .query_one(
            "SELECT min(id) FROM audit_writes WHERE session_id = $1::text::uuid AND epoch > $2",
            &[&id as &(dyn ::postgres::types::ToSql + Sync), &epoch],
        )
        .expect("the takeover")
        .get::<_, Option<i64>>(0)
        .expect("a row of the epoch that took the session over");
    // A tool command the owner started before the cut runs on meanwhile; it is done.
    wait_until("the owner's tool command to end", LONG, || {
        live_children(pid).is_empty()
    });
    let effects_at_return = owner_host.effects(&id).lines().count();
    let log_at_return = owner_worker.log_text().len();

    cut.restore(&owner_worker);
    // The owner notices that it lost the session at its next write, or that its
    // connection was ended while it was away.
    wait_until(
        "the owner to notice it lost the session",
        Duration::from_secs(60),
        || {
            let log = owner_worker.log_text();
            let after = log.get(log_at_return..).unwrap_or("");
            after.contains(&format!("another worker took session {id} over"))
                || after.contains(&format!("lost the ownership of session {id}"))
                || after.contains("taken over by another worker")
                || after.contains("lost the connection")
        },
    );
    // What it may still do, it does within a lease: then it must have done nothing.
    std::thread::sleep(LEASE_TIME);
    let (_, owner_log) = owner_worker.stop();
    let (_, taker_log) = taker_worker.stop();
    let after = owner_log.get(log_at_return..).unwrap_or("");
    fenced.refused += after
        .lines()
        .filter(|line| {
            line.contains(&format!("another worker took session {id} over"))
                || line.contains(&format!("lost the ownership of session {id}"))
                || line.contains("taken over by another worker")
        })
        .count() as u64;

    // Nothing is queued for the session after the takeover, so the owner has no
    // reason to claim it again: any row of its after the claim that took it over
    // (in any table, under any epoch) was committed past the fence.
    let violations: Vec<String> = db
        .query(
            "SELECT format('%s %s %s (epoch %s)', id, op, tbl, epoch) FROM audit_writes
             WHERE session_id = $1::text::uuid AND app = $2 AND id > $3
             ORDER BY id",
            &[
                &id as &(dyn ::postgres::types::ToSql + Sync),
                &owner_host.name,
                &takeover,
            ],
        )
        .expect("the writes after the takeover")
        .iter()
        .map(|row| row.get(0))
        .collect();
    fenced.writes_after += violations.len() as u64;
    if !violations.is_empty() {
        fenced.problems.push(format!(
            "{moment:?}: the cut-off owner wrote after the takeover (audit row {takeover}): {violations:?}\n{after}"
        ));
    }
    let effects_after = owner_host.effects(&id).lines().count();
    fenced.tool_calls_after += (effects_after - effects_at_return) as u64;
    if effects_after != effects_at_return {
        fenced.problems.push(format!(
            "{moment:?}: the cut-off owner ran {} tool calls after it came back",
            effects_after - effects_at_return
        ));
    }

    let mut tally = Tally::default();
    audit_sessions(
        &mut db,
        &[owner_host, taker],
        std::slice::from_ref(&id),
        &[sent],
        &|text| format!("done: {text}"),
        true,
        &mut tally,
    );
    fenced
        .problems
        .extend(tally.problems.iter().map(|p| format!("{moment:?}: {p}")));
    for (name, log) in [("the owner", &owner_log), ("the taker", &taker_log)] {
        if log.contains("panicked") {
            fenced
                .problems
                .push(format!("{moment:?}: {name} panicked:\n{log}"));
        }
    }
}

fn report_fence(test: &str, fenced: &Fenced, started: Instant) {
    report(
        test,
        &[
            ("rounds", fenced.rounds),
            ("takeovers", fenced.takeovers),
            ("fenced_refused", fenced.refused),
            ("fence_violations", fenced.writes_after),
            ("tool_calls_after_fence", fenced.tool_calls_after),
            ("missed_moments", fenced.missed),
            ("problems", fenced.problems.len() as u64),
            ("total_ms", started.elapsed().as_millis() as u64),
        ],
    );
}

/// A database of the shared server with the audit triggers, migrated first.
fn audited(url: &str, host: &Host) {
    host.env.ok(&["store", "migrate"]);
    client(url)
        .batch_execute(AUDIT_TRIGGERS)
        .expect("the audit triggers");
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_worker_stopped_past_its_lease_commits_nothing_after_the_takeover() {
    const TEST: &str = "multihost_sigstop";
    if shared_server_or_skip(TEST).is_none() {
        return;
    }
    let started = Instant::now();
    let url = server::new_database();
    let agent = fence_agent(FENCE_MESSAGES);
    let client_host = Host::new(&url, "client", &[("effects", &agent)]);
    let owner_host = Host::new(&url, "stopped", &[("effects", &agent)]);
    let taker = Host::new(&url, "taker", &[("effects", &agent)]);
    audited(&url, &client_host);
    let logs = tempfile::tempdir().expect("log dir");
    let mut fenced = Fenced::default();
    for moment in CutAt::ALL {
        fence_round(
            &url,
            &client_host,
            &owner_host,
            &|logs| owner_host.worker(logs, &[]),
            &taker,
            &mut Sigstop,
            moment,
            logs.path(),
            &mut fenced,
        );
    }
    report_fence(TEST, &fenced, started);
    assert!(
        fenced.problems.is_empty(),
        "{}",
        fenced.problems.join("\n\n")
    );
    assert_eq!(fenced.takeovers, CutAt::ALL.len() as u64);
}

// ---------------------------------------------------------------------------------
// A network partition

/// A network namespace of the test's own, linked to this one by a veth pair with
/// private addresses: `10.250.N.1` here, `10.250.N.2` inside. Removed when dropped
/// (the veth pair goes with it).
struct Netns {
    name: String,
    link: String,
    n: u32,
}

impl Netns {
    /// Made, or why not.
    fn create() -> Result<Netns, String> {
        let n = std::process::id() % 200 + 20;
        let netns = Netns {
            name: format!("agentq-mh-{}", std::process::id()),
            link: format!("aqmh{n}h"),
            n,
        };
        let inside = format!("aqmh{n}n");
        let host_addr = format!("{}/30", netns.host_addr());
        let ns_addr = format!("{}/30", netns.ns_addr());
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &netns.name],
            vec![
                "link",
                "add",
                &netns.link,
                "type",
                "veth",
                "peer",
                "name",
                &inside,
            ],
            vec!["link", "set", &inside, "netns", &netns.name],
            vec!["addr", "add", &host_addr, "dev", &netns.link],
            vec!["link", "set", &netns.link, "up"],
            vec!["-n", &netns.name, "addr", "add", &ns_addr, "dev", &inside],
            vec!["-n", &netns.name, "link", "set", &inside, "up"],
            vec!["-n", &netns.name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            ip(&step)?;
        }
        Ok(netns)
    }

    fn host_addr(&self) -> String {
        format!("10.250.{}.1", self.n)
    }

    fn ns_addr(&self) -> String {
        format!("10.250.{}.2", self.n)
    }

    fn net(&self) -> String {
        format!("10.250.{}.0/30", self.n)
    }

    /// Sets the link up or down (from this side: nothing passes either way).
    fn set_link(&self, up: bool) {
        ip(&["link", "set", &self.link, if up { "up" } else { "down" }])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `command` run inside the namespace (`ip netns exec` becomes the command, so its
    /// pid is the command's).
    fn wrap(&self, command: &std::process::Command) -> std::process::Command {
        let mut wrapped = std::process::Command::new("ip");
        wrapped
            .args(["netns", "exec", &self.name])
            .arg(command.get_program())
            .args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.link]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Cuts the link of the namespace the owner runs in; `url` is the database's, to
/// check the owner reaches it through the link.
struct Partition<'a>(&'a Netns, &'a str);

impl Cut for Partition<'_> {
    fn cut(&mut self, _: &Logged) {
        let through_the_link = count(
            &mut client(self.1),
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'partitioned'
                 AND client_addr = '{}'",
                self.0.ns_addr()
            ),
        );
        assert!(
            through_the_link > 0,
            "the owner is not connected through the veth"
        );
        self.0.set_link(false);
    }
    fn restore(&mut self, _: &Logged) {
        self.0.set_link(true);
    }
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_worker_cut_off_by_a_partition_past_its_lease_commits_nothing_after_the_takeover() {
    const TEST: &str = "multihost_partition";
    if shared_server_or_skip(TEST).is_none() {
        return;
    }
    let started = Instant::now();
    let netns = match Netns::create() {
        Ok(netns) => netns,
        Err(why) => return skip(TEST, &format!("cannot make a network namespace: {why}")),
    };
    let pg = PrivateServer::start(&[&netns.host_addr()], &[&netns.net()])
        .unwrap_or_else(|why| panic!("the private PostgreSQL: {why}"));
    let url = pg.new_database("127.0.0.1");
    // The same database, as the namespace reaches it.
    let inside_url = url.replace("127.0.0.1", &netns.host_addr());
    let agent = fence_agent(FENCE_MESSAGES);
    let client_host = Host::new(&url, "client", &[("effects", &agent)]);
    let owner_host = Host::new(&inside_url, "partitioned", &[("effects", &agent)]);
    let taker = Host::new(&url, "taker", &[("effects", &agent)]);
    audited(&url, &client_host);
    let logs = tempfile::tempdir().expect("log dir");
    let spawn_owner = |logs: &Path| {
        let n = std::fs::read_dir(logs).map_or(0, Iterator::count);
        let log = logs.join(format!("partitioned-{n}.log"));
        let mut command = owner_host.env.cmd();
        command.arg("worker");
        let child = netns
            .wrap(&command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn agentq in the namespace");
        Logged { child, log }
    };
    let mut fenced = Fenced::default();
    for moment in CutAt::ALL {
        fence_round(
            &url,
            &client_host,
            &owner_host,
            &spawn_owner,
            &taker,
            &mut Partition(&netns, &url),
            moment,
            logs.path(),
            &mut fenced,
        );
    }
    report_fence(TEST, &fenced, started);
    assert!(
        fenced.problems.is_empty(),
        "{}",
        fenced.problems.join("\n\n")
    );
    assert_eq!(fenced.takeovers, CutAt::ALL.len() as u64);
}

// ---------------------------------------------------------------------------------
// The database restarted mid-run

const RESTART_HOSTS: usize = 3;
const RESTART_SESSIONS: usize = 24;
const RESTART_BEFORE: usize = 4;
const RESTART_AFTER: usize = 2;

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn workers_on_three_hosts_reconnect_after_the_database_restarts_and_lose_nothing() {
    const TEST: &str = "multihost_db_restart";
    if let Err(why) = server::server() {
        return skip(TEST, &format!("no PostgreSQL server here ({why})"));
    }
    let started = Instant::now();
    let mut pg = PrivateServer::start(&[], &[])
        .unwrap_or_else(|why| panic!("the private PostgreSQL: {why}"));
    let url = pg.new_database("127.0.0.1");
    let agent = effects_agent(RESTART_BEFORE + RESTART_AFTER);
    let client_host = Host::new(&url, "client", &[("effects", &agent)]);
    let hosts: Vec<Host> = (0..RESTART_HOSTS)
        .map(|w| Host::new(&url, &format!("host{w}"), &[("effects", &agent)]))
        .collect();
    let ids = new_sessions(&client_host, "effects", RESTART_SESSIONS, 4);
    let mut sent = send_all(&client_host.env, &ids, 0..RESTART_BEFORE, 4);
    let total = RESTART_SESSIONS * (RESTART_BEFORE + RESTART_AFTER);

    let logs = tempfile::tempdir().expect("log dir");
    let mut workers: Vec<Logged> = hosts
        .iter()
        .map(|host| host.worker(logs.path(), &["--concurrency", "3"]))
        .collect();
    let finished = |db: &mut ::postgres::Client| {
        count(
            db,
            "SELECT count(*) FROM events WHERE type = 'execution.finished'",
        )
    };
    let mut db = client(&url);
    wait_until("a third of the messages to finish", LONG, || {
        finished(&mut db) as usize >= total / 3
    });
    drop(db);
    let running_at_stop = {
        let mut db = client(&url);
        count(
            &mut db,
            "SELECT count(*) FROM sessions WHERE owner IS NOT NULL AND state -> 'current' <> 'null'::jsonb",
        )
    };
    let stopped_at = Instant::now();
    pg.stop();
    wait_until("every worker to notice", LONG, || {
        workers
            .iter()
            .all(|w| w.log_text().contains("lost the connection"))
    });
    // Down past the lease, so that the owners come back to leases that expired.
    if let Some(left) = LEASE_TIME.checked_sub(stopped_at.elapsed()) {
        std::thread::sleep(left);
    }
    pg.start_again()
        .unwrap_or_else(|why| panic!("starting the server again: {why}"));
    let outage = stopped_at.elapsed();
    let late = send_all(
        &client_host.env,
        &ids,
        RESTART_BEFORE..RESTART_BEFORE + RESTART_AFTER,
        2,
    );
    for (all, more) in sent.iter_mut().zip(late) {
        all.extend(more);
    }
    let mut db = client(&url);
    wait_until(
        "every inbox to be drained",
        Duration::from_secs(300),
        || count(&mut db, "SELECT count(*) FROM inbox") == 0,
    );
    let reconnected = workers
        .iter()
        .filter(|w| w.log_text().contains(" again after "))
        .count();
    let worker_logs: Vec<(String, String)> = workers
        .iter_mut()
        .zip(&hosts)
        .map(|(worker, host)| (host.name.clone(), worker.stop().1))
        .collect();
    let reconnects: usize = worker_logs
        .iter()
        .map(|(_, log)| log.matches(" again after ").count())
        .sum();

    let mut tally = Tally::default();
    let host_refs: Vec<&Host> = hosts.iter().collect();
    audit_sessions(
        &mut db,
        &host_refs,
        &ids,
        &sent,
        &|text| format!("done: {text}"),
        true,
        &mut tally,
    );
    report(
        TEST,
        &[
            ("hosts", RESTART_HOSTS as u64),
            ("sessions", RESTART_SESSIONS as u64),
            ("restarts", 1),
            ("running_at_restart", running_at_stop as u64),
            ("workers_reconnected", reconnected as u64),
            ("reconnects", reconnects as u64),
            ("outage_ms", outage.as_millis() as u64),
            ("total_ms", started.elapsed().as_millis() as u64),
        ]
        .into_iter()
        .chain(tally.counts())
        .collect::<Vec<_>>(),
    );
    let problems = log_problems(&worker_logs, false);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(
        reconnected, RESTART_HOSTS,
        "every worker says it connected again:\n{worker_logs:?}"
    );
    assert!(
        tally.problems.is_empty(),
        "{} problems:\n{}\nwhat the workers said about them:\n{}",
        tally.problems.len(),
        tally.problems.join("\n"),
        logs_about(&tally.problems, &worker_logs)
    );
    assert_eq!(tally.messages, total as u64);
    assert_eq!(tally.completed, tally.messages);
}
