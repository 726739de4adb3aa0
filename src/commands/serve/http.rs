//! The HTTP side of `serve`, free of agentq: bodies, JSON answers, the error shape
//! (`{"error": {"code", "message"}}`), and reading a request body under a cap.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

/// A response body: one piece, or a stream (the events).
pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// An answer with `content_type`.
pub fn answer(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `value` as JSON.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(mut body) => {
            body.push(b'\n');
            answer(status, "application/json", body)
        }
        Err(err) => Refusal::internal(format!("cannot write the answer: {err}")).response(),
    }
}

/// JSON a command already printed (with `--json`).
pub fn printed_json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    answer(status, "application/json", body)
}

/// What went wrong with a request, as the API tells it.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    /// A short stable name a client can branch on: `not_found`, `invalid_request`…
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn internal(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn response(&self) -> Response<Body> {
        let body = serde_json::json!({
            "error": { "code": self.code, "message": self.message }
        });
        let mut response = json(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The body of a state-changing request: JSON, declared as such, at most `cap` bytes.
/// Requiring the content type is what keeps a plain HTML form on another site from
/// posting here (a form cannot send `application/json` without a CORS preflight).
pub async fn json_body<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
    cap: usize,
) -> Result<T, Refusal> {
    let body = body_bytes(request, cap).await?;
    serde_json::from_slice(&body)
        .map_err(|e| Refusal::bad_request(format!("the body is not valid: {e}")))
}

/// [`json_body`] for a route whose fields are all optional: an empty body (still
/// declared as JSON, for the same reason) is the default.
pub async fn json_body_or_default<T: serde::de::DeserializeOwned + Default>(
    request: Request<Incoming>,
    cap: usize,
) -> Result<T, Refusal> {
    let body = body_bytes(request, cap).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&body)
        .map_err(|e| Refusal::bad_request(format!("the body is not valid: {e}")))
}

/// The bytes of a body declared as JSON, at most `cap` of them.
async fn body_bytes(request: Request<Incoming>, cap: usize) -> Result<Bytes, Refusal> {
    let declared = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().eq_ignore_ascii_case("application/json"))
        .unwrap_or(false);
    if !declared {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON, sent with Content-Type: application/json",
        ));
    }
    let body = match Limited::new(request.into_body(), cap).collect().await {
        Ok(body) => body.to_bytes(),
        Err(err)
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is larger than {cap} bytes"),
            ));
        }
        Err(err) => return Err(Refusal::bad_request(format!("cannot read the body: {err}"))),
    };
    Ok(body)
}

/// `Cache-Control: no-store` on an answer that must not be kept (the API's).
pub fn no_store(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    response
}

/// The value of the query parameter `name`, if given.
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_found_by_name() {
        assert_eq!(query_param(Some("after=4&limit=2"), "limit"), Some("2"));
        assert_eq!(query_param(Some("after=4"), "after"), Some("4"));
        assert_eq!(query_param(Some("flag"), "flag"), Some(""));
        assert_eq!(query_param(Some("after=4"), "limit"), None);
        assert_eq!(query_param(None, "after"), None);
    }
}
