//! The real servers of the real-server tests and benchmark, and a recording proxy to
//! put between agentq and them. Only std, libc, serde_json and tempfile: the benchmark
//! (`benches/real_server.rs`) includes this file as it is.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, mpsc};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

/// The name both servers know the model by.
pub const MODEL: &str = "smollm2";
/// A real model on two cores is slower than a fake server.
pub const REAL: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------
// What is installed

/// Where `scripts/real-server install` put things, from the manifest it writes.
struct Installed {
    llama_python: PathBuf,
    model: PathBuf,
    litellm: PathBuf,
    mcp_time: PathBuf,
}

pub fn cache_dir() -> PathBuf {
    match std::env::var_os("AGENTQ_TEST_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/agentq-test"),
    }
}

fn installed() -> Installed {
    let manifest = cache_dir().join("real-server.manifest");
    let text = std::fs::read_to_string(&manifest).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `scripts/real-server install` first",
            manifest.display()
        )
    });
    let entries: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let path = |key: &str| {
        PathBuf::from(
            entries
                .get(key)
                .unwrap_or_else(|| panic!("{} has no `{key}`", manifest.display())),
        )
    };
    Installed {
        llama_python: path("llama_python"),
        model: path("model"),
        litellm: path("litellm"),
        mcp_time: path("mcp_time"),
    }
}

/// The `mcp-server-time` program (a stdio MCP server) the install put in the cache.
pub fn mcp_time_server() -> PathBuf {
    installed().mcp_time
}

/// Whether the process runs in a network namespace whose only interface is loopback
/// (`scripts/real-server test` and `bench` make one).
pub fn isolated() -> bool {
    let dev = std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default();
    let interfaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    interfaces == ["lo"]
}

/// Refuses to start anything outside such a namespace.
pub fn assert_isolated() {
    assert!(
        isolated(),
        "the real servers run only in a network namespace with loopback alone: \
         use `scripts/real-server test` (or `bench`)"
    );
}

// ---------------------------------------------------------------------------------
// Servers

/// A server process of the test run, and where it listens.
pub struct Server {
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// The last lines the server logged, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// The temporary directory of the run's servers (configs, logs); kept for the process.
fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// Spawns `command` from a thread that lives as long as the test process. The child
/// gets SIGKILL when that thread ends (`PR_SET_PDEATHSIG` follows the thread that
/// forked, so a test's own thread, which ends with the test, must not spawn it).
fn spawn_for_the_process(mut command: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (jobs, receive) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            for (mut command, reply) in receive {
                let _ = reply.send(command.spawn());
            }
            // The channel lives in a static and never closes: this thread ends with
            // the process, and takes the servers with it.
        });
        Mutex::new(jobs)
    });
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply, result) = mpsc::channel();
    keeper
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send((command, reply))
        .expect("the keeper thread runs");
    result.recv().expect("the keeper thread answers")
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// Starts a server and waits until `GET path` answers 200 (at most [`REAL`]).
fn start(name: &str, mut command: Command, port: u16, ready_path: &str) -> Result<Server, String> {
    let log = scratch().join(format!("{name}.log"));
    let file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(|e| e.to_string())?)
        .stderr(file);
    let mut child = spawn_for_the_process(command).map_err(|e| format!("starting {name}: {e}"))?;
    let server = Server {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        log,
    };
    let deadline = Instant::now() + REAL;
    loop {
        // Dropping `child` leaves the process running: it ends with the keeper thread.
        if http_get(server.addr, ready_path).is_some_and(|status| status == 200) {
            return Ok(server);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{name} exited ({status}) before it answered:\n{}",
                server.log_tail()
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{name} did not answer GET {ready_path} within {REAL:?}:\n{}",
                server.log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The status of `GET path`, or `None` if nothing answers.
fn http_get(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// llama-cpp-python's server, with the function-calling chat format (its default
/// template ignores tools). It serves one request at a time.
pub fn llama() -> &'static Server {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    let started = SERVER.get_or_init(|| {
        assert_isolated();
        let installed = installed();
        let port = free_port();
        let mut command = Command::new(&installed.llama_python);
        command
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(&installed.model)
            .args(["--model_alias", MODEL])
            .args(["--chat_format", "chatml-function-calling"])
            // By default a new request cuts the stream of the one in progress short:
            // the tests run at the same time, so requests wait their turn instead.
            .args(["--interrupt_requests", "False"])
            .args(["--n_ctx", "4096", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string());
        start("llama-cpp-python", command, port, "/v1/models")
    });
    started.as_ref().unwrap_or_else(|e| panic!("{e}"))
}

/// The key LiteLLM's proxy wants (`LITELLM_MASTER_KEY`); agentq sends it as its API
/// key for the gateway.
pub const GATEWAY_KEY: &str = "sk-agentq-gateway-test-77a1";

/// LiteLLM's proxy, routing the model to the llama server as `hosted_vllm/` (its
/// `openai/` route goes to a Responses endpoint the server lacks), with its price
/// list read locally (else it fetches one at start-up).
pub fn gateway() -> &'static Server {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    let started = SERVER.get_or_init(|| {
        let llama = llama();
        let installed = installed();
        let config = scratch().join("litellm.yaml");
        std::fs::write(
            &config,
            format!(
                "model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: hosted_vllm/{MODEL}\n      api_base: http://{}/v1\n      api_key: none\n",
                llama.addr
            ),
        )
        .map_err(|e| e.to_string())?;
        let port = free_port();
        let mut command = Command::new(&installed.litellm);
        command
            .arg("--config")
            .arg(&config)
            .args(["--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .env("LITELLM_MASTER_KEY", GATEWAY_KEY)
            .env("HOME", scratch());
        start("litellm", command, port, "/health/liveliness")
    });
    started.as_ref().unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------
// The recording proxy

/// One request as it went over the wire to the server.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    /// Header names lowercased.
    pub headers: BTreeMap<String, String>,
    pub body: Value,
    /// When its first byte reached the proxy, and when the first piece of the answer
    /// that carries model text did (wall clock, to compare with event timestamps).
    pub sent_at: SystemTime,
    pub first_text_at: Option<SystemTime>,
}

/// A TCP proxy in front of a server that keeps every request (and when the answer's
/// first text went by). Dropped, it stops accepting; open connections end with their
/// peers.
pub struct Proxy {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub fn to(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let seen = seen.clone();
            let stopping = stopping.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let seen = seen.clone();
                    std::thread::spawn(move || relay(client, upstream, seen));
                }
            });
        }
        Proxy {
            addr,
            seen,
            stopping,
        }
    }

    /// `http://ADDR`: the base URL of the Anthropic API through the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests so far, in the order they were sent.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies one connection both ways, parsing the client's side into requests.
fn relay(mut client: TcpStream, upstream: SocketAddr, seen: Arc<Mutex<Vec<Seen>>>) {
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(mut client_back), Ok(mut server_back)) = (client.try_clone(), server.try_clone())
    else {
        return;
    };
    // The index in `seen` of the request on this connection that awaits its answer.
    let waiting: Arc<Mutex<Option<usize>>> = Arc::new(Mutex::new(None));
    let answers = {
        let waiting = waiting.clone();
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                let n = match server_back.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let piece = &buf[..n];
                if contains_model_text(piece)
                    && let Some(i) = *waiting.lock().unwrap_or_else(PoisonError::into_inner)
                {
                    let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                    seen[i].first_text_at.get_or_insert_with(SystemTime::now);
                }
                if client_back.write_all(piece).is_err() {
                    break;
                }
            }
            let _ = client_back.shutdown(Shutdown::Write);
        })
    };
    let mut pending = Vec::new();
    let mut started: Option<SystemTime> = None;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        started.get_or_insert_with(SystemTime::now);
        pending.extend_from_slice(&buf[..n]);
        let sent_at = started.unwrap_or_else(SystemTime::now);
        while let Some((request, used)) = parse_request(&pending, sent_at) {
            pending.drain(..used);
            started = (!pending.is_empty()).then(SystemTime::now);
            let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
            seen.push(request);
            *waiting.lock().unwrap_or_else(PoisonError::into_inner) = Some(seen.len() - 1);
        }
        if server.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = server.shutdown(Shutdown::Write);
    let _ = answers.join();
}

/// A piece of an answer that carries model text: an OpenAI content delta or an
/// Anthropic text delta.
pub fn contains_model_text(piece: &[u8]) -> bool {
    let text = String::from_utf8_lossy(piece);
    text.contains("\"text_delta\"")
        || (text.contains("\"content\": \"") && !text.contains("\"content\": \"\""))
        || (text.contains("\"content\":\"") && !text.contains("\"content\":\"\""))
}

/// One complete request at the start of `bytes` (head and `Content-Length` body), and
/// how many bytes it took.
fn parse_request(bytes: &[u8], sent_at: SystemTime) -> Option<(Seen, usize)> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..end - 4]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_owned();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if bytes.len() < end + length {
        return None;
    }
    let body = serde_json::from_slice(&bytes[end..end + length]).unwrap_or(Value::Null);
    Some((
        Seen {
            path,
            headers,
            body,
            sent_at,
            first_text_at: None,
        },
        end + length,
    ))
}
