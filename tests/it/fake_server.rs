//! A fake model server for the provider tests: HTTP/1.1 on 127.0.0.1 with an ephemeral
//! port, std threads and sockets only.
//!
//! Every request is recorded (method, path, headers with lowercased names, JSON body)
//! and answered with the next scripted [`Reply`]; the last one repeats. A reply is a
//! status, extra headers and a body sent as pieces, each after its own delay, so an SSE
//! stream arrives chunk by chunk with the timing the scenario wants, split anywhere
//! (mid-line, mid-character). The connection is then closed (`Connection: close`, no
//! `Content-Length`): a body without its terminal event is a truncated stream. A reply
//! may instead stall after its pieces, or send nothing at all, until the client hangs
//! up (at most [`STALL_LIMIT`]).
//!
//! Dropping the server stops it: the accept loop and every connection thread notice
//! within [`POLL`] and are joined, so no thread outlives the test.
//!
//! [`OpenAiSse`] and [`AnthropicSse`] build the streams the two APIs send.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How often blocked server threads look whether the server is being dropped.
const POLL: Duration = Duration::from_millis(25);
/// The longest a stalled reply keeps its connection open.
pub const STALL_LIMIT: Duration = Duration::from_secs(30);
/// The longest the server waits for a client to send its whole request.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names lowercased; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    /// The body parsed as JSON (`Null` if it was not JSON).
    pub body: Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    /// Each piece is written after its delay.
    pieces: Vec<(Duration, Vec<u8>)>,
    /// After the pieces, send nothing and keep the connection open.
    stall: bool,
    /// Send nothing at all, not even the status line, and keep the connection open.
    silent: bool,
}

impl Reply {
    /// `200 OK` with `Content-Type: text/event-stream` and no body yet.
    pub fn ok() -> Reply {
        Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "text/event-stream".into())],
            pieces: Vec::new(),
            stall: false,
            silent: false,
        }
    }

    /// Accepts the request and never answers, keeping the connection open until the
    /// client hangs up.
    pub fn silent() -> Reply {
        Reply {
            silent: true,
            ..Reply::ok()
        }
    }

    /// A status with a JSON body, as APIs send errors.
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            pieces: vec![(Duration::ZERO, body.to_string().into_bytes())],
            stall: false,
            silent: false,
        }
    }

    /// A status with a JSON error body in the OpenAI shape.
    pub fn error(status: u16, message: &str) -> Reply {
        Reply::json(
            status,
            json!({"error": {"message": message, "type": "test_error"}}),
        )
    }

    /// A whole SSE stream, one piece per frame, each after `delay`.
    pub fn sse(frames: Vec<String>, delay: Duration) -> Reply {
        Reply::ok().pieces(delay, frames)
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds a piece written after `delay`.
    pub fn piece_after(mut self, delay: Duration, bytes: impl Into<Vec<u8>>) -> Reply {
        self.pieces.push((delay, bytes.into()));
        self
    }

    /// Adds pieces, each written after `delay`.
    pub fn pieces<P: Into<Vec<u8>>>(
        mut self,
        delay: Duration,
        pieces: impl IntoIterator<Item = P>,
    ) -> Reply {
        self.pieces
            .extend(pieces.into_iter().map(|p| (delay, p.into())));
        self
    }

    /// After the pieces, go silent with the connection open until the client hangs up.
    pub fn stall(mut self) -> Reply {
        self.stall = true;
        self
    }
}

/// Cuts `bytes` into pieces of `size` bytes, wherever that falls (mid-line, mid-UTF-8).
pub fn split_every(bytes: &[u8], size: usize) -> Vec<Vec<u8>> {
    bytes.chunks(size.max(1)).map(<[u8]>::to_vec).collect()
}

struct Shared {
    replies: Vec<Reply>,
    requests: Mutex<Vec<Recorded>>,
    stopping: AtomicBool,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// The running server; stopped when dropped.
pub struct FakeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeServer {
    /// Starts a server answering with `replies` in order, the last one repeating.
    pub fn start(replies: Vec<Reply>) -> FakeServer {
        assert!(
            !replies.is_empty(),
            "a fake server needs at least one reply"
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            replies,
            requests: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(&listener, &shared))
        };
        FakeServer {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT`, the base URL of the Anthropic API.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1`, the base URL of an OpenAI-compatible API.
    pub fn openai_url(&self) -> String {
        format!("{}/v1", self.url())
    }

    /// The requests received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn request_count(&self) -> usize {
        self.requests().len()
    }

    /// The `n`th request (0-based); fails the test if it never came.
    pub fn request(&self, n: usize) -> Recorded {
        let all = self.requests();
        all.get(n)
            .cloned()
            .unwrap_or_else(|| panic!("request #{n} never came; {} arrived", all.len()))
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees `stopping`.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let connections = std::mem::take(
            &mut *self
                .shared
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for connection in connections {
            let _ = connection.join();
        }
    }
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/v1")
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping() {
            return;
        }
        let Ok(stream) = stream else { continue };
        let handle = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let _ = serve(stream, &shared);
            })
        };
        shared
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(handle);
    }
}

/// Reads one request, records it, and sends the reply it is due.
fn serve(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(POLL))?;
    stream.set_nodelay(true)?;
    let Some(request) = read_request(&mut stream, shared)? else {
        return Ok(());
    };
    let reply = {
        let mut requests = shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = requests.len().min(shared.replies.len() - 1);
        requests.push(request);
        shared.replies[n].clone()
    };
    if reply.silent {
        stall(&mut stream, shared);
        return Ok(());
    }
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nConnection: close\r\n",
        reply.status,
        reason(reply.status)
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.flush()?;
    for (delay, bytes) in &reply.pieces {
        if !pause(*delay, shared) {
            return Ok(());
        }
        stream.write_all(bytes)?;
        stream.flush()?;
    }
    if reply.stall {
        stall(&mut stream, shared);
    }
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

/// Sleeps `delay` in small steps; `false` if the server is being dropped.
fn pause(delay: Duration, shared: &Shared) -> bool {
    let until = Instant::now() + delay;
    loop {
        if shared.stopping() {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(POLL));
    }
}

/// Keeps the connection open and silent until the client closes it, the server is
/// dropped, or [`STALL_LIMIT`] passes.
fn stall(stream: &mut TcpStream, shared: &Shared) {
    let until = Instant::now() + STALL_LIMIT;
    let mut buf = [0u8; 1024];
    while Instant::now() < until && !shared.stopping() {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// Reads the request head and a `Content-Length` body. `None` if the client went away
/// (or the server is being dropped) before the request was complete.
fn read_request(stream: &mut TcpStream, shared: &Shared) -> std::io::Result<Option<Recorded>> {
    let until = Instant::now() + REQUEST_LIMIT;
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let mut head_end = None;
    let mut body_len = 0;
    loop {
        if head_end.is_none()
            && let Some(pos) = data.windows(4).position(|w| w == b"\r\n\r\n")
        {
            head_end = Some(pos + 4);
            body_len = content_length(&data[..pos]);
        }
        if let Some(end) = head_end
            && data.len() >= end + body_len
        {
            break;
        }
        if shared.stopping() || Instant::now() >= until {
            return Ok(None);
        }
        match stream.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
    let end = head_end.expect("the loop ends after the head");
    let head = String::from_utf8_lossy(&data[..end - 4]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("").to_owned();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            let value = value.trim().to_owned();
            headers
                .entry(name)
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
    }
    let body = serde_json::from_slice(&data[end..end + body_len]).unwrap_or(Value::Null);
    Ok(Some(Recorded {
        method,
        path,
        headers,
        body,
    }))
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        529 => "Overloaded",
        _ => "Status",
    }
}

// ---------------------------------------------------------------------------------
// Stream builders

/// An OpenAI Chat Completions stream: `data: {chunk}` frames, each ending in a blank
/// line, optionally `data: [DONE]`.
#[derive(Debug, Clone, Default)]
pub struct OpenAiSse {
    frames: Vec<String>,
}

impl OpenAiSse {
    pub fn new() -> OpenAiSse {
        OpenAiSse::default()
    }

    /// Any text, as is (a comment line, a malformed frame, CRLF…).
    pub fn raw(mut self, text: &str) -> OpenAiSse {
        self.frames.push(text.to_owned());
        self
    }

    /// `data: {value}` and a blank line.
    pub fn data(self, value: Value) -> OpenAiSse {
        let frame = format!("data: {value}\n\n");
        self.raw(&frame)
    }

    /// A chunk with one choice carrying `delta`; `finish_reason` as given (a
    /// `Value::Null` is sent as `null`; use [`OpenAiSse::data`] to leave it out).
    pub fn choice(self, delta: Value, finish_reason: Value) -> OpenAiSse {
        self.data(json!({
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "gpt-test",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        }))
    }

    /// The first chunk real servers send: the role, empty content.
    pub fn role(self) -> OpenAiSse {
        self.choice(json!({"role": "assistant", "content": ""}), Value::Null)
    }

    pub fn text(self, text: &str) -> OpenAiSse {
        self.choice(json!({"content": text}), Value::Null)
    }

    /// Several text deltas.
    pub fn texts(self, texts: &[&str]) -> OpenAiSse {
        texts.iter().fold(self, |sse, t| sse.text(t))
    }

    /// The first delta of tool call `index`: its id, name and a first piece of arguments.
    pub fn tool_call(self, index: u64, id: &str, name: &str, arguments: &str) -> OpenAiSse {
        self.choice(
            json!({"tool_calls": [{
                "index": index,
                "id": id,
                "type": "function",
                "function": {"name": name, "arguments": arguments}
            }]}),
            Value::Null,
        )
    }

    /// A further piece of tool call `index`'s arguments.
    pub fn tool_args(self, index: u64, piece: &str) -> OpenAiSse {
        self.choice(
            json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
            Value::Null,
        )
    }

    /// The chunk that ends the choice.
    pub fn finish(self, reason: &str) -> OpenAiSse {
        self.choice(json!({}), json!(reason))
    }

    /// The usage chunk OpenAI sends last when asked with `stream_options.include_usage`.
    pub fn usage(self, prompt: u64, completion: u64) -> OpenAiSse {
        self.data(json!({
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion
            }
        }))
    }

    pub fn done(self) -> OpenAiSse {
        self.raw("data: [DONE]\n\n")
    }

    /// A text-only answer as OpenAI streams it: role, deltas, stop, usage, `[DONE]`.
    pub fn answer(texts: &[&str], prompt: u64, completion: u64) -> OpenAiSse {
        OpenAiSse::new()
            .role()
            .texts(texts)
            .finish("stop")
            .usage(prompt, completion)
            .done()
    }

    pub fn frames(&self) -> Vec<String> {
        self.frames.clone()
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.frames.concat().into_bytes()
    }

    /// The stream as a reply, one frame per piece, each after `delay`.
    pub fn reply(&self, delay: Duration) -> Reply {
        Reply::sse(self.frames(), delay)
    }
}

/// An Anthropic Messages stream: `event: TYPE` and `data: {json}` per event.
#[derive(Debug, Clone, Default)]
pub struct AnthropicSse {
    frames: Vec<String>,
}

impl AnthropicSse {
    pub fn new() -> AnthropicSse {
        AnthropicSse::default()
    }

    /// An event whose `event:` line is the data's `type`.
    pub fn event(mut self, data: Value) -> AnthropicSse {
        let kind = data["type"].as_str().unwrap_or("message").to_owned();
        self.frames.push(format!("event: {kind}\ndata: {data}\n\n"));
        self
    }

    pub fn message_start(self, input_tokens: u64) -> AnthropicSse {
        self.event(json!({
            "type": "message_start",
            "message": {
                "id": "msg_test", "type": "message", "role": "assistant", "content": [],
                "model": "claude-test", "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1}
            }
        }))
    }

    pub fn text_start(self, index: u64) -> AnthropicSse {
        self.event(json!({
            "type": "content_block_start", "index": index,
            "content_block": {"type": "text", "text": ""}
        }))
    }

    pub fn text(self, index: u64, text: &str) -> AnthropicSse {
        self.event(json!({
            "type": "content_block_delta", "index": index,
            "delta": {"type": "text_delta", "text": text}
        }))
    }

    pub fn tool_use_start(self, index: u64, id: &str, name: &str) -> AnthropicSse {
        self.event(json!({
            "type": "content_block_start", "index": index,
            "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}
        }))
    }

    pub fn input_json(self, index: u64, partial: &str) -> AnthropicSse {
        self.event(json!({
            "type": "content_block_delta", "index": index,
            "delta": {"type": "input_json_delta", "partial_json": partial}
        }))
    }

    pub fn block_stop(self, index: u64) -> AnthropicSse {
        self.event(json!({"type": "content_block_stop", "index": index}))
    }

    pub fn message_delta(self, stop_reason: &str, output_tokens: u64) -> AnthropicSse {
        self.event(json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": {"output_tokens": output_tokens}
        }))
    }

    pub fn message_stop(self) -> AnthropicSse {
        self.event(json!({"type": "message_stop"}))
    }

    pub fn ping(self) -> AnthropicSse {
        self.event(json!({"type": "ping"}))
    }

    pub fn error(self, kind: &str, message: &str) -> AnthropicSse {
        self.event(json!({"type": "error", "error": {"type": kind, "message": message}}))
    }

    /// A text-only answer in one block.
    pub fn answer(texts: &[&str], input_tokens: u64, output_tokens: u64) -> AnthropicSse {
        let sse = AnthropicSse::new()
            .message_start(input_tokens)
            .text_start(0);
        texts
            .iter()
            .fold(sse, |sse, t| sse.text(0, t))
            .block_stop(0)
            .message_delta("end_turn", output_tokens)
            .message_stop()
    }

    pub fn frames(&self) -> Vec<String> {
        self.frames.clone()
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.frames.concat().into_bytes()
    }

    pub fn reply(&self, delay: Duration) -> Reply {
        Reply::sse(self.frames(), delay)
    }
}
