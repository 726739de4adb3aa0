//! `agentq serve`'s page in a real, headless Chromium ([`webdriver`]): a message typed
//! on the page streams its answer live, a reload resumes without duplicates, the stop
//! button cancels, model text is never HTML, and a phone-wide window needs no sideways
//! scrolling. They are `#[ignore]`d, so `cargo test` lists them as ignored where there
//! is no browser, never as passed; `scripts/chromium test` installs Debian's Chromium
//! and runs them, or says in one line why it cannot. Each test starts its own server
//! (`agentq serve --listen 127.0.0.1:0 --worker`) on a temporary home, with a scripted
//! agent whose answer streams slowly enough to be seen half-way.

mod webdriver;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::it::{Background, LONG, TestEnv, group_members, wait_until};
use webdriver::{Browser, ENTER, screenshots};

/// `word1 word2 … wordN`: an answer long enough to stream for a while, whose every
/// prefix is recognisable.
fn words(n: usize) -> String {
    let words: Vec<String> = (1..=n).map(|i| format!("word{i}")).collect();
    words.join(" ")
}

/// A scripted agent answering `answer` in one step, one word every `delay_ms`.
fn streaming_agent(name: &str, answer: &str, delay_ms: u64) -> String {
    let text = toml::Value::String(answer.to_owned());
    format!(
        "name = \"{name}\"\n\
         [model]\n\
         provider = \"scripted\"\n\
         [[model.script]]\n\
         text = {text}\n\
         delay_ms = {delay_ms}\n\
         usage = {{ input = 12, output = 40 }}\n"
    )
}

/// [`streaming_agent`] that first lists its workspace with a tool, so the page has a
/// tool call to show (name, arguments, ✓ and its duration) before the answer streams.
fn tool_then_streaming_agent(name: &str, answer: &str, delay_ms: u64) -> String {
    let text = toml::Value::String(answer.to_owned());
    format!(
        "name = \"{name}\"\n\
         [model]\n\
         provider = \"scripted\"\n\
         [[model.script]]\n\
         text = \"Looking around first.\"\n\
         tool_calls = [{{ name = \"list_dir\", arguments = {{ path = \".\" }} }}]\n\
         usage = {{ input = 8, output = 6 }}\n\
         [[model.script]]\n\
         text = {text}\n\
         delay_ms = {delay_ms}\n\
         usage = {{ input = 12, output = 40 }}\n\
         [tools]\n\
         builtin = [\"list_dir\"]\n"
    )
}

/// `agentq serve --listen 127.0.0.1:0 --worker` on a test's home, at the address it
/// printed. Its log (stderr) is kept, and shown if the test fails.
struct Serve {
    url: String,
    log: Arc<Mutex<Vec<u8>>>,
    /// Killed when dropped; `None` once stopped.
    process: Option<Background>,
}

impl Serve {
    fn start(env: &TestEnv) -> Serve {
        Serve::start_on(env, "127.0.0.1:0")
    }

    /// [`Serve::start`] listening on `listen` (a server restarted on its port).
    fn start_on(env: &TestEnv, listen: &str) -> Serve {
        let mut process = env.spawn(&["serve", "--listen", listen, "--worker"]);
        let stdout = process.child.stdout.take().expect("serve's piped stdout");
        let mut stderr = process.child.stderr.take().expect("serve's piped stderr");
        // Both pipes are drained to the end, so a chatty server never blocks on them.
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                kept.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let (lines, first) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = lines.send(line);
            }
        });
        let line = first.recv_timeout(LONG).unwrap_or_else(|e| {
            // Its stdout closes a moment before it can be reaped.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let exit = loop {
                match process.child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    _ if std::time::Instant::now() >= deadline => break None,
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            panic!(
                "agentq serve printed no `listening on` line ({e}; exit status {exit:?}):\n{}",
                String::from_utf8_lossy(&log.lock().unwrap())
            )
        });
        let url = line
            .strip_prefix("listening on ")
            .filter(|url| url.starts_with("http://127.0.0.1:") && url.ends_with('/'))
            .unwrap_or_else(|| {
                panic!("serve's first line is not `listening on http://127.0.0.1:PORT/`: {line:?}")
            })
            .to_owned();
        Serve {
            url,
            log,
            process: Some(process),
        }
    }

    /// Stops it as a person would (SIGTERM) and waits until it has exited.
    fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process.signal(15);
            let out = process.wait(LONG);
            assert_eq!(out.status.code(), Some(0), "agentq serve stopped badly");
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            let tail = &log[log.len().saturating_sub(8000)..];
            eprintln!(
                "--- agentq serve's log (its end)\n{}",
                String::from_utf8_lossy(tail)
            );
        }
    }
}

/// A browser on the page of a server of its own. Fields drop in order: the browser,
/// then the server, then the home.
struct Page {
    browser: Browser,
    _server: Serve,
    env: TestEnv,
}

impl Page {
    /// The page, served for a home with the agent `name` defined by `toml`; `None`
    /// (having said why) where there is no browser.
    fn open(name: &str, toml: &str) -> Option<Page> {
        let browser = Browser::start()?;
        let env = TestEnv::new();
        env.write_agent(name, toml);
        let server = Serve::start(&env);
        browser.goto(&server.url);
        Some(Page {
            browser,
            _server: server,
            env,
        })
    }

    /// Picks `agent` in `#agent`, presses `#new-session` and returns the id of the
    /// session the page opened, once the hash and the list show it too.
    fn new_session(&self, agent: &str) -> String {
        let b = &self.browser;
        b.wait_for_script(SELECT_AGENT, &[json!(agent)], LONG);
        b.click(&b.find("#new-session"));
        let id = b.wait_for_script(
            "const c = document.querySelector('#conversation');
             return c && c.dataset.sessionId || null;",
            &[],
            LONG,
        );
        let id = id.as_str().expect("a session id").to_owned();
        b.wait_for_script(
            "return location.hash === '#/sessions/' + arguments[0]
                 && !!document.querySelector('#sessions li[data-session-id=\"' + arguments[0] + '\"]');",
            &[json!(id)],
            LONG,
        );
        id
    }

    /// Types `text` in `#message` and presses Enter.
    fn send(&self, text: &str) {
        let b = &self.browser;
        let message = b.find("#message");
        b.click(&message);
        b.send_keys(&message, &format!("{text}{ENTER}"));
    }

    /// Waits until the beginning of `answer` (not all of it) is on the page.
    fn wait_for_partial_answer(&self, answer: &str) -> View {
        self.browser
            .wait_for("part of the answer on the page", LONG, |b| {
                let v = view(b);
                (!v.text.is_empty() && answer.starts_with(&v.text)).then_some(v)
            })
    }

    /// Waits until the answer is marked done and the execution's footer is shown.
    fn wait_for_finished_answer(&self) -> View {
        self.browser
            .wait_for("the answer done, with its usage footer", LONG, |b| {
                let v = view(b);
                (v.done && v.usage && !v.stop_visible).then_some(v)
            })
    }
}

/// Selects the option of `#agent` whose value or label is `arguments[0]`, once the
/// page has loaded the agents.
const SELECT_AGENT: &str = "
    const select = document.querySelector('#agent');
    if (!select) return false;
    const option = [...select.options].find(
        o => o.value === arguments[0] || o.textContent.trim() === arguments[0]);
    if (!option) return false;
    select.value = option.value;
    select.dispatchEvent(new Event('change', { bubbles: true }));
    return true;";

/// What the conversation shows, read in one script so it is one moment's view.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct View {
    session: String,
    /// The text of each `.msg.user`.
    users: Vec<String>,
    /// How many `.msg.agent` there are.
    agents: usize,
    /// The last `.msg.agent`'s `.text`.
    text: String,
    done: bool,
    steps: usize,
    statuses: usize,
    usage: bool,
    stop_visible: bool,
    /// The text of each `.span.tool`, and how many are marked as succeeded.
    tools: Vec<String>,
    tools_ok: usize,
    /// The text of each `.span.check`, and whether each is marked as passed.
    checks: Vec<String>,
    checks_ok: Vec<bool>,
    /// The last `.msg.agent`'s text is shown as structured JSON.
    structured: bool,
    /// The whole conversation's text.
    all: String,
}

fn view(b: &Browser) -> View {
    let v = b.execute(
        "const c = document.querySelector('#conversation');
         const agents = c ? [...c.querySelectorAll('.msg.agent')] : [];
         const last = agents[agents.length - 1];
         const text = last && last.querySelector('.text');
         const stop = document.querySelector('#stop');
         return {
             session: c && c.dataset.sessionId || '',
             users: c ? [...c.querySelectorAll('.msg.user')]
                 .map(m => (m.querySelector('.text') || m).textContent) : [],
             agents: agents.length,
             text: text ? text.textContent : '',
             done: !!last && last.classList.contains('done'),
             steps: last ? last.querySelectorAll('.span.step').length : 0,
             statuses: last ? last.querySelectorAll('.span.status').length : 0,
             usage: !!last && !!last.querySelector('.usage'),
             tools: last ? [...last.querySelectorAll('.span.tool')].map(t => t.textContent) : [],
             toolsOk: last ? last.querySelectorAll('.span.tool.ok').length : 0,
             checks: last ? [...last.querySelectorAll('.span.check')].map(t => t.textContent) : [],
             checksOk: last ? [...last.querySelectorAll('.span.check')]
                 .map(t => t.classList.contains('ok')) : [],
             structured: !!text && text.classList.contains('structured'),
             stopVisible: !!stop && !stop.hidden && stop.getClientRects().length > 0,
             all: c ? c.textContent : '',
         };",
        &[],
    );
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("the page's view {v}: {e}"))
}

#[test]
#[ignore = "needs Chromium: scripts/chromium test runs it"]
fn a_message_typed_on_the_page_streams_its_answer_live_then_shows_it_whole() {
    let answer = format!("Here it comes, slowly: {}.", words(40));
    let Some(page) = Page::open("slow", &tool_then_streaming_agent("slow", &answer, 100)) else {
        return;
    };
    let id = page.new_session("slow");
    page.send("Tell me slowly.");

    let partial = page.wait_for_partial_answer(&answer);
    page.browser
        .screenshot(&screenshots().join("serve-streaming.png"));
    assert!(!partial.done, "the answer is done already: {partial:?}");
    assert!(
        partial.text.len() < answer.len() && answer.starts_with(&partial.text),
        "not a beginning of the answer: {:?}",
        partial.text
    );
    assert!(
        partial.steps >= 1,
        "no `.span.step` while streaming: {partial:?}"
    );
    assert!(
        partial.statuses >= 1,
        "no `.span.status` while streaming: {partial:?}"
    );
    assert!(
        partial.stop_visible,
        "no #stop while the execution runs: {partial:?}"
    );
    assert_eq!(partial.users, ["Tell me slowly."]);
    assert_eq!(partial.session, id);
    // The tool call ran before the answer began: its name, its arguments, ✓.
    assert_eq!(partial.tools.len(), 1, "{partial:?}");
    assert!(
        partial.tools[0].contains("list_dir") && partial.tools[0].contains('✓'),
        "{partial:?}"
    );
    assert_eq!(partial.tools_ok, 1, "{partial:?}");

    let done = page.wait_for_finished_answer();
    page.browser
        .screenshot(&screenshots().join("serve-finished.png"));
    assert_eq!(done.text.trim(), answer);
    assert_eq!((done.users.len(), done.agents), (1, 1), "{done:?}");
    assert_eq!(page.env.responses(&id), [answer]);
}

#[test]
#[ignore = "needs Chromium: scripts/chromium test runs it"]
fn reloading_the_page_mid_answer_resumes_the_conversation_without_duplicates() {
    let answer = format!("A long answer: {}.", words(60));
    let Some(page) = Page::open("slow", &streaming_agent("slow", &answer, 100)) else {
        return;
    };
    let id = page.new_session("slow");
    page.send("Survive a reload.");
    let before = page.wait_for_partial_answer(&answer);
    assert!(
        !before.done,
        "the answer is done before the reload: {before:?}"
    );

    // chromedriver waits for the reloaded page's load before the next command.
    page.browser.execute("location.reload();", &[]);
    let after = page
        .browser
        .wait_for("the reloaded page to reopen the session", LONG, |b| {
            let v = view(b);
            (v.session == id).then_some(v)
        });
    assert!(after.users.len() <= 1, "{after:?}");

    let done = page.wait_for_finished_answer();
    assert_eq!(done.users, ["Survive a reload."]);
    assert_eq!(done.agents, 1, "{done:?}");
    assert_eq!(done.text.trim(), answer);
    assert_eq!(done.all.matches(&answer).count(), 1, "{:?}", done.all);
    assert_eq!(page.env.responses(&id), [answer]);
}

#[test]
#[ignore = "needs Chromium: scripts/chromium test runs it"]
fn the_page_reconnects_after_the_server_restarts_and_shows_nothing_twice() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let answer = format!("Interrupted and resumed: {}.", words(50));
    let env = TestEnv::new();
    env.write_agent("slow", &streaming_agent("slow", &answer, 100));
    // A port of its own, free now, for both lives of the server.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let server = Serve::start_on(&env, &listen);
    browser.goto(&server.url);
    let mut page = Page {
        browser,
        _server: server,
        env,
    };
    let id = page.new_session("slow");
    page.send("Keep going across a restart.");
    let before = page.wait_for_partial_answer(&answer);
    assert!(!before.done, "{before:?}");

    // Stopped mid-answer (the execution suspended at a checkpoint), then started again.
    page._server.stop();
    page.browser
        .wait_for("the page to see the server gone", LONG, |b| {
            let state = b.execute(
                "return document.querySelector('#connection').dataset.state;",
                &[],
            );
            (state != "live").then_some(())
        });
    page._server = Serve::start_on(&page.env, &listen);

    let done = page.wait_for_finished_answer();
    assert_eq!(done.users, ["Keep going across a restart."]);
    assert_eq!(done.agents, 1, "{done:?}");
    assert_eq!(done.text.trim(), answer);
    assert_eq!(done.all.matches(&answer).count(), 1, "{:?}", done.all);
    assert_eq!(page.env.responses(&id), [answer]);
}

#[test]
#[ignore = "needs Chromium: scripts/chromium test runs it"]
fn the_stop_button_cancels_a_long_answer_mid_stream() {
    // 400 words at 100 ms: longer than any wait here, so only a cancel ends it in time.
    let answer = format!("This goes on: {}.", words(400));
    let Some(page) = Page::open("long", &streaming_agent("long", &answer, 100)) else {
        return;
    };
    let id = page.new_session("long");
    page.send("Talk until stopped.");
    page.browser
        .wait_for("the answer streaming, #stop shown", LONG, |b| {
            let v = view(b);
            (!v.text.is_empty() && v.stop_visible).then_some(v)
        });

    page.browser.click(&page.browser.find("#stop"));
    wait_until("the execution to finish", LONG, || {
        !page.env.finished(&id).is_empty()
    });
    let finished = page.env.finished(&id);
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(finished[0]["status"], "cancelled", "{:?}", finished[0]);

    let shown = page
        .browser
        .wait_for("the page to show the execution ended", LONG, |b| {
            let v = view(b);
            (v.done && !v.stop_visible).then_some(v)
        });
    assert!(
        shown.text.len() < answer.len() && answer.starts_with(&shown.text),
        "the cancelled answer is not a beginning of the full one: {:?}",
        shown.text
    );
}

#[test]
#[ignore = "needs Chromium: scripts/chromium test runs it"]
fn html_in_an_answer_is_shown_as_text_and_never_run() {
    let html = r#"<img src=x onerror="window.__xss=1">"#;
    let answer = format!("Look: {html} and <script>window.__xss=2</script> done.");
    let Some(page) = Page::open("html", &streaming_agent("html", &answer, 20)) else {
        return;
    };
    let id = page.new_session("html");
    let message = "<b>bold?</b>";
    page.send(message);

    // Once as it streams in, once more as the reloaded page renders the history.
    for when in ["streamed", "after a reload"] {
        if when == "after a reload" {
            page.browser.execute("location.reload();", &[]);
            page.browser.wait_for("the session reopened", LONG, |b| {
                (view(b).session == id).then_some(())
            });
        }
        // Done, not the usage footer: the history need not bring the footer back.
        let done = page.browser.wait_for("the answer done", LONG, |b| {
            let v = view(b);
            v.done.then_some(v)
        });
        assert!(done.text.contains(html), "{when}: {:?}", done.text);
        assert_eq!(done.text.trim(), answer, "{when}");
        assert_eq!(done.users, [message], "{when}");
        let found = page.browser.execute(
            "return {
                 elements: document.querySelectorAll(
                     '#conversation img, #conversation script, #conversation b').length,
                 xss: typeof window.__xss,
             };",
            &[],
        );
        assert_eq!(
            found,
            json!({ "elements": 0, "xss": "undefined" }),
            "{when}"
        );
    }
}

#[test]
#[ignore = "needs Chromium: scripts/chromium test runs it"]
fn on_a_phone_wide_window_the_send_box_and_conversation_fit_without_sideways_scrolling() {
    // A path with no space in it: the page must break it, not widen the page.
    let answer = format!(
        "Your report is at /home/agentq/sessions/0190a1b2c3d4e5f6a7b8/workspace/reports/\
         summary-of-the-quarter-with-every-figure.md and {}.",
        words(30)
    );
    let Some(page) = Page::open("phone", &streaming_agent("phone", &answer, 10)) else {
        return;
    };
    page.browser.set_window_size(390, 844);
    page.browser
        .wait_for_script("return innerWidth === 390;", &[], LONG);
    page.new_session("phone");
    page.send("Where is my report?");
    page.wait_for_finished_answer();
    page.browser
        .screenshot(&screenshots().join("serve-phone.png"));

    let layout = page.browser.execute(
        "const box = selector => {
             const e = document.querySelector(selector);
             if (!e) return null;
             const r = e.getBoundingClientRect();
             const s = getComputedStyle(e);
             return { left: r.left, right: r.right, width: r.width, height: r.height,
                      shown: s.display !== 'none' && s.visibility !== 'hidden' };
         };
         return {
             inner: innerWidth,
             scroll: document.documentElement.scrollWidth,
             boxes: { '#message': box('#message'), '#send': box('#send'),
                      '#conversation': box('#conversation') },
         };",
        &[],
    );
    let inner = layout["inner"].as_f64().unwrap();
    assert_eq!(inner, 390.0, "{layout}");
    assert!(
        layout["scroll"].as_f64().unwrap() <= inner,
        "the page scrolls sideways: {layout}"
    );
    for (name, b) in layout["boxes"].as_object().unwrap() {
        assert!(!b.is_null(), "no {name}: {layout}");
        let (left, right) = (b["left"].as_f64().unwrap(), b["right"].as_f64().unwrap());
        assert!(b["shown"] == true, "{name} is hidden: {b}");
        assert!(
            b["width"].as_f64().unwrap() > 0.0 && b["height"].as_f64().unwrap() > 0.0,
            "{name} has no size: {b}"
        );
        assert!(
            left >= 0.0 && right <= inner + 0.5,
            "{name} is not within the window's width: {b}"
        );
    }
}

/// A tiny page exercising every command the tests use.
const CLIENT_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>webdriver check</title></head>
<body>
<h1 id="title" data-state="ready">Hello</h1>
<button id="press" onclick="document.querySelector('#title').textContent = 'Pressed'">Press</button>
<ul><li class="item">one</li><li class="item">two</li><li class="item">three</li></ul>
<textarea id="message"></textarea>
<ol id="sent"></ol>
<script>
document.querySelector('#message').addEventListener('keydown', e => {
    if (e.key !== 'Enter' || e.shiftKey) return;
    e.preventDefault();
    const li = document.createElement('li');
    li.textContent = e.target.value;
    document.querySelector('#sent').append(li);
    e.target.value = '';
});
setTimeout(() => {
    const late = document.createElement('p');
    late.id = 'late';
    late.textContent = 'late';
    document.body.append(late);
}, 300);
sessionStorage.loads = (Number(sessionStorage.loads) || 0) + 1;
</script>
</body></html>"#;

/// Serves one fixed HTML page on 127.0.0.1 until dropped.
struct StaticPage {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StaticPage {
    fn serve(html: &'static str) -> StaticPage {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    answer(stream, html);
                }
            }
        });
        StaticPage {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

/// Reads a request's head and answers the page (a 404 for anything but `/`).
fn answer(mut stream: TcpStream, html: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(n @ 1..) => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let (status, body) = if head.starts_with(b"GET / ") {
        ("200 OK", html)
    } else {
        ("404 Not Found", "not here")
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

impl Drop for StaticPage {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The processes whose command line names `needle` (Chromium's crash handler runs in
/// a session of its own, outside chromedriver's group, but names its database under
/// the browser's home).
fn processes_naming(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
        })
        .collect()
}

#[test]
#[ignore = "needs Chromium: scripts/chromium test runs it"]
fn the_webdriver_client_drives_a_local_page() {
    let site = StaticPage::serve(CLIENT_PAGE);
    let Some(b) = Browser::start() else {
        return;
    };
    b.goto(&site.url());
    assert_eq!(b.current_url(), site.url());

    let title = b.find("#title");
    assert_eq!(b.text(&title), "Hello");
    assert_eq!(b.attribute(&title, "data-state").as_deref(), Some("ready"));
    assert_eq!(b.attribute(&title, "data-missing"), None);
    let items: Vec<String> = b.find_all(".item").iter().map(|e| b.text(e)).collect();
    assert_eq!(items, ["one", "two", "three"]);
    assert!(b.find_all(".nothing").is_empty());
    assert_eq!(b.try_find("#nowhere"), None);

    b.click(&b.find("#press"));
    assert_eq!(b.text(&title), "Pressed");

    let message = b.find("#message");
    b.click(&message);
    b.send_keys(&message, &format!("hello <b>there</b>{ENTER}"));
    let sent = b.wait_for_css("#sent li", LONG);
    assert_eq!(b.text(&sent), "hello <b>there</b>");
    assert_eq!(
        b.execute("return arguments[0].value;", &[message.arg()]),
        ""
    );

    assert_eq!(
        b.execute("return arguments[0] * arguments[1];", &[json!(6), json!(7)]),
        42
    );
    assert_eq!(b.execute("return window.__nothing;", &[]), Value::Null);
    assert_eq!(
        b.execute("return typeof window.__nothing;", &[]),
        "undefined"
    );
    let thrown = b.try_execute("throw new Error('boom');", &[]).unwrap_err();
    assert_eq!(thrown.error, "javascript error", "{thrown}");
    assert_eq!(b.text(&b.wait_for_css("#late", LONG)), "late");
    let loads = b.wait_for("a number of loads", LONG, |b| {
        b.execute("return sessionStorage.loads;", &[])
            .as_str()
            .map(str::to_owned)
    });
    assert_eq!(loads, "1");

    b.execute("location.reload();", &[]);
    assert_eq!(b.execute("return sessionStorage.loads;", &[]), "2");
    assert_eq!(b.text(&b.find("#title")), "Hello");
    let stale = b.try_execute("return arguments[0].id;", &[title.arg()]);
    assert!(
        stale.is_err(),
        "an element of the page before the reload: {stale:?}"
    );

    b.set_window_size(390, 844);
    b.wait_for_script("return innerWidth === 390;", &[], LONG);
    let path = screenshots().join("webdriver-client.png");
    let _ = std::fs::remove_file(&path);
    b.screenshot(&path);
    let png = std::fs::read(&path).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    assert_eq!(width, 390, "the screenshot's width");

    let driver = b.driver_pid();
    let scratch = b.scratch_dir();
    assert!(scratch.join("profile").is_dir());
    assert!(
        group_members(driver as i32).len() > 1,
        "no browser in chromedriver's group"
    );
    let crash_handlers = processes_naming(&scratch.display().to_string());
    assert!(
        crash_handlers
            .iter()
            .any(|pid| !group_members(driver as i32).contains(&(*pid as i32))),
        "no process outside chromedriver's group names the scratch directory"
    );
    drop(b);
    wait_until("chromedriver and Chromium to exit", LONG, || {
        group_members(driver as i32).is_empty()
    });
    wait_until("Chromium's crash handler to exit", LONG, || {
        processes_naming(&scratch.display().to_string()).is_empty()
    });
    assert!(!scratch.exists(), "{scratch:?} was left behind");
}

#[test]
#[ignore = "needs Chromium: scripts/chromium test runs it"]
fn check_rounds_show_as_spans_and_a_structured_answer_as_its_json() {
    // The check fails the first round (and leaves the flag it passes on), so the
    // model answers twice; both answers are valid against the schema.
    let agent = r#"
name = "checked"
[model]
provider = "scripted"
[[model.script]]
text = '{"n": 1}'
[[model.script]]
text = '{"n": 2}'
[[checks]]
name = "flag"
argv = ["sh", "-c", "test -f flag || { touch flag; echo 'no flag yet' >&2; exit 1; }"]
[output]
schema = { type = "object", required = ["n"], properties = { n = { type = "integer" } } }
"#;
    let Some(page) = Page::open("checked", agent) else {
        return;
    };
    let id = page.new_session("checked");
    page.send("Count.");
    let done = page.wait_for_finished_answer();
    assert_eq!(done.checks.len(), 2, "one span per round: {done:?}");
    assert!(
        done.checks.iter().all(|c| c.contains("check flag")),
        "{done:?}"
    );
    assert_eq!(done.checks_ok, [false, true], "{done:?}");
    assert!(done.checks[0].contains("no flag yet"), "{done:?}");
    assert!(done.structured, "{done:?}");
    let shown: Value = serde_json::from_str(&done.text).unwrap();
    assert_eq!(shown, json!({"n": 2}));
    assert_eq!(page.env.responses(&id), [r#"{"n": 2}"#]);
}

/// An agent whose model calls `release` (a command with `approval = "required"` that
/// notes each run in `released.txt`) with arguments holding markup, then answers.
const GATED_AGENT: &str = r#"
name = "gated"
[model]
provider = "scripted"
[[model.script]]
text = "Releasing now."
tool_calls = [{ name = "release", arguments = { version = "2.0.1", note = "<b>big</b> one" } }]
[[model.script]]
text = "Release finished for: {input}"
delay_ms = 20
[[tools.command]]
name = "release"
description = "Publish a release"
argv = ["sh", "-c", "echo run >> released.txt; echo published"]
approval = "required"
"#;

/// The approval panels of the conversation, read in one script.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Approval {
    call_id: String,
    state: String,
    head: String,
    args: String,
    /// Whether its Approve and Deny buttons are on the page.
    buttons: bool,
    decision: String,
    /// The status span of the answer it belongs to.
    status: String,
}

fn approvals(b: &Browser) -> Vec<Approval> {
    let v = b.execute(
        "return [...document.querySelectorAll('#conversation .approval')].map(p => {
             const text = s => { const e = p.querySelector(s); return e ? e.textContent : ''; };
             const answer = p.closest('.msg.agent');
             const status = answer && answer.querySelector('.span.status');
             return {
                 callId: p.dataset.callId || '',
                 state: p.dataset.state || '',
                 head: text('.approval-head'),
                 args: text('.approval-args'),
                 buttons: !!p.querySelector('button.approve') && !!p.querySelector('button.deny'),
                 decision: text('.approval-decision'),
                 status: status ? status.textContent : '',
             };
         });",
        &[],
    );
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("the approval panels {v}: {e}"))
}

/// Waits until the one approval panel is in `state`.
fn wait_for_approval(b: &Browser, state: &str) -> Approval {
    b.wait_for(&format!("an approval panel {state}"), LONG, |b| {
        let mut shown = approvals(b);
        (shown.len() == 1 && shown[0].state == state).then(|| shown.remove(0))
    })
}

/// How many times the gated command ran.
fn releases(env: &TestEnv, id: &str) -> usize {
    std::fs::read_to_string(env.workspace(id).join("released.txt"))
        .map_or(0, |runs| runs.lines().count())
}

#[test]
#[ignore = "needs Chromium: scripts/chromium test runs it"]
fn a_call_waiting_for_approval_shows_with_its_arguments_and_approve_runs_it() {
    let Some(page) = Page::open("gated", GATED_AGENT) else {
        return;
    };
    let id = page.new_session("gated");
    page.send("Ship 2.0.1.");

    let waiting = wait_for_approval(&page.browser, "waiting");
    page.browser
        .screenshot(&screenshots().join("serve-approval-waiting.png"));
    assert_eq!(waiting.call_id, "call_1_1", "{waiting:?}");
    assert!(waiting.head.contains("release"), "{waiting:?}");
    let args: Value = serde_json::from_str(&waiting.args).expect("the arguments as JSON");
    assert_eq!(
        args,
        json!({ "version": "2.0.1", "note": "<b>big</b> one" })
    );
    assert!(waiting.buttons, "{waiting:?}");
    assert_eq!(waiting.status, "waiting for approval", "{waiting:?}");
    assert_eq!(
        releases(&page.env, &id),
        0,
        "nothing ran before the approval"
    );

    // A page loaded while the call waits shows it too, from the log alone.
    page.browser.execute("location.reload();", &[]);
    page.browser.wait_for("the session reopened", LONG, |b| {
        (view(b).session == id).then_some(())
    });
    let reloaded = wait_for_approval(&page.browser, "waiting");
    assert_eq!(reloaded.args, waiting.args);
    assert!(reloaded.buttons, "{reloaded:?}");
    assert_eq!(
        page.browser.execute(
            "return document.querySelectorAll('#conversation b').length;",
            &[]
        ),
        0,
        "the arguments' markup is text"
    );

    page.browser
        .click(&page.browser.find("#conversation .approval button.approve"));
    let done = page.wait_for_finished_answer();
    assert_eq!(done.text.trim(), "Release finished for: Ship 2.0.1.");
    assert_eq!(done.tools_ok, 1, "the call ran and succeeded: {done:?}");
    let approved = wait_for_approval(&page.browser, "approved");
    assert!(
        approved.decision.starts_with("approved by "),
        "{approved:?}"
    );
    assert!(
        !approved.buttons,
        "the buttons go once decided: {approved:?}"
    );
    assert!(!approved.head.contains("Waiting"), "{approved:?}");
    page.browser
        .screenshot(&screenshots().join("serve-approval-approved.png"));
    assert_eq!(releases(&page.env, &id), 1, "run once");
    assert_eq!(
        page.env.payloads(&id, "approval.decided")[0]["decision"],
        "approved"
    );
}

#[test]
#[ignore = "needs Chromium: scripts/chromium test runs it"]
fn deny_on_the_page_sends_the_reason_and_the_call_never_runs() {
    let Some(page) = Page::open("gated", GATED_AGENT) else {
        return;
    };
    let id = page.new_session("gated");
    page.send("Ship 2.0.1.");
    wait_for_approval(&page.browser, "waiting");

    let reason = page.browser.find("#conversation .approval input.reason");
    page.browser.click(&reason);
    page.browser.send_keys(&reason, "<i>after</i> the freeze");
    page.browser
        .click(&page.browser.find("#conversation .approval button.deny"));
    let denied = wait_for_approval(&page.browser, "denied");
    assert!(
        denied.decision.starts_with("denied by ")
            && denied.decision.ends_with(": <i>after</i> the freeze"),
        "{denied:?}"
    );
    assert!(!denied.buttons, "{denied:?}");
    let done = page.wait_for_finished_answer();
    assert_eq!(done.text.trim(), "Release finished for: Ship 2.0.1.");
    assert_eq!(done.tools_ok, 0, "{done:?}");
    assert_eq!(releases(&page.env, &id), 0, "a denied call never runs");
    let tool = &page.env.tool_messages(&id)[0];
    assert_eq!(tool["is_error"], true, "{tool}");
    assert!(
        tool["content"]
            .as_str()
            .unwrap()
            .contains("<i>after</i> the freeze")
    );
    assert_eq!(
        page.browser.execute(
            "return document.querySelectorAll('#conversation i').length;",
            &[]
        ),
        0
    );
}
