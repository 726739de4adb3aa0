//! Who may use the API. On loopback (the default) anyone on the machine may, as anyone
//! there may run `agentq`; bound elsewhere, a bearer token is required (`--token-file`):
//! in `Authorization: Bearer …` from scripts, or in a cookie for the page, set by a
//! login URL printed once at start whose code works once.

use std::sync::Mutex;

use hyper::StatusCode;
use hyper::header::{AUTHORIZATION, COOKIE, HeaderMap};

use super::http::Refusal;

/// The cookie the login URL sets.
pub const COOKIE_NAME: &str = "agentq_token";

pub struct Auth {
    token: Option<String>,
    /// The login URL's code, until it is used.
    login: Mutex<Option<String>>,
}

impl Auth {
    /// No token: every request is let in (loopback only, see `serve`).
    pub fn open() -> Auth {
        Auth {
            token: None,
            login: Mutex::new(None),
        }
    }

    /// Requests must carry `token`; returns the one-time login code for the page.
    pub fn with_token(token: String) -> std::io::Result<(Auth, String)> {
        let code = random_hex(16)?;
        let auth = Auth {
            token: Some(token),
            login: Mutex::new(Some(code.clone())),
        };
        Ok((auth, code))
    }

    /// Lets a request in if no token is required, or it carries the token.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let bearer = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let cookie = headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == COOKIE_NAME)
            .map(|(_, value)| value);
        if [bearer, cookie]
            .into_iter()
            .flatten()
            .any(|given| same(given, token))
        {
            return Ok(());
        }
        Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server needs its token: Authorization: Bearer <the --token-file's token>, or open the login URL it printed at start",
        ))
    }

    /// The cookie's value for a login with `code`, once: the code is spent.
    pub fn login(&self, code: &str) -> Option<String> {
        let mut login = self.login.lock().unwrap_or_else(|e| e.into_inner());
        match (&*login, &self.token) {
            (Some(expected), Some(token)) if same(code, expected) => {
                *login = None;
                Some(token.clone())
            }
            _ => None,
        }
    }
}

/// Compares in time that does not depend on where the texts differ, so the token
/// cannot be guessed a byte at a time from how long refusals take.
fn same(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// `bytes` random bytes from the kernel, as hex.
fn random_hex(bytes: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(name: hyper::header::HeaderName, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn a_token_is_taken_from_the_bearer_header_or_the_cookie_and_nothing_else() {
        let (auth, _) = Auth::with_token("s3cret".to_owned()).unwrap();
        assert!(auth.check(&headers(AUTHORIZATION, "Bearer s3cret")).is_ok());
        assert!(
            auth.check(&headers(COOKIE, "a=b; agentq_token=s3cret"))
                .is_ok()
        );
        assert!(auth.check(&headers(AUTHORIZATION, "Bearer s3cre")).is_err());
        assert!(auth.check(&headers(COOKIE, "other=s3cret")).is_err());
        assert!(auth.check(&HeaderMap::new()).is_err());
        assert!(Auth::open().check(&HeaderMap::new()).is_ok());
    }

    #[test]
    fn the_login_code_works_once() {
        let (auth, code) = Auth::with_token("s3cret".to_owned()).unwrap();
        assert_eq!(auth.login("wrong"), None);
        assert_eq!(auth.login(&code).as_deref(), Some("s3cret"));
        assert_eq!(auth.login(&code), None);
    }
}
