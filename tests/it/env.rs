//! `TestEnv`: a temporary agentq home and helpers that read like the CLI.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use serde_json::Value;

pub struct TestEnv {
    home: tempfile::TempDir,
    /// `--store`: where the sessions are kept (the files under the home without it).
    store: Option<String>,
    /// A connection to `store`, for reading its event log as the file tests read
    /// `events.ndjson`; opened on first use.
    db: std::sync::Mutex<Option<postgres::Client>>,
}

/// Whether this run's suites keep their sessions in PostgreSQL: `AGENTQ_TEST_STORE=
/// postgres` (which `scripts/postgres test` sets) runs the same tests on the Postgres
/// store, each environment with a database of its own. Anything else is the files.
pub fn on_postgres() -> bool {
    match std::env::var("AGENTQ_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("files") | Ok("") | Err(_) => false,
        Ok(other) => panic!("AGENTQ_TEST_STORE={other}: expected `postgres` or `files`"),
    }
}

/// The usual scripted agent for tests: one tool call, then an answer that echoes.
pub const ECHO_AGENT: &str = r#"
name = "echo"
[model]
provider = "scripted"
[[model.script]]
text = "Listing."
tool_calls = [{ name = "list_dir", arguments = { path = "." } }]
usage = { input = 10, output = 5 }
[[model.script]]
text = "echo: {input}"
usage = { input = 20, output = 5 }
[tools]
builtin = ["list_dir", "read_file", "write_file"]
"#;

impl TestEnv {
    /// A home after `agentq init`, with the `echo` agent added.
    pub fn new() -> TestEnv {
        let env = TestEnv::empty();
        env.ok(&["init"]);
        env.write_agent("echo", ECHO_AGENT);
        env
    }

    /// A home with nothing in it; on the Postgres run, its sessions in a new, empty
    /// database. A Postgres run without a server fails here, loudly: it never falls
    /// back to the files, which would pass without testing anything.
    pub fn empty() -> TestEnv {
        let store = on_postgres().then(crate::it::postgres::server::new_database);
        TestEnv::with_store(store)
    }

    fn with_store(store: Option<String>) -> TestEnv {
        TestEnv {
            home: tempfile::tempdir().expect("temp dir"),
            store,
            db: std::sync::Mutex::new(None),
        }
    }

    /// [`TestEnv::new`], its sessions kept in the store at `url`.
    pub fn on_store(url: &str) -> TestEnv {
        let env = TestEnv::with_store(Some(url.to_owned()));
        env.ok(&["init"]);
        env.write_agent("echo", ECHO_AGENT);
        env
    }

    /// [`TestEnv::new`] for a test whose point is the file store's layout on disk
    /// (damaged files, modes, locks, inotify…): `None` on the Postgres run, which
    /// says in one line that it skipped the test and why.
    pub fn files_only(why: &str) -> Option<TestEnv> {
        TestEnv::files_only_then(why, TestEnv::new)
    }

    /// [`TestEnv::files_only`] for an [`TestEnv::empty`] home.
    pub fn files_only_empty(why: &str) -> Option<TestEnv> {
        TestEnv::files_only_then(why, TestEnv::empty)
    }

    fn files_only_then(why: &str, make: fn() -> TestEnv) -> Option<TestEnv> {
        if on_postgres() {
            eprintln!("skipped on postgres: {why}");
            return None;
        }
        Some(make())
    }

    /// The `AGENTQ_STORE` every command gets (none: the files under the home).
    pub fn store_url(&self) -> Option<&str> {
        self.store.as_deref()
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn session_dir(&self, id: &str) -> PathBuf {
        self.home().join("sessions").join(id)
    }

    pub fn write_agent(&self, name: &str, text: &str) {
        std::fs::write(
            self.home().join("agents").join(format!("{name}.toml")),
            text,
        )
        .unwrap();
    }

    /// The binary, pointed at this home, with an environment that cannot leak in.
    pub fn cmd(&self) -> std::process::Command {
        let mut cmd = std::process::Command::cargo_bin("agentq").expect("binary");
        cmd.arg("--home").arg(self.home());
        cmd.env_remove("AGENTQ_HOME")
            .env_remove("AGENTQ_STORE")
            .env("NO_COLOR", "1")
            .current_dir(self.home());
        if let Some(url) = &self.store {
            cmd.env("AGENTQ_STORE", url);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run agentq")
    }

    /// Runs with `stdin` as standard input. agentq may refuse without reading it:
    /// the pipe it closed is not a failure of the test.
    pub fn run_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agentq");
        let mut pipe = child.stdin.take().unwrap();
        // Written from a thread so a large input cannot block while stdout fills up.
        let input = stdin.to_vec();
        let writer = std::thread::spawn(move || match pipe.write_all(&input) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("writing stdin: {e}"),
            _ => {}
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    /// Runs and requires exit 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(code(&out), 0, "agentq {args:?} failed:\n{}", describe(&out));
        stdout(&out)
    }

    /// Runs and requires the given exit code; returns stderr.
    pub fn fails(&self, args: &[&str], expected: i32) -> String {
        let out = self.run(args);
        assert_eq!(code(&out), expected, "agentq {args:?}:\n{}", describe(&out));
        stderr(&out)
    }

    pub fn new_session(&self, agent: &str) -> String {
        self.ok(&["session", "new", "--agent", agent])
            .trim()
            .to_owned()
    }

    pub fn send(&self, id: &str, text: &str) -> String {
        self.ok(&["send", id, text]).trim().to_owned()
    }

    pub fn worker_once(&self) {
        self.ok(&["worker", "--once"]);
    }

    /// The tool messages of a session's transcript, as `session messages --json` gives.
    pub fn tool_messages(&self, id: &str) -> Vec<Value> {
        let messages = self.json(&["session", "messages", id, "--json"]);
        let all = messages
            .as_array()
            .expect("session messages --json is an array");
        all.iter()
            .filter(|m| m["role"] == "tool")
            .cloned()
            .collect()
    }

    /// Runs `worker --once`, which must exit `expected`: the worst outcome of the
    /// executions it ran (1 when one failed, 3 when one stopped at a limit…).
    pub fn worker_once_exiting(&self, expected: i32) {
        let out = self.run(&["worker", "--once"]);
        assert_eq!(
            out.status.code(),
            Some(expected),
            "worker --once:\n{}",
            describe(&out)
        );
    }

    /// Every complete event line of a session, parsed. A last line without its `\n`
    /// is an append still being written, which readers skip (ARCHITECTURE.md §1).
    /// On Postgres, the same lines from the `events` table, in seq order.
    pub fn events(&self, id: &str) -> Vec<Value> {
        self.raw_events(id)
            .iter()
            .map(|l| serde_json::from_str(l).expect("event line is JSON"))
            .collect()
    }

    /// Runs `sql` (with the session id as `$1`) on this environment's database.
    fn query(&self, sql: &str, id: &str) -> Vec<postgres::Row> {
        let url = self.store.as_ref().expect("a Postgres environment");
        let mut db = self.db.lock().unwrap();
        let client = db.get_or_insert_with(|| {
            postgres::Client::connect(url, postgres::NoTls).expect("connecting to the store")
        });
        client
            .query(sql, &[&id])
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The exact event lines of a session, as written (`events.ndjson`'s complete
    /// lines, or the `body` column on Postgres, which keeps the same bytes).
    pub fn raw_events(&self, id: &str) -> Vec<String> {
        if self.store.is_none() {
            let text = std::fs::read_to_string(self.session_dir(id).join("events.ndjson")).unwrap();
            let complete = text.rfind('\n').map_or("", |end| &text[..end]);
            return complete.lines().map(str::to_owned).collect();
        }
        self.query(
            "SELECT body FROM events WHERE session_id = $1::text::uuid ORDER BY seq",
            id,
        )
        .iter()
        .map(|row| row.get(0))
        .collect()
    }

    /// Damages the session's log as a repair that set a torn tail aside leaves it:
    /// every line from the first event of type `kind` on is gone (the files), or
    /// the events of that type (Postgres, whose log has no tail to lose).
    pub fn lose_events_from(&self, id: &str, kind: &str) {
        if self.store.is_none() {
            let path = self.session_dir(id).join("events.ndjson");
            let text = std::fs::read_to_string(&path).unwrap();
            let at = text
                .find(&format!("\"type\":\"{kind}\""))
                .unwrap_or_else(|| panic!("no {kind} event in {}", path.display()));
            let line_start = text[..at].rfind('\n').map_or(0, |n| n + 1);
            std::fs::write(&path, &text[..line_start]).unwrap();
            return;
        }
        // `kind` is the test's own constant, never input.
        let sql =
            format!("DELETE FROM events WHERE session_id = $1::text::uuid AND type = '{kind}'");
        self.query(&sql, id);
    }

    /// The session's agent state (`state.json`, or the `state` column).
    pub fn state(&self, id: &str) -> Value {
        if self.store.is_none() {
            let text = std::fs::read_to_string(self.session_dir(id).join("state.json")).unwrap();
            return serde_json::from_str(&text).expect("state.json is JSON");
        }
        let rows = self.query(
            "SELECT state::text FROM sessions WHERE id = $1::text::uuid",
            id,
        );
        serde_json::from_str(rows[0].get::<_, &str>(0)).expect("state is JSON")
    }

    /// How many entries the session's inbox holds (files in `inbox/`, none without
    /// the directory; or rows).
    pub fn inbox_len(&self, id: &str) -> usize {
        if self.store.is_none() {
            return std::fs::read_dir(self.session_dir(id).join("inbox"))
                .map_or(0, Iterator::count);
        }
        let rows = self.query(
            "SELECT count(*) FROM inbox WHERE session_id = $1::text::uuid",
            id,
        );
        rows[0].get::<_, i64>(0) as usize
    }

    /// Every execution record of a session, oldest first (`executions/*.json` by
    /// name, or the rows by id: both UUIDv7, so in the order they were made).
    pub fn executions(&self, id: &str) -> Vec<Value> {
        if self.store.is_none() {
            let dir = self.session_dir(id).join("executions");
            let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            paths.sort();
            return paths
                .iter()
                .map(|p| {
                    let text = std::fs::read_to_string(p).unwrap();
                    serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("{p:?} is not JSON ({e}): {text}"))
                })
                .collect();
        }
        self.query(
            "SELECT record::text FROM executions WHERE session_id = $1::text::uuid ORDER BY id",
            id,
        )
        .iter()
        .map(|row| serde_json::from_str(row.get::<_, &str>(0)).expect("record is JSON"))
        .collect()
    }

    /// Whether no worker owns the session now: its lock file is free, or its row has
    /// no owner.
    pub fn unowned(&self, id: &str) -> bool {
        if self.store.is_none() {
            let lock =
                std::fs::File::open(self.session_dir(id).join("lock")).expect("the lock file");
            return lock.try_lock().is_ok();
        }
        self.query(
            "SELECT owner IS NULL FROM sessions WHERE id = $1::text::uuid",
            id,
        )[0]
        .get(0)
    }

    /// The directory a session's tools work in on this host.
    pub fn workspace(&self, id: &str) -> PathBuf {
        match self.store {
            None => self.session_dir(id).join("workspace"),
            Some(_) => self.home().join("workspaces").join(id),
        }
    }

    pub fn events_of(&self, id: &str, kind: &str) -> Vec<Value> {
        self.events(id)
            .into_iter()
            .filter(|e| e["type"] == kind)
            .collect()
    }

    /// The payloads of a session's events of one type, in log order.
    pub fn payloads(&self, id: &str, kind: &str) -> Vec<Value> {
        self.events_of(id, kind)
            .into_iter()
            .map(|e| e["payload"].clone())
            .collect()
    }

    /// The payloads of every `execution.finished`.
    pub fn finished(&self, id: &str) -> Vec<Value> {
        self.payloads(id, "execution.finished")
    }

    /// The answers (`agent.message.completed`), in order.
    pub fn responses(&self, id: &str) -> Vec<String> {
        self.payloads(id, "agent.message.completed")
            .iter()
            .map(|p| p["response"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Inbox entries waiting, as `session show` counts them.
    pub fn pending(&self, id: &str) -> u64 {
        self.json(&["session", "show", id, "--json"])["pending"]
            .as_u64()
            .unwrap()
    }

    /// The session's event log numbers its events 1, 2, 3… without a gap.
    pub fn assert_gapless(&self, id: &str) {
        let seqs: Vec<u64> = self
            .events(id)
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "seq of session {id}"
        );
    }

    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).expect("JSON output")
    }

    /// Starts `agentq worker` in the background; it is stopped when the guard drops.
    pub fn spawn_worker(&self, extra: &[&str]) -> Background {
        let child = self
            .cmd()
            .arg("worker")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn worker");
        Background { child }
    }

    pub fn spawn(&self, args: &[&str]) -> Background {
        let child = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agentq");
        Background { child }
    }
}

/// A background agentq process, killed when dropped.
pub struct Background {
    pub child: Child,
}

impl Background {
    /// Sends a signal (SIGTERM = 15, SIGINT = 2).
    pub fn signal(&self, signal: i32) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        loop {
            if self.child.try_wait().unwrap().is_some() {
                let child = std::mem::replace(&mut self.child, dummy_child());
                return child.wait_with_output().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn dummy_child() -> Child {
    std::process::Command::new("true").spawn().unwrap()
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `condition` until it holds; fails the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    )
}

pub const LONG: Duration = Duration::from_secs(30);

/// Variables that would change where requests go or which key they carry.
pub const OUTSIDE_VARS: &[&str] = &[
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "AGENTQ_TEST_MISSING_KEY",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// Every file under `dir` that contains `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

/// Living (not zombie) processes whose process group is `group`.
pub fn group_members(group: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')').is_some_and(|(_, rest)| {
                    let fields: Vec<&str> = rest.split_whitespace().collect();
                    fields.len() > 3
                        && !matches!(fields[0], "Z" | "X")
                        && fields[2].parse::<i32>().ok() == Some(group)
                })
            })
        })
        .collect()
}
