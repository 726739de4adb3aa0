//! A small synchronous WebDriver client for the browser tests: a chromedriver of its
//! own on a free loopback port, one headless Chromium session, and the few commands
//! the tests need (W3C WebDriver over plain HTTP/1.1, one connection per command).
//!
//! Guarantees: [`Browser::start`] says in one line why it returns `None` (Chromium or
//! chromedriver not installed: a skip), and panics when they are installed but do not
//! work (a failure, never a pass). Dropping the [`Browser`] deletes the session and
//! kills chromedriver's whole process group, the browser's processes with it, then
//! removes the browser's profile. The browser resolves no host name but 127.0.0.1 and
//! does no background networking, so a test touches nothing outside the machine.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Where Debian's packages put them (`scripts/chromium install`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The key WebDriver's Enter, for [`Browser::send_keys`].
pub const ENTER: &str = "\u{E007}";

/// The window of a new session. Chromium's window includes its (invisible) frame: the
/// page gets 1024 × 661 of it.
const WINDOW: (u32, u32) = (1024, 800);

/// How long one WebDriver command may take: a navigation waits for the page's load.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How long chromedriver may take to say it is ready.
const DRIVER_START: Duration = Duration::from_secs(20);

/// How often the `wait_for` family looks again.
const POLL: Duration = Duration::from_millis(50);

/// The JSON key WebDriver wraps an element reference in.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where the tests save their screenshots: `target/screenshots/` of the repository.
pub fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("screenshots")
}

/// A reference to an element of the current page. It goes stale when the page
/// replaces that element (a re-render, a reload): find it again then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element(String);

impl Element {
    /// The element as an argument of [`Browser::execute`] (`arguments[i]` in the script).
    pub fn arg(&self) -> Value {
        json!({ ELEMENT_KEY: self.0 })
    }
}

/// A WebDriver error answer (`no such element`, `javascript error`…), or a transport
/// failure (`error` is then `transport`).
#[derive(Debug, Clone)]
pub struct WdError {
    pub status: u16,
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for WdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // chromedriver's message is followed by a native stack trace nobody can read.
        let message = self.message.lines().next().unwrap_or("");
        write!(f, "{} (HTTP {}): {message}", self.error, self.status)
    }
}

impl WdError {
    fn transport(what: impl std::fmt::Display) -> WdError {
        WdError {
            status: 0,
            error: "transport".to_owned(),
            message: what.to_string(),
        }
    }
}

/// A headless Chromium driven through a chromedriver this process started.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    /// The browser's profile (`--user-data-dir`), its home and chromedriver's output.
    scratch: tempfile::TempDir,
}

impl Browser {
    /// A new headless session in a [`WINDOW`]-sized window, or `None` after saying in
    /// one line why there can be none here.
    pub fn start() -> Option<Browser> {
        for path in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(path).exists() {
                eprintln!("skipped: no {path} here (scripts/chromium install installs it)");
                return None;
            }
        }
        let scratch = tempfile::tempdir().expect("temp dir");
        let (driver, addr) = start_driver(scratch.path());
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            scratch,
        };
        let profile = browser.scratch.path().join("profile");
        let args = [
            "--headless=new".to_owned(),
            // Tests run as root, where Chromium's sandbox refuses to start.
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--user-data-dir={}", profile.display()),
            format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--disable-extensions".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            // Nothing but the loopback address resolves: a page that asked for
            // anything on the Internet would fail, not reach it.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1".to_owned(),
        ];
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "timeouts": { "implicit": 0, "pageLoad": 30_000, "script": 30_000 },
                    "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
                }
            }
        });
        let created = browser
            .request("POST", "/session", Some(&capabilities))
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start Chromium: {e}\n{}",
                    browser.driver_log()
                )
            });
        browser.session = created["sessionId"]
            .as_str()
            .expect("a new session has an id")
            .to_owned();
        Some(browser)
    }

    /// chromedriver's process id, which is also its process group's.
    pub fn driver_pid(&self) -> u32 {
        self.driver.id()
    }

    /// The directory of the browser's profile, home and logs (removed when the
    /// browser is dropped).
    pub fn scratch_dir(&self) -> PathBuf {
        self.scratch.path().to_owned()
    }

    /// Navigates and waits for the page's load event.
    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url }));
    }

    pub fn current_url(&self) -> String {
        let url = self.command("GET", "/url", Value::Null);
        url.as_str().unwrap_or_default().to_owned()
    }

    /// The first element matching `css`; the test fails if there is none.
    pub fn find(&self, css: &str) -> Element {
        self.try_find(css)
            .unwrap_or_else(|| panic!("no element matches `{css}` on {}", self.current_url()))
    }

    /// The first element matching `css`, if one does now.
    pub fn try_find(&self, css: &str) -> Option<Element> {
        let found = self.session_request(
            "POST",
            "/element",
            Some(&json!({ "using": "css selector", "value": css })),
        );
        match found {
            Ok(value) => Some(element(&value)),
            Err(e) if e.error == "no such element" => None,
            Err(e) => panic!("finding `{css}`: {e}"),
        }
    }

    /// Every element matching `css`, in document order.
    pub fn find_all(&self, css: &str) -> Vec<Element> {
        let found = self.command(
            "POST",
            "/elements",
            json!({ "using": "css selector", "value": css }),
        );
        found
            .as_array()
            .expect("an array of elements")
            .iter()
            .map(element)
            .collect()
    }

    /// Clicks the element's centre, as a user would (it must be visible and enabled).
    pub fn click(&self, el: &Element) {
        self.command("POST", &format!("/element/{}/click", el.0), json!({}));
    }

    /// Types `text` into the element, focusing it first; [`ENTER`] presses Enter.
    pub fn send_keys(&self, el: &Element, text: &str) {
        self.command(
            "POST",
            &format!("/element/{}/value", el.0),
            json!({ "text": text }),
        );
    }

    /// The element's rendered text (what a user sees, without hidden parts).
    pub fn text(&self, el: &Element) -> String {
        let text = self.command("GET", &format!("/element/{}/text", el.0), Value::Null);
        text.as_str().unwrap_or_default().to_owned()
    }

    /// The element's attribute, `None` when it has none.
    pub fn attribute(&self, el: &Element, name: &str) -> Option<String> {
        let value = self.command(
            "GET",
            &format!("/element/{}/attribute/{name}", el.0),
            Value::Null,
        );
        value.as_str().map(str::to_owned)
    }

    /// Runs `script` as a function body in the page (`arguments[i]` are `args`) and
    /// returns what it returns (`undefined` comes back as `null`).
    pub fn execute(&self, script: &str, args: &[Value]) -> Value {
        self.try_execute(script, args)
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    pub fn try_execute(&self, script: &str, args: &[Value]) -> Result<Value, WdError> {
        self.session_request(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// Polls `condition` until it gives a value; fails the test after `timeout`,
    /// saying what it waited for and what the page showed.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl FnMut(&Browser) -> Option<T>,
    ) -> T {
        self.wait_for_or(timeout, condition).unwrap_or_else(|| {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.describe_page()
            )
        })
    }

    /// Waits until an element matches `css`.
    pub fn wait_for_css(&self, css: &str, timeout: Duration) -> Element {
        self.wait_for(&format!("an element matching `{css}`"), timeout, |b| {
            b.try_find(css)
        })
    }

    /// Waits until `script` returns a truthy value (as JavaScript means it) and returns
    /// that value. A script that throws counts as not yet (the page may be between two
    /// renders); the last error is in the failure's message.
    pub fn wait_for_script(&self, script: &str, args: &[Value], timeout: Duration) -> Value {
        let mut last = String::from("nothing");
        let found = self.wait_for_or(timeout, |b| match b.try_execute(script, args) {
            Ok(value) if truthy(&value) => Some(value),
            Ok(value) => {
                last = value.to_string();
                None
            }
            Err(e) => {
                last = e.to_string();
                None
            }
        });
        found.unwrap_or_else(|| {
            panic!(
                "timed out after {timeout:?} waiting for this script to return a truthy \
                 value (last: {last}):\n{script}\n{}",
                self.describe_page()
            )
        })
    }

    fn wait_for_or<T>(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&Browser) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = condition(self) {
                return Some(value);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Saves a PNG of the viewport at `path`, creating its directory.
    pub fn screenshot(&self, path: &Path) {
        let png = self
            .screenshot_png()
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {dir:?}: {e}"));
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {path:?}: {e}"));
    }

    fn screenshot_png(&self) -> Result<Vec<u8>, WdError> {
        let shot = self.session_request("GET", "/screenshot", None)?;
        let text = shot
            .as_str()
            .ok_or_else(|| WdError::transport("no base64"))?;
        base64_decode(text).ok_or_else(|| WdError::transport("the screenshot is not base64"))
    }

    /// Resizes the window (outer size). Unlike `--window-size`, which Chromium widens
    /// to at least 500 pixels, this gives a page 390 pixels wide when asked.
    pub fn set_window_size(&self, width: u32, height: u32) {
        self.command(
            "POST",
            "/window/rect",
            json!({ "width": width, "height": height }),
        );
    }

    /// The page's address, the start of its text and chromedriver's log, for a failure.
    fn describe_page(&self) -> String {
        let page = self.try_execute(
            "return location.href + '\\n' + (document.body ? document.body.innerText : '')",
            &[],
        );
        match page {
            Ok(Value::String(text)) => {
                let text: String = text.chars().take(2000).collect();
                format!("--- the page at {text}")
            }
            Ok(other) => format!("--- the page: {other}"),
            Err(e) => format!("--- the page cannot be read: {e}"),
        }
    }

    fn driver_log(&self) -> String {
        let log = std::fs::read_to_string(self.scratch.path().join("chromedriver.log"))
            .unwrap_or_default();
        format!("--- chromedriver's output\n{log}")
    }

    /// A command of this session; the test fails on an error answer.
    fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let body = (!body.is_null()).then_some(&body);
        self.session_request(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    fn session_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, WdError> {
        self.request(method, &format!("/session/{}{path}", self.session), body)
    }

    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, WdError> {
        request(self.addr, method, path, body, COMMAND_TIMEOUT)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A page that was never opened (the test failed before) is not worth a picture.
        let opened = || {
            self.session_request("GET", "/url", None)
                .is_ok_and(|url| url.as_str().is_some_and(|u| u.starts_with("http")))
        };
        if std::thread::panicking() && !self.session.is_empty() && opened() {
            // The test failed: what the page looked like then helps more than any log.
            let name = std::thread::current()
                .name()
                .unwrap_or("browser")
                .replace("::", "-");
            let path = screenshots().join(format!("{name}-failed.png"));
            if let Ok(png) = self.screenshot_png()
                && std::fs::create_dir_all(screenshots()).is_ok()
                && std::fs::write(&path, png).is_ok()
            {
                eprintln!("the page when the test failed: {}", path.display());
            }
        }
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = request(self.addr, "DELETE", &path, None, Duration::from_secs(10));
        }
        kill_group(&mut self.driver);
    }
}

/// Starts chromedriver in a process group of its own on a free loopback port and
/// waits until it says it is ready. The port is free when picked, so another process
/// can take it first: chromedriver then exits, and another port is tried.
fn start_driver(scratch: &Path) -> (Child, SocketAddr) {
    let log_path = scratch.join("chromedriver.log");
    let home = scratch.join("home");
    let tmp = scratch.join("tmp");
    for dir in [&home, &tmp] {
        std::fs::create_dir_all(dir).expect("the browser's home and TMPDIR");
    }
    let mut last_failure = String::new();
    for _ in 0..3 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port on 127.0.0.1")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::File::create(&log_path).expect("chromedriver's log file");
        let mut command = Command::new(CHROMEDRIVER);
        command
            .arg(format!("--port={port}"))
            // Chromium keeps a crash database and dconf's cache under the home, and
            // shared memory in TMPDIR (`--disable-dev-shm-usage`), whatever its
            // `--user-data-dir`: a home and TMPDIR of its own keep them in `scratch`.
            .env("HOME", &home)
            .env("TMPDIR", &tmp)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .process_group(0);
        // SAFETY: prctl(2) is async-signal-safe, the only call between fork and exec.
        // Should this test process die without dropping the Browser, chromedriver is
        // killed with it.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut driver = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {CHROMEDRIVER}: {e}"));
        let deadline = Instant::now() + DRIVER_START;
        loop {
            let status = request(addr, "GET", "/status", None, Duration::from_secs(2));
            if status.is_ok_and(|s| s["ready"] == true) {
                return (driver, addr);
            }
            if let Ok(Some(exit)) = driver.try_wait() {
                last_failure = format!(
                    "chromedriver exited ({exit}) on port {port}:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
                break;
            }
            if Instant::now() >= deadline {
                kill_group(&mut driver);
                panic!(
                    "chromedriver did not say it was ready within {DRIVER_START:?}:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            std::thread::sleep(POLL);
        }
    }
    panic!("{last_failure}");
}

/// Kills a process group led by `leader` (chromedriver and every browser process it
/// started) and reaps the leader.
fn kill_group(leader: &mut Child) {
    if let Ok(pid) = i32::try_from(leader.id()) {
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is the id of a
        // child this process started as the leader of its own group (not yet reaped,
        // so its id cannot have been reused).
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = leader.wait();
}

/// One HTTP/1.1 exchange with chromedriver: the request with its Content-Length, and
/// the answer read as far as its Content-Length says (to the end without one). A
/// non-200 answer is WebDriver's error object.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Value, WdError> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(WdError::transport)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(WdError::transport)?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if method == "POST" {
        head.push_str("Content-Type: application/json; charset=utf-8\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(WdError::transport)?;

    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(end) = find(&bytes, b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut buf).map_err(WdError::transport)?;
        if n == 0 {
            return Err(WdError::transport(format!(
                "{method} {path}: the connection closed before the answer's head"
            )));
        }
        bytes.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| WdError::transport(format!("not an HTTP answer: {head:?}")))?;
    // chromedriver writes `Content-Length:858`, without a space.
    let length = head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    let mut content = bytes.split_off(head_end + 4);
    match length {
        Some(length) => {
            while content.len() < length {
                let n = stream.read(&mut buf).map_err(WdError::transport)?;
                if n == 0 {
                    return Err(WdError::transport(format!(
                        "{method} {path}: the answer ended after {} of its {length} bytes",
                        content.len()
                    )));
                }
                content.extend_from_slice(&buf[..n]);
            }
            content.truncate(length);
        }
        None => {
            stream
                .read_to_end(&mut content)
                .map_err(WdError::transport)?;
        }
    }
    let answer: Value = serde_json::from_slice(&content).map_err(|e| {
        WdError::transport(format!(
            "{method} {path}: HTTP {status} with a body that is not JSON ({e}): {}",
            String::from_utf8_lossy(&content)
        ))
    })?;
    let value = answer.get("value").cloned().unwrap_or(Value::Null);
    if status == 200 {
        return Ok(value);
    }
    Err(WdError {
        status,
        error: value["error"]
            .as_str()
            .unwrap_or("unknown error")
            .to_owned(),
        message: value["message"].as_str().unwrap_or_default().to_owned(),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn element(value: &Value) -> Element {
    let id = value[ELEMENT_KEY]
        .as_str()
        .unwrap_or_else(|| panic!("not an element reference: {value}"));
    Element(id.to_owned())
}

/// JavaScript's truthiness, for what a script returned.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0 && !n.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Standard base64 (with padding, as chromedriver sends screenshots).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for quad in bytes.chunks(4) {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | sextet(c)?;
        }
        n <<= 6 * pad as u32;
        let group = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&group[..3 - pad]);
    }
    Some(out)
}

#[test]
fn base64_decodes_with_and_without_padding() {
    assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
    assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
    assert_eq!(base64_decode("aGV5").unwrap(), b"hey");
    assert_eq!(base64_decode("").unwrap(), b"");
    assert!(base64_decode("a$==").is_none());
}
