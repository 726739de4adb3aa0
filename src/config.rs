//! `agentq.toml`: settings for the whole home. Optional; every key has a default.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::definition::{self, schema, schema::Problem};
use crate::error::UserError;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeConfig {
    #[serde(default)]
    pub inbox: InboxConfig,
    /// Named model endpoints that agent definitions refer to by name
    /// (`[model] provider = "local"`).
    #[serde(default)]
    pub providers: BTreeMap<String, NamedProvider>,
    /// Prices per model name, for costs in `execution.finished` and `max_cost_usd`.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
}

/// `[prices."MODEL"]`: US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Price {
    pub fn cost(&self, usage: crate::domain::Usage) -> f64 {
        (usage.input as f64 * self.input_per_mtok + usage.output as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

/// `[providers.NAME]`: an endpoint of one of the wire protocols.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedProvider {
    pub kind: ProviderKind,
    #[serde(default)]
    pub base_url: Option<String>,
    /// The name of the environment variable holding the key, never the key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Sent with every request (gateways often want a team or project header).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Openai,
    Anthropic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxConfig {
    /// The largest message `send` accepts, in bytes.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

impl Default for InboxConfig {
    fn default() -> Self {
        InboxConfig {
            max_message_bytes: default_max_message_bytes(),
        }
    }
}

fn default_max_message_bytes() -> usize {
    1024 * 1024
}

impl HomeConfig {
    /// Reads `agentq.toml` if there is one.
    pub fn load(path: &Path) -> Result<HomeConfig, UserError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HomeConfig::default()),
            Err(e) => {
                return Err(UserError::usage(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        let config: HomeConfig = toml::from_str(&text).map_err(|e| {
            UserError::usage(format!(
                "{} is invalid: {}",
                path.display(),
                crate::definition::describe_toml_error(&text, &e)
            ))
        })?;
        let problems = config.problems(&text);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(crate::definition::invalid_file(path, &problems))
        }
    }

    /// What the types cannot say: the ranges of the schema, names, URLs. The checks are
    /// the ones the run path depends on, so a home that loads can run.
    fn problems(&self, text: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Ok(table) = toml::from_str::<toml::Table>(text) {
            schema::check_table(&table, schema::HOME, "", &mut problems);
        }
        let mut problem = |key: String, message: String| problems.push(Problem { key, message });
        for (name, provider) in &self.providers {
            let key = |field: &str| format!("providers.{name}.{field}");
            if definition::check_name(name).is_err() {
                problem(
                    format!("providers.{name}"),
                    format!(
                        "`{}` is not a provider name: use letters, digits, `-` and `_` (at most 64)",
                        name.escape_default()
                    ),
                );
            } else if definition::PROVIDERS.contains(&name.as_str()) {
                // An agent naming `openai` would otherwise get whatever this says,
                // another protocol included, with nothing to tell it so.
                problem(
                    format!("providers.{name}"),
                    format!(
                        "`{name}` is a built-in provider; give this one another name (such as `{name}-proxy`) and use that as [model] provider"
                    ),
                );
            }
            if let Some(url) = &provider.base_url
                && let Err(message) = definition::check_base_url(url)
            {
                problem(key("base_url"), message);
            }
            if let Some(var) = &provider.api_key_env
                && let Err(message) = definition::check_env_name(var)
            {
                problem(key("api_key_env"), message);
            }
            // A header reqwest cannot send fails every request of every run.
            for (header, value) in &provider.headers {
                if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err()
                    || reqwest::header::HeaderValue::from_str(value).is_err()
                {
                    problem(
                        key(&format!("headers.{header}")),
                        format!(
                            "`{}` is not an HTTP header: a name of letters, digits and `-`, a value of printable text on one line",
                            header.escape_default()
                        ),
                    );
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_means_defaults() {
        let config = HomeConfig::load(Path::new("/nonexistent/agentq.toml")).unwrap();
        assert_eq!(config.inbox.max_message_bytes, 1024 * 1024);
    }

    #[test]
    fn named_providers_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentq.toml");
        std::fs::write(
            &path,
            "[providers.local]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:8080/v1\"\nheaders = { X-Team = \"a\" }\n",
        )
        .unwrap();
        let config = HomeConfig::load(&path).unwrap();
        let local = &config.providers["local"];
        assert_eq!(local.kind, ProviderKind::Openai);
        assert_eq!(local.headers["X-Team"], "a");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_reported_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentq.toml");
        std::fs::write(&path, "[inbox]\nmax_message_bytes = \"ten\"\n").unwrap();
        let err = HomeConfig::load(&path).unwrap_err();
        assert!(err.message.contains("line 2"), "{}", err.message);
        assert!(
            err.message.contains("max_message_bytes = \"ten\""),
            "{}",
            err.message
        );
    }

    #[test]
    fn every_problem_the_run_path_would_meet_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentq.toml");
        std::fs::write(
            &path,
            "[inbox]\nmax_message_bytes = 0\n[providers.openai]\nkind = \"anthropic\"\n[providers.local]\nkind = \"openai\"\nbase_url = \"file:///etc/passwd\"\nheaders = { \"X Team\" = \"a\" }\nidle_timeout = \"0s\"\n",
        )
        .unwrap();
        let err = HomeConfig::load(&path).unwrap_err().message;
        for part in [
            "inbox.max_message_bytes = 0: must be 1 or more",
            "providers.openai: `openai` is a built-in provider",
            "providers.local.base_url: `file:///etc/passwd` must start with http://",
            "providers.local.headers.X Team",
            "providers.local.idle_timeout = \"0s\": must be longer than 0",
        ] {
            assert!(err.contains(part), "{part}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentq.toml");
        std::fs::write(&path, "[inbox]\nmax_message_byte = 5\n").unwrap();
        let err = HomeConfig::load(&path).unwrap_err();
        assert!(
            err.message.contains("agentq.toml is invalid"),
            "{}",
            err.message
        );
    }
}
