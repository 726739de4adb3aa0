//! The MCP client against a real server: `examples/mcp_test_server.rs`, over stdio
//! and streamable HTTP, driven through the library (`agentq::mcp`): the client's own
//! guarantees, with the faults a server can have. `mcp_worker.rs` drives the same
//! server through the binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use agentq::mcp::{Approval, Server, ServerSpec, Transport};
use serde_json::json;

/// The test server, built once per run: `cargo test` builds examples with the other
/// targets, but `cargo test --test all` does not, and would run a stale one.
pub(crate) fn test_server() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "--quiet", "--example", "mcp_test_server"]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "cannot build the MCP test server");
        profile_dir.join("examples").join("mcp_test_server")
    })
}

fn stdio(name: &str, dir: &Path) -> ServerSpec {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_owned(), std::env::var("PATH").unwrap_or_default());
    env.insert(
        "EVENTS_FILE".to_owned(),
        dir.join("events").display().to_string(),
    );
    env.insert(
        "COUNT_FILE".to_owned(),
        dir.join("count").display().to_string(),
    );
    ServerSpec {
        name: name.to_owned(),
        transport: Transport::Stdio {
            command: test_server().display().to_string(),
            args: Vec::new(),
            env,
            cwd: dir.to_path_buf(),
        },
        startup_timeout: Duration::from_secs(10),
        tool_timeout: Duration::from_secs(10),
        enabled_tools: None,
        disabled_tools: Vec::new(),
        approval: Approval::Never,
        approval_tools: Vec::new(),
    }
}

fn command(name: &str, dir: &Path, argv: &[&str]) -> ServerSpec {
    let mut spec = stdio(name, dir);
    spec.transport = Transport::Stdio {
        command: argv[0].to_owned(),
        args: argv[1..].iter().map(|a| a.to_string()).collect(),
        env: BTreeMap::from([("PATH".to_owned(), std::env::var("PATH").unwrap_or_default())]),
        cwd: dir.to_path_buf(),
    };
    spec
}

async fn start(spec: &ServerSpec) -> Server {
    match Server::start(spec, None).await {
        Ok(server) => server,
        Err(err) => panic!("{err}"),
    }
}

fn never() -> impl FnMut() -> bool + Send {
    || false
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Whether the process runs (a zombie runs nothing: it only waits to be reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().next().map(|s| s != "Z" && s != "X")
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn tools_are_listed_with_exposed_names_read_only_hints_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&stdio("test", dir.path())).await;
    let names: Vec<&str> = server.tools().iter().map(|t| t.exposed.as_str()).collect();
    assert!(names.contains(&"mcp__test__echo"), "{names:?}");
    assert!(names.contains(&"mcp__test__spawn_grandchild"), "{names:?}");
    let echo = server.tools().iter().find(|t| t.name == "echo").unwrap();
    assert!(echo.read_only);
    assert_eq!(echo.server, "test");
    assert_eq!(echo.description, "Returns its text.");
    assert_eq!(echo.input_schema["type"], "object");
    let fail = server.tools().iter().find(|t| t.name == "fail").unwrap();
    assert!(!fail.read_only, "no hint means side effects");
    server.stop().await;

    let mut spec = stdio("test", dir.path());
    spec.enabled_tools = Some(vec!["echo".into(), "fail".into(), "ghost".into()]);
    spec.disabled_tools = vec!["fail".into()];
    let server = start(&spec).await;
    let names: Vec<&str> = server.tools().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["echo"]);
    server.stop().await;
}

#[tokio::test]
async fn a_call_returns_the_text_and_an_is_error_result_is_a_tool_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&stdio("test", dir.path())).await;
    let out = server
        .call("echo", json!({"text": "hello"}), &mut never())
        .await;
    assert_eq!(out, agentq::tools::ToolOutput::ok("hello"));
    let out = server
        .call("fail", json!({"message": "no such city"}), &mut never())
        .await;
    assert_eq!(out, agentq::tools::ToolOutput::error("no such city"));
    let out = server.call("ghost", json!({}), &mut never()).await;
    assert!(out.is_error && out.content.contains("`test`"), "{out:?}");
    let out = server.call("count", json!({}), &mut never()).await;
    assert_eq!(out.content, "1");
    server.stop().await;
}

#[tokio::test]
async fn a_call_past_the_tool_timeout_is_an_error_and_cancelled_at_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = stdio("test", dir.path());
    spec.tool_timeout = Duration::from_millis(300);
    let server = start(&spec).await;
    let started = Instant::now();
    let out = server
        .call("sleep", json!({"ms": 30_000}), &mut never())
        .await;
    assert!(out.is_error, "{out:?}");
    assert!(out.content.contains("timed out"), "{}", out.content);
    assert!(out.content.contains("`test`"), "{}", out.content);
    assert!(started.elapsed() < Duration::from_secs(5));
    let events = dir.path().join("events");
    wait_for("the server to see the cancel", || {
        read(events.clone()).contains("cancelled sleep")
    })
    .await;
    // The connection is still good.
    let out = server
        .call("echo", json!({"text": "again"}), &mut never())
        .await;
    assert_eq!(out.content, "again");
    server.stop().await;
}

#[tokio::test]
async fn a_stopped_call_ends_quickly_and_is_cancelled_at_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&stdio("test", dir.path())).await;
    let started = Instant::now();
    let mut stop = move || started.elapsed() > Duration::from_millis(100);
    let out = server.call("sleep", json!({"ms": 30_000}), &mut stop).await;
    assert!(
        out.is_error && out.content.starts_with("stopped"),
        "{out:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let events = dir.path().join("events");
    wait_for("the server to see the cancel", || {
        read(events.clone()).contains("cancelled sleep")
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_crashed_server_is_an_error_naming_it_now_and_later() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&stdio("crashy", dir.path())).await;
    let out = server.call("crash", json!({}), &mut never()).await;
    assert!(out.is_error, "{out:?}");
    assert!(
        out.content.contains("MCP server `crashy`"),
        "{}",
        out.content
    );
    let out = server
        .call("echo", json!({"text": "hi"}), &mut never())
        .await;
    assert!(out.is_error, "{out:?}");
    assert!(out.content.contains("`crashy`"), "{}", out.content);
    server.stop().await;
}

#[tokio::test]
async fn images_are_summarised_and_big_output_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&stdio("test", dir.path())).await;
    let out = server.call("image", json!({}), &mut never()).await;
    assert_eq!(
        out,
        agentq::tools::ToolOutput::ok("[image image/png, 70 bytes]")
    );
    let out = server
        .call("big", json!({"bytes": 1_000_000}), &mut never())
        .await;
    assert!(!out.is_error);
    assert!(out.content.len() < 40_000, "{}", out.content.len());
    assert!(
        out.content
            .ends_with("bytes in all, the first 32768 shown]")
    );
    server.stop().await;
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn stderr_reaches_the_log_named_and_capped() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // This runtime has one thread, so the task reading stderr logs here too.
    let _default = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let server = start(&stdio("chatty", dir.path())).await;
    let out = server
        .call("noisy", json!({"lines": 1500}), &mut never())
        .await;
    assert_eq!(out.content, "noisy");
    wait_for("the stderr cap notice", || {
        captured.text().contains("is not logged")
    })
    .await;
    let log = captured.text();
    assert!(log.contains("MCP server `chatty`: noise line 0"), "{log}");
    assert!(log.contains("noise line 998"));
    assert!(!log.contains("noise line 1000"));
    server.stop().await;
}

async fn grandchild(server: &Server) -> u32 {
    let out = server
        .call("spawn_grandchild", json!({}), &mut never())
        .await;
    let pid: u32 = out.content.parse().expect("a pid");
    assert!(alive(pid));
    pid
}

#[tokio::test]
async fn stopping_or_dropping_a_server_kills_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&stdio("test", dir.path())).await;
    let pid = grandchild(&server).await;
    server.stop().await;
    wait_for("the grandchild to die on stop", || !alive(pid)).await;

    let server = start(&stdio("test", dir.path())).await;
    let pid = grandchild(&server).await;
    drop(server);
    wait_for("the grandchild to die on drop", || !alive(pid)).await;
}

#[tokio::test]
async fn a_server_that_never_answers_fails_at_the_startup_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = command("mute", dir.path(), &["sleep", "30"]);
    spec.startup_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = Server::start(&spec, None).await.err().expect("no start");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        err.to_string(),
        "MCP server `mute`: did not start: timed out after 500ms"
    );
}

#[tokio::test]
async fn a_server_that_cannot_run_or_exits_says_why_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let err = Server::start(&command("gone", dir.path(), &["no-such-mcp-server"]), None)
        .await
        .err()
        .expect("no start");
    assert_eq!(
        err.to_string(),
        "MCP server `gone`: cannot run `no-such-mcp-server`: not found"
    );

    let spec = command(
        "dies",
        dir.path(),
        &["sh", "-c", "echo first >&2; echo 'bad config' >&2; exit 1"],
    );
    let err = Server::start(&spec, None).await.err().expect("no start");
    assert_eq!(
        err.to_string(),
        "MCP server `dies`: exited with status 1: bad config"
    );

    let mut spec = stdio("lost", dir.path());
    if let Transport::Stdio { cwd, .. } = &mut spec.transport {
        *cwd = dir.path().join("missing");
    }
    let err = Server::start(&spec, None).await.err().expect("no start");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test]
async fn the_http_transport_lists_and_calls_tools() {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(test_server())
        .args(["--http", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut url = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    let spec = ServerSpec {
        name: "web".to_owned(),
        transport: Transport::Http {
            url: url.trim().to_owned(),
            bearer_token: Some("secret".to_owned()),
            headers: BTreeMap::from([("X-Team".to_owned(), "blue".to_owned())]),
        },
        startup_timeout: Duration::from_secs(10),
        tool_timeout: Duration::from_secs(10),
        enabled_tools: None,
        disabled_tools: Vec::new(),
        approval: Approval::Never,
        approval_tools: Vec::new(),
    };
    let result = Server::start(&spec, None).await;
    let server = match result {
        Ok(server) => server,
        Err(err) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{err}");
        }
    };
    assert!(server.tools().iter().any(|t| t.exposed == "mcp__web__echo"));
    let out = server
        .call("echo", json!({"text": "over http"}), &mut never())
        .await;
    assert_eq!(out.content, "over http");
    server.stop().await;
    let _ = child.kill();
    let _ = child.wait();

    // Nothing listens there any more: the cause, not the SDK's wrappers, is told.
    let err = Server::start(&spec, None).await.err().expect("no start");
    assert!(
        err.to_string()
            .starts_with("MCP server `web`: the MCP handshake failed: ")
            && !err.to_string().contains("Transport"),
        "{err}"
    );
}

/// The client side of the test below, run in a process of its own that the test kills.
#[tokio::test]
#[ignore = "run as a child process by a_killed_client_takes_everything_its_servers_started"]
async fn a_client_that_will_be_killed() {
    let Some(dir) = std::env::var_os("AGENTQ_MCP_CLIENT_DIR").map(PathBuf::from) else {
        return;
    };
    let server = start(&stdio("test", &dir)).await;
    let pid = grandchild(&server).await;
    let note = dir.join("grandchild.tmp");
    std::fs::write(&note, pid.to_string()).unwrap();
    std::fs::rename(&note, dir.join("grandchild")).unwrap();
    // Killed long before this ends.
    let _ = tokio::time::timeout(Duration::from_secs(60), std::future::pending::<()>()).await;
}

#[tokio::test]
async fn a_killed_client_takes_everything_its_servers_started() {
    // Built here first: the child's build would otherwise count against the wait for
    // it to start its server (a stale example takes longer than the wait to build).
    test_server();
    let dir = tempfile::tempdir().unwrap();
    let mut client = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "it::mcp::a_client_that_will_be_killed",
            "--ignored",
        ])
        .env("AGENTQ_MCP_CLIENT_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let note = dir.path().join("grandchild");
    wait_for("the client to start its server", || note.exists()).await;
    let pid: u32 = read(note).parse().unwrap();
    assert!(alive(pid));
    client.kill().unwrap();
    client.wait().unwrap();
    wait_for("the grandchild to die with the client", || !alive(pid)).await;
}

#[tokio::test]
async fn an_http_server_that_refuses_the_token_says_so() {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    let spec = ServerSpec {
        name: "locked".to_owned(),
        transport: Transport::Http {
            url,
            bearer_token: Some("wrong".to_owned()),
            headers: BTreeMap::new(),
        },
        startup_timeout: Duration::from_secs(5),
        tool_timeout: Duration::from_secs(5),
        enabled_tools: None,
        disabled_tools: Vec::new(),
        approval: Approval::Never,
        approval_tools: Vec::new(),
    };
    let err = Server::start(&spec, None).await.err().expect("no start");
    assert_eq!(
        err.to_string(),
        "MCP server `locked`: HTTP 401 Unauthorized: check its bearer token"
    );
}
