//! `agentq serve`: the HTTP API over the home's store and the live chat page
//! (ARCHITECTURE.md §10), with `--worker` a worker in the same process.
//!
//! - [`api`]: the routes, each a CLI command run with its `--json` output captured;
//! - [`events`]: a session's log as Server-Sent Events, one reader for all its clients;
//! - [`page`]: the chat page's static files; [`auth`]: the token off loopback;
//! - [`http`]: bodies, JSON answers and the error shape.
//!
//! A first SIGINT/SIGTERM stops accepting, tells every event stream (`event:
//! shutdown`), lets answers in flight finish and stops the in-process worker as
//! `worker` stops (executions at a checkpoint); a second exits at once.

mod api;
mod auth;
mod events;
mod http;
mod page;

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::Context;
use crate::cli::ServeArgs;
use crate::error::UserError;
use crate::worker::{self, Shutdown, WorkerOptions};

/// How long answers in flight may take to finish once a shutdown began.
const DRAIN: Duration = Duration::from_secs(5);

pub fn run(ctx: &Context, args: ServeArgs) -> Result<u8> {
    let config = ctx.config()?;
    let (auth, login) = authentication(&args)?;
    for origin in &args.allow_origins {
        check_origin(origin)?;
    }
    let runtime = super::runtime(2)?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen).await.map_err(|e| {
            UserError::unavailable(format!("cannot listen on {}: {e}", args.listen))
        })?;
        let address = listener.local_addr()?;
        // The one line on stdout: a script (or a test) reads the port from it.
        writeln!(ctx.out.stdout(), "listening on http://{address}/")?;
        ctx.out.stdout().flush()?;
        if let Some(code) = login {
            ctx.out.note(&format!(
                "to open the page in a browser, sign in once at http://{address}/login?code={code}"
            ));
        }
        let shutdown = Arc::new(Shutdown::default());
        tokio::spawn(worker::on_signals(shutdown.clone()));
        let worker = args.worker.then(|| {
            let options = WorkerOptions {
                once: false,
                concurrency: usize::from(args.concurrency),
                session: None,
                max_duration: None,
                poll: args.poll,
                max_workers: None,
            };
            let (store, home) = (ctx.store.clone(), ctx.home.clone());
            tokio::spawn(worker::run(store, home, options, shutdown.clone()))
        });
        let app = Arc::new(api::App {
            store: ctx.store.clone(),
            home: ctx.home.clone(),
            hub: events::Hub::new(ctx.store.clone(), shutdown.clone()),
            auth,
            max_message_bytes: config.inbox.max_message_bytes,
            allowed_origins: args.allow_origins.clone(),
        });
        let connections = accept(listener, app, shutdown.clone()).await;
        info!("stopping: answering what is in flight, telling event streams");
        let drained = tokio::time::timeout(DRAIN, async {
            for connection in connections {
                let _ = connection.await;
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                "some connections were still open after {} s; closing them",
                DRAIN.as_secs()
            );
        }
        if let Some(worker) = worker {
            match worker.await {
                Ok(Ok(report)) => info!(
                    settled = report.settled,
                    suspended = report.suspended,
                    "worker stopped"
                ),
                Ok(Err(err)) => warn!("the worker failed: {err:#}"),
                Err(err) => warn!("the worker failed: {err}"),
            }
        }
        Ok(0)
    })
}

/// The token `--token-file` names, and the login code for the page: required off
/// loopback, where anyone who can reach the port could otherwise drive the agents.
fn authentication(args: &ServeArgs) -> Result<(auth::Auth, Option<String>)> {
    let Some(path) = &args.token_file else {
        if !args.listen.ip().is_loopback() {
            return Err(UserError::usage(format!(
                "serving on {} (not loopback) needs a token: --token-file FILE, a file holding a long random secret (e.g. `openssl rand -hex 32 > token`)",
                args.listen
            ))
            .into());
        }
        return Ok((auth::Auth::open(), None));
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        UserError::usage(format!(
            "cannot read the token file {}: {e}",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.len() < 16 || token.contains(char::is_whitespace) {
        return Err(UserError::usage(format!(
            "the token in {} must be one word of at least 16 characters",
            path.display()
        ))
        .into());
    }
    let (auth, code) = auth::Auth::with_token(token.to_owned())
        .map_err(|e| UserError::failed(format!("cannot make a login code: {e}")))?;
    Ok((auth, Some(code)))
}

/// An origin as browsers send it: `scheme://host[:port]`, nothing after; not `*`,
/// which would let every site's pages drive the agents.
fn check_origin(origin: &str) -> Result<()> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(['/', '?', '#', '*', ' ']) => Ok(()),
        _ => Err(UserError::usage(format!(
            "--allow-origin `{}` is not an origin: give scheme://host[:port], e.g. https://app.example.com",
            crate::text::one_line(origin, crate::text::FIELD_CAP)
        ))
        .into()),
    }
}

/// Accepts connections until the shutdown; returns those still being served.
async fn accept(
    listener: TcpListener,
    app: Arc<api::App>,
    shutdown: Arc<Shutdown>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut connections: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.wait() => return connections,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, mostly: the next accept may work.
                warn!("accepting a connection failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        connections.retain(|c| !c.is_finished());
        let (app, shutdown) = (app.clone(), shutdown.clone());
        connections.push(tokio::spawn(async move {
            let service = service_fn(move |request| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(logged(app, request).await) }
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = shutdown.wait() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = served
                && !err.is_incomplete_message()
            {
                tracing::debug!(%peer, "connection ended: {err}");
            }
        }));
    }
}

/// Answers a request and logs it: method, path, status, time. Never the query (the
/// login code is in it), a body or a header (the token is in one).
async fn logged(
    app: Arc<api::App>,
    request: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<http::Body> {
    let started = Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = api::handle(app, request).await;
    info!(
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "{method} {}",
        crate::text::one_line(&path, crate::text::FIELD_CAP)
    );
    response
}
