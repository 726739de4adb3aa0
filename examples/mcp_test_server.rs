//! An MCP server for agentq's tests, built on the SDK's server side: every behaviour
//! the client must survive, one tool each.
//!
//! Speaks stdio by default; `--http 127.0.0.1:0` serves streamable HTTP instead and
//! prints its URL as the first line of stdout. Tools:
//! - `echo {text}` (read-only): returns the text;
//! - `fail {message}`: an `isError` result;
//! - `sleep {ms}`: sleeps; a cancellation ends it (its start and its cancellation are
//!   noted in the file `$EVENTS_FILE`, as are every start of the server over stdio and
//!   every close of its connection by the client);
//! - `crash`: exits the process in the middle of the call;
//! - `noisy {lines}`: writes that many lines to stderr;
//! - `spawn_grandchild`: starts `sleep 600` in the background, returns its pid;
//! - `count`: appends a line to `$COUNT_FILE`, returns how many it holds;
//! - `image`: a one-pixel PNG;
//! - `big {bytes}`: that many bytes of text.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ServerHandler, ServiceExt};
use serde_json::{Value, json};

const PIXEL: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

#[derive(Clone)]
struct TestServer;

fn tools() -> Vec<Tool> {
    let object = |properties: Value| json!({"type": "object", "properties": properties});
    let list = json!([
        {"name": "echo", "description": "Returns its text.",
         "inputSchema": object(json!({"text": {"type": "string"}})),
         "annotations": {"readOnlyHint": true}},
        {"name": "fail", "description": "Fails with the message.",
         "inputSchema": object(json!({"message": {"type": "string"}}))},
        {"name": "sleep", "description": "Sleeps for ms milliseconds.",
         "inputSchema": object(json!({"ms": {"type": "integer"}}))},
        {"name": "crash", "description": "Exits mid-call.", "inputSchema": object(json!({}))},
        {"name": "noisy", "description": "Writes lines to stderr.",
         "inputSchema": object(json!({"lines": {"type": "integer"}}))},
        {"name": "spawn_grandchild", "description": "Starts `sleep 600`.",
         "inputSchema": object(json!({}))},
        {"name": "count", "description": "Counts its calls in $COUNT_FILE.",
         "inputSchema": object(json!({}))},
        {"name": "image", "description": "A one-pixel PNG.", "inputSchema": object(json!({}))},
        {"name": "big", "description": "That many bytes of text.",
         "inputSchema": object(json!({"bytes": {"type": "integer"}}))}
    ]);
    serde_json::from_value(list).expect("the tool list is valid")
}

fn note(event: &str) {
    if let Some(path) = std::env::var_os("EVENTS_FILE") {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("EVENTS_FILE opens");
        writeln!(file, "{event}").expect("EVENTS_FILE takes a line");
    }
}

impl ServerHandler for TestServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = Value::Object(request.arguments.unwrap_or_default());
        let number = |key: &str| args.get(key).and_then(Value::as_u64).unwrap_or(0);
        let text = |key: &str| {
            args.get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let ok = |text: String| Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into());
        match request.name.as_ref() {
            "echo" => ok(text("text")),
            "fail" => Ok(CallToolResult::error(vec![ContentBlock::text(text("message"))]).into()),
            "sleep" => {
                note("sleep");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(number("ms"))) => ok("slept".into()),
                    () = context.ct.cancelled() => {
                        note("cancelled sleep");
                        Err(ErrorData::internal_error("cancelled", None))
                    }
                }
            }
            "crash" => {
                eprintln!("crashing on purpose");
                std::process::exit(3);
            }
            "noisy" => {
                for i in 0..number("lines") {
                    eprintln!("noise line {i}");
                }
                ok("noisy".into())
            }
            "spawn_grandchild" => {
                // Through `sh`, which exits at once: the sleep is left to run in the
                // background, in this server's process group, as `npx` children are.
                let started = std::process::Command::new("sh")
                    .args(["-c", "sleep 600 </dev/null >/dev/null 2>&1 & echo $!"])
                    .output()
                    .expect("sh runs");
                ok(String::from_utf8_lossy(&started.stdout).trim().to_owned())
            }
            "count" => {
                let path = std::env::var_os("COUNT_FILE").expect("COUNT_FILE is set");
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .expect("COUNT_FILE opens");
                writeln!(file, "called").expect("COUNT_FILE takes a line");
                let lines = std::fs::read_to_string(&path)
                    .unwrap_or_default()
                    .lines()
                    .count();
                ok(lines.to_string())
            }
            "image" => {
                Ok(CallToolResult::success(vec![ContentBlock::image(PIXEL, "image/png")]).into())
            }
            "big" => {
                let bytes = usize::try_from(number("bytes")).unwrap_or(0);
                ok("x".repeat(bytes))
            }
            other => Err(ErrorData::invalid_params(
                format!("no tool `{other}`"),
                None,
            )),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {
            note("started");
            let running = TestServer.serve(rmcp::transport::stdio()).await?;
            running.waiting().await?;
            // Reached only when the client closed the connection: a server that was
            // killed notes nothing.
            note("closed");
        }
        [flag, address] if flag == "--http" => serve_http(address).await?,
        _ => return Err("usage: mcp_test_server [--http ADDRESS]".into()),
    }
    Ok(())
}

async fn serve_http(address: &str) -> Result<(), Box<dyn std::error::Error>> {
    use rmcp::transport::StreamableHttpService;
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

    let service = StreamableHttpService::new(
        || Ok(TestServer),
        Arc::new(LocalSessionManager::default()),
        Default::default(),
    );
    let listener = tokio::net::TcpListener::bind(address).await?;
    println!("http://{}/mcp", listener.local_addr()?);
    std::io::stdout().flush()?;
    loop {
        let (stream, _) = listener.accept().await?;
        let service = hyper_util::service::TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}
