//! HTTP for the streaming providers: one client, requests retried only before the
//! response starts streaming, chunks read with an idle timeout, and every wait giving
//! way promptly when the observer asks to stop.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::endpoint::Endpoint;
use super::retry::{Attempts, CHECK_EVERY, retry_after};
use super::sse::{Decoder, SseParser};
use super::{ProviderError, StreamObserver};
use crate::error::UserError;

/// A client for model APIs: TLS through rustls with the system's roots, a connect
/// timeout, and no overall timeout (a stream may last minutes; idleness is watched
/// per chunk instead). One per process, shared by every execution: reading the
/// system's roots costs milliseconds before the first request, and a worker keeps its
/// connections to a server alive from one message to the next.
pub fn client() -> Result<reqwest::Client, UserError> {
    static CLIENT: std::sync::OnceLock<Result<reqwest::Client, String>> =
        std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            // Fails only if a provider is already installed, which is just as good.
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .user_agent(concat!("agentq/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(15))
                .build()
                .map_err(|e| format!("cannot set up the HTTP client: {e}"))
        })
        .clone()
        .map_err(UserError::usage)
}

/// How a wait ended, when the observer did not stop it.
enum Waited<T> {
    Done(T),
    TimedOut,
}

/// Waits for `future`, checking the observer (and an optional deadline) as it goes.
async fn interruptible<T>(
    future: impl Future<Output = T>,
    observer: &mut dyn StreamObserver,
    deadline: Option<Instant>,
) -> Result<Waited<T>, ProviderError> {
    tokio::pin!(future);
    loop {
        tokio::select! {
            value = &mut future => return Ok(Waited::Done(value)),
            () = tokio::time::sleep(CHECK_EVERY) => {
                if observer.interrupted() {
                    return Err(ProviderError::Interrupted);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(Waited::TimedOut);
                }
            }
        }
    }
}

/// Waits for `future` with no deadline, unless the observer stops it.
async fn until_done<T>(
    future: impl Future<Output = T>,
    observer: &mut dyn StreamObserver,
) -> Result<T, ProviderError> {
    match interruptible(future, observer, None).await? {
        Waited::Done(value) => Ok(value),
        Waited::TimedOut => Err(ProviderError::transient("timed out")),
    }
}

/// POSTs a JSON body and returns the response once it is a success, retrying
/// connection failures and transient statuses (408, 409, 429, 5xx) with backoff,
/// honouring `Retry-After`, and reporting each retry to the observer.
pub async fn post_stream(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    url: &str,
    headers: &[(String, String)],
    body: &serde_json::Value,
    observer: &mut dyn StreamObserver,
) -> Result<reqwest::Response, ProviderError> {
    let body = serde_json::to_vec(body).map_err(|e| ProviderError::fatal(e.to_string()))?;
    let mut attempts = Attempts::new(endpoint.retry);
    loop {
        let mut request = client
            .post(url)
            .header("content-type", "application/json")
            .header("accept", "text/event-stream")
            .body(body.clone());
        for (name, value) in endpoint.headers.iter().chain(headers) {
            request = request.header(name.as_str(), value.as_str());
        }
        // A server that accepts the connection but never answers counts as a failure
        // before the first byte: it is retried like a refused connection.
        let deadline = Instant::now() + endpoint.idle_timeout;
        let sent = match interruptible(request.send(), observer, Some(deadline)).await? {
            Waited::Done(sent) => Some(sent),
            Waited::TimedOut => None,
        };
        let (error, retry_after) = match sent {
            None => (
                ProviderError::transient(format!(
                    "no response from {url} within {}",
                    crate::time::human_duration(
                        u64::try_from(endpoint.idle_timeout.as_millis()).unwrap_or(u64::MAX)
                    )
                )),
                None,
            ),
            Some(Ok(response)) if response.status().is_success() => return Ok(response),
            Some(Ok(response)) => {
                let status = response.status().as_u16();
                let retry_after = retry_after(&response);
                let text = until_done(response.text(), observer)
                    .await?
                    .unwrap_or_default();
                let message = format!("HTTP {status} from {url}: {}", error_message(&text));
                let message = endpoint.redact(&message);
                let error = if is_request_validation(&text) {
                    // Some servers answer a request their own validation refused with a
                    // 500: sending it again cannot help.
                    ProviderError::Fatal {
                        status: Some(status),
                        message,
                    }
                } else {
                    ProviderError::from_status(status, message)
                };
                (error, retry_after)
            }
            Some(Err(err)) => (request_error(&err, url, endpoint), None),
        };
        attempts.after(error, retry_after, observer).await?;
    }
}

fn request_error(err: &reqwest::Error, url: &str, endpoint: &Endpoint) -> ProviderError {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    let message = endpoint.redact(&format!("cannot reach {url}: {text}"));
    if err.is_builder() {
        ProviderError::fatal(message)
    } else {
        // Connection refused, reset, DNS, TLS handshake, timeouts: the server may be
        // back in a moment.
        ProviderError::transient(message)
    }
}

/// Whether an error body is the server's validation of the request (pydantic's
/// "N validation errors", as llama-cpp-python and vLLM word it).
fn is_request_validation(body: &str) -> bool {
    let lower = body.to_ascii_lowercase();
    lower.contains("validation error") || lower.contains("validation_error")
}

/// The `error.message` of a JSON error body (OpenAI and Anthropic both use it), else
/// the body itself, shortened.
pub fn error_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .and_then(|m| m.as_str())
    });
    let text = message.unwrap_or(body).trim();
    let text = if text.is_empty() {
        "no details given"
    } else {
        text
    };
    crate::text::preview(text, 300)
}

/// Reads a response's server-sent events into `decoder` until its terminal event (or
/// the end of the body), passing text deltas to the observer as they arrive. A body
/// with no events at all (empty, or JSON where a stream was asked for) fails with what
/// came back instead. Errors have the endpoint's key cut out of them.
pub async fn read_sse(
    response: &mut reqwest::Response,
    endpoint: &Endpoint,
    observer: &mut dyn StreamObserver,
    decoder: &mut impl Decoder,
) -> Result<(), ProviderError> {
    let mut parser = SseParser::new();
    let mut events_seen = false;
    // The start of the body, kept until the first event to say what came instead.
    let mut head = Vec::new();
    while !decoder.is_done() {
        let chunk = next_chunk(response, endpoint.idle_timeout, observer).await?;
        let events = match &chunk {
            Some(bytes) => {
                if !events_seen && head.len() < NOT_A_STREAM_SHOWN {
                    head.extend_from_slice(bytes);
                }
                parser.push(bytes)
            }
            None => parser.finish().into_iter().collect(),
        };
        for event in events {
            events_seen = true;
            let delta = decoder
                .decode(&event.data)
                .map_err(|e| e.redacted(endpoint))?;
            if !delta.is_empty() {
                observer
                    .text(&delta)
                    .map_err(|_| ProviderError::Interrupted)?;
            }
            if decoder.is_done() {
                return Ok(());
            }
        }
        if chunk.is_none() {
            break;
        }
    }
    if !events_seen {
        return Err(not_a_stream(response, &head).redacted(endpoint));
    }
    Ok(())
}

/// How much of a body that is not an event stream is kept to describe it.
const NOT_A_STREAM_SHOWN: usize = 4096;

/// The error for a successful response that carried no events: empty (what some
/// servers send for a request they cannot stream, or one with a field missing), a JSON
/// document, or something else. Retrying would get the same answer.
fn not_a_stream(response: &reqwest::Response, head: &[u8]) -> ProviderError {
    let status = response.status().as_u16();
    let url = response.url();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("no content type");
    let text = String::from_utf8_lossy(head);
    let what = if text.trim().is_empty() {
        "an empty body".to_owned()
    } else if serde_json::from_str::<serde_json::Value>(text.trim()).is_ok()
        || content_type.contains("json")
    {
        format!("a JSON body ({})", error_message(&text))
    } else {
        format!(
            "a body that is not an event stream ({})",
            error_message(&text)
        )
    };
    ProviderError::Fatal {
        status: Some(status),
        message: format!(
            "HTTP {status} from {url} with {what} ({content_type}) where a text/event-stream was asked for"
        ),
    }
}

/// The next piece of the response body; `None` at its end. Fails when nothing arrives
/// for `idle`.
pub async fn next_chunk(
    response: &mut reqwest::Response,
    idle: Duration,
    observer: &mut dyn StreamObserver,
) -> Result<Option<Bytes>, ProviderError> {
    let deadline = Instant::now() + idle;
    match interruptible(response.chunk(), observer, Some(deadline)).await? {
        Waited::Done(Ok(chunk)) => Ok(chunk),
        Waited::Done(Err(err)) => Err(ProviderError::transient(format!(
            "the stream broke off: {err}"
        ))),
        Waited::TimedOut => Err(ProviderError::transient(format!(
            "the stream stalled: nothing arrived for {}",
            crate::time::human_duration(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX))
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_come_from_the_json_body() {
        assert_eq!(
            error_message(r#"{"error":{"message":"bad model","type":"x"}}"#),
            "bad model"
        );
        assert_eq!(
            error_message(
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            "Overloaded"
        );
        assert_eq!(error_message("Bad Gateway"), "Bad Gateway");
        assert_eq!(error_message(""), "no details given");
    }
}
