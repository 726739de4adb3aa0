//! `agentq serve`: the API of ARCHITECTURE.md §10 over a real server on a free
//! loopback port, each route and each refusal, and the events as Server-Sent Events
//! (resuming after `Last-Event-ID`, many clients on one session, the shutdown).
//! On the Postgres run (`scripts/postgres test`) the same tests run on that store.

use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Background, LONG, TestEnv, wait_until};

/// An agent whose answer streams in slowly, word by word, after one tool call.
const SLOW_AGENT: &str = r#"
name = "slow"
[model]
provider = "scripted"
[[model.script]]
text = "Looking."
tool_calls = [{ name = "list_dir", arguments = { path = "." } }]
[[model.script]]
text = "one two three four five six seven eight nine ten"
delay_ms = 150
[tools]
builtin = ["list_dir"]
"#;

/// `agentq serve` running on a free port, killed when dropped; its log read as it is
/// written (a log nobody reads would fill the pipe and stall the server).
struct Server {
    process: Option<Background>,
    base: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(env: &TestEnv, extra: &[&str]) -> Server {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut process = env.spawn(&args);
        let stdout = process.child.stdout.take().unwrap();
        let stderr = process.child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let written = log.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr);
            let mut line = String::new();
            while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
                written.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let mut out = BufReader::new(stdout);
            let _ = out.read_line(&mut first);
            let _ = tx.send(first);
            // Keep reading, so nothing the server prints can block it.
            let _ = out.read_to_end(&mut Vec::new());
        });
        let first = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("serve prints where it listens");
        let base = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "serve's first line: {first:?}; log: {}",
                    log.lock().unwrap()
                )
            })
            .trim_end_matches('/')
            .to_owned();
        Server {
            process: Some(process),
            base,
            log,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn pid(&self) -> u32 {
        self.process.as_ref().unwrap().child.id()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Stops it with `signal` and returns its exit code.
    fn stop(&mut self, signal: i32) -> i32 {
        let process = self.process.take().unwrap();
        process.signal(signal);
        let out = process.wait(Duration::from_secs(20));
        out.status.code().unwrap_or(-1)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// An answer: its status and its body as JSON (`Null` when it is not JSON).
async fn call(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    call(
        client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await
}

/// Asserts the error shape, and returns its code.
fn error_code(body: &Value) -> String {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    error["code"].as_str().expect("error.code").to_owned()
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: u64,
    kind: String,
    data: Value,
}

/// Reads the event stream of `url` until `done` says so (or the stream ends),
/// returning the events and the comments seen.
async fn read_events(
    request: reqwest::RequestBuilder,
    mut done: impl FnMut(&[Sse]) -> bool,
) -> Vec<Sse> {
    let mut response = request.send().await.expect("the stream opens");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut events = Vec::new();
    let mut pending = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(&events) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("no more events after {:?}", events.last()))
            .expect("the stream reads");
        let Some(chunk) = chunk else { break };
        pending.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = pending.find("\n\n") {
            let frame: String = pending.drain(..end + 2).collect();
            if let Some(event) = parse_frame(&frame) {
                events.push(event);
            }
        }
    }
    events
}

fn parse_frame(frame: &str) -> Option<Sse> {
    let (mut id, mut kind, mut data) = (None, None, None);
    for line in frame.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.parse().ok();
        } else if let Some(v) = line.strip_prefix("event: ") {
            kind = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = serde_json::from_str(v).ok();
        }
    }
    Some(Sse {
        id: id.unwrap_or(0),
        kind: kind?,
        data: data?,
    })
}

fn finished(events: &[Sse], n: usize) -> bool {
    events
        .iter()
        .filter(|e| e.kind == "execution.finished")
        .count()
        >= n
}

async fn new_session(client: &reqwest::Client, server: &Server, agent: &str) -> String {
    let (status, body) = post(
        client,
        server.url("/api/sessions"),
        json!({ "agent": agent }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

#[test]
fn every_route_answers_as_its_command_does() {
    let env = TestEnv::new();
    let server = Server::start(&env, &["--worker"]);
    runtime().block_on(async {
        let client = client();
        let (status, agents) = call(client.get(server.url("/api/agents"))).await;
        assert_eq!(status, 200);
        assert!(agents.as_array().unwrap().iter().any(|a| a["name"] == "echo"), "{agents}");

        let (status, created) = post(
            &client,
            server.url("/api/sessions"),
            json!({ "agent": "echo", "title": "over http", "set": { "limits.max_steps": 5 }, "events": "debug" }),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap().to_owned();
        assert_eq!(created["title"], "over http");
        assert_eq!(created["events"], "debug");
        // The same record the CLI shows.
        assert_eq!(env.json(&["session", "show", &id, "--json"])["session"], created);

        let (status, listed) = call(client.get(server.url("/api/sessions"))).await;
        assert_eq!(status, 200);
        assert_eq!(listed["sessions"][0]["id"], id.as_str());
        assert_eq!(listed["next"], Value::Null);

        let send = || {
            client
                .post(server.url(&format!("/api/sessions/{id}/messages")))
                .header("content-type", "application/json")
                .header("idempotency-key", "order-17")
                .body(json!({ "content": "hello over http" }).to_string())
        };
        let (status, queued) = call(send()).await;
        assert_eq!(status, 202, "{queued}");
        assert_eq!(queued["duplicate"], false);
        assert_eq!(queued["session_id"], id.as_str());
        let (status, again) = call(send()).await;
        assert_eq!(status, 202);
        assert_eq!(again["duplicate"], true);
        assert_eq!(again["message_id"], queued["message_id"]);

        // The in-process worker answers it.
        wait_until("the worker answers", Duration::from_secs(30), || {
            blocking(|| !env.finished(&id).is_empty())
        });
        let (status, messages) = call(client.get(server.url(&format!("/api/sessions/{id}/messages")))).await;
        assert_eq!(status, 200);
        let messages = messages.as_array().unwrap().clone();
        assert_eq!(messages[0]["role"], "user");
        assert_eq!(messages[0]["content"], "hello over http");
        assert_eq!(messages.last().unwrap()["content"], "echo: hello over http");
        let (status, shown) = call(client.get(server.url(&format!("/api/sessions/{id}")))).await;
        assert_eq!(status, 200);
        assert_eq!(shown["last_execution"]["status"], "completed");
        assert_eq!(shown["session"]["counters"]["messages"], 1, "{shown}");

        let (status, home) = call(client.get(server.url("/api/status"))).await;
        assert_eq!(status, 200);
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&home), keys(&env.json(&["status", "--json"])), "{home}");
        assert_eq!(home["pending"], env.json(&["status", "--json"])["pending"]);

        for (action, after) in [("pause", "paused"), ("resume", "active")] {
            let (status, meta) = post(&client, server.url(&format!("/api/sessions/{id}/{action}")), json!({})).await;
            assert_eq!(status, 200, "{action}: {meta}");
            assert_eq!(meta["status"], after);
        }
        let (status, cancelled) = post(&client, server.url(&format!("/api/sessions/{id}/cancel")), json!({})).await;
        assert_eq!(status, 202, "{cancelled}");
        let (status, closed) = post(&client, server.url(&format!("/api/sessions/{id}/close")), json!({})).await;
        assert_eq!(status, 200);
        assert_eq!(closed["status"], "closed");
        assert_eq!(env.json(&["session", "show", &id, "--json"])["session"]["status"], "closed");
        let (status, refused) = post(&client, server.url(&format!("/api/sessions/{id}/messages")), json!({ "content": "late" })).await;
        assert_eq!(status, 409);
        assert_eq!(error_code(&refused), "conflict");
    });
}

#[test]
fn every_refusal_has_its_status_and_the_error_shape() {
    let env = TestEnv::new();
    std::fs::write(
        env.home().join("agentq.toml"),
        "[inbox]\nmax_message_bytes = 100\n",
    )
    .unwrap();
    let server = Server::start(&env, &[]);
    runtime().block_on(async {
        let client = client();
        let id = new_session(&client, &server, "echo").await;
        let missing = "01a23d19-98b2-7322-b3db-4e781a4ab8c0";
        let prefix = &id[..8];
        let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
            (
                client.get(server.url(&format!("/api/sessions/{prefix}"))),
                400,
                "invalid_request",
            ),
            (
                client.get(server.url(&format!("/api/sessions/{missing}"))),
                404,
                "not_found",
            ),
            (
                client.get(server.url(&format!("/api/sessions/{missing}/events"))),
                404,
                "not_found",
            ),
            (client.get(server.url("/api/nothing")), 404, "not_found"),
            (
                client.delete(server.url(&format!("/api/sessions/{id}"))),
                405,
                "method_not_allowed",
            ),
            (
                client.get(server.url("/api/sessions?limit=0")),
                400,
                "invalid_request",
            ),
            (
                client.get(server.url("/api/sessions?status=sleeping")),
                400,
                "invalid_request",
            ),
            (
                client.get(server.url(&format!("/api/sessions/{id}/events?after=x"))),
                400,
                "invalid_request",
            ),
            // A form post from another site: refused before anything is read.
            (
                client
                    .post(server.url("/api/sessions"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body("agent=echo"),
                415,
                "unsupported_media_type",
            ),
            (
                client
                    .post(server.url("/api/sessions"))
                    .header("content-type", "application/json")
                    .body("{not json"),
                400,
                "invalid_request",
            ),
            (
                client
                    .post(server.url("/api/sessions"))
                    .header("content-type", "application/json")
                    .body(json!({ "agent": "echo", "colour": "red" }).to_string()),
                400,
                "invalid_request",
            ),
            (
                client
                    .post(server.url("/api/sessions"))
                    .header("content-type", "application/json")
                    .body(json!({ "agent": "nobody" }).to_string()),
                422,
                "invalid_input",
            ),
            (
                client
                    .post(server.url(&format!("/api/sessions/{id}/messages")))
                    .header("content-type", "application/json")
                    .body(json!({ "content": "x".repeat(101) }).to_string()),
                413,
                "too_large",
            ),
            (
                client
                    .post(server.url(&format!("/api/sessions/{id}/messages")))
                    .header("content-type", "application/json")
                    .body("x".repeat(2 * 1024 * 1024)),
                413,
                "too_large",
            ),
        ];
        for (request, expected, code) in cases {
            let (status, body) = call(request).await;
            assert_eq!(
                (status, error_code(&body).as_str()),
                (expected, code),
                "{body}"
            );
        }
        // Nothing refused reached the inbox.
        assert_eq!(blocking(|| env.pending(&id)), 0);
    });
}

#[test]
fn the_session_list_comes_a_page_at_a_time_newest_first() {
    let env = TestEnv::new();
    let ids: Vec<String> = (0..7).map(|_| env.new_session("echo")).collect();
    let server = Server::start(&env, &[]);
    runtime().block_on(async {
        let client = client();
        let mut seen = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let query = match &next {
                Some(before) => format!("/api/sessions?limit=3&before={before}"),
                None => "/api/sessions?limit=3".to_owned(),
            };
            let (status, page) = call(client.get(server.url(&query))).await;
            assert_eq!(status, 200, "{page}");
            let rows = page["sessions"].as_array().unwrap();
            assert!(rows.len() <= 3);
            seen.extend(rows.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
            match page["next"].as_str() {
                Some(cursor) => next = Some(cursor.to_owned()),
                None => break,
            }
        }
        let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
        assert_eq!(seen, newest_first);
    });
}

#[test]
fn events_resume_exactly_after_the_last_event_id() {
    let env = TestEnv::new();
    let id = env.new_session("echo");
    env.send(&id, "first");
    env.send(&id, "second");
    env.worker_once();
    let server = Server::start(&env, &[]);
    runtime().block_on(async {
        let client = client();
        let url = server.url(&format!("/api/sessions/{id}/events"));
        let all = read_events(client.get(&url), |events| finished(events, 2)).await;
        let seqs: Vec<u64> = all.iter().map(|e| e.id).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "gapless from 1"
        );
        for event in &all {
            assert_eq!(event.data["seq"], event.id);
            assert_eq!(event.data["type"], event.kind.as_str());
        }
        // What the log holds, line for line.
        assert_eq!(
            all.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
            blocking(|| env.events(&id))
        );
        for k in [1, 5, all.len() as u64 - 1] {
            let rest = &all[k as usize..];
            let resumed = read_events(
                client.get(&url).header("last-event-id", k.to_string()),
                |events| events.len() == rest.len(),
            )
            .await;
            assert_eq!(resumed, rest, "after Last-Event-ID {k}");
            let after = read_events(client.get(format!("{url}?after={k}")), |events| {
                events.len() == rest.len()
            })
            .await;
            assert_eq!(after, rest, "after ?after={k}");
        }
    });
}

#[test]
fn two_hundred_clients_on_one_session_each_receive_every_event_from_one_reader() {
    let env = TestEnv::new();
    env.write_agent("slow", SLOW_AGENT);
    let id = env.new_session("slow");
    let server = Server::start(&env, &["--worker"]);
    let fds_before = open_fds(server.pid());
    runtime().block_on(async {
        let url = server.url(&format!("/api/sessions/{id}/events"));
        let client = client();
        let readers: Vec<_> = (0..200)
            .map(|_| {
                let request = client.get(&url);
                tokio::spawn(
                    async move { read_events(request, |events| finished(events, 1)).await },
                )
            })
            .collect();
        // Every client is connected (each replayed `session.created`) before the message.
        wait_until("200 clients connected", Duration::from_secs(30), || {
            open_fds(server.pid()) >= fds_before + 200
        });
        let fds_connected = open_fds(server.pid());
        env.send(&id, "go");
        let mut all = Vec::new();
        for reader in readers {
            all.push(reader.await.unwrap());
        }
        let log = blocking(|| env.events(&id));
        for events in &all {
            let data: Vec<Value> = events.iter().map(|e| e.data.clone()).collect();
            assert_eq!(data, log, "every client sees the whole log, in order, once");
        }
        // One reader for all of them: one socket each, and no follower (with its
        // notification watch) per client.
        assert!(
            fds_connected < fds_before + 200 + 20,
            "{fds_before} descriptors before, {fds_connected} with 200 clients"
        );
    });
}

#[test]
fn a_client_connected_before_the_message_sees_it_live_and_the_shutdown_is_announced() {
    let env = TestEnv::new();
    env.write_agent("slow", SLOW_AGENT);
    let id = env.new_session("slow");
    let mut server = Server::start(&env, &["--worker"]);
    let rt = runtime();
    let url = server.url(&format!("/api/sessions/{id}/events"));
    let client = client();
    let live = rt.spawn(read_events(client.get(&url), |events| {
        events.iter().any(|e| e.kind == "shutdown")
    }));
    wait_until("the client is connected", Duration::from_secs(10), || {
        server
            .log()
            .contains(&format!("GET /api/sessions/{id}/events"))
    });
    env.send(&id, "go");
    wait_until("the answer streams", Duration::from_secs(30), || {
        !env.events_of(&id, "agent.stream.chunk").is_empty()
    });
    // Stopped mid-answer: the stream says so, the worker stops at a checkpoint.
    assert_eq!(server.stop(15), 0, "{}", server.log());
    let events = rt.block_on(live).unwrap();
    assert_eq!(events.last().unwrap().kind, "shutdown");
    let seqs: Vec<u64> = events
        .iter()
        .filter(|e| e.kind != "shutdown")
        .map(|e| e.id)
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(events.iter().any(|e| e.kind == "agent.stream.chunk"));
}

#[test]
fn off_loopback_a_token_is_required_and_the_login_url_works_once() {
    let env = TestEnv::new();
    let refused = env.fails(&["serve", "--listen", "0.0.0.0:0"], 2);
    assert!(refused.contains("--token-file"), "{refused}");
    let token = "t0ken-for-the-test-0123456789";
    let token_file = env.home().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let server = Server::start(&env, &["--token-file", token_file.to_str().unwrap()]);
    wait_until("the login URL is printed", Duration::from_secs(10), || {
        server.log().contains("/login?code=")
    });
    let log = server.log();
    let login = log
        .split_whitespace()
        .find(|word| word.contains("/login?code="))
        .unwrap()
        .to_owned();
    runtime().block_on(async {
        let client = client();
        let (status, body) = call(client.get(server.url("/api/sessions"))).await;
        assert_eq!((status, error_code(&body).as_str()), (401, "unauthorized"));
        let (status, _) = call(
            client
                .get(server.url("/api/sessions"))
                .header("authorization", "Bearer wrong"),
        )
        .await;
        assert_eq!(status, 401);
        let (status, _) = call(client.get(server.url("/api/sessions")).bearer_auth(token)).await;
        assert_eq!(status, 200);
        // The page is public (it holds no data); its login sets the cookie, once.
        let (status, _) = call(client.get(server.url("/"))).await;
        assert_eq!(status, 200);
        let no_redirects = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let response = no_redirects.get(&login).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 303);
        let cookie = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let pair = cookie.split(';').next().unwrap().to_owned();
        let (status, _) = call(
            client
                .get(server.url("/api/sessions"))
                .header("cookie", &pair),
        )
        .await;
        assert_eq!(status, 200);
        let again = no_redirects.get(&login).send().await.unwrap();
        assert_eq!(again.status().as_u16(), 403);
    });
    // Neither the token nor the code's use is in the log, nor any message body.
    assert!(!server.log().contains(token), "{}", server.log());
    assert!(!server.log().contains("?code=") || server.log().matches("?code=").count() == 1);
}

#[test]
fn the_request_log_holds_no_message_body() {
    let env = TestEnv::new();
    let server = Server::start(&env, &[]);
    runtime().block_on(async {
        let client = client();
        let id = new_session(&client, &server, "echo").await;
        let (status, _) = post(
            &client,
            server.url(&format!("/api/sessions/{id}/messages")),
            json!({ "content": "the-secret-plan-42" }),
        )
        .await;
        assert_eq!(status, 202);
    });
    wait_until("the request is logged", Duration::from_secs(10), || {
        server.log().contains("/messages")
    });
    assert!(
        !server.log().contains("the-secret-plan-42"),
        "{}",
        server.log()
    );
}

#[test]
fn the_page_is_served_with_a_policy_that_runs_only_its_own_script() {
    let env = TestEnv::new();
    let server = Server::start(&env, &[]);
    runtime().block_on(async {
        let client = client();
        let page = client.get(server.url("/")).send().await.unwrap();
        assert_eq!(page.status().as_u16(), 200);
        let policy = page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(policy.contains("script-src 'self'"), "{policy}");
        let html = page.text().await.unwrap();
        assert!(html.contains("/app.js") && html.contains("/style.css"));
        for (path, kind) in [("/app.js", "text/javascript"), ("/style.css", "text/css")] {
            let file = client.get(server.url(path)).send().await.unwrap();
            assert_eq!(file.status().as_u16(), 200);
            assert!(
                file.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with(kind)
            );
        }
        assert_eq!(
            client
                .get(server.url("/nothing"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
            404
        );
    });
}

#[test]
fn cross_origin_pages_may_call_the_api_only_when_allowed() {
    let env = TestEnv::new();
    let refused = env.fails(
        &["serve", "--listen", "127.0.0.1:0", "--allow-origin", "*"],
        2,
    );
    assert!(refused.contains("not an origin"), "{refused}");
    let allowed = "https://app.example.com";
    let server = Server::start(&env, &["--allow-origin", allowed]);
    runtime().block_on(async {
        let client = client();
        let url = server.url("/api/sessions");
        let from = |origin: &str| client.get(&url).header("origin", origin);
        let answer = from(allowed).send().await.unwrap();
        assert_eq!(answer.headers()["access-control-allow-origin"], allowed);
        let other = from("https://evil.example").send().await.unwrap();
        assert!(other.headers().get("access-control-allow-origin").is_none());
        let preflight = |origin: &str| {
            client
                .request(reqwest::Method::OPTIONS, &url)
                .header("origin", origin)
                .header("access-control-request-method", "POST")
        };
        let ok = preflight(allowed).send().await.unwrap();
        assert_eq!(ok.status().as_u16(), 204);
        assert!(
            ok.headers()["access-control-allow-headers"]
                .to_str()
                .unwrap()
                .contains("content-type")
        );
        assert_eq!(
            preflight("https://evil.example")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
            403
        );
    });
    // Without --allow-origin, no page of any other origin may read an answer.
    let server = Server::start(&env, &[]);
    runtime().block_on(async {
        let answer = client()
            .get(server.url("/api/sessions"))
            .header("origin", allowed)
            .send()
            .await
            .unwrap();
        assert!(
            answer
                .headers()
                .get("access-control-allow-origin")
                .is_none()
        );
    });
}

/// Runs `read` (a test helper that may query the Postgres store with a blocking
/// client) from inside the test's runtime.
fn blocking<T>(read: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(read)
}

/// How many file descriptors process `pid` holds open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// An agent whose model first calls `release` (a command that needs a person's
/// approval and notes each run in `released.txt`), then answers with its result.
const GATED_AGENT: &str = r#"
name = "gated"
[model]
provider = "scripted"
[[model.script]]
text = "Releasing."
tool_calls = [{ name = "release", arguments = { version = "1.4.2", channel = "stable" } }]
[[model.script]]
text = "Released: {input}"
[[tools.command]]
name = "release"
description = "Publish a release"
argv = ["sh", "-c", "echo run >> released.txt; echo published"]
approval = "required"
"#;

/// A home with the gated agent and a session whose execution is parked on its call
/// (`call_1_1`), by a worker that has exited since.
fn parked_session() -> (TestEnv, String) {
    let env = TestEnv::new();
    env.write_agent("gated", GATED_AGENT);
    let id = env.new_session("gated");
    env.send(&id, "ship 1.4.2");
    env.worker_once();
    assert_eq!(env.payloads(&id, "approval.requested").len(), 1, "parked");
    (env, id)
}

/// How many times the gated command ran in the session's workspace.
fn releases(env: &TestEnv, id: &str) -> usize {
    std::fs::read_to_string(env.workspace(id).join("released.txt"))
        .map_or(0, |runs| runs.lines().count())
}

#[test]
fn approve_over_the_api_lets_the_next_worker_run_the_call_once() {
    let (env, id) = parked_session();
    let server = Server::start(&env, &[]);
    let url = |path: &str| server.url(&format!("/api/sessions/{id}{path}"));
    runtime().block_on(async {
        let client = client();
        // The session as the API shows it names the waiting call with its arguments.
        let (status, shown) = call(client.get(url(""))).await;
        assert_eq!(status, 200);
        let waiting = &shown["running"]["awaiting_approval"];
        assert_eq!(waiting["tool_call_id"], "call_1_1", "{shown}");
        assert_eq!(waiting["tool_name"], "release");
        assert_eq!(
            waiting["arguments"],
            json!({ "version": "1.4.2", "channel": "stable" })
        );

        let (status, approved) = post(&client, url("/approve"), json!({})).await;
        assert_eq!(status, 202, "{approved}");
        assert_eq!(approved["decision"], "approved");
        assert_eq!(approved["tool_call_id"], "call_1_1");
        assert_eq!(approved["tool_name"], "release");
        assert_eq!(approved["session_id"], id.as_str());
        assert_eq!(approved["duplicate"], false);
        assert!(
            approved["by"]["user"]
                .as_str()
                .is_some_and(|u| !u.is_empty())
        );
        // The CLI's answer to the same decision: the same object, said again.
        let mut again = blocking(|| env.json(&["approve", &id, "call_1_1", "--json"]));
        assert_eq!(again["duplicate"], true);
        again["duplicate"] = json!(false);
        assert_eq!(again, approved);
        // Named by the call's id, and as an empty body: still the same decision.
        let (status, named) =
            post(&client, url("/approve"), json!({ "call_id": "call_1_1" })).await;
        assert_eq!(
            (status, &named["duplicate"]),
            (202, &json!(true)),
            "{named}"
        );
        assert_eq!(named["entry_id"], approved["entry_id"]);
        let (status, empty) = call(
            client
                .post(url("/approve"))
                .header("content-type", "application/json"),
        )
        .await;
        assert_eq!(
            (status, &empty["duplicate"]),
            (202, &json!(true)),
            "{empty}"
        );
        // Approved once: a denial comes too late, as on the command line (exit 2).
        let (status, refused) = post(&client, url("/deny"), json!({ "reason": "no" })).await;
        assert_eq!(
            (status, error_code(&refused).as_str()),
            (422, "invalid_input")
        );
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap()
                .contains("already approved")
        );
    });
    let decided = env.payloads(&id, "approval.decided");
    assert_eq!(decided.len(), 1, "one decision: {decided:?}");
    assert_eq!(decided[0]["decision"], "approved");
    assert_eq!(releases(&env, &id), 0, "a decision runs nothing by itself");

    env.worker_once();
    assert_eq!(releases(&env, &id), 1);
    assert_eq!(env.finished(&id)[0]["status"], "completed");
    assert_eq!(env.responses(&id), ["Released: ship 1.4.2"]);
    env.worker_once();
    assert_eq!(releases(&env, &id), 1, "run once");
    runtime().block_on(async {
        // Nothing waits any more.
        let (status, refused) = post(&client(), url("/approve"), json!({})).await;
        assert_eq!(
            (status, error_code(&refused).as_str()),
            (422, "invalid_input")
        );
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no call waiting")
        );
    });
}

#[test]
fn deny_over_the_api_gives_the_model_the_reason_as_a_tool_error() {
    let (env, id) = parked_session();
    let server = Server::start(&env, &["--worker"]);
    runtime().block_on(async {
        let client = client();
        let (status, denied) = post(
            &client,
            server.url(&format!("/api/sessions/{id}/deny")),
            json!({ "call_id": "call_1_1", "reason": "not before the freeze ends" }),
        )
        .await;
        assert_eq!(status, 202, "{denied}");
        assert_eq!(denied["decision"], "denied");
        assert_eq!(denied["duplicate"], false);
        // The server's own worker takes the session again and answers the model.
        wait_until("the execution finishes", LONG, || {
            blocking(|| !env.finished(&id).is_empty())
        });
        let (status, approve) = post(
            &client,
            server.url(&format!("/api/sessions/{id}/approve")),
            json!({}),
        )
        .await;
        assert_eq!(
            (status, error_code(&approve).as_str()),
            (422, "invalid_input")
        );
    });
    assert_eq!(releases(&env, &id), 0, "a denied call never runs");
    let decided = &env.payloads(&id, "approval.decided")[0];
    assert_eq!(decided["decision"], "denied", "{decided}");
    assert_eq!(decided["reason"], "not before the freeze ends");
    let tool = &env.tool_messages(&id)[0];
    assert_eq!(tool["is_error"], true, "{tool}");
    assert!(
        tool["content"]
            .as_str()
            .unwrap()
            .contains("not before the freeze ends"),
        "{tool}"
    );
    assert_eq!(env.finished(&id)[0]["status"], "completed");
    assert_eq!(env.responses(&id), ["Released: ship 1.4.2"]);
}

#[test]
fn approve_and_deny_refusals_have_their_statuses_and_queue_nothing() {
    let (env, id) = parked_session();
    std::fs::write(
        env.home().join("agentq.toml"),
        "[inbox]\nmax_message_bytes = 100\n",
    )
    .unwrap();
    let idle = env.new_session("echo");
    let server = Server::start(&env, &[]);
    let inbox_before = env.inbox_len(&id);
    runtime().block_on(async {
        let client = client();
        let missing = "01a23d19-98b2-7322-b3db-4e781a4ab8c0";
        let route =
            |session: &str, action: &str| server.url(&format!("/api/sessions/{session}/{action}"));
        let json_post = |url: String, body: String| {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
        };
        let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
            (
                json_post(route(missing, "approve"), "{}".into()),
                404,
                "not_found",
            ),
            (
                json_post(route(missing, "deny"), "{}".into()),
                404,
                "not_found",
            ),
            (
                json_post(route(&id[..8], "approve"), "{}".into()),
                400,
                "invalid_request",
            ),
            // Nothing waits in this session.
            (
                json_post(route(&idle, "approve"), "{}".into()),
                422,
                "invalid_input",
            ),
            (
                json_post(route(&idle, "deny"), "{}".into()),
                422,
                "invalid_input",
            ),
            // Not the call that waits.
            (
                json_post(
                    route(&id, "approve"),
                    json!({ "call_id": "call_9_9" }).to_string(),
                ),
                422,
                "invalid_input",
            ),
            (
                json_post(
                    route(&id, "deny"),
                    json!({ "call_id": "call_9_9" }).to_string(),
                ),
                422,
                "invalid_input",
            ),
            // `approve` takes no reason, as the command has no --reason.
            (
                json_post(
                    route(&id, "approve"),
                    json!({ "reason": "sure" }).to_string(),
                ),
                400,
                "invalid_request",
            ),
            (
                json_post(route(&id, "deny"), "{not json".into()),
                400,
                "invalid_request",
            ),
            (
                json_post(
                    route(&id, "deny"),
                    json!({ "reason": "x".repeat(101) }).to_string(),
                ),
                413,
                "too_large",
            ),
            (
                json_post(route(&id, "deny"), "x".repeat(2 * 1024 * 1024)),
                413,
                "too_large",
            ),
            // A form post from another site: refused before anything is read.
            (
                client
                    .post(route(&id, "approve"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(""),
                415,
                "unsupported_media_type",
            ),
            (client.get(route(&id, "approve")), 405, "method_not_allowed"),
            (client.get(route(&id, "deny")), 405, "method_not_allowed"),
        ];
        for (request, expected, code) in cases {
            let (status, body) = call(request).await;
            assert_eq!(
                (status, error_code(&body).as_str()),
                (expected, code),
                "{body}"
            );
        }
    });
    assert_eq!(
        env.inbox_len(&id),
        inbox_before,
        "nothing refused was queued"
    );
    assert!(env.payloads(&id, "approval.decided").is_empty());
    assert_eq!(
        env.json(&["session", "show", &id, "--json"])["running"]["awaiting_approval"]["tool_call_id"],
        "call_1_1",
        "still waiting"
    );
}

#[test]
fn approve_and_deny_need_the_token_when_one_is_set() {
    let (env, id) = parked_session();
    let token = "approval-t0ken-0123456789abcdef";
    let token_file = env.home().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let server = Server::start(&env, &["--token-file", token_file.to_str().unwrap()]);
    runtime().block_on(async {
        let client = client();
        for action in ["approve", "deny"] {
            let url = server.url(&format!("/api/sessions/{id}/{action}"));
            for request in [
                client.post(&url),
                client.post(&url).header("authorization", "Bearer wrong"),
            ] {
                let (status, body) = call(
                    request
                        .header("content-type", "application/json")
                        .body("{}"),
                )
                .await;
                assert_eq!((status, error_code(&body).as_str()), (401, "unauthorized"));
            }
        }
        assert!(blocking(|| env
            .payloads(&id, "approval.decided")
            .is_empty()));
        let (status, approved) = call(
            client
                .post(server.url(&format!("/api/sessions/{id}/approve")))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await;
        assert_eq!(status, 202, "{approved}");
        assert_eq!(approved["decision"], "approved");
    });
}
