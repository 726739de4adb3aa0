//! `agentq.toml`: settings for the whole home. Optional; every key has a default.

use std::path::Path;

use serde::Deserialize;

use crate::error::UserError;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeConfig {
    #[serde(default)]
    pub inbox: InboxConfig,
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
        toml::from_str(&text).map_err(|e| {
            UserError::usage(format!(
                "{} is invalid: {}",
                path.display(),
                e.message().trim().replace('\n', " ")
            ))
        })
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
