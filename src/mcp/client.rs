//! A running connection to one MCP server: [`Server`].
//!
//! The SDK (`rmcp`) does the protocol: framing, the initialize handshake, request ids,
//! pagination, `notifications/cancelled`. This file adds what agentq needs around it:
//! deadlines on everything, a stdio child spawned through [`process`] (its own group,
//! killed with everything in it when the [`Server`] goes, however it goes), its stderr
//! sent to the log within bounds, and failures said in one line naming the server.
//!
//! No `Drop` is written by hand: each field cleans up after itself. The
//! [`process::Group`] kills the group, the task that waits for the child reaps it (or,
//! when the runtime is gone, tokio's `kill_on_drop` and orphan reaping do), and the SDK
//! cancels its own task when the connection is dropped.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientCapabilities, ClientConfig, Implementation,
};
use rmcp::service::ClientInitializeError;
use rmcp::service::{RoleClient, RunningService, ServiceError, ServiceExt};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::{
    HttpStatusError, StreamableHttpClientTransportConfig, StreamableHttpError,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::watch;

use super::names::{cap_description, exposed_name, selected};
use super::output::{LINE_CAP, StderrLog, tool_output};
use super::schema::clean_schema;
use super::{McpTool, ServerSpec, Transport};
use crate::time::human_duration;
use crate::tools::{ToolOutput, process};

type Connection = RunningService<RoleClient, ClientConfig>;

/// How often a running call asks whether to stop (as a command does).
const CHECK_EVERY: Duration = Duration::from_millis(10);
/// The most a server is given to exit on its own once its input closes, and to take
/// a cancellation, before its group is killed.
const GRACE: Duration = Duration::from_secs(1);

/// Why a server did not start: displays as one line naming the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MCP server `{server}`: {why}")]
pub struct StartError {
    pub server: String,
    pub why: String,
}

/// A running, initialised connection, with the tools listed when it started.
pub struct Server {
    name: String,
    tools: Vec<McpTool>,
    tool_timeout: Duration,
    connection: Connection,
    child: Option<Child>,
}

/// What is kept of a stdio server's process.
struct Child {
    /// Killed whole when dropped.
    group: Option<process::Group>,
    /// The exit status, once the task that waits for the child has it.
    exited: watch::Receiver<Option<ExitStatus>>,
    /// The task that waits for the child (and so reaps it).
    waiter: tokio::task::JoinHandle<()>,
    /// The last line the server wrote to stderr: what a failed start reports.
    last_stderr: Arc<Mutex<String>>,
    stderr: tokio::task::JoinHandle<()>,
}

impl Child {
    /// The exit status, waiting at most `wait` for it.
    async fn exit_status(&mut self, wait: Duration) -> Option<ExitStatus> {
        let exited = tokio::time::timeout(wait, self.exited.wait_for(Option::is_some)).await;
        match exited {
            Ok(Ok(status)) => *status,
            _ => None,
        }
    }

    /// "exited with status 1: <its last stderr line>", once it has exited.
    async fn describe_exit(&mut self, wait: Duration) -> Option<String> {
        let status = self.exit_status(wait).await?;
        // Its stderr ends with it (unless a child of its own holds the pipe).
        let _ = tokio::time::timeout(Duration::from_millis(300), &mut self.stderr).await;
        let last = self
            .last_stderr
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        let status = match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "was killed by a signal".to_owned(),
        };
        Some(if last.is_empty() {
            status
        } else {
            format!("{status}: {last}")
        })
    }
}

impl Server {
    /// Starts the server and lists its tools, all within `startup_timeout`.
    ///
    /// A stdio server is spawned from the calling thread, and the kernel's death
    /// signal follows that thread (see [`process`]): start it from a thread that
    /// lives as long as the server, as the session's drain does.
    pub async fn start(
        spec: &ServerSpec,
        owner: Option<&process::Owner>,
    ) -> Result<Server, StartError> {
        let started = match &spec.transport {
            Transport::Stdio {
                command,
                args,
                env,
                cwd,
            } => start_stdio(spec, command, args, env, cwd, owner).await,
            Transport::Http {
                url,
                bearer_token,
                headers,
            } => start_http(spec, url, bearer_token.as_deref(), headers).await,
        };
        let why = match started {
            Ok(server) => match ungated(spec, &server.tools) {
                None => return Ok(server),
                Some(why) => {
                    server.stop().await;
                    why
                }
            },
            Err(why) => why,
        };
        Err(StartError {
            server: spec.name.clone(),
            why,
        })
    }

    /// The server's name (its `[mcp_servers.NAME]` key).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tools listed at the start (every page), filtered by `enabled_tools` and
    /// `disabled_tools`.
    pub fn tools(&self) -> &[McpTool] {
        &self.tools
    }

    /// Calls the tool the server knows as `tool`. Gives up at `tool_timeout`, or
    /// within [`CHECK_EVERY`] of `stop()` returning true, telling the server it is
    /// cancelled either way. Every failure is an error output, naming the server.
    pub async fn call(
        &self,
        tool: &str,
        arguments: Value,
        stop: &mut (dyn FnMut() -> bool + Send),
    ) -> ToolOutput {
        let arguments = match arguments {
            Value::Object(arguments) => Some(arguments),
            Value::Null => None,
            _ => return ToolOutput::error("the arguments must be a JSON object"),
        };
        let mut params = CallToolRequestParams::new(tool.to_owned());
        params.arguments = arguments;
        let peer = self.connection.peer();
        if peer.is_transport_closed() {
            let error = ServiceError::TransportClosed;
            return ToolOutput::error(self.failure(tool, &error, false).await);
        }
        // Dropping this future before it ends (here, at a stop or the timeout, or the
        // caller dropping `call`) sends `notifications/cancelled`: the SDK's guard.
        let mut answer = Box::pin(peer.call_tool_once(params));
        let deadline = Instant::now() + self.tool_timeout;
        let ended = loop {
            tokio::select! {
                answer = &mut answer => break Ended::Answered(answer),
                () = tokio::time::sleep(CHECK_EVERY) => {
                    if stop() {
                        break Ended::Stopped;
                    }
                    if Instant::now() >= deadline {
                        break Ended::TimedOut;
                    }
                }
            }
        };
        drop(answer);
        match ended {
            Ended::Answered(Ok(CallToolResponse::Complete(result))) => {
                tool_output(&serde_json::to_value(result).unwrap_or_default())
            }
            Ended::Answered(Ok(_)) => ToolOutput::error(format!(
                "MCP server `{}` answered `{tool}` by asking for input or starting a task, \
                 which agentq does not support",
                self.name
            )),
            Ended::Answered(Err(error)) => {
                ToolOutput::error(self.failure(tool, &error, true).await)
            }
            Ended::Stopped => ToolOutput::error("stopped: the execution was cancelled"),
            Ended::TimedOut => ToolOutput::error(format!(
                "MCP server `{}`: `{tool}` timed out after {} and was cancelled",
                self.name,
                human_duration(u64::try_from(self.tool_timeout.as_millis()).unwrap_or(u64::MAX))
            )),
        }
    }

    /// Why a call failed, in one line naming the server.
    async fn failure(&self, tool: &str, error: &ServiceError, sent: bool) -> String {
        let name = &self.name;
        let exited = match &self.child {
            Some(child) if matches!(error, ServiceError::TransportClosed) => {
                // The connection closes a moment before the exit is seen.
                let mut exited = child.exited.clone();
                let seen = tokio::time::timeout(
                    Duration::from_millis(300),
                    exited.wait_for(Option::is_some),
                )
                .await;
                seen.ok().and_then(|s| s.ok().and_then(|s| *s))
            }
            _ => None,
        };
        let exit = exited.map(|status| match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "was killed by a signal".to_owned(),
        });
        match (exit, error) {
            (Some(exit), _) if sent => format!("MCP server `{name}` {exit} while running `{tool}`"),
            (Some(exit), _) => format!("MCP server `{name}` is not running: it {exit}"),
            (None, ServiceError::TransportClosed) if sent => {
                format!("MCP server `{name}` closed the connection while running `{tool}`")
            }
            (None, ServiceError::TransportClosed) => {
                format!("MCP server `{name}` is not connected: the connection closed")
            }
            (None, ServiceError::McpError(error)) => {
                format!("MCP server `{name}`: `{tool}` failed: {}", error.message)
            }
            (None, error) => format!("MCP server `{name}`: `{tool}` failed: {error}"),
        }
    }

    /// Closes the connection (a stdio server sees its input end), gives the server
    /// [`GRACE`] to exit, then kills its whole process group and reaps it.
    pub async fn stop(self) {
        let Server {
            mut connection,
            child,
            ..
        } = self;
        let _ = tokio::time::timeout(GRACE, connection.close()).await;
        if let Some(mut child) = child {
            child.exit_status(GRACE).await;
            // Whatever it started goes with it, exited or not.
            drop(child.group.take());
            let _ = tokio::time::timeout(GRACE, &mut child.waiter).await;
        }
    }
}

async fn start_stdio(
    spec: &ServerSpec,
    command: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    cwd: &Path,
    owner: Option<&process::Owner>,
) -> Result<Server, String> {
    if !cwd.is_dir() {
        return Err(format!(
            "its working directory `{}` does not exist",
            cwd.display()
        ));
    }
    let mut child = tokio::process::Command::new(command);
    child
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    process::prepare(&mut child, owner);
    let spawned = child.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("cannot run `{command}`: not found")
        } else {
            format!("cannot run `{command}`: {e}")
        }
    })?;
    let (child, stdin, stdout) = Child::adopt(&spec.name, spawned, owner)?;
    handshake_stdio(spec, child, stdin, stdout).await
}

impl Child {
    /// Takes charge of a spawned server: registers its group, sends its stderr to the
    /// log and reaps it when it exits. Returns the pipes the protocol runs over.
    fn adopt(
        server: &str,
        mut spawned: tokio::process::Child,
        owner: Option<&process::Owner>,
    ) -> Result<(Child, ChildStdin, ChildStdout), String> {
        let group = spawned
            .id()
            .and_then(|id| process::Group::register(id, owner));
        let (Some(stdin), Some(stdout)) = (spawned.stdin.take(), spawned.stdout.take()) else {
            return Err("cannot talk to it: its pipes are missing".to_owned());
        };
        let last_stderr = Arc::new(Mutex::new(String::new()));
        let stderr = tokio::spawn(log_stderr(
            server.to_owned(),
            spawned.stderr.take(),
            Arc::clone(&last_stderr),
        ));
        let (tell, exited) = watch::channel(None);
        let waiter = tokio::spawn(async move {
            if let Ok(status) = spawned.wait().await {
                let _ = tell.send(Some(status));
            }
        });
        let child = Child {
            group,
            exited,
            waiter,
            last_stderr,
            stderr,
        };
        Ok((child, stdin, stdout))
    }
}

/// Initialises the connection over the child's pipes and lists its tools, within
/// `startup_timeout`. A server that exited says more than the protocol error it
/// caused, so a failed start reports the exit when there is one.
async fn handshake_stdio(
    spec: &ServerSpec,
    mut child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
) -> Result<Server, String> {
    let started = Instant::now();
    let handshake = connect(spec, client_info().serve((stdout, stdin)));
    let why = match tokio::time::timeout(spec.startup_timeout, handshake).await {
        Ok(Ok((connection, tools))) => {
            return Ok(Server {
                name: spec.name.clone(),
                tools,
                tool_timeout: spec.tool_timeout,
                connection,
                child: Some(child),
            });
        }
        Ok(Err(why)) => Some(why),
        Err(_) => None,
    };
    // Dropping `child` on the way out kills what is left of it.
    let left = spec
        .startup_timeout
        .saturating_sub(started.elapsed())
        .min(GRACE);
    let exit = child.describe_exit(left).await;
    Err(exit
        .or(why)
        .unwrap_or_else(|| timed_out(spec.startup_timeout)))
}

async fn start_http(
    spec: &ServerSpec,
    url: &str,
    bearer_token: Option<&str>,
    headers: &BTreeMap<String, String>,
) -> Result<Server, String> {
    // The providers' client: the same TLS setup (rustls with ring, the system's roots).
    let client = crate::provider::http::client().map_err(|e| e.to_string())?;
    let mut custom = HashMap::new();
    for (name, value) in headers {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{name}` is not a valid HTTP header name"))?;
        let value = reqwest::header::HeaderValue::from_str(value)
            .map_err(|_| format!("the value of the HTTP header `{name}` is not valid"))?;
        custom.insert(name, value);
    }
    let mut config = StreamableHttpClientTransportConfig::with_uri(url).custom_headers(custom);
    if let Some(token) = bearer_token {
        config = config.auth_header(token);
    }
    let transport = StreamableHttpClientTransport::with_client(client, config);
    let handshake = connect(spec, client_info().serve(transport));
    match tokio::time::timeout(spec.startup_timeout, handshake).await {
        Ok(Ok((connection, tools))) => Ok(Server {
            name: spec.name.clone(),
            tools,
            tool_timeout: spec.tool_timeout,
            connection,
            child: None,
        }),
        Ok(Err(why)) => Err(why),
        Err(_) => Err(timed_out(spec.startup_timeout)),
    }
}

fn timed_out(timeout: Duration) -> String {
    format!(
        "did not start: timed out after {}",
        human_duration(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
    )
}

enum Ended {
    Answered(Result<CallToolResponse, ServiceError>),
    Stopped,
    TimedOut,
}

fn client_info() -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("agentq", env!("CARGO_PKG_VERSION")),
    )
}

/// Finishes the handshake and lists every page of tools, saying why either failed.
async fn connect(
    spec: &ServerSpec,
    handshake: impl Future<Output = Result<Connection, ClientInitializeError>>,
) -> Result<(Connection, Vec<McpTool>), String> {
    let connection = handshake.await.map_err(|e| handshake_failure(&e))?;
    let listed = connection
        .peer()
        .list_all_tools()
        .await
        .map_err(|e| format!("cannot list its tools: {e}"))?;
    let mut tools: Vec<McpTool> = Vec::new();
    for tool in listed {
        if !selected(
            &tool.name,
            spec.enabled_tools.as_deref(),
            &spec.disabled_tools,
        ) {
            continue;
        }
        let exposed = exposed_name(&spec.name, &tool.name);
        if tools.iter().any(|t| t.exposed == exposed) {
            // Two names that differ only in characters a provider refuses.
            tracing::warn!(
                "MCP server `{}`: the tool `{}` is left out: its name reads as `{exposed}`, like another's",
                spec.name,
                tool.name
            );
            continue;
        }
        tools.push(McpTool {
            server: spec.name.clone(),
            name: tool.name.to_string(),
            exposed,
            description: cap_description(tool.description.as_deref().unwrap_or("")),
            input_schema: clean_schema(&Value::Object(tool.input_schema.as_ref().clone())),
            read_only: tool.annotations.and_then(|a| a.read_only_hint) == Some(true),
            needs_approval: spec.needs_approval(&tool.name),
        });
    }
    Ok((connection, tools))
}

/// Why the server must not be used although it started: `approval_tools` names a
/// tool it does not offer, so the tool meant (misspelt, renamed by a new version)
/// would run without anyone's approval.
fn ungated(spec: &ServerSpec, tools: &[McpTool]) -> Option<String> {
    let unknown = spec
        .approval_tools
        .iter()
        .find(|name| !tools.iter().any(|tool| &tool.name == *name))?;
    let mut offered: Vec<&str> = tools.iter().map(|tool| tool.name.as_str()).collect();
    if offered.len() > 10 {
        offered.truncate(10);
        offered.push("…");
    }
    Some(format!(
        "approval_tools names `{unknown}`, which is not one of the tools it offers ({})",
        if offered.is_empty() {
            "none".to_owned()
        } else {
            offered.join(", ")
        }
    ))
}

/// Why the handshake failed: the HTTP status or the innermost cause (a refused
/// connection, a DNS failure) rather than the SDK's chain of wrappers.
fn handshake_failure(error: &ClientInitializeError) -> String {
    if error.is_authorization_required() {
        return "HTTP 401 Unauthorized: check its bearer token".to_owned();
    }
    let ClientInitializeError::TransportError { error, .. } = error else {
        return format!("the MCP handshake failed: {error}");
    };
    let mut cause: &(dyn std::error::Error + 'static) = error.error.as_ref();
    loop {
        if let Some(status) = cause.downcast_ref::<HttpStatusError>() {
            return format!("HTTP {}", status.status);
        }
        // The SDK's wrapper of reqwest's error names it without making it a source.
        let inner = match cause.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
            Some(StreamableHttpError::Client(inner)) => {
                Some(inner as &(dyn std::error::Error + 'static))
            }
            _ => cause.source(),
        };
        match inner {
            Some(inner) => cause = inner,
            None => return format!("the MCP handshake failed: {cause}"),
        }
    }
}

/// Sends a server's stderr to the log, line by line within [`StderrLog`]'s bounds,
/// keeping the last line for a failed start's message. Reads at most a few times
/// [`LINE_CAP`] of one line into memory, however long it is.
async fn log_stderr(
    server: String,
    stderr: Option<impl AsyncRead + Unpin>,
    last: Arc<Mutex<String>>,
) {
    let Some(stderr) = stderr else {
        return;
    };
    let mut reader = BufReader::new(stderr);
    let mut log = StderrLog::default();
    let mut line = Vec::new();
    loop {
        let (newline, used, end) = match reader.fill_buf().await {
            Ok([]) | Err(_) => (false, 0, true),
            Ok(buf) => match buf.iter().position(|b| *b == b'\n') {
                Some(at) => {
                    keep(&mut line, &buf[..at]);
                    (true, at + 1, false)
                }
                None => {
                    keep(&mut line, buf);
                    (false, buf.len(), false)
                }
            },
        };
        reader.consume(used);
        if newline || (end && !line.is_empty()) {
            let text = String::from_utf8_lossy(&line).into_owned();
            if !text.trim().is_empty()
                && let Ok(mut last) = last.lock()
            {
                text.trim_end().clone_into(&mut last);
            }
            if let Some(entry) = log.admit(&text) {
                tracing::info!("MCP server `{server}`: {entry}");
            }
            line.clear();
        }
        if end {
            return;
        }
    }
}

fn keep(line: &mut Vec<u8>, bytes: &[u8]) {
    let room = (LINE_CAP * 4).saturating_sub(line.len());
    line.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_can_be_shared_between_tasks() {
        fn shared<T: Send + Sync>() {}
        shared::<Server>();
    }
}
