//! The chat page: three static files built into the binary (no build step, nothing
//! fetched from elsewhere), and the login URL that sets the page's token cookie.

use hyper::header::{HeaderValue, LOCATION, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};

use super::auth::{Auth, COOKIE_NAME};
use super::http::{Body, answer, query_param};

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");

/// What the page may load and run: only its own files and the API, never an inline
/// script or a handler in model text, even if one slipped into the document.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// Answers a request outside `/api/`.
pub fn serve<B>(auth: &Auth, request: &Request<B>) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET here\n",
        );
    }
    let mut response = match request.uri().path() {
        "/" | "/index.html" => answer(StatusCode::OK, "text/html; charset=utf-8", INDEX),
        "/app.js" => answer(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT),
        "/style.css" => answer(StatusCode::OK, "text/css; charset=utf-8", STYLE),
        "/login" => return login(auth, request.uri().query()),
        _ => {
            return answer(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found\n",
            );
        }
    };
    let headers = response.headers_mut();
    headers.insert("content-security-policy", HeaderValue::from_static(POLICY));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}

/// `/login?code=…`: with the code printed at start, sets the token cookie and sends
/// the browser to the page; the code works once.
fn login(auth: &Auth, query: Option<&str>) -> Response<Body> {
    let token = query_param(query, "code").and_then(|code| auth.login(code));
    let Some(token) = token else {
        return answer(
            StatusCode::FORBIDDEN,
            "text/plain; charset=utf-8",
            "this login link is not valid or was used already; restart `agentq serve` for a new one, or send the token as Authorization: Bearer\n",
        );
    };
    let mut response = answer(
        StatusCode::SEE_OTHER,
        "text/plain; charset=utf-8",
        "signed in\n",
    );
    let cookie = format!("{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict");
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
        .headers_mut()
        .insert(LOCATION, HeaderValue::from_static("/"));
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    response
}
