//! `PgStore` through the store's traits and the worker's drain, against a real
//! PostgreSQL: what the file store guarantees, the Postgres store guarantees too.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentq::domain::event::EventPayload;
use agentq::domain::execution::ExecStatus;
use agentq::domain::inbox::EntryKind;
use agentq::domain::session::{EventsPreset, SessionStatus};
use agentq::domain::transcript::Message;
use agentq::home::Home;
use agentq::ids::V7Ids;
use agentq::store::pg::{DbUrl, PgStore};
use agentq::store::{Claimed, FileStore, LeaseLost, NewEntry, NewSession, Next, Start, Store};
use agentq::time::SystemClock;
use agentq::worker::{self, Shutdown};
use uuid::Uuid;

use super::server;
use crate::it::ECHO_AGENT;

/// A home with the `echo` agent, and a store in a fresh database.
fn setup() -> (tempfile::TempDir, PgStore) {
    let home = home_with_agent();
    let store = open(&server::new_database(), home.path());
    (home, store)
}

fn home_with_agent() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join("agents")).unwrap();
    std::fs::write(home.path().join("agents/echo.toml"), ECHO_AGENT).unwrap();
    home
}

fn open(url: &str, home: &Path) -> PgStore {
    PgStore::open(
        &DbUrl::parse(url).unwrap(),
        home,
        Arc::new(SystemClock),
        Arc::new(V7Ids),
    )
    .unwrap_or_else(|e| panic!("{}", e.message))
}

fn new_session(store: &dyn Store) -> Uuid {
    store
        .create_session(NewSession {
            agent: "echo".to_owned(),
            title: Some("t".to_owned()),
            config: BTreeMap::new(),
            events: EventsPreset::Standard,
            agent_hash: "test".to_owned(),
        })
        .unwrap()
        .id
}

fn entry(kind: EntryKind, content: &str, key: Option<&str>) -> NewEntry {
    NewEntry {
        kind,
        content: content.to_owned(),
        key: key.map(str::to_owned),
        metadata: Default::default(),
        raise_session_tokens: 0,
    }
}

fn send(store: &dyn Store, id: Uuid, text: &str) -> Uuid {
    store
        .session(id)
        .enqueue(entry(EntryKind::User, text, None))
        .unwrap()
        .id
}

/// Every event of the session, from the start.
fn events(store: &dyn Store, id: Uuid) -> Vec<agentq::domain::event::RawEvent> {
    let mut feed = store
        .session(id)
        .follow(agentq::store::Position::START)
        .unwrap();
    feed.read()
        .unwrap()
        .into_iter()
        .map(|line| line.event.expect("every line is an event"))
        .collect()
}

fn types(store: &dyn Store, id: Uuid) -> Vec<String> {
    events(store, id).into_iter().map(|e| e.kind).collect()
}

fn owned(store: &dyn Store, id: Uuid) -> agentq::store::Owned {
    match store.claim(id, &worker::this_worker()).unwrap() {
        Claimed::Owned(lease) => lease,
        Claimed::Busy => panic!("busy"),
        Claimed::Gone => panic!("gone"),
    }
}

/// An event an owner may append, to see whether its writes are still taken.
fn processing() -> EventPayload {
    EventPayload::AgentStatus(agentq::domain::event::AgentStatusChanged {
        status: agentq::domain::event::AgentStatus::Processing,
        previous_status: agentq::domain::event::AgentStatus::Idle,
    })
}

/// A tool call's start: the event an owner writes before the call runs, not later
/// with others, so that the fence stops a tool from running for an owner that lost
/// its lease.
fn tool_started() -> EventPayload {
    EventPayload::ToolStarted(agentq::domain::event::ToolStarted {
        tool_name: "read_file".into(),
        tool_call_id: "call_1".into(),
        server: None,
        args_summary: None,
        args: None,
    })
}

/// The runtime the async parts run on (the test server's client must not be).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn drain(store: &dyn Store, home: &Path, id: Uuid) -> worker::Drained {
    runtime()
        .block_on(worker::drain(
            store,
            &Home::new(home.to_owned()),
            id,
            &Shutdown::default(),
            &worker::this_worker(),
            None,
        ))
        .unwrap()
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn sessions_are_created_found_by_prefix_and_listed() {
    let (_home, store) = setup();
    let first = new_session(&store);
    let second = new_session(&store);
    assert_eq!(store.session_ids().unwrap(), [first, second]);
    let found = store.resolve(&first.to_string()[..13]).unwrap();
    assert_eq!(found.id(), first);
    assert_eq!(found.meta().unwrap().agent, "echo");
    assert_eq!(found.meta().unwrap().status, SessionStatus::Active);
    assert_eq!(types(&store, first), ["session.created"]);
    assert_eq!(events(&store, first)[0].seq, 1);
    let err = store.resolve(&Uuid::now_v7().to_string()).err().unwrap();
    assert!(err.to_string().contains("no session"), "{err}");
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_key_sent_twice_queues_one_message() {
    let (_home, store) = setup();
    let id = new_session(&store);
    let session = store.session(id);
    let first = session
        .enqueue(entry(EntryKind::User, "hi", Some("k")))
        .unwrap();
    let again = session
        .enqueue(entry(EntryKind::User, "hi", Some("k")))
        .unwrap();
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(again.id, first.id);
    assert_eq!(again.seq, None);
    assert_eq!(session.inbox().unwrap().len(), 1);
    assert_eq!(types(&store, id), ["session.created", "message.queued"]);
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn seqs_stay_gapless_across_concurrent_senders() {
    let (_home, store) = setup();
    let id = new_session(&store);
    std::thread::scope(|scope| {
        for t in 0..4 {
            let store = &store;
            scope.spawn(move || {
                for i in 0..10 {
                    send(store, id, &format!("{t}-{i}"));
                }
            });
        }
    });
    let seqs: Vec<u64> = events(&store, id).iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=41).collect::<Vec<_>>());
    let mut entries: Vec<u64> = store
        .session(id)
        .inbox()
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    entries.sort_unstable();
    assert_eq!(entries, (1..=40).collect::<Vec<_>>());
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_message_runs_to_completion_with_the_file_stores_events() {
    let (home, store) = setup();
    let id = new_session(&store);
    let message = send(&store, id, "hello");
    let drained = drain(&store, home.path(), id);
    assert_eq!(drained.settled, 1);

    let session = store.session(id);
    let execs = session.executions().unwrap();
    assert_eq!(execs.len(), 1);
    assert_eq!(execs[0].status, ExecStatus::Completed);
    assert_eq!(execs[0].message_id, message);
    assert_eq!(execs[0].response.as_deref(), Some("echo: hello"));
    assert!(session.inbox().unwrap().is_empty());
    let meta = session.meta().unwrap();
    assert_eq!(meta.counters.messages, 1);
    assert_eq!(meta.last_execution, Some(execs[0].id));
    assert!(session.owner().is_none(), "released");

    // The same message on the file store.
    let file_home = home_with_agent();
    let files = FileStore::new(
        file_home.path().to_owned(),
        Arc::new(SystemClock),
        Arc::new(V7Ids),
    );
    let file_id = new_session(&files);
    send(&files, file_id, "hello");
    drain(&files, file_home.path(), file_id);
    assert_eq!(types(&store, id), types(&files, file_id));

    // The tool call and its result were checkpointed, the state pointing past them.
    let state = session.state().unwrap();
    let transcript = session.transcript(state.transcript).unwrap();
    assert_eq!(transcript.len() as u64, state.transcript.lines);
    let file_state = files.session(file_id).state().unwrap();
    assert_eq!(state.transcript.lines, file_state.transcript.lines);
    assert!(matches!(transcript[0].message, Message::User { .. }));
    assert!(
        transcript
            .iter()
            .any(|line| matches!(line.message, Message::Tool { .. })),
        "{transcript:?}"
    );
    // Checkpoints where the file store makes them, lines as long as its lines.
    let file_lines = files
        .session(file_id)
        .transcript(file_state.transcript)
        .unwrap();
    let carrying = |lines: &[agentq::domain::transcript::TranscriptLine]| -> Vec<bool> {
        lines.iter().map(|line| line.state.is_some()).collect()
    };
    assert_eq!(carrying(&transcript), carrying(&file_lines));
    assert_eq!(state.transcript.bytes, file_state.transcript.bytes);
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_paused_session_keeps_its_messages() {
    let (_home, store) = setup();
    let id = new_session(&store);
    send(&store, id, "hello");
    let session = store.session(id);
    assert_eq!(
        session.set_status(SessionStatus::Paused).unwrap(),
        SessionStatus::Active
    );
    assert!(store.pending(true).unwrap().is_empty(), "paused: no work");
    let mut lease = owned(&store, id);
    assert!(matches!(lease.next().unwrap(), Next::Paused));
    assert!(lease.paused());
    lease.release().unwrap();
    session.set_status(SessionStatus::Active).unwrap();
    assert_eq!(store.pending(false).unwrap(), [id]);
    assert_eq!(
        types(&store, id),
        [
            "session.created",
            "message.queued",
            "session.status",
            "session.status"
        ]
    );
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_cancel_with_nothing_running_is_consumed() {
    let (_home, store) = setup();
    let id = new_session(&store);
    let session = store.session(id);
    let queued = session.enqueue(entry(EntryKind::Cancel, "", None)).unwrap();
    let mut lease = owned(&store, id);
    assert!(matches!(lease.next().unwrap(), Next::Again));
    assert!(matches!(lease.next().unwrap(), Next::Empty));
    lease.release().unwrap();
    assert!(session.inbox().unwrap().is_empty());
    assert_eq!(
        session.meta().unwrap().last_message_seq,
        queued.seq.unwrap()
    );
    // Its seq is never handed out again.
    let next = session.enqueue(entry(EntryKind::User, "x", None)).unwrap();
    assert_eq!(next.seq, Some(queued.seq.unwrap() + 1));
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_cancel_queued_while_running_is_seen_and_consumed_with_the_message() {
    let (_home, store) = setup();
    let id = new_session(&store);
    send(&store, id, "hello");
    let mut lease = owned(&store, id);
    let Next::Run(claim) = lease.next().unwrap() else {
        panic!("a message to run")
    };
    assert!(!lease.cancel_requested());
    store
        .session(id)
        .enqueue(entry(EntryKind::Cancel, "", None))
        .unwrap();
    std::thread::sleep(Duration::from_millis(60));
    assert!(lease.cancel_requested());
    let mut exec = claim.execution.clone();
    exec.status = ExecStatus::Cancelled;
    lease.settle(&exec, &claim.state).unwrap();
    lease.release().unwrap();
    assert!(store.session(id).inbox().unwrap().is_empty());
    assert_eq!(types(&store, id).last().unwrap(), "execution.finished");
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_suspended_execution_resumes_without_counting_an_attempt() {
    let (_home, store) = setup();
    let id = new_session(&store);
    send(&store, id, "hello");
    let mut lease = owned(&store, id);
    let Next::Run(claim) = lease.next().unwrap() else {
        panic!("a message to run")
    };
    assert_eq!(claim.start, Start::New);
    assert_eq!(claim.execution.attempts, 1);
    lease.suspend(&claim.execution).unwrap();
    lease.release().unwrap();

    let mut lease = owned(&store, id);
    let Next::Run(resumed) = lease.next().unwrap() else {
        panic!("the message again")
    };
    assert_eq!(resumed.start, Start::Resumed);
    assert_eq!(resumed.execution.id, claim.execution.id);
    assert_eq!(resumed.execution.attempts, 1, "a suspension is no attempt");
    // Dropped without release: a crash. The next claim counts another attempt.
    drop(lease);
    let mut lease = owned(&store, id);
    let Next::Run(crashed) = lease.next().unwrap() else {
        panic!("the message again")
    };
    assert_eq!(crashed.start, Start::Resumed);
    assert_eq!(crashed.execution.attempts, 2);
    assert_eq!(crashed.state.transcript.lines, 1, "the user line, once");
}

/// Each word of its first answer takes 100 ms, so a shutdown lands mid-step.
const SLOW_AGENT: &str = r#"
name = "slow"
[model]
provider = "scripted"
[[model.script]]
text = "one two three four five six seven eight nine ten"
delay_ms = 100
tool_calls = [{ name = "list_dir", arguments = { path = "." } }]
[[model.script]]
text = "done: {input}"
[tools]
builtin = ["list_dir"]
"#;

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_worker_shut_down_mid_step_suspends_and_the_next_one_resumes() {
    let (home, store) = setup();
    std::fs::write(home.path().join("agents/slow.toml"), SLOW_AGENT).unwrap();
    let id = store
        .create_session(NewSession {
            agent: "slow".to_owned(),
            title: None,
            config: BTreeMap::new(),
            events: EventsPreset::Standard,
            agent_hash: "test".to_owned(),
        })
        .unwrap()
        .id;
    send(&store, id, "hello");
    let shutdown = Arc::new(Shutdown::default());
    let stopper = shutdown.clone();
    let drained = runtime()
        .block_on(async {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                stopper.trigger();
            });
            worker::drain(
                &store,
                &Home::new(home.path().to_owned()),
                id,
                &shutdown,
                &worker::this_worker(),
                None,
            )
            .await
        })
        .unwrap();
    assert!(drained.suspended, "{drained:?}");
    let session = store.session(id);
    let suspended = session.executions().unwrap();
    assert_eq!(suspended.len(), 1);
    assert!(suspended[0].suspended);
    assert_eq!(session.inbox().unwrap().len(), 1, "the message waits");
    assert!(session.owner().is_none(), "released");

    let drained = drain(&store, home.path(), id);
    assert_eq!(drained.settled, 1);
    let done = session.executions().unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].id, suspended[0].id);
    assert_eq!(done[0].status, ExecStatus::Completed);
    assert_eq!(done[0].attempts, 1, "a suspension is no attempt");
    let kinds = types(&store, id);
    assert_eq!(
        kinds.iter().filter(|k| *k == "execution.started").count(),
        2
    );
    assert_eq!(kinds.last().unwrap(), "execution.finished");
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_second_claim_is_busy_until_the_first_is_released() {
    let (_home, store) = setup();
    let id = new_session(&store);
    let lease = owned(&store, id);
    assert!(matches!(
        store.claim(id, &worker::this_worker()).unwrap(),
        Claimed::Busy
    ));
    assert!(store.session(id).owner().is_some());
    lease.release().unwrap();
    assert!(store.session(id).owner().is_none());
    assert!(store.session(id).last_owner().is_some());
    owned(&store, id).release().unwrap();
    assert!(matches!(
        store.claim(Uuid::now_v7(), &worker::this_worker()).unwrap(),
        Claimed::Gone
    ));
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn an_owners_events_are_written_with_its_next_write_or_a_moment_later_in_order() {
    let home = home_with_agent();
    let url = server::new_database();
    let store = open(&url, home.path());
    let id = new_session(&store);
    send(&store, id, "hello");
    let mut owner = owned(&store, id);
    let Next::Run(claim) = owner.next().unwrap() else {
        panic!("a message to run")
    };
    let before = types(&store, id).len();
    // Alone, an event is written by the lease's thread, with no further write.
    owner
        .append(Some(claim.execution.id), processing())
        .unwrap();
    crate::it::wait_until("the event to be written", Duration::from_secs(5), || {
        types(&store, id).len() == before + 1
    });
    // Several, then a checkpoint: all of them, in the order appended.
    owner
        .append(Some(claim.execution.id), processing())
        .unwrap();
    owner
        .append(Some(claim.execution.id), tool_started())
        .unwrap();
    let mut state = claim.state.clone();
    owner.checkpoint(Vec::new(), &mut state).unwrap();
    let written = events(&store, id);
    let kinds: Vec<&str> = written[before..].iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["agent.status", "agent.status", "agent.tool.started"],
        "{written:?}"
    );
    let seqs: Vec<u64> = written.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=written.len() as u64).collect::<Vec<_>>(),
        "gapless"
    );
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn an_expired_lease_is_taken_over_and_its_owner_can_write_nothing() {
    let home = home_with_agent();
    let url = server::new_database();
    let slow = open(&url, home.path())
        .with_lease(Duration::from_millis(500))
        .without_renewing();
    let id = new_session(&slow);
    send(&slow, id, "hello");
    let mut first = owned(&slow, id);
    let Next::Run(claim) = first.next().unwrap() else {
        panic!("a message to run")
    };
    std::thread::sleep(Duration::from_millis(700));
    let other = open(&url, home.path());
    let mut second = owned(&other, id);
    let before = types(&other, id);

    let err = first
        .append(Some(claim.execution.id), tool_started())
        .unwrap_err();
    assert!(err.downcast_ref::<LeaseLost>().is_some(), "{err:#}");
    // An event written later, with the owner's next write: that write fails.
    let _ = first.append(Some(claim.execution.id), processing());
    let mut state = claim.state.clone();
    assert!(first.checkpoint(Vec::new(), &mut state).is_err());
    assert!(first.settle(&claim.execution, &claim.state).is_err());
    assert!(
        first
            .renew()
            .unwrap_err()
            .downcast_ref::<LeaseLost>()
            .is_some()
    );
    assert_eq!(types(&other, id), before, "nothing written");
    assert_eq!(other.session(id).inbox().unwrap().len(), 1);

    // The new owner resumes it, the crash counted.
    let Next::Run(resumed) = second.next().unwrap() else {
        panic!("the message again")
    };
    assert_eq!(resumed.execution.id, claim.execution.id);
    assert_eq!(resumed.execution.attempts, 2);
    drop(first);
    assert!(
        other.session(id).owner().is_some(),
        "the lost lease let go of nothing"
    );
    second.release().unwrap();
}

/// How a claim records process `pid` of this host as a lease's owner (in
/// `last_owner.process`), read from `/proc` as the claim reads it.
fn owner_process(pid: u32) -> serde_json::Value {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    serde_json::json!({
        "boot_id": std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim(),
        "pid_ns": std::fs::read_link("/proc/self/ns/pid").unwrap().to_str().unwrap(),
        "pid": pid,
        "started": fields[19].parse::<u64>().unwrap(),
    })
}

/// Makes the lease of session `id` look held by `process` (as [`owner_process`]).
fn held_by(url: &str, id: Uuid, process: &serde_json::Value) {
    let mut db = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
    let changed = db
        .execute(
            "UPDATE sessions SET last_owner = jsonb_set(last_owner, '{process}', $2)
             WHERE id = $1 AND owner IS NOT NULL",
            &[&id, process],
        )
        .unwrap();
    assert_eq!(changed, 1);
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_lease_whose_process_ended_on_this_host_is_taken_over_at_once_under_the_fence() {
    let home = home_with_agent();
    let url = server::new_database();
    let store = open(&url, home.path());
    let id = new_session(&store);
    send(&store, id, "hello");
    let mut first = owned(&store, id);
    let Next::Run(claim) = first.next().unwrap() else {
        panic!("a message to run")
    };
    let busy = |why: &str| {
        assert!(!store.pending(true).unwrap().contains(&id), "{why}");
        assert!(
            matches!(
                store.claim(id, &worker::this_worker()).unwrap(),
                Claimed::Busy
            ),
            "{why}"
        );
    };
    busy("held by this process, alive");

    // Another process of this host, alive (stopped or not), keeps it: only its lease
    // running out would free the session.
    let mut other = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let process = owner_process(other.id());
    held_by(&url, id, &process);
    busy("held by a live process");
    other.kill().unwrap();
    other.wait().unwrap();

    // That process ended: but seen from another boot (another host) or another pid
    // namespace, the pid says nothing, and the lease is waited for.
    for (key, elsewhere) in [("boot_id", "another-boot"), ("pid_ns", "pid:[1]")] {
        let mut moved = process.clone();
        moved[key] = elsewhere.into();
        held_by(&url, id, &moved);
        busy(key);
    }

    // Seen from here, it is gone: the session is pending again and taken over at once.
    held_by(&url, id, &process);
    assert!(store.pending(true).unwrap().contains(&id));
    let mut second = owned(&store, id);
    let before = types(&store, id);
    let err = first
        .append(Some(claim.execution.id), tool_started())
        .unwrap_err();
    assert!(err.downcast_ref::<LeaseLost>().is_some(), "{err:#}");
    assert_eq!(types(&store, id), before, "the fence holds");
    let Next::Run(resumed) = second.next().unwrap() else {
        panic!("the message again")
    };
    assert_eq!(resumed.execution.id, claim.execution.id);
    assert_eq!(resumed.execution.attempts, 2, "the crash counted");
    drop(first);
    assert!(
        store.session(id).owner().is_some(),
        "the old lease let go of nothing"
    );
    second.release().unwrap();
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn removing_is_refused_while_a_worker_owns_the_session() {
    let (_home, store) = setup();
    let id = new_session(&store);
    send(&store, id, "hello");
    let lease = owned(&store, id);
    let err = store.session(id).remove().unwrap_err();
    let user = err
        .downcast_ref::<agentq::error::UserError>()
        .expect("a user error");
    assert!(user.message.contains("being worked on"), "{}", user.message);
    assert!(matches!(
        user.remedy,
        Some(agentq::error::Remedy::CancelOrWait { session }) if session == id
    ));
    lease.release().unwrap();
    store.session(id).remove().unwrap();
    assert!(store.session_ids().unwrap().is_empty());
    assert!(store.resolve(&id.to_string()).is_err());
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_follower_sees_what_is_appended_after_its_position() {
    let (_home, store) = setup();
    let id = new_session(&store);
    let session = store.session(id);
    let end = session.events_end().unwrap();
    let mut feed = session.follow(end).unwrap();
    assert!(feed.read().unwrap().is_empty());
    let sender = store.clone();
    let seen = runtime().block_on(async move {
        // Give the listener its connection before the NOTIFY.
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::thread::spawn(move || send(&sender, id, "hello"));
        let started = std::time::Instant::now();
        let mut seen = Vec::new();
        while seen.is_empty() {
            assert!(started.elapsed() < Duration::from_secs(5), "nothing came");
            feed.wait().await;
            seen = feed.read().unwrap();
        }
        (seen, feed)
    });
    let (seen, feed) = seen;
    let event = seen[0].event.as_ref().unwrap();
    assert_eq!(event.kind, "message.queued");
    assert_eq!(event.seq, 2);
    let text = String::from_utf8(seen[0].raw.clone()).unwrap();
    assert!(
        text.starts_with(r#"{"v":1,"seq":2,"type":"message.queued""#),
        "{text}"
    );
    let (position, last) = session.last_event(&["message.queued"]).unwrap().unwrap();
    assert_eq!(last.seq, 2);
    let mut again = session.follow(position).unwrap();
    assert_eq!(again.read().unwrap().len(), 1);
    assert_eq!(session.events_after(1).unwrap(), position);
    assert!(feed.exists());
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn a_follower_goes_on_from_where_a_crashed_server_took_the_log_back_to() {
    let url = server::new_database();
    let home = home_with_agent();
    let store = open(&url, home.path());
    let id = new_session(&store);
    for text in ["one", "two", "three"] {
        send(&store, id, text);
    }
    let session = store.session(id);
    let mut feed = session.follow(agentq::store::Position::START).unwrap();
    let seqs = |lines: &[agentq::store::LogLine]| -> Vec<u64> {
        lines
            .iter()
            .map(|l| l.event.as_ref().unwrap().seq)
            .collect()
    };
    assert_eq!(seqs(&feed.read().unwrap()), [1, 2, 3, 4]);
    // What a server that stopped before flushing events 3 and 4 comes back with.
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    db.execute(
        "DELETE FROM events WHERE session_id = $1 AND seq > 2",
        &[&id],
    )
    .unwrap();
    db.execute("UPDATE sessions SET last_seq = 2 WHERE id = $1", &[&id])
        .unwrap();
    assert!(feed.read().unwrap().is_empty());
    send(&store, id, "written again");
    let again = feed.read().unwrap();
    assert_eq!(seqs(&again), [3], "seq 3, written anew, is not skipped");
    assert!(String::from_utf8_lossy(&again[0].raw).contains("written again"));
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn workers_are_live_while_registered_and_slots_are_limited() {
    let (_home, store) = setup();
    let me = worker::this_worker();
    let first = store
        .register_worker(&me, Some(1))
        .unwrap()
        .expect("a slot");
    assert!(store.register_worker(&me, Some(1)).unwrap().is_none());
    let live = store.live_workers().unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].slot, Some(0));
    drop(first);
    assert!(store.live_workers().unwrap().is_empty());
}

#[test]
#[ignore = "needs PostgreSQL: scripts/postgres test runs it"]
fn an_owner_whose_renewals_fail_for_as_long_as_the_lease_writes_nothing_more() {
    let home = home_with_agent();
    let url = server::new_database();
    let store = open(&url, home.path()).with_lease(Duration::from_millis(600));
    let id = new_session(&store);
    send(&store, id, "hello");
    let mut owner = owned(&store, id);
    let Next::Run(claim) = owner.next().unwrap() else {
        panic!("a message to run")
    };
    // Another connection holds the session's row: the renewals wait on it, and the
    // lease runs out.
    let mut holder = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    let mut lock = holder.transaction().unwrap();
    lock.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", &[&id])
        .unwrap();
    let mut watcher = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    crate::it::wait_until("the lease runs out", Duration::from_secs(10), || {
        watcher
            .query_one(
                "SELECT lease_until < now() FROM sessions WHERE id = $1",
                &[&id],
            )
            .unwrap()
            .get(0)
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let execution = claim.execution.id;
    std::thread::spawn(move || {
        let written = owner.append(Some(execution), processing());
        let _ = tx.send(written.map_err(|e| e.downcast_ref::<LeaseLost>().is_some()));
    });
    let answer = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("refused at once, without waiting for the row");
    lock.rollback().unwrap();
    assert_eq!(answer, Err(true), "LeaseLost");
}
