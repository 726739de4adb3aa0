//! What `agentq serve` costs (ARCHITECTURE.md §10): its start-up, how soon a queued
//! message reaches a client of the session's events (one client, then a thousand on one
//! session, with the server's memory), the requests per second of a message post and a
//! session read, and the session list's page over ten thousand sessions against ten.
//!
//! Each figure runs the release binary as `agentq serve --listen 127.0.0.1:0` over a
//! fresh temp home (`agentq init`: the `demo` agent). No worker runs: queued messages
//! and their `message.queued` events are all the figures need.
//!
//! Run with `cargo bench --bench serve` (`-- --quick` for fewer repetitions, `-- --only
//! FIGURE` for one of [`FIGURES`]). It prints the machine, its load, and one line per
//! figure; these are measurements, not tests.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_agentq");

/// The SSE clients of figure 3.
const CLIENTS: usize = 1000;
/// Connections of reqwest's pool per client of figure 3 (one `Client` each).
const PER_CLIENT: usize = 100;
/// How long any one wait of the benchmark may take before it is a failure.
const PATIENCE: Duration = Duration::from_secs(120);

/// What `-- --only` takes, in the order they run.
const FIGURES: &[&str] = &["start-up", "delivery", "broadcast", "requests", "list"];

/// How many times each figure repeats.
struct Counts {
    starts: usize,
    deliveries: usize,
    broadcast_messages: usize,
    requests: usize,
    many_sessions: usize,
}

/// `agentq serve` over a home, killed when dropped. Its stderr (the request log) is
/// read as it is written, or the pipe would fill and stall the server; the warnings
/// in it are kept for the report.
struct Server {
    child: Child,
    base: String,
    warnings: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(home: &Path) -> Server {
        let (child, base, _) = spawn_serve(home);
        let mut server = Server {
            child,
            base,
            warnings: Arc::new(Mutex::new(Vec::new())),
        };
        let stderr = server.child.stderr.take().expect("piped stderr");
        let warnings = server.warnings.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr);
            let mut line = String::new();
            while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
                if line.contains("WARN") || line.contains("ERROR") {
                    warnings.lock().unwrap().push(line.trim_end().to_owned());
                }
                line.clear();
            }
        });
        server
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Prints what the server warned about, if anything.
    fn report_warnings(&self, figure: &str) {
        let warnings = self.warnings.lock().unwrap();
        if !warnings.is_empty() {
            println!(
                "  ({figure}: the server logged {} warning(s); first: {})",
                warnings.len(),
                warnings[0]
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `agentq serve` and reads its `listening on` line: the child (stderr still
/// piped), the base URL, and the time from the spawn to the line read.
fn spawn_serve(home: &Path) -> (Child, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .arg("--home")
        .arg(home)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agentq serve starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut first = String::new();
    let _ = stdout.read_line(&mut first);
    let took = started.elapsed();
    let base = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("serve's first line: {first:?}"))
        .trim_end_matches('/')
        .to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    // Anything printed later must not block the server either.
    std::thread::spawn(move || {
        let _ = stdout.read_to_end(&mut Vec::new());
    });
    (child, base, took)
}

/// A fresh home with the `demo` agent.
fn home() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("--home")
        .arg(home.path())
        .arg("init")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    home
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at]
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Milliseconds from `from` to `to`, negative when `to` came first.
fn signed_ms(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(after) => ms(after),
        None => -ms(from - to),
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// The load averages, as `uptime` gives them.
fn load() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let averages: Vec<&str> = text.split_whitespace().take(3).collect();
    format!("load average {}", averages.join(", "))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_owned))
        .unwrap_or_default();
    format!(
        "agentq serve benchmark: {} cores, {cpu}, agentq {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        env!("CARGO_PKG_VERSION")
    )
}

/// Raises this process's soft limit on open files (the server inherits it) so that a
/// thousand connections fit on both sides, as far as the hard limit allows.
fn raise_open_files(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit write or read only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A client for event streams: no overall timeout (a stream lasts), a pool that keeps
/// every connection it opens.
fn stream_client(connections: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap()
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("the answer reads");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn new_session(client: &reqwest::Client, server: &Server) -> String {
    let (status, body) = post(
        client,
        &server.url("/api/sessions"),
        &json!({"agent": "demo"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().expect("the session's id").to_owned()
}

/// Posts a message; returns its id and when the 202 was read.
async fn send(client: &reqwest::Client, url: &str, text: &str) -> (String, Instant) {
    let (status, body) = post(client, url, &json!({"content": text})).await;
    let answered = Instant::now();
    assert_eq!(status, 202, "{body}");
    let id = body["message_id"].as_str().expect("message_id").to_owned();
    (id, answered)
}

/// Posts messages from a thread and a runtime of its own, so that the instant an
/// answer is read waits behind none of the event clients' tasks.
struct Poster {
    jobs: std::sync::mpsc::Sender<(String, tokio::sync::oneshot::Sender<(String, Instant)>)>,
}

impl Poster {
    fn new(url: String) -> Poster {
        let (jobs, next) = std::sync::mpsc::channel::<(String, tokio::sync::oneshot::Sender<_>)>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let client = client();
            while let Ok((text, reply)) = next.recv() {
                let _ = reply.send(rt.block_on(send(&client, &url, &text)));
            }
        });
        Poster { jobs }
    }

    /// The message's id and when its 202 was read.
    async fn send(&self, text: String) -> (String, Instant) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs.send((text, reply)).expect("the poster runs");
        answer.await.expect("the poster answers")
    }
}

/// What a client of the events saw arrive.
enum Seen {
    Created,
    Queued(String),
}

/// Reads the event stream at `url`, calling `seen` with each `session.created` and
/// `message.queued` event and the instant its bytes were read, until `seen` returns
/// false, the stream ends, or nothing comes for [`PATIENCE`].
async fn follow(client: reqwest::Client, url: String, mut seen: impl FnMut(Seen, Instant) -> bool) {
    let mut response = client.get(&url).send().await.expect("the stream opens");
    assert_eq!(response.status().as_u16(), 200);
    let mut pending = String::new();
    loop {
        let chunk = match tokio::time::timeout(PATIENCE, response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            _ => return,
        };
        let at = Instant::now();
        pending.push_str(std::str::from_utf8(&chunk).expect("UTF-8 events"));
        while let Some(end) = pending.find("\n\n") {
            let frame: String = pending.drain(..end + 2).collect();
            let Some(event) = parse(&frame) else { continue };
            if !seen(event, at) {
                return;
            }
        }
    }
}

fn parse(frame: &str) -> Option<Seen> {
    let mut kind = None;
    let mut data = None;
    for line in frame.lines() {
        if let Some(v) = line.strip_prefix("event: ") {
            kind = Some(v);
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = Some(v);
        }
    }
    match kind? {
        "session.created" => Some(Seen::Created),
        "message.queued" => {
            let data: Value = serde_json::from_str(data?).ok()?;
            Some(Seen::Queued(
                data["payload"]["message_id"].as_str()?.to_owned(),
            ))
        }
        _ => None,
    }
}

/// Waits until `done` holds, or panics saying `what` after [`PATIENCE`].
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Figure 1: each start a fresh process on the same home, killed once it listens.
fn start_up(starts: usize) {
    let home = home();
    let mut times = Vec::with_capacity(starts);
    for _ in 0..starts {
        let (mut child, _, took) = spawn_serve(home.path());
        times.push(ms(took));
        let _ = child.kill();
        let _ = child.wait();
    }
    let times = sorted(times);
    println!(
        "start-up (spawn -> `listening on` read), median   {:.1} ms   target < 100 ms   ({starts} starts; min {:.1}, max {:.1})",
        percentile(&times, 0.5),
        times[0],
        times[times.len() - 1]
    );
}

async fn next_seen(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Seen, Instant)>,
) -> (Seen, Instant) {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("an event in time")
        .expect("the stream is open")
}

/// Figure 2: one client on a session's events; each message posted once the previous
/// one reached it.
async fn delivery(n: usize) {
    let home = home();
    let server = Server::start(home.path());
    let client = client();
    let id = new_session(&client, &server).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(follow(
        stream_client(1),
        server.url(&format!("/api/sessions/{id}/events")),
        move |seen, at| tx.send((seen, at)).is_ok(),
    ));
    while !matches!(next_seen(&mut rx).await.0, Seen::Created) {}
    let poster = Poster::new(server.url(&format!("/api/sessions/{id}/messages")));
    let mut latencies = Vec::with_capacity(n);
    let mut posts = Vec::with_capacity(n);
    for i in 0..n {
        let posted = Instant::now();
        let (message, answered) = poster.send(format!("message {i}")).await;
        posts.push(ms(answered - posted));
        loop {
            if let (Seen::Queued(got), at) = next_seen(&mut rx).await
                && got == message
            {
                latencies.push(signed_ms(answered, at));
                break;
            }
        }
    }
    drop(rx);
    reader.abort();
    let latencies = sorted(latencies);
    let posts = sorted(posts);
    println!(
        "SSE delivery, 1 client (POST answer -> event), p50 / p99   {:.2} / {:.2} ms   target p50 <= 10 ms   ({n} messages; min {:.2}, max {:.2}; the POST itself p50 {:.2} ms)   [{}]",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[0],
        latencies[n - 1],
        percentile(&posts, 0.5),
        load()
    );
    server.report_warnings("SSE delivery, 1 client");
}

/// Figure 3: a thousand clients on one session; messages posted one at a time, each
/// once every client has the previous one. The clients stay connected until the last
/// message reached them all (a client closing would slow the others' deliveries).
async fn broadcast(messages: usize) {
    let home = home();
    let server = Server::start(home.path());
    let pid = server.pid();
    let id = new_session(&client(), &server).await;
    let url = server.url(&format!("/api/sessions/{id}/events"));
    let (rss_before, fds_before) = (status_kib(pid, "VmRSS:"), open_fds(pid));
    let connected = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicUsize::new(0));
    let pools: Vec<reqwest::Client> = (0..CLIENTS.div_ceil(PER_CLIENT))
        .map(|_| stream_client(PER_CLIENT))
        .collect();
    let started = Instant::now();
    let (readers, receipts): (Vec<_>, Vec<_>) = (0..CLIENTS)
        .map(|i| {
            let (connected, received) = (connected.clone(), received.clone());
            let receipts = Arc::new(Mutex::new(Vec::with_capacity(messages)));
            let kept = receipts.clone();
            let follows = follow(
                pools[i / PER_CLIENT].clone(),
                url.clone(),
                move |seen, at| {
                    match seen {
                        Seen::Created => {
                            connected.fetch_add(1, Ordering::Relaxed);
                        }
                        Seen::Queued(message) => {
                            kept.lock().unwrap().push((message, at));
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    true
                },
            );
            (tokio::spawn(follows), receipts)
        })
        .unzip();
    let mut threads = 0;
    until("a thousand clients connected", || {
        threads = threads.max(status_kib(pid, "Threads:"));
        connected.load(Ordering::Relaxed) == CLIENTS
    })
    .await;
    let connecting = started.elapsed();
    let fds_connected = open_fds(pid);
    let poster = Poster::new(server.url(&format!("/api/sessions/{id}/messages")));
    let mut answered = Vec::with_capacity(messages);
    for i in 0..messages {
        answered.push(poster.send(format!("message {i}")).await);
        until("every client has the message", || {
            received.load(Ordering::Relaxed) >= CLIENTS * (i + 1)
        })
        .await;
    }
    let peak = status_kib(pid, "VmHWM:");
    for reader in &readers {
        reader.abort();
    }
    let at: HashMap<&str, usize> = answered
        .iter()
        .enumerate()
        .map(|(i, (message, _))| (message.as_str(), i))
        .collect();
    let mut latencies = Vec::with_capacity(CLIENTS * messages);
    let mut first_last = vec![(None::<Instant>, None::<Instant>); messages];
    for receipts in receipts {
        for (message, got) in receipts.lock().unwrap().iter() {
            let i = at[message.as_str()];
            latencies.push(signed_ms(answered[i].1, *got));
            let (first, last) = &mut first_last[i];
            *first = Some(first.map_or(*got, |f| f.min(*got)));
            *last = Some(last.map_or(*got, |l| l.max(*got)));
        }
    }
    let latencies = sorted(latencies);
    // How long one event takes to reach all the clients, whatever the POST's answer did.
    let spreads = sorted(
        first_last
            .iter()
            .filter_map(|&(first, last)| Some(ms(last?.duration_since(first?))))
            .collect(),
    );
    let over = latencies.iter().filter(|l| **l > 50.0).count();
    println!(
        "SSE delivery, {CLIENTS} clients on 1 session, p50 / p99   {:.2} / {:.2} ms   target p99 <= 100 ms   ({} deliveries of {messages} messages; min {:.2}, max {:.2}, over 50 ms {over})   [{}]",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.len(),
        latencies[0],
        latencies[latencies.len() - 1],
        load()
    );
    println!(
        "  one event's fan-out, first client -> last, median / max   {:.1} / {:.1} ms   (over the {messages} messages)",
        percentile(&spreads, 0.5),
        spreads[spreads.len() - 1]
    );
    println!(
        "server peak RSS (VmHWM) with {CLIENTS} clients      {:.1} MiB   target <= 100 MB   (RSS before they connected {:.1} MiB)",
        peak as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );
    println!(
        "  connecting all {CLIENTS}: {:.0} ms; server fds {fds_before} -> {fds_connected}; server threads up to {threads} while connecting",
        ms(connecting)
    );
    server.report_warnings("SSE, 1,000 clients");
}

/// `total` requests made by `connections` tasks, each with a client of its own (so one
/// keep-alive connection each); returns requests/s and each request's milliseconds.
async fn load_of<F, Fut>(connections: usize, total: usize, request: F) -> (f64, Vec<f64>)
where
    F: Fn(reqwest::Client, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let request = Arc::new(request);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (request, next, client) = (request.clone(), next.clone(), client());
            tokio::spawn(async move {
                let mut times = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return times;
                    }
                    let sent = Instant::now();
                    request(client.clone(), i).await;
                    times.push(ms(sent.elapsed()));
                }
            })
        })
        .collect();
    let mut times = Vec::with_capacity(total);
    for task in tasks {
        times.extend(task.await.expect("a task ran"));
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    (rate, sorted(times))
}

/// `n` sessions created through the API, 8 at a time; returns their ids and the rate.
async fn sessions(server: &Server, n: usize) -> (Vec<String>, f64) {
    let url = server.url("/api/sessions");
    let ids = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let kept = ids.clone();
    let (rate, _) = load_of(8, n, move |client, _| {
        let (url, ids) = (url.clone(), kept.clone());
        async move {
            let (status, body) = post(&client, &url, &json!({"agent": "demo"})).await;
            assert_eq!(status, 201, "{body}");
            let id = body["id"].as_str().expect("the session's id").to_owned();
            ids.lock().unwrap().push(id);
        }
    })
    .await;
    let ids = std::mem::take(&mut *ids.lock().unwrap());
    (ids, rate)
}

/// Figure 4: a message post and a session read, 8 connections, over 20 sessions.
async fn requests(total: usize) {
    let home = home();
    let server = Server::start(home.path());
    let (ids, _) = sessions(&server, 20).await;
    let ids = Arc::new(ids);
    let base = server.base.clone();
    let (posts, post_times) = load_of(8, total, {
        let (ids, base) = (ids.clone(), base.clone());
        move |client, i| {
            let url = format!("{base}/api/sessions/{}/messages", ids[i % ids.len()]);
            async move {
                send(&client, &url, &format!("message {i}")).await;
            }
        }
    })
    .await;
    println!(
        "POST /api/sessions/{{id}}/messages (durable)   {posts:.0} requests/s, p50 {:.2} ms   ({total} requests, 8 connections, 20 sessions)   [{}]",
        percentile(&post_times, 0.5),
        load()
    );
    let (gets, get_times) = load_of(8, total, move |client, i| {
        let url = format!("{base}/api/sessions/{}", ids[i % ids.len()]);
        async move {
            let response = client.get(&url).send().await.expect("the server answers");
            assert_eq!(response.status().as_u16(), 200);
            response.bytes().await.expect("the answer reads");
        }
    })
    .await;
    println!(
        "GET /api/sessions/{{id}}                       {gets:.0} requests/s, p50 {:.2} ms   ({total} requests, 8 connections, 20 sessions of {} messages)   [{}]",
        percentile(&get_times, 0.5),
        total / 20,
        load()
    );
    server.report_warnings("requests/s");
}

/// Median milliseconds of `n` reads of the first page of the session list, ten
/// sessions a page (so a store of ten and one of ten thousand give pages of one size).
async fn list_page(server: &Server, n: usize, expect: usize) -> f64 {
    let client = client();
    let url = server.url("/api/sessions?limit=10");
    let mut times = Vec::with_capacity(n);
    // One read first, untimed: the first request also opens the connection.
    for round in 0..=n {
        let started = Instant::now();
        let response = client.get(&url).send().await.expect("the server answers");
        assert_eq!(response.status().as_u16(), 200);
        let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        let took = ms(started.elapsed());
        assert_eq!(
            body["sessions"].as_array().map(Vec::len),
            Some(expect),
            "{body}"
        );
        if round > 0 {
            times.push(took);
        }
    }
    percentile(&sorted(times), 0.5)
}

/// Figure 5: the first page of the list with 10 sessions, then with many: right after
/// they were made (the file store lists `sessions/` again while it keeps changing), and
/// once it has not changed for a while (its last listing is kept, see
/// `FileStore::list_ids`), which is how a large store is mostly read.
async fn session_list(many: usize) {
    let reads = 50;
    // Longer than the file store waits before it keeps a listing.
    let settle = Duration::from_millis(1500);
    let few = {
        let home = home();
        let server = Server::start(home.path());
        sessions(&server, 10).await;
        tokio::time::sleep(settle).await;
        list_page(&server, reads, 10).await
    };
    let home = home();
    let server = Server::start(home.path());
    let (_, rate) = sessions(&server, many).await;
    let changing = list_page(&server, reads, 10).await;
    tokio::time::sleep(settle).await;
    let page = list_page(&server, reads, 10).await;
    println!(
        "GET /api/sessions?limit=10, median   {page:.2} ms with {many} sessions, {few:.2} ms with 10: x{:.1}; {changing:.2} ms right after the {many} were made   ({reads} reads each; the {many} created at {rate:.0}/s, 8 at a time)   [{}]",
        page / few,
        load()
    );
    server.report_warnings("session list");
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // `-- --only FIGURE` runs one of the FIGURES.
    let only: Option<String> = std::env::args().skip_while(|a| a != "--only").nth(1);
    if let Some(figure) = only.as_deref()
        && !FIGURES.contains(&figure)
    {
        eprintln!(
            "error: no figure `{figure}`; the figures are {}",
            FIGURES.join(", ")
        );
        std::process::exit(2);
    }
    let wanted = |figure: &str| only.as_deref().is_none_or(|o| o == figure);
    let counts = if quick {
        Counts {
            starts: 20,
            deliveries: 50,
            broadcast_messages: 10,
            requests: 500,
            many_sessions: 2000,
        }
    } else {
        Counts {
            starts: 20,
            deliveries: 200,
            broadcast_messages: 30,
            requests: 2000,
            many_sessions: 10_000,
        }
    };
    let open_files = raise_open_files(4 * CLIENTS as u64);
    println!("{}", machine());
    println!(
        "{} at the start; open files limit {open_files}{}",
        load(),
        if quick { "; --quick" } else { "" }
    );
    if wanted("start-up") {
        start_up(counts.starts);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if wanted("delivery") {
            delivery(counts.deliveries).await;
        }
        if wanted("broadcast") {
            broadcast(counts.broadcast_messages).await;
        }
        if wanted("requests") {
            requests(counts.requests).await;
        }
        if wanted("list") {
            session_list(counts.many_sessions).await;
        }
    });
    println!("{} at the end", load());
}
