//! Where a model call goes and with which credentials: the agent's `[model]`, a named
//! provider from `agentq.toml`, environment variables and built-in defaults, resolved
//! once per execution, before any request.
//!
//! Precedence for the base URL: `[model] base_url`, then the named provider's, then
//! `OPENAI_BASE_URL` / `ANTHROPIC_BASE_URL`, then the public API. The key comes from the
//! variable named by `api_key_env` (default `OPENAI_API_KEY` / `ANTHROPIC_API_KEY`); it
//! is required for the public APIs and whenever `api_key_env` is set, and optional for
//! other servers (a local llama.cpp or Ollama needs none).

use std::fmt;
use std::time::Duration;

use crate::config::{HomeConfig, NamedProvider, ProviderKind, ResponseFormat};
use crate::definition::AgentDef;
use crate::error::UserError;
use crate::provider::retry::RetryPolicy;
use crate::time::parse_duration;

pub const OPENAI_DEFAULT_URL: &str = "https://api.openai.com/v1";
pub const ANTHROPIC_DEFAULT_URL: &str = "https://api.anthropic.com";

/// How long a stream may stay silent before the step fails.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OpenAi,
    Anthropic,
}

/// An API key. It is never displayed, logged or written: `Debug` shows `***`, and
/// [`Secret::redact`] removes it from any text that came back from a server.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn redact(&self, text: &str) -> String {
        if self.0.len() < 4 {
            text.to_owned()
        } else {
            text.replace(&self.0, "***")
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub kind: Kind,
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub headers: Vec<(String, String)>,
    pub model: String,
    pub temperature: Option<f64>,
    pub max_output_tokens: Option<u64>,
    pub retry: RetryPolicy,
    pub idle_timeout: Duration,
    /// How an OpenAI-compatible server takes the answer's JSON Schema.
    pub response_format: ResponseFormat,
}

impl Endpoint {
    /// An endpoint of `kind` on a closed loopback port, for tests of request shapes.
    #[cfg(test)]
    pub fn for_tests(kind: Kind) -> Endpoint {
        Endpoint {
            kind,
            base_url: "http://127.0.0.1:9".into(),
            api_key: None,
            headers: Vec::new(),
            model: "m".into(),
            temperature: None,
            max_output_tokens: None,
            retry: RetryPolicy::default(),
            idle_timeout: Duration::from_secs(1),
            response_format: ResponseFormat::default(),
        }
    }

    /// Removes the key from a text that may quote it back.
    pub fn redact(&self, text: &str) -> String {
        match &self.api_key {
            Some(key) => key.redact(text),
            None => text.to_owned(),
        }
    }
}

/// The endpoint agent `def` calls, with `env` reading the environment. Fails, naming
/// the agent, when the provider is unknown, the base URL unusable, a key it needs is
/// not set, or the model has no name.
pub fn resolve(
    def: &AgentDef,
    home: &HomeConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Endpoint, UserError> {
    let model = &def.model;
    let named = home.providers.get(&model.provider);
    let kind = Kind::of(def, named)?;
    let base_url = base_url(def, named, kind, env)?;
    let api_key = api_key(def, named, kind, &base_url, env)?;
    let name = model.name.clone().ok_or_else(|| {
        UserError::usage(format!(
            "agent `{}` has no [model] name, which provider `{}` needs",
            def.name, model.provider
        ))
    })?;
    let retry = RetryPolicy::with_max_attempts(
        model
            .max_attempts
            .or_else(|| named.and_then(|n| n.max_attempts)),
    );
    let idle_timeout = match model.idle_timeout.or_else(|| {
        named
            .and_then(|n| n.idle_timeout.as_deref())
            .and_then(|t| parse_duration(t).ok())
    }) {
        Some(idle) => idle,
        None => DEFAULT_IDLE_TIMEOUT,
    };
    Ok(Endpoint {
        kind,
        base_url,
        api_key,
        headers: named
            .map(|n| {
                n.headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        model: name,
        temperature: model.temperature,
        max_output_tokens: model.max_output_tokens,
        retry,
        idle_timeout,
        response_format: model
            .response_format
            .or_else(|| named.and_then(|n| n.response_format))
            .unwrap_or_default(),
    })
}

impl Kind {
    /// The protocol of the agent's provider: a named provider's `kind`, or a built-in.
    fn of(def: &AgentDef, named: Option<&NamedProvider>) -> Result<Kind, UserError> {
        match (named.map(|n| n.kind), def.model.provider.as_str()) {
            (Some(ProviderKind::Openai), _) | (None, "openai") => Ok(Kind::OpenAi),
            (Some(ProviderKind::Anthropic), _) | (None, "anthropic") => Ok(Kind::Anthropic),
            (None, other) => Err(UserError::usage(format!(
                "agent `{}` uses provider `{other}`, which is neither built in nor defined in agentq.toml ([providers.{other}])",
                def.name
            ))),
        }
    }

    /// The variable that may hold the base URL.
    fn url_env(self) -> &'static str {
        match self {
            Kind::OpenAi => "OPENAI_BASE_URL",
            Kind::Anthropic => "ANTHROPIC_BASE_URL",
        }
    }

    /// The variable the key is read from when `api_key_env` is not set.
    fn key_env(self) -> &'static str {
        match self {
            Kind::OpenAi => "OPENAI_API_KEY",
            Kind::Anthropic => "ANTHROPIC_API_KEY",
        }
    }

    /// The public API.
    fn default_url(self) -> &'static str {
        match self {
            Kind::OpenAi => OPENAI_DEFAULT_URL,
            Kind::Anthropic => ANTHROPIC_DEFAULT_URL,
        }
    }
}

/// The base URL by the precedence of the module doc, without a trailing `/`.
fn base_url(
    def: &AgentDef,
    named: Option<&NamedProvider>,
    kind: Kind,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, UserError> {
    let base_url = def
        .model
        .base_url
        .clone()
        .or_else(|| named.and_then(|n| n.base_url.clone()))
        .or_else(|| env(kind.url_env()).filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| kind.default_url().to_owned());
    let base_url = base_url.trim().trim_end_matches('/').to_owned();
    // The same check as `agents validate`; repeated for a URL from the environment.
    if let Err(message) = crate::validate::check_base_url(&base_url) {
        return Err(UserError::usage(format!(
            "agent `{}`: base_url {message}",
            def.name
        )));
    }
    Ok(base_url)
}

/// The key from the variable `api_key_env` names (or the kind's default variable).
/// Required when `api_key_env` is set and for the public API.
fn api_key(
    def: &AgentDef,
    named: Option<&NamedProvider>,
    kind: Kind,
    base_url: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, UserError> {
    let explicit_key_env = def
        .model
        .api_key_env
        .clone()
        .or_else(|| named.and_then(|n| n.api_key_env.clone()));
    let key_env = explicit_key_env
        .clone()
        .unwrap_or_else(|| kind.key_env().to_owned());
    let api_key = env(&key_env)
        .filter(|k| !k.trim().is_empty())
        .map(|k| Secret(k.trim().to_owned()));
    let needs_key = explicit_key_env.is_some() || base_url == kind.default_url();
    if needs_key && api_key.is_none() {
        return Err(UserError::usage(format!(
            "agent `{}` needs an API key for {base_url}: set the environment variable {key_env}",
            def.name
        )));
    }
    Ok(api_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::Source;
    use std::collections::BTreeMap;

    fn agent(model: &str) -> AgentDef {
        Source {
            path: "agents/a.toml".into(),
            text: format!("name = \"a\"\n[model]\n{model}\n"),
        }
        .load(&BTreeMap::new(), &HomeConfig::default())
        .unwrap()
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_public_api_needs_a_key_and_says_which_variable() {
        let def = agent("provider = \"openai\"\nname = \"gpt-4o-mini\"");
        let err = resolve(&def, &HomeConfig::default(), &env(&[])).unwrap_err();
        assert!(err.message.contains("OPENAI_API_KEY"), "{}", err.message);
        let ok = resolve(
            &def,
            &HomeConfig::default(),
            &env(&[("OPENAI_API_KEY", "sk-test")]),
        )
        .unwrap();
        assert_eq!(ok.base_url, OPENAI_DEFAULT_URL);
        assert_eq!(format!("{:?}", ok.api_key), "Some(***)");
    }

    #[test]
    fn a_local_server_needs_no_key() {
        let def = agent("provider = \"openai\"\nname = \"llama\"");
        let ok = resolve(
            &def,
            &HomeConfig::default(),
            &env(&[("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1/")]),
        )
        .unwrap();
        assert_eq!(ok.base_url, "http://127.0.0.1:8080/v1");
        assert!(ok.api_key.is_none());
    }

    #[test]
    fn the_definition_wins_over_the_environment() {
        let def = agent(
            "provider = \"anthropic\"\nname = \"claude\"\nbase_url = \"http://127.0.0.1:9/\"\napi_key_env = \"MY_KEY\"",
        );
        let err = resolve(
            &def,
            &HomeConfig::default(),
            &env(&[("ANTHROPIC_API_KEY", "x")]),
        )
        .unwrap_err();
        assert!(err.message.contains("MY_KEY"));
        let ok = resolve(
            &def,
            &HomeConfig::default(),
            &env(&[("MY_KEY", "k"), ("ANTHROPIC_BASE_URL", "http://elsewhere")]),
        )
        .unwrap();
        assert_eq!(
            (ok.kind, ok.base_url.as_str()),
            (Kind::Anthropic, "http://127.0.0.1:9")
        );
    }

    #[test]
    fn named_providers_come_from_agentq_toml() {
        let home: HomeConfig = toml::from_str(
            "[providers.local]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:8080/v1\"\nheaders = { X-Team = \"a\" }\nmax_attempts = 2\n",
        )
        .unwrap();
        let def = Source {
            path: "agents/a.toml".into(),
            text: "name = \"a\"\n[model]\nprovider = \"local\"\nname = \"m\"\n".into(),
        }
        .load(&BTreeMap::new(), &home)
        .unwrap();
        let ok = resolve(&def, &home, &env(&[])).unwrap();
        assert_eq!(ok.kind, Kind::OpenAi);
        assert_eq!(ok.headers, vec![("X-Team".to_owned(), "a".to_owned())]);
        assert_eq!(ok.retry.max_attempts, 2);
    }

    #[test]
    fn keys_are_redacted_from_server_text() {
        let secret = Secret("sk-very-secret".into());
        assert_eq!(
            secret.redact("bad key sk-very-secret given"),
            "bad key *** given"
        );
    }
}
