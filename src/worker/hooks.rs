//! Delivering completion hooks (`[hooks] on_finish`), as the session's owner, between
//! its messages: at the start of each drain (what a worker that died left) and after
//! each settled execution.
//!
//! The settling wrote the hooks into the state with the rest of the execution, so a
//! hook is delivered **at least once**: a worker killed before or during one leaves it
//! in the state, and the session is found again (its marker, or the full scan of
//! sessions whose state holds hooks) by the next worker, which delivers it. It may so
//! be delivered twice; the receiver tells the two apart by the execution's id
//! (`AGENTQ_EXECUTION_ID`, or the `Idempotency-Key` header).
//!
//! What a hook is given is the execution's `execution.finished` line, byte for byte as
//! the log holds it: on a command's standard input (with its `\n`), or as the body of
//! a POST. A command runs in the agent's command sandbox (the workspace, a scrubbed
//! environment, a process group of its own, a timeout); one that fails is not run
//! again. A URL is retried, with backoff (and `Retry-After`), after a 408, 425, 429,
//! 5xx or a connection failure, up to its `max_attempts`; another answer is final.
//!
//! Each hook ends with a session-level event, `hook.completed` or `hook.failed`
//! (`execution.finished` stays the execution's last event); it never changes the
//! execution's record or exit code. A shutdown leaves the hook it cuts short pending,
//! its attempt not counted. Events name a URL by its scheme and host only: a webhook's
//! secret is in its path or query, and `url_env`'s URL is never written anywhere.

use std::time::{Duration, Instant};

use anyhow::Result;
use tracing::{info, warn};

use super::Shutdown;
use super::execute::Owner;
use crate::definition::EnvMode;
use crate::definition::{Approval, CommandToolDef};
use crate::domain::event::{EventPayload, HookReport};
use crate::domain::hook::{HookSpec, HookTarget, PendingHook};
use crate::provider::retry::{RetryPolicy, jitter, retry_after};
use crate::store::FinishedLine;
use crate::tools::command::{self, EnvPolicy};
use crate::tools::files::Workspace;

/// The backoff of a URL hook's retries: 1 s, doubling, at most 30 s.
const BACKOFF: RetryPolicy = RetryPolicy {
    max_attempts: 0,
    base: Duration::from_secs(1),
    max_delay: Duration::from_secs(30),
};

/// How one attempt ended.
enum Attempt {
    /// Delivered: the command exited 0, the server answered 2xx.
    Delivered {
        exit_code: Option<i32>,
        http_status: Option<u16>,
    },
    /// Failed in a way another attempt could help with (URL hooks), after `retry_after`
    /// if the server said.
    Retry {
        http_status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
    /// Failed for good.
    Failed {
        exit_code: Option<i32>,
        http_status: Option<u16>,
        error: String,
    },
    /// A shutdown cut it short.
    CutShort,
}

/// When [`deliver`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum When {
    /// As the drain starts: the hooks are an earlier owner's, which may have died
    /// during one.
    DrainStart,
    /// Right after this owner settled an execution.
    Settled,
}

/// Delivers every hook the state holds whose execution has settled, in order, until
/// done or a shutdown.
pub(super) async fn deliver(owner: &mut Owner<'_>, when: When) -> Result<()> {
    let mut pending = owner.lease.hooks()?;
    if pending.is_empty() {
        return Ok(());
    }
    if when == When::DrainStart {
        // A command hook a killed worker left running goes first, as a command does.
        crate::tools::process::kill_leftovers(&owner.commands());
    }
    let mut i = 0;
    while i < pending.len() && !owner.shutdown.is_requested() {
        let report = match owner.lease.finished_line(pending[i].execution_id)? {
            FinishedLine::Written(line) => {
                let Some(report) = deliver_one(owner, &mut pending, i, &line).await? else {
                    // Cut short by a shutdown: it stays, for the next owner.
                    break;
                };
                report
            }
            FinishedLine::Unsettled => {
                // The execution is resumed and settled again, which replaces its hooks.
                i += 1;
                continue;
            }
            // Kept, it would bring a worker back to the session at every full scan
            // for a delivery that can never happen.
            FinishedLine::Missing => not_delivered(
                &pending[i],
                "its execution.finished line is missing from the session's log (a damaged log was set aside); not delivered",
            ),
        };
        let delivered = report.error.is_none();
        let payload = if delivered {
            info!(session = %owner.lease.session_id(), execution = %report.execution_id, hook = report.hook, target = %report.target, "hook delivered");
            EventPayload::HookCompleted(report)
        } else {
            warn!(session = %owner.lease.session_id(), execution = %report.execution_id, hook = report.hook, target = %report.target, "hook failed: {}", report.error.as_deref().unwrap_or(""));
            EventPayload::HookFailed(report)
        };
        // The event before the removal: a crash between the two delivers it again,
        // and the log then says it was delivered twice, which it was.
        owner.lease.append(None, payload)?;
        pending.remove(i);
        owner.lease.save_hooks(&pending)?;
    }
    Ok(())
}

/// The report of a hook given up on before an attempt.
fn not_delivered(hook: &PendingHook, error: &str) -> HookReport {
    HookReport {
        execution_id: hook.execution_id,
        hook: hook.index,
        kind: hook.spec.target.kind().to_owned(),
        target: describe(&hook.spec.target),
        attempts: hook.attempts,
        exit_code: None,
        http_status: None,
        duration_ms: 0,
        error: Some(error.to_owned()),
    }
}

/// Attempts hook `i` of `pending` until it is delivered or given up on (its report),
/// or a shutdown cuts it short (`None`). Each attempt is counted in the state before
/// it starts.
async fn deliver_one(
    owner: &mut Owner<'_>,
    pending: &mut [PendingHook],
    i: usize,
    line: &str,
) -> Result<Option<HookReport>> {
    let target = describe(&pending[i].spec.target);
    loop {
        let hook = &pending[i];
        let report = |attempts, duration_ms, exit_code, http_status, error| HookReport {
            execution_id: hook.execution_id,
            hook: hook.index,
            kind: hook.spec.target.kind().to_owned(),
            target: target.clone(),
            attempts,
            exit_code,
            http_status,
            duration_ms,
            error,
        };
        if hook.attempts >= hook.spec.max_attempts {
            // Its last attempt was cut short by a crash.
            let error = format!(
                "gave up after {} attempts, the last one interrupted by a crash",
                hook.attempts
            );
            return Ok(Some(report(hook.attempts, 0, None, None, Some(error))));
        }
        pending[i].attempts += 1;
        owner.lease.save_hooks(pending)?;
        let hook = &pending[i];
        let started = Instant::now();
        let attempt = match &hook.spec.target {
            HookTarget::Command { argv } => run_command(owner, hook, argv, line).await,
            HookTarget::Url { url } => post(owner.shutdown, hook, url, line).await,
            HookTarget::UrlEnv { name } => match std::env::var(name) {
                Ok(url) if !url.trim().is_empty() => {
                    post(owner.shutdown, hook, url.trim(), line).await
                }
                _ => Attempt::Failed {
                    exit_code: None,
                    http_status: None,
                    error: format!(
                        "the environment variable {name} (url_env) is not set in the worker's environment"
                    ),
                },
            },
        };
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let hook = &pending[i];
        let report = |exit_code, http_status, error| HookReport {
            execution_id: hook.execution_id,
            hook: hook.index,
            kind: hook.spec.target.kind().to_owned(),
            target: target.clone(),
            attempts: hook.attempts,
            exit_code,
            http_status,
            duration_ms,
            error,
        };
        match attempt {
            Attempt::Delivered {
                exit_code,
                http_status,
            } => return Ok(Some(report(exit_code, http_status, None))),
            Attempt::Failed {
                exit_code,
                http_status,
                error,
            } => return Ok(Some(report(exit_code, http_status, Some(error)))),
            Attempt::CutShort => {
                // A shutdown is not the hook's failure: the attempt is not counted.
                pending[i].attempts -= 1;
                owner.lease.save_hooks(pending)?;
                return Ok(None);
            }
            Attempt::Retry {
                http_status,
                error,
                retry_after,
            } => {
                if hook.attempts >= hook.spec.max_attempts {
                    let error = format!(
                        "{error} (attempt {} of {})",
                        hook.attempts, hook.spec.max_attempts
                    );
                    return Ok(Some(report(None, http_status, Some(error))));
                }
                let Some(delay) = BACKOFF.delay(hook.attempts + 1, retry_after, jitter()) else {
                    let error = format!(
                        "{error} (the server asks to wait {}s, longer than agentq waits)",
                        retry_after.map_or(0, |d| d.as_secs())
                    );
                    return Ok(Some(report(None, http_status, Some(error))));
                };
                info!(session = %owner.lease.session_id(), execution = %hook.execution_id, hook = hook.index, attempt = hook.attempts, delay_ms = delay.as_millis() as u64, "hook attempt failed, retrying: {error}");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    // The attempt made counts; the next is the next owner's.
                    () = owner.shutdown.wait() => return Ok(None),
                }
                owner.lease.renew()?;
            }
        }
    }
}

/// How events name a hook's target: the program's name, or the URL's scheme and host
/// (never its path or query). A `url_env` URL is read for this, never kept.
fn describe(target: &HookTarget) -> String {
    match target {
        HookTarget::Command { argv } => argv.first().map_or_else(String::new, |program| {
            std::path::Path::new(program)
                .file_name()
                .map_or_else(|| program.clone(), |n| n.to_string_lossy().into_owned())
        }),
        HookTarget::Url { url } => origin(url),
        HookTarget::UrlEnv { name } => std::env::var(name)
            .map(|url| origin(url.trim()))
            .unwrap_or_else(|_| format!("${name}")),
    }
}

/// `https://host[:port]` of a URL; `(not a URL)` otherwise.
fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(url) => url.origin().ascii_serialization(),
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// Runs a command hook as the agent's declared commands run, with the line on its
/// standard input.
async fn run_command(
    owner: &mut Owner<'_>,
    hook: &PendingHook,
    argv: &[String],
    line: &str,
) -> Attempt {
    let failed = |error: String| Attempt::Failed {
        exit_code: None,
        http_status: None,
        error,
    };
    let spec: &HookSpec = &hook.spec;
    let workspace = match owner.workspace(&spec.sandbox.workspace) {
        Ok(path) => Workspace::new(path),
        Err(err) => return failed(err.message),
    };
    let def = CommandToolDef {
        name: format!("hook {}", hook.index),
        description: String::new(),
        argv: argv.to_vec(),
        parameters: None,
        timeout: Some(Duration::from_millis(spec.timeout_ms)),
        cwd: spec.cwd.clone(),
        read_only: false,
        // A hook is the definition's, outside the model's control: nothing to approve.
        approval: Approval::Never,
    };
    let env = EnvPolicy {
        mode: if spec.sandbox.clean_env {
            EnvMode::Clean
        } else {
            EnvMode::Scrubbed
        },
        pass: spec.sandbox.env_pass.clone(),
        withheld: spec.sandbox.withheld.clone(),
    };
    let set = [
        ("AGENTQ_EXECUTION_ID", hook.execution_id.to_string()),
        ("AGENTQ_HOOK_ATTEMPT", hook.attempts.to_string()),
    ];
    let input = format!("{line}\n");
    let commands = owner.commands();
    let shutdown = owner.shutdown;
    let mut stop = || shutdown.is_requested();
    let ran = command::execute_with(
        &def,
        &workspace,
        input.as_bytes(),
        (&env, &set),
        Some(&commands),
        &mut stop,
    )
    .await;
    match ran {
        Err(error) => failed(error),
        Ok(_) if shutdown.is_requested() => Attempt::CutShort,
        Ok(run) if run.success() => Attempt::Delivered {
            exit_code: run.exit_code(),
            http_status: None,
        },
        Ok(run) => Attempt::Failed {
            exit_code: run.exit_code(),
            http_status: None,
            error: run.status_line(),
        },
    }
}

/// POSTs the line to `url`, keyed by the execution's id, within the hook's timeout.
async fn post(shutdown: &Shutdown, hook: &PendingHook, url: &str, line: &str) -> Attempt {
    let failed = |error: String| Attempt::Failed {
        exit_code: None,
        http_status: None,
        error,
    };
    let client = match crate::provider::http::client() {
        Ok(client) => client,
        Err(err) => return failed(err.message),
    };
    let parsed = match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => parsed,
        // The URL is not quoted: it may be a secret.
        _ => return failed("its URL is not an http:// or https:// URL".to_owned()),
    };
    let request = client
        .post(parsed)
        .header("content-type", "application/json")
        .header("idempotency-key", hook.execution_id.to_string())
        .timeout(Duration::from_millis(hook.spec.timeout_ms))
        .body(line.to_owned());
    let sent = tokio::select! {
        sent = request.send() => sent,
        () = shutdown.wait() => return Attempt::CutShort,
    };
    match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            if response.status().is_success() {
                return Attempt::Delivered {
                    exit_code: None,
                    http_status: Some(status),
                };
            }
            let retry_after = retry_after(&response);
            let error = format!("HTTP {status}");
            if matches!(status, 408 | 425 | 429 | 500..=599) {
                Attempt::Retry {
                    http_status: Some(status),
                    error,
                    retry_after,
                }
            } else {
                Attempt::Failed {
                    exit_code: None,
                    http_status: Some(status),
                    error,
                }
            }
        }
        Err(err) => {
            // Without the URL, which reqwest's errors quote.
            let err = err.without_url();
            let mut error = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                error.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            if err.is_builder() {
                failed(error)
            } else {
                Attempt::Retry {
                    http_status: None,
                    error,
                    retry_after: None,
                }
            }
        }
    }
}
