//! agentq's streaming overhead against a real model server: how much later the first
//! streamed chunk is in a session's event log than the server's own first content
//! delta for the same request.
//!
//! Run with `scripts/real-server bench` (it installs the server and runs this in a
//! network namespace with only loopback). It starts llama-cpp-python's server with
//! SmolLM2-135M, a recording proxy in front of it and one `agentq worker`, then, 20
//! times and in alternating order:
//! - sends agentq's own request body straight to the server and times the first
//!   content delta (the server's time to first text);
//! - sends a message to a new session and times, from agentq's request reaching the
//!   proxy, the first `agent.stream.chunk` line appearing in `events.ndjson` (seen
//!   through inotify); split at the moment the first delta passed the proxy, into the
//!   server's part and agentq's.
//!
//! It prints medians and p90s and exits 0 whatever they are: measurements, not tests.

#[path = "../tests/it/real/servers.rs"]
#[allow(dead_code)]
mod servers;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use notify::Watcher;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_agentq");
const KEY_ENV: &str = "AGENTQ_BENCH_KEY";
const REQUESTS: usize = 20;
const PROMPT: &str = "Say hello to Ana.";

fn main() {
    if !servers::isolated() {
        println!(
            "real_server: not run: it needs the network namespace `scripts/real-server bench` makes"
        );
        return;
    }
    let llama = servers::llama();
    let proxy = servers::Proxy::to(llama.addr);
    let home = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(home.path().join("agents")).unwrap();
    std::fs::write(
        home.path().join("agentq.toml"),
        format!(
            "[providers.real]\nkind = \"openai\"\nbase_url = \"{}/v1\"\napi_key_env = \"{KEY_ENV}\"\n",
            proxy.url()
        ),
    )
    .unwrap();
    std::fs::write(
        home.path().join("agents/real.toml"),
        format!(
            "name = \"real\"\nsystem = \"Answer in one short sentence.\"\n[model]\nprovider = \"real\"\nname = \"{}\"\ntemperature = 0\nmax_output_tokens = 16\n",
            servers::MODEL
        ),
    )
    .unwrap();
    let mut worker = agentq(home.path())
        .arg("worker")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the worker");

    println!("{}", machine());
    // Unmeasured: warms the worker, the server's prompt cache, and gives agentq's body.
    through_agentq(home.path(), &proxy);
    let body = proxy.seen()[0].body.clone();
    let mut direct = Vec::new();
    let mut direct_proxied = Vec::new();
    let mut total = Vec::new();
    let mut on_path = Vec::new();
    let mut after_delta = Vec::new();
    let mut before_request = Vec::new();
    for i in 0..REQUESTS {
        let mut agentq_run = || {
            let run = through_agentq(home.path(), &proxy);
            total.push(run.request_to_chunk);
            on_path.push(run.request_to_delta);
            after_delta.push(run.delta_to_chunk);
            before_request.push(run.send_to_request);
        };
        // Alternating, so drift in the machine's load falls on both alike.
        let mut straight = || {
            direct.push(straight_to(llama.addr, &body));
            direct_proxied.push(straight_to(proxy.addr, &body));
        };
        if i % 2 == 0 {
            straight();
            agentq_run();
        } else {
            agentq_run();
            straight();
        }
    }
    let _ = worker.kill();
    let _ = worker.wait();

    let row = |name: &str, values: &[f64]| {
        println!(
            "{name:<62} p50 {:>7.2} ms   p90 {:>7.2} ms",
            percentile(values, 50.0),
            percentile(values, 90.0)
        );
    };
    println!("{REQUESTS} requests each, one short answer (16 tokens at most):");
    row("server alone: request -> first content delta", &direct);
    row("server alone, through the recording proxy", &direct_proxied);
    row(
        "through agentq: request -> first chunk in events.ndjson",
        &total,
    );
    row(
        "  of it, the server: request -> first delta, at the proxy",
        &on_path,
    );
    row(
        "  of it, agentq: first delta at the proxy -> chunk in the log",
        &after_delta,
    );
    row(
        "before the request: `agentq send` starts -> request sent",
        &before_request,
    );
    println!(
        "overhead at p50 (through agentq - server alone): {:.2} ms (target <= 5 ms)",
        percentile(&total, 50.0) - percentile(&direct, 50.0)
    );
}

/// The binary, pointed at `home`, with the bench's key and nothing of the caller's
/// provider settings.
fn agentq(home: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--home")
        .arg(home)
        .env_remove("AGENTQ_HOME")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env(KEY_ENV, "sk-agentq-bench-key")
        .stdin(Stdio::null());
    cmd
}

/// What one message through agentq took, in milliseconds.
struct Run {
    request_to_chunk: f64,
    request_to_delta: f64,
    delta_to_chunk: f64,
    send_to_request: f64,
}

/// Sends one message to a new session and waits until its execution finished.
fn through_agentq(home: &Path, proxy: &servers::Proxy) -> Run {
    let new = agentq(home)
        .args(["session", "new", "--agent", "real"])
        .output()
        .expect("session new");
    assert!(new.status.success(), "session new: {new:?}");
    let id = String::from_utf8_lossy(&new.stdout).trim().to_owned();
    let log = home.join("sessions").join(&id).join("events.ndjson");
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    })
    .expect("inotify");
    watcher
        .watch(&log, notify::RecursiveMode::NonRecursive)
        .expect("watch the log");

    let nth = proxy.seen().len();
    let sent = SystemTime::now();
    let status = agentq(home)
        .args(["send", &id, PROMPT])
        .stdout(Stdio::null())
        .status()
        .expect("send");
    assert!(status.success());
    let mut chunk_at = None;
    let deadline = Instant::now() + servers::REAL;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if chunk_at.is_none() && text.contains("\"type\":\"agent.stream.chunk\"") {
            chunk_at = Some(SystemTime::now());
        }
        if text.contains("\"type\":\"execution.finished\"") {
            break;
        }
        assert!(Instant::now() < deadline, "no answer in {log:?}");
        let _ = rx.recv_timeout(Duration::from_millis(500));
    }
    let chunk_at = chunk_at.expect("the answer streamed");
    let seen = proxy.seen();
    let request = &seen[nth];
    let delta = request.first_text_at.expect("the proxy saw text");
    Run {
        request_to_chunk: ms_between(request.sent_at, chunk_at),
        request_to_delta: ms_between(request.sent_at, delta),
        delta_to_chunk: ms_between(delta, chunk_at),
        send_to_request: ms_between(sent, request.sent_at),
    }
}

/// Posts `body` to the server itself; milliseconds to its first content delta.
fn straight_to(addr: SocketAddr, body: &Value) -> f64 {
    let body = serde_json::to_vec(body).unwrap();
    let mut stream = TcpStream::connect(addr).expect("connect to the server");
    stream.set_nodelay(true).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let started = SystemTime::now();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();
    let mut first = None;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if first.is_none() && servers::contains_model_text(&buf[..n]) {
                    first = Some(SystemTime::now());
                }
            }
        }
    }
    ms_between(started, first.expect("the server streamed text"))
}

fn ms_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -e.duration().as_secs_f64() * 1000.0,
    }
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (sorted.len().saturating_sub(1)) as f64).round() as usize;
    sorted.get(rank).copied().unwrap_or(f64::NAN)
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "machine: {cores} cores ({cpu}); llama-cpp-python with SmolLM2-135M-Instruct; agentq {} (release)",
        env!("CARGO_PKG_VERSION")
    )
}
