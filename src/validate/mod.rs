//! What checking `agentq.toml` and checking an agent definition have in common: the
//! schema both files are walked against ([`schema`]), the checks of names, URLs,
//! relative paths and environment variables, the words for a TOML syntax error and for
//! a file with problems, and the facts about the built-in providers that the checks
//! need.
//!
//! It sits below both [`crate::config`] and [`crate::definition`] (a definition is
//! checked against the home's config, so `definition` uses `config`, never the other
//! way), and knows neither: the checks take strings and say what is wrong with them.

pub mod schema;

use std::path::Path;

use crate::error::UserError;
pub use schema::Problem;

/// Providers this version knows.
pub const PROVIDERS: &[&str] = &["openai", "anthropic", "scripted"];

/// Where the built-in providers read their key when `api_key_env` is not set: withheld
/// like a named `api_key_env`, even from `env_pass`.
pub const DEFAULT_KEY_ENV: &[&str] = &["OPENAI_API_KEY", "ANTHROPIC_API_KEY"];

/// True for a name that is safe as a file stem and in a tool's name: letters, digits,
/// `-` and `_`, at most 64, not starting with `-`. Agents, providers, servers and
/// command tools are all named this way.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['-', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A `base_url` that a request can go to: http or https, with a host. Checked where a
/// definition or `agentq.toml` is read and again where the endpoint is resolved (the
/// environment may supply one), so validate and the run agree.
pub fn check_base_url(url: &str) -> Result<(), String> {
    let shown = url.escape_default();
    let parsed = reqwest::Url::parse(url.trim())
        .map_err(|e| format!("`{shown}` is not a URL ({e}); write it like https://host/v1"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "`{shown}` must start with http:// or https://, like https://host/v1"
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "`{shown}` names no host; write it like https://host/v1"
        ));
    }
    Ok(())
}

/// The name of an environment variable (`api_key_env`): the key itself, pasted by
/// mistake, would otherwise be looked up as a name and reported missing at every run.
pub fn check_env_name(name: &str) -> Result<(), String> {
    let ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not an environment variable name: use letters, digits and `_`, such as OPENAI_API_KEY (the name of the variable, never the key)",
            // Never echo what may be a pasted key.
            if name.len() > 12 { "…" } else { name }.escape_default()
        ))
    }
}

/// `[tools] env_pass` entries (and a server's `env_vars`): variable names, and not one
/// the agent's key is read from (`key_env`), which is never passed.
pub fn check_env_pass(name: &str, key_env: &[&str]) -> Result<(), String> {
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "`{}` is not an environment variable name: use letters, digits and `_`, not starting with a digit",
            name.escape_default()
        ));
    }
    if key_env.contains(&name) || DEFAULT_KEY_ENV.contains(&name) {
        return Err(format!(
            "`{name}` is where an API key of the agent is read from, which is never passed to commands"
        ));
    }
    Ok(())
}

/// A path relative to its base that cannot climb out of it.
pub fn check_relative(path: &str) -> Result<(), String> {
    let inside = !path.is_empty()
        && !path.contains('\0')
        && Path::new(path).components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
    if inside {
        Ok(())
    } else {
        Err(format!(
            "`{}` must be a relative path without `..`",
            path.escape_default()
        ))
    }
}

/// A TOML error on one line: where it is, the line itself (which names the key), and
/// what is wrong.
pub fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
    let position = err.span().map(|span| {
        let start = span.start.min(text.len());
        let before = &text[..start];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        let source: String = text[start..]
            .lines()
            .next()
            .map(|rest| format!("{}{rest}", before.rsplit('\n').next().unwrap_or("")))
            .unwrap_or_default()
            .trim()
            .chars()
            .take(80)
            .collect();
        if source.is_empty() {
            format!("line {line}, column {column}: ")
        } else {
            format!(
                "line {line}, column {column} (`{}`): ",
                crate::text::sanitize(&source)
            )
        }
    });
    format!(
        "{}{}",
        position.unwrap_or_default(),
        err.message().trim().replace('\n', " ")
    )
}

/// The one-line refusal of a file with problems (a definition, `agentq.toml`): the
/// file, then every problem, so one run of `agents validate` shows them all.
pub fn invalid_file(path: &Path, problems: &[impl std::fmt::Display]) -> UserError {
    let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
    UserError::usage(format!(
        "{} is invalid: {}",
        path.display(),
        listed.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_http_or_https_with_a_host() {
        for good in [
            "https://api.openai.com/v1",
            "http://127.0.0.1:8080/v1",
            " http://localhost:11434/v1/ ",
        ] {
            assert!(check_base_url(good).is_ok(), "{good}");
        }
        for bad in [
            "not a url",
            "file:///etc/passwd",
            "ftp://host/v1",
            "http://",
            "http://:8080",
            "unix:/run/x.sock",
            "",
        ] {
            assert!(check_base_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn api_key_env_is_a_variable_name_and_a_pasted_key_is_not_echoed() {
        for good in ["OPENAI_API_KEY", "_KEY", "k1"] {
            assert!(check_env_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1KEY", "MY KEY", "A-B", "KEY\n"] {
            assert!(check_env_name(bad).is_err(), "{bad:?}");
        }
        let err = check_env_name("sk-proj-abcdefghijklmnop").unwrap_err();
        assert!(!err.contains("abcdef"), "{err}");
    }
}
