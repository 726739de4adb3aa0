//! The MCP servers of the session a worker owns (ARCHITECTURE.md §9): a server starts
//! when the worker takes a session whose agent uses it, is reused for every message
//! while the worker owns the session, and is stopped (its process group killed) when
//! the worker lets the session go. A server that crashed or did not start is tried
//! again at the next claim, not in the middle of one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::{HomeConfig, McpServerConfig};
use crate::definition::AgentDef;
use crate::error::UserError;
use crate::mcp::tools::McpTools;
use crate::mcp::{DEFAULT_STARTUP_TIMEOUT, DEFAULT_TOOL_TIMEOUT, Server, ServerSpec, Transport};
use crate::tools::process;

/// The variables every stdio server gets from agentq's environment, as commands with
/// `env = "clean"` do; `env_vars` adds to them, `env` sets more.
const BASE_ENV: &[&str] = &["PATH", "HOME", "LANG", "TZ", "TMPDIR"];

/// The servers started for one owned session.
#[derive(Default)]
pub struct McpPool {
    started: BTreeMap<String, Arc<Server>>,
    /// Servers that did not start during this claim, with why.
    failed: BTreeMap<String, String>,
}

impl McpPool {
    /// The tools of the servers `def` uses, starting those not started yet (at once,
    /// each within its `startup_timeout`). A server marked `required` that cannot start
    /// is an error; any other one's tools answer with why it did not. `withheld` names
    /// the variables the agent's API key is read from, which no server is given.
    pub async fn tools_for(
        &mut self,
        def: &AgentDef,
        home: &HomeConfig,
        home_dir: &Path,
        withheld: &[String],
        owner: &process::Owner,
    ) -> Result<McpTools, UserError> {
        let to_start =
            def.tools.mcp.iter().filter(|name| {
                !self.started.contains_key(*name) && !self.failed.contains_key(*name)
            });
        for (name, started) in start_each(to_start, home, home_dir, withheld, Some(owner)).await {
            match started {
                Ok(server) => {
                    info!(session = %owner.session, server = %name, tools = server.tools().len(), "started an MCP server");
                    self.started.insert(name, Arc::new(server));
                }
                Err(why) => {
                    warn!(session = %owner.session, server = %name, "{why}");
                    self.failed.insert(name, why);
                }
            }
        }
        let mut servers = Vec::new();
        let mut failed = Vec::new();
        for name in &def.tools.mcp {
            if let Some(server) = self.started.get(name) {
                servers.push(server.clone());
            } else if let Some(why) = self.failed.get(name) {
                if home.mcp_servers.get(name).is_some_and(|c| c.required) {
                    return Err(UserError::usage(format!(
                        "the MCP server `{name}` is required (required = true in agentq.toml) and did not start: {why}"
                    )));
                }
                failed.push((name.clone(), why.clone()));
            }
        }
        Ok(McpTools::new(servers, failed))
    }

    /// Stops every server (gracefully, then its whole process group).
    pub async fn stop(self) {
        let stops = self.started.into_values().map(|server| async move {
            match Arc::try_unwrap(server) {
                Ok(server) => server.stop().await,
                // Still held by a toolbox being dropped: dropping kills its group.
                Err(shared) => drop(shared),
            }
        });
        futures_util::future::join_all(stops).await;
    }
}

/// Starts every server `def` uses, as a worker would but for no session: for
/// `agents show`, which lists their tools and stops them again.
pub async fn start_all(
    def: &AgentDef,
    home: &HomeConfig,
    home_dir: &Path,
) -> Vec<(String, Result<Server, String>)> {
    start_each(def.tools.mcp.iter(), home, home_dir, &[], None).await
}

/// Starts the servers `names` at once, each within its `startup_timeout`, with
/// agentq's environment less the `withheld` variables; why one did not start, in a line.
async fn start_each(
    names: impl Iterator<Item = &String>,
    home: &HomeConfig,
    home_dir: &Path,
    withheld: &[String],
    owner: Option<&process::Owner>,
) -> Vec<(String, Result<Server, String>)> {
    let starts = names.map(|name| async move {
        let started = match home.mcp_servers.get(name) {
            None => Err(format!("no [mcp_servers.{name}] in agentq.toml")),
            Some(config) => {
                let vars = std::env::vars().filter(|(var, _)| !withheld.contains(var));
                match spec(name, config, home_dir, vars) {
                    Ok(spec) => Server::start(&spec, owner).await.map_err(|e| e.to_string()),
                    Err(why) => Err(why),
                }
            }
        };
        (name.clone(), started)
    });
    futures_util::future::join_all(starts).await
}

/// What starting the server `name` takes, from its `[mcp_servers.NAME]` and agentq's
/// environment (`vars`), or why it cannot start.
pub fn spec(
    name: &str,
    config: &McpServerConfig,
    home_dir: &Path,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<ServerSpec, String> {
    let vars: BTreeMap<String, String> = vars.collect();
    let duration = |text: &Option<String>, default: Duration| match text {
        Some(text) => crate::time::parse_duration(text),
        None => Ok(default),
    };
    let transport = match (&config.command, &config.url) {
        (Some(command), _) => {
            let mut env: BTreeMap<String, String> = BASE_ENV
                .iter()
                .copied()
                .chain(config.env_vars.iter().map(String::as_str))
                .filter_map(|var| Some((var.to_owned(), vars.get(var)?.clone())))
                .collect();
            env.extend(config.env.clone());
            Transport::Stdio {
                command: command.clone(),
                args: config.args.clone(),
                env,
                cwd: home_dir.join(config.cwd.as_deref().unwrap_or(".")),
            }
        }
        (None, Some(url)) => {
            let bearer_token = match &config.bearer_token_env_var {
                Some(var) => Some(vars.get(var).cloned().ok_or_else(|| {
                    format!("{var} is not set (bearer_token_env_var of [mcp_servers.{name}])")
                })?),
                None => None,
            };
            Transport::Http {
                url: url.clone(),
                bearer_token,
                headers: config.http_headers.clone(),
            }
        }
        (None, None) => return Err("neither `command` nor `url` is set".to_owned()),
    };
    Ok(ServerSpec {
        name: name.to_owned(),
        transport,
        startup_timeout: duration(&config.startup_timeout, DEFAULT_STARTUP_TIMEOUT)?,
        tool_timeout: duration(&config.tool_timeout, DEFAULT_TOOL_TIMEOUT)?,
        enabled_tools: config.enabled_tools.clone(),
        disabled_tools: config.disabled_tools.clone(),
        approval: config.approval,
        approval_tools: config.approval_tools.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> McpServerConfig {
        toml::from_str(text).unwrap()
    }

    fn vars() -> impl Iterator<Item = (String, String)> {
        [
            ("PATH", "/bin"),
            ("HOME", "/root"),
            ("OPENAI_API_KEY", "sk-secret"),
            ("GITHUB_TOKEN", "ghp"),
            ("EDITOR", "vi"),
            ("SEARCH_TOKEN", "t0k"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    }

    #[test]
    fn a_stdio_server_gets_the_base_variables_what_env_vars_names_and_env() {
        let spec = spec(
            "time",
            &config("command = \"uvx\"\nargs = [\"mcp-server-time\"]\nenv_vars = [\"EDITOR\"]\nenv = { TZ = \"UTC\" }\ncwd = \"tools\"\nstartup_timeout = \"2s\"\n"),
            Path::new("/home/h"),
            vars(),
        )
        .unwrap();
        let Transport::Stdio {
            command,
            args,
            env,
            cwd,
        } = spec.transport
        else {
            panic!("stdio");
        };
        assert_eq!(
            (command.as_str(), args),
            ("uvx", vec!["mcp-server-time".to_owned()])
        );
        let names: Vec<&str> = env.keys().map(String::as_str).collect();
        // No API key, no token: only what was asked for.
        assert_eq!(names, ["EDITOR", "HOME", "PATH", "TZ"]);
        assert_eq!(env["TZ"], "UTC");
        assert_eq!(cwd, Path::new("/home/h/tools"));
        assert_eq!(spec.startup_timeout, Duration::from_secs(2));
        assert_eq!(spec.tool_timeout, DEFAULT_TOOL_TIMEOUT);
    }

    #[test]
    fn an_http_server_reads_its_bearer_token_from_the_variable_it_names() {
        let spec = spec(
            "search",
            &config("url = \"http://127.0.0.1:1/mcp\"\nbearer_token_env_var = \"SEARCH_TOKEN\"\n"),
            Path::new("/h"),
            vars(),
        )
        .unwrap();
        assert!(
            matches!(spec.transport, Transport::Http { bearer_token: Some(ref t), .. } if t == "t0k")
        );
        let missing =
            spec_err("url = \"http://127.0.0.1:1/mcp\"\nbearer_token_env_var = \"NOPE\"\n");
        assert!(missing.contains("NOPE is not set"), "{missing}");
    }

    fn spec_err(text: &str) -> String {
        spec("s", &config(text), Path::new("/h"), vars()).unwrap_err()
    }
}
