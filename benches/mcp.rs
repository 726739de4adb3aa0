//! What MCP servers cost agentq (issue 16): the overhead of one call of an MCP tool over
//! stdio against the same kind of call of a built-in tool, a server's start-up (paid
//! once per claim: 100 messages of one session start it once), and a worker's memory
//! with 4 sessions each holding two servers. The server is the project's own test
//! server (`examples/mcp_test_server.rs`), built in release mode if it is missing.
//!
//! Run with `cargo bench --bench mcp` (`-- --quick` for fewer repetitions). It prints
//! the machine and one line per figure; these are measurements, not tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentq::mcp::{Approval, Server, ServerSpec, Transport};
use agentq::tools::{ToolContext, Toolbox};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_agentq");

fn test_server() -> PathBuf {
    let dir = Path::new(BIN).parent().expect("target/release");
    let path = dir.join("examples").join("mcp_test_server");
    if !path.exists() {
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["build", "--release", "--example", "mcp_test_server"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cannot build the MCP test server");
    }
    path
}

fn spec(dir: &Path) -> ServerSpec {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_owned(), std::env::var("PATH").unwrap_or_default());
    ServerSpec {
        name: "bench".to_owned(),
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(&values, 0.5)
}

/// Milliseconds of each of `n` calls made by `call`.
async fn timed<F, Fut>(n: usize, mut call: F) -> Vec<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        assert!(call().await, "a call failed");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times
}

fn per_call(rounds: usize, calls: usize) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "x").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = Server::start(&spec(dir.path()), None).await.expect("the server starts");
        let toolbox = Toolbox::new(dir.path().to_owned(), &["list_dir".to_owned()], Vec::new());
        let mut mcp_p50 = Vec::new();
        let mut mcp_p90 = Vec::new();
        let mut builtin_p50 = Vec::new();
        for _ in 0..rounds {
            // Alternating, so both see the same machine.
            let mcp = timed(calls, || async {
                let mut stop = || false;
                !server.call("echo", json!({"text": "hello"}), &mut stop).await.is_error
            })
            .await;
            let builtin = timed(calls, || async {
                let mut todos = Vec::new();
                let mut stop = || false;
                let mut ctx = ToolContext { todos: &mut todos, stop: &mut stop };
                !toolbox.call("list_dir", &json!({"path": "."}), &mut ctx).await.is_error
            })
            .await;
            mcp_p50.push(percentile(&mcp, 0.5));
            mcp_p90.push(percentile(&mcp, 0.9));
            builtin_p50.push(percentile(&builtin, 0.5));
        }
        let (mcp, builtin) = (median(mcp_p50.clone()), median(builtin_p50.clone()));
        println!(
            "MCP call over stdio (echo), p50 / p90      {mcp:.3} / {:.3} ms   (medians of {rounds} rounds of {calls})",
            median(mcp_p90)
        );
        println!("built-in call (list_dir), p50              {builtin:.3} ms");
        println!(
            "overhead of an MCP call, p50               {:.3} ms   target <= 2 ms   (per round: {})",
            mcp - builtin,
            mcp_p50
                .iter()
                .zip(&builtin_p50)
                .map(|(m, b)| format!("{:.3}", m - b))
                .collect::<Vec<_>>()
                .join(", ")
        );
        server.stop().await;
        let mut starts = Vec::new();
        for _ in 0..rounds.max(5) {
            let started = Instant::now();
            let server = Server::start(&spec(dir.path()), None).await.expect("starts");
            starts.push(started.elapsed().as_secs_f64() * 1000.0);
            server.stop().await;
        }
        println!(
            "server start-up (spawn, handshake, tools), p50   {:.1} ms   (paid once per claim)",
            median(starts)
        );
    });
}

fn home(servers: &[&str], script: &str) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let notes = home.path().join("notes");
    std::fs::create_dir(&notes).unwrap();
    agentq(home.path(), &["init"]);
    let mut config = String::new();
    for name in servers {
        config.push_str(&format!(
            "[mcp_servers.{name}]\ncommand = {:?}\nenv = {{ EVENTS_FILE = {:?} }}\n",
            test_server().display().to_string(),
            notes.join(name).display().to_string()
        ));
    }
    std::fs::write(home.path().join("agentq.toml"), config).unwrap();
    let mcp: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
    std::fs::write(
        home.path().join("agents/user.toml"),
        format!(
            "name = \"user\"\n[model]\nprovider = \"scripted\"\n{script}[tools]\nmcp = [{}]\n",
            mcp.join(", ")
        ),
    )
    .unwrap();
    home
}

fn agentq(home: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn hundred_messages() {
    let step = "[[model.script]]\ntool_calls = [{ name = \"mcp__a__echo\", arguments = { text = \"hi\" } }]\n[[model.script]]\ntext = \"done\"\n";
    let home = home(&["a"], &step.repeat(100));
    let id = agentq(home.path(), &["session", "new", "--agent", "user"]);
    for i in 0..100 {
        agentq(home.path(), &["send", &id, &format!("message {i}")]);
    }
    let started = Instant::now();
    agentq(home.path(), &["worker", "--once"]);
    let took = started.elapsed();
    let notes = std::fs::read_to_string(home.path().join("notes/a")).unwrap_or_default();
    let starts = notes.lines().filter(|l| *l == "started").count();
    println!(
        "100 messages, one MCP call each, one session   {:.0} ms in all, server started {starts} time(s)",
        took.as_secs_f64() * 1000.0
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn four_sessions_two_servers_each() {
    let script = "[[model.script]]\ntool_calls = [{ name = \"mcp__a__sleep\", arguments = { ms = 60000 } }]\n[[model.script]]\ntext = \"done\"\n";
    let home = home(&["a", "b"], script);
    let ids: Vec<String> = (0..4)
        .map(|_| agentq(home.path(), &["session", "new", "--agent", "user"]))
        .collect();
    for id in &ids {
        agentq(home.path(), &["send", id, "go"]);
    }
    let idle = Command::new(BIN)
        .arg("--home")
        .arg(home.path())
        .args(["worker", "--concurrency", "4"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let sleeping = || {
        std::fs::read_to_string(home.path().join("notes/a"))
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == "sleep")
            .count()
    };
    while sleeping() < 4 {
        assert!(Instant::now() < deadline, "the four calls did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let worker = rss_kib(idle.id());
    let servers: u64 = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("mcp_test_server"))
        })
        .map(rss_kib)
        .sum();
    println!(
        "worker RSS, 4 sessions x 2 MCP servers          {:.1} MiB (the 8 servers: {:.1} MiB more)",
        worker as f64 / 1024.0,
        servers as f64 / 1024.0
    );
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(i32::try_from(idle.id()).unwrap(), libc::SIGTERM);
    }
    let mut idle = idle;
    let _ = idle.wait();
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, calls) = if quick { (3, 100) } else { (7, 500) };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_owned))
        .unwrap_or_default();
    println!(
        "agentq MCP benchmark: {} cores, {cpu}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    per_call(rounds, calls);
    hundred_messages();
    four_sessions_two_servers_each();
}
