//! The API's routes (ARCHITECTURE.md §10). Each is the CLI command of the same name,
//! run over the server's store with its `--json` output as the answer: the API and
//! the CLI cannot drift apart, and a script may use either. What the CLI cannot say in
//! an exit code the routes check first, to answer with the right HTTP status: a full
//! id (a prefix is ambiguous over HTTP, where ids come from earlier answers), a
//! session that exists (404), one that is closed (409). `approve` and `deny` are the
//! CLI commands too, so a decision made on the page is the one `agentq approve` makes
//! (the same inbox entry, the same refusals).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use uuid::Uuid;

use super::events::Hub;
use super::http::{
    Body, Refusal, json, json_body, json_body_or_default, no_store, printed_json, query_param,
};
use super::page;
use crate::cli::{
    AgentsCommand, ApproveArgs, CancelArgs, Command, DenyArgs, SendArgs, SessionCommand,
    SessionNewArgs, StatusFilter,
};
use crate::commands::Context;
use crate::commands::listing::{Listed, listed};
use crate::domain::session::{EventsPreset, SessionStatus};
use crate::error::{ExitKind, UserError};
use crate::home::Home;
use crate::output::Output;
use crate::store::{Session, Store};

/// Sessions listed per page unless `limit` says otherwise, and the most it may say.
const PAGE: usize = 50;
const PAGE_MAX: usize = 500;

/// What every route works with.
pub struct App {
    pub store: Arc<dyn Store>,
    pub home: Home,
    pub hub: Arc<Hub>,
    pub auth: super::auth::Auth,
    /// The inbox's limit on a message (`[inbox] max_message_bytes`).
    pub max_message_bytes: usize,
    /// The origins whose pages may call the API (`--allow-origin`): none unless asked.
    pub allowed_origins: Vec<String>,
}

impl App {
    /// The largest body a route reads: a message at the inbox's limit, every byte of it
    /// escaped in JSON (`\u0000`, six bytes), and room for the rest of the object.
    fn body_cap(&self) -> usize {
        self.max_message_bytes
            .saturating_mul(6)
            .saturating_add(64 * 1024)
    }
}

/// Answers one request.
pub async fn handle(app: Arc<App>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let Some(rest) = path.strip_prefix("/api/") else {
        return page::serve(&app.auth, &request);
    };
    let origin = allowed_origin(&app, &request);
    if request.method() == Method::OPTIONS {
        return cors(preflight(origin.is_some()), origin);
    }
    let answer = match app.auth.check(request.headers()) {
        Ok(()) => api(&app, request, rest).await,
        Err(refusal) => Err(refusal),
    };
    let response = answer.unwrap_or_else(|refusal| refusal.response());
    cors(no_store(response), origin)
}

/// The request's `Origin`, if `--allow-origin` named it.
fn allowed_origin(app: &App, request: &Request<Incoming>) -> Option<HeaderValue> {
    let origin = request.headers().get(hyper::header::ORIGIN)?;
    let given = origin.to_str().ok()?;
    app.allowed_origins
        .iter()
        .any(|allowed| allowed == given)
        .then(|| origin.clone())
}

/// The answer to a CORS preflight: 204 with what may be sent, for an allowed origin.
fn preflight(allowed: bool) -> Response<Body> {
    let mut response = Response::new(super::http::full(Bytes::new()));
    *response.status_mut() = if allowed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::FORBIDDEN
    };
    if allowed {
        let headers = response.headers_mut();
        headers.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("GET, POST"),
        );
        headers.insert(
            "access-control-allow-headers",
            HeaderValue::from_static("authorization, content-type, idempotency-key, last-event-id"),
        );
        headers.insert("access-control-max-age", HeaderValue::from_static("600"));
    }
    response
}

/// Lets an allowed origin's page read the answer; others get no CORS header at all.
fn cors(mut response: Response<Body>, origin: Option<HeaderValue>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert(hyper::header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        headers.insert("access-control-allow-origin", origin);
    }
    response
}

async fn api(
    app: &Arc<App>,
    request: Request<Incoming>,
    rest: &str,
) -> Result<Response<Body>, Refusal> {
    let parts: Vec<&str> = rest.split('/').collect();
    let method = request.method().clone();
    match (&method, parts.as_slice()) {
        (&Method::GET, ["agents"]) => {
            let out = run(app, Command::Agents(AgentsCommand::List { json: true })).await?;
            Ok(printed_json(StatusCode::OK, out))
        }
        (&Method::GET, ["status"]) => {
            let out = run(app, Command::Status { json: true }).await?;
            Ok(printed_json(StatusCode::OK, out))
        }
        (&Method::GET, ["sessions"]) => list(app, request.uri().query()).await,
        (&Method::POST, ["sessions"]) => create(app, request).await,
        (&Method::GET, ["sessions", id]) => {
            let id = existing(app, id).await?.id();
            let show = SessionCommand::Show {
                id: id.to_string(),
                json: true,
            };
            Ok(printed_json(
                StatusCode::OK,
                run(app, Command::Session(show)).await?,
            ))
        }
        (&Method::GET, ["sessions", id, "messages"]) => {
            let id = existing(app, id).await?.id();
            let messages = SessionCommand::Messages {
                id: id.to_string(),
                json: true,
            };
            Ok(printed_json(
                StatusCode::OK,
                run(app, Command::Session(messages)).await?,
            ))
        }
        (&Method::POST, ["sessions", id, "messages"]) => send(app, id, request).await,
        (
            &Method::POST,
            [
                "sessions",
                id,
                action @ ("close" | "pause" | "resume" | "cancel"),
            ],
        ) => change(app, id, action, request).await,
        (&Method::POST, ["sessions", id, "approve"]) => approve(app, id, request).await,
        (&Method::POST, ["sessions", id, "deny"]) => deny(app, id, request).await,
        (&Method::GET, ["sessions", id, "events"]) => events(app, id, &request).await,
        (_, ["agents" | "status" | "sessions"])
        | (_, ["sessions", _])
        | (
            _,
            [
                "sessions",
                _,
                "messages" | "events" | "close" | "pause" | "resume" | "cancel" | "approve"
                | "deny",
            ],
        ) => Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on /api/{rest}"),
        )),
        _ => Err(Refusal::not_found(format!("no route /api/{rest}"))),
    }
}

/// Runs a CLI command with its output captured, off the request's thread (the store
/// blocks on its disk or its database), and returns what it printed.
async fn run(app: &App, command: Command) -> Result<Vec<u8>, Refusal> {
    let (store, home) = (app.store.clone(), app.home.clone());
    let ran = tokio::task::spawn_blocking(move || {
        let (out, captured) = Output::captured();
        let ctx = Context { store, home, out };
        crate::commands::dispatch(&ctx, command).map(|_| captured.stdout().into_bytes())
    })
    .await;
    match ran {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(err)) => Err(refusal_of(&err)),
        Err(err) => Err(Refusal::internal(format!(
            "the request's work failed: {err}"
        ))),
    }
}

/// The HTTP answer to a command's error: 422 for what the request must fix (what
/// exits 2 on the command line), 503 for what may pass (75), 500 for the rest.
fn refusal_of(err: &anyhow::Error) -> Refusal {
    let kind = err
        .chain()
        .find_map(|cause| cause.downcast_ref::<UserError>())
        .map_or(ExitKind::Failed, |e| e.kind);
    let message = crate::error::render(err);
    match kind {
        ExitKind::Usage => Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", message),
        ExitKind::Unavailable => {
            Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
        ExitKind::Failed => Refusal::internal(message),
    }
}

/// The session a route names by its full id: 400 for anything else, 404 when there
/// is no such session.
async fn existing(app: &App, id: &str) -> Result<Box<dyn Session>, Refusal> {
    let id: Uuid = id.parse().map_err(|_| {
        Refusal::bad_request(format!(
            "`{}` is not a session id: the API takes whole ids, as its answers give them",
            crate::text::one_line(id, crate::text::FIELD_CAP)
        ))
    })?;
    let store = app.store.clone();
    let found = tokio::task::spawn_blocking(move || store.resolve(&id.to_string()))
        .await
        .map_err(|e| Refusal::internal(format!("the request's work failed: {e}")))?;
    found.map_err(|err| match crate::error::exit_code(&err) {
        crate::error::exit::USAGE => Refusal::not_found(format!("no session {id}")),
        _ => refusal_of(&err),
    })
}

/// `GET /api/sessions[?status=S][&limit=N][&before=ID]`: newest first, a page at a
/// time, so a store of ten thousand sessions answers as fast as one of ten: only the
/// page's sessions are read (and their ids found in a listing the store keeps while
/// nothing changes). `next` is the `before` of the following page.
async fn list(app: &App, query: Option<&str>) -> Result<Response<Body>, Refusal> {
    let status = match query_param(query, "status") {
        None | Some("") => None,
        Some(given) => Some(
            <StatusFilter as clap::ValueEnum>::from_str(given, true).map_err(|_| {
                Refusal::bad_request("status must be one of active, paused, closed")
            })?,
        ),
    };
    let limit = match query_param(query, "limit") {
        None => PAGE,
        Some(given) => given
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=PAGE_MAX).contains(n))
            .ok_or_else(|| Refusal::bad_request(format!("limit must be 1 to {PAGE_MAX}")))?,
    };
    let before = query_param(query, "before")
        .filter(|given| !given.is_empty())
        .map(|given| {
            given.parse::<Uuid>().map_err(|_| {
                Refusal::bad_request("before must be a session id (the `next` of a page)")
            })
        })
        .transpose()?;
    let store = app.store.clone();
    let page = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let ids = store.session_ids()?;
        let mut rows = Vec::new();
        let mut next = None;
        let newest_first = ids
            .into_iter()
            .rev()
            .filter(|id| before.is_none_or(|b| *id < b));
        for id in newest_first {
            if rows.len() == limit {
                next = rows.last().map(|row: &Listed| row.id);
                break;
            }
            // One damaged session is left out of the page, as `session list` skips it.
            match listed(&*store.session(id)) {
                Ok(row) if status.is_none_or(|s| s.matches(row.status)) => rows.push(row),
                Ok(_) => {}
                Err(err) => tracing::warn!(session = %id, "listing skips a session: {err:#}"),
            }
        }
        Ok(serde_json::json!({ "sessions": rows, "next": next }))
    })
    .await
    .map_err(|e| Refusal::internal(format!("the request's work failed: {e}")))?
    .map_err(|err| refusal_of(&err))?;
    Ok(json(StatusCode::OK, &page))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSessionBody {
    agent: String,
    #[serde(default)]
    title: Option<String>,
    /// Overrides of the definition's keys, as `--set KEY=VALUE`.
    #[serde(default)]
    set: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    events: EventsPreset,
}

/// `POST /api/sessions`: `session new --json`, 201 with the session.
async fn create(app: &App, request: Request<Incoming>) -> Result<Response<Body>, Refusal> {
    let body: NewSessionBody = json_body(request, app.body_cap()).await?;
    let set = body
        .set
        .into_iter()
        .map(|(key, value)| match value {
            // As typed after `=` on the command line: a string is taken as it is.
            serde_json::Value::String(text) => format!("{key}={text}"),
            other => format!("{key}={other}"),
        })
        .collect();
    let new = SessionNewArgs {
        agent: body.agent,
        title: body.title,
        set,
        events: body.events,
        json: true,
    };
    let out = run(app, Command::Session(SessionCommand::New(new))).await?;
    Ok(printed_json(StatusCode::CREATED, out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    content: String,
}

/// `POST /api/sessions/{id}/messages`: `send --json`, 202 (queued, durably; a worker
/// answers it), with `Idempotency-Key` as `--key`.
async fn send(app: &App, id: &str, request: Request<Incoming>) -> Result<Response<Body>, Refusal> {
    let session = existing(app, id).await?;
    let key = match request.headers().get("idempotency-key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| Refusal::bad_request("Idempotency-Key must be text"))?
                .to_owned(),
        ),
    };
    let body: MessageBody = json_body(request, app.body_cap()).await?;
    if body.content.len() > app.max_message_bytes {
        return Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the message is {} bytes; the inbox takes at most {} ([inbox] max_message_bytes)",
                body.content.len(),
                app.max_message_bytes
            ),
        ));
    }
    refuse_closed(&*session, "takes no new messages")?;
    let args = SendArgs {
        id: session.id().to_string(),
        text: Some(body.content),
        file: None,
        continue_: false,
        raise_budget: None,
        key,
        wait: false,
        timeout: None,
        no_wait_approval: false,
        json: true,
    };
    let out = run(app, Command::Send(args)).await?;
    Ok(printed_json(StatusCode::ACCEPTED, out))
}

/// 409 when the session is closed: what it asks of the session cannot be done now.
/// One read of `session.json`, in place (the request's task may block that long).
fn refuse_closed(session: &dyn Session, what: &str) -> Result<(), Refusal> {
    let id = session.id();
    let meta = tokio::task::block_in_place(|| session.meta()).map_err(|err| refusal_of(&err))?;
    if meta.status == SessionStatus::Closed {
        return Err(Refusal::conflict(format!(
            "session {id} is closed and {what}"
        )));
    }
    Ok(())
}

/// `POST /api/sessions/{id}/{close,pause,resume,cancel}`: the command of that name.
/// Cancel is queued (202, `cancel --json`); the others answer with the session.
async fn change(
    app: &App,
    id: &str,
    action: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    let session = existing(app, id).await?;
    // No fields are defined: an empty object, still JSON (see `json_body`).
    let _: EmptyBody = json_body(request, app.body_cap()).await?;
    let id = session.id().to_string();
    let command = match action {
        "cancel" => {
            let out = run(app, Command::Cancel(CancelArgs { id, json: true })).await?;
            return Ok(printed_json(StatusCode::ACCEPTED, out));
        }
        "close" => SessionCommand::Close { id },
        "pause" => {
            refuse_closed(&*session, "cannot be paused")?;
            SessionCommand::Pause { id }
        }
        _ => {
            refuse_closed(&*session, "cannot be resumed")?;
            SessionCommand::Resume { id }
        }
    };
    run(app, Command::Session(command)).await?;
    let meta = tokio::task::block_in_place(|| session.meta()).map_err(|err| refusal_of(&err))?;
    Ok(json(StatusCode::OK, &meta))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

/// `approve`'s body: which call (whole id or unique prefix); the one waiting if none.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    #[serde(default)]
    call_id: Option<String>,
}

/// `deny`'s body: which call, and why (the model is told).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DenyBody {
    #[serde(default)]
    call_id: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/sessions/{id}/approve` `{call_id?}`: `approve --json`, 202 (queued, as a
/// cancel is: the next worker that takes the session runs the call). Nothing waiting,
/// another call named, or a call denied before: 422, as they exit 2.
async fn approve(
    app: &App,
    id: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    let session = existing(app, id).await?;
    let body: ApproveBody = json_body_or_default(request, app.body_cap()).await?;
    let args = ApproveArgs {
        id: session.id().to_string(),
        call_id: body.call_id,
        json: true,
    };
    let out = run(app, Command::Approve(args)).await?;
    Ok(printed_json(StatusCode::ACCEPTED, out))
}

/// `POST /api/sessions/{id}/deny` `{call_id?, reason?}`: `deny --json`, 202; refused as
/// `approve` is, and a reason over the inbox's limit on a message is 413.
async fn deny(app: &App, id: &str, request: Request<Incoming>) -> Result<Response<Body>, Refusal> {
    let session = existing(app, id).await?;
    let body: DenyBody = json_body_or_default(request, app.body_cap()).await?;
    let reason_bytes = body.reason.as_deref().map_or(0, str::len);
    if reason_bytes > app.max_message_bytes {
        return Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the reason is {reason_bytes} bytes; the inbox takes at most {} ([inbox] max_message_bytes)",
                app.max_message_bytes
            ),
        ));
    }
    let args = DenyArgs {
        id: session.id().to_string(),
        call_id: body.call_id,
        reason: body.reason,
        json: true,
    };
    let out = run(app, Command::Deny(args)).await?;
    Ok(printed_json(StatusCode::ACCEPTED, out))
}

/// `GET /api/sessions/{id}/events[?after=SEQ]`: the log as Server-Sent Events, after
/// `Last-Event-ID` (what a browser's `EventSource` sends when it reconnects) or `after`.
async fn events(
    app: &Arc<App>,
    id: &str,
    request: &Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    let session = existing(app, id).await?;
    let resumed = request
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty());
    let after = match resumed.or(query_param(request.uri().query(), "after")) {
        None => 0,
        Some(given) => given
            .trim()
            .parse::<u64>()
            .map_err(|_| Refusal::bad_request("Last-Event-ID and after must be an event's seq"))?,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(app.hub.clone().stream(session, after, tx));
    let frames = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|bytes| bytes.map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b))))
    });
    let mut response = Response::new(StreamBody::new(frames).boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx buffers responses unless told otherwise; a buffered stream is no stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}
