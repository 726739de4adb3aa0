//! `agentq.toml`: settings for the whole home. Optional; every key has a default.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::definition::Approval;
use crate::error::UserError;
use crate::validate::{
    self, PROVIDERS, Problem, check_base_url, check_env_name, check_env_pass, check_relative,
    is_name, schema,
};

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
    /// MCP servers agents may take tools from (`[tools] mcp = ["NAME"]`).
    #[serde(default)]
    pub mcp_servers: BTreeMap<String, McpServerConfig>,
    /// Where the sessions are kept, when not given by `--store` or `AGENTQ_STORE`.
    #[serde(default)]
    pub store: StoreConfig,
}

/// `[store]`: the sessions in a database (`url = "postgres://…"`) instead of the files
/// under `sessions/`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default)]
    pub url: Option<String>,
    /// How long a database store's lease lasts unless renewed (`30s` by default):
    /// read by [`HomeConfig::store_lease`] when the store is opened.
    #[serde(default)]
    pub lease: Option<String>,
}

/// `[mcp_servers.NAME]`, with codex's keys (ARCHITECTURE.md §9): a child process over
/// stdio (`command`), or a streamable HTTP endpoint (`url`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Set for the child, besides the few variables every child gets.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Variables of agentq's environment passed to the child by name.
    #[serde(default)]
    pub env_vars: Vec<String>,
    /// The child's working directory, relative to the home (the home by default).
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    /// The variable holding the bearer token sent to `url`, never the token.
    #[serde(default)]
    pub bearer_token_env_var: Option<String>,
    #[serde(default)]
    pub http_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub startup_timeout: Option<String>,
    #[serde(default)]
    pub tool_timeout: Option<String>,
    /// Only these tools of the server, when given.
    #[serde(default)]
    pub enabled_tools: Option<Vec<String>>,
    #[serde(default)]
    pub disabled_tools: Vec<String>,
    /// `approval = "required"`: every call of every tool of the server waits for a
    /// person (`agentq approve`), as a declared command with it does.
    #[serde(default)]
    pub approval: Approval,
    /// The tools (by the server's own names) whose calls wait for a person, when not
    /// all of them do.
    #[serde(default)]
    pub approval_tools: Vec<String>,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// A server that cannot start fails the execution instead of only its tools.
    #[serde(default)]
    pub required: bool,
}

fn enabled_by_default() -> bool {
    true
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
    /// How this server takes a JSON Schema the answer must follow.
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Openai,
    Anthropic,
}

/// The shape in which an OpenAI-compatible server takes the JSON Schema an answer must
/// follow (`[output]`): servers agree on the idea, not on the field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    /// `{"type": "json_schema", "json_schema": {"name", "schema"}}`: OpenAI's API,
    /// vLLM, llama.cpp's own server, Ollama.
    #[default]
    JsonSchema,
    /// `{"type": "json_object", "schema": …}`: llama-cpp-python's server (which refuses
    /// the other shape) and llama.cpp's own.
    JsonObject,
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
                validate::describe_toml_error(&text, &e)
            ))
        })?;
        let problems = config.problems(&text);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(validate::invalid_file(path, &problems))
        }
    }

    /// `[store] lease` of the `agentq.toml` at `path`, read alone (as `[store] url` is,
    /// so a problem elsewhere in the file does not stop `session list`) and checked as
    /// the whole file's load checks it.
    pub fn store_lease(path: &Path) -> Result<Option<std::time::Duration>, UserError> {
        // Missing or unreadable: whoever reads the whole file says why.
        let Ok(text) = std::fs::read_to_string(path) else {
            return Ok(None);
        };
        if !text.contains("lease") {
            return Ok(None);
        }
        let Ok(table) = text.parse::<toml::Table>() else {
            return Ok(None);
        };
        let Some(value) = table.get("store").and_then(|store| store.get("lease")) else {
            return Ok(None);
        };
        let alone = toml::Table::from_iter([("lease".to_owned(), value.clone())]);
        let mut problems = Vec::new();
        schema::check_table(&alone, schema::STORE, "store", &mut problems);
        if !problems.is_empty() {
            return Err(validate::invalid_file(path, &problems));
        }
        Ok(value
            .as_str()
            .and_then(|text| crate::time::parse_duration(text).ok()))
    }

    /// What the types cannot say: the ranges of the schema, names, URLs. The checks are
    /// the ones the run path depends on, so a home that loads can run.
    fn problems(&self, text: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Ok(table) = toml::from_str::<toml::Table>(text) {
            schema::check_table(&table, schema::HOME, "", &mut problems);
        }
        for (name, provider) in &self.providers {
            problems.extend(provider.problems(name));
        }
        let key_env: Vec<&str> = self
            .providers
            .values()
            .filter_map(|p| p.api_key_env.as_deref())
            .collect();
        for (name, server) in &self.mcp_servers {
            problems.extend(server.problems(name, &key_env));
        }
        problems
    }
}

impl NamedProvider {
    /// What makes `[providers.NAME]` unusable, by key.
    fn problems(&self, name: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let key = |field: &str| format!("providers.{name}.{field}");
        if !is_name(name) {
            problems.push(Problem::new(
                format!("providers.{name}"),
                format!(
                    "`{}` is not a provider name: use letters, digits, `-` and `_` (at most 64)",
                    name.escape_default()
                ),
            ));
        } else if PROVIDERS.contains(&name) {
            // An agent naming `openai` would otherwise get whatever this says,
            // another protocol included, with nothing to tell it so.
            problems.push(Problem::new(
                format!("providers.{name}"),
                format!(
                    "`{name}` is a built-in provider; give this one another name (such as `{name}-proxy`) and use that as [model] provider"
                ),
            ));
        }
        if let Some(url) = &self.base_url
            && let Err(message) = check_base_url(url)
        {
            problems.push(Problem::new(key("base_url"), message));
        }
        if let Some(var) = &self.api_key_env
            && let Err(message) = check_env_name(var)
        {
            problems.push(Problem::new(key("api_key_env"), message));
        }
        // A header reqwest cannot send fails every request of every run.
        for (header, value) in &self.headers {
            if !is_http_header(header, value) {
                problems.push(Problem::new(
                    key(&format!("headers.{header}")),
                    not_a_header(header),
                ));
            }
        }
        problems
    }
}

impl McpServerConfig {
    /// What makes `[mcp_servers.NAME]` unusable, by key. `key_env` names the variables
    /// API keys are read from, which no server is given.
    fn problems(&self, name: &str, key_env: &[&str]) -> Vec<Problem> {
        let mut found = Vec::new();
        // `mcp__<server>__<tool>` must say where the server's name ends.
        if !is_name(name) || name.contains("__") {
            found.push((
                String::new(),
                format!(
                    "`{}` is not a server name: use letters, digits, `-` and single `_` (at most 64)",
                    name.escape_default()
                ),
            ));
        }
        found.extend(self.transport_problems());
        found.extend(self.environment_problems(key_env));
        found.extend(self.http_problems());
        found.extend(self.tool_list_problems());
        found
            .into_iter()
            .map(|(field, message)| {
                let key = if field.is_empty() {
                    format!("mcp_servers.{name}")
                } else {
                    format!("mcp_servers.{name}.{field}")
                };
                Problem::new(key, message)
            })
            .collect()
    }

    /// One transport, and only its keys. Each problem is `(field, message)`, the field
    /// empty for the server as a whole.
    fn transport_problems(&self) -> Vec<(String, String)> {
        let misplaced = |keys: &[(&str, bool)], message: &str| -> Vec<(String, String)> {
            keys.iter()
                .filter(|(_, given)| *given)
                .map(|(field, _)| ((*field).to_owned(), message.to_owned()))
                .collect()
        };
        match (&self.command, &self.url) {
            (Some(_), Some(_)) => vec![(
                String::new(),
                "has both `command` (stdio) and `url` (HTTP); keep the one it speaks".to_owned(),
            )],
            (None, None) => vec![(
                String::new(),
                "needs `command` (a program speaking MCP on stdio) or `url` (streamable HTTP)"
                    .to_owned(),
            )],
            (Some(command), None) => {
                let mut found = Vec::new();
                if command.trim().is_empty() {
                    found.push(("command".to_owned(), "is empty".to_owned()));
                }
                found.extend(misplaced(
                    &[
                        ("bearer_token_env_var", self.bearer_token_env_var.is_some()),
                        ("http_headers", !self.http_headers.is_empty()),
                    ],
                    "is for a server with `url`, not `command`",
                ));
                found
            }
            (None, Some(url)) => {
                let mut found = Vec::new();
                if let Err(message) = check_base_url(url) {
                    found.push(("url".to_owned(), message));
                }
                found.extend(misplaced(
                    &[
                        ("args", !self.args.is_empty()),
                        ("env", !self.env.is_empty()),
                        ("env_vars", !self.env_vars.is_empty()),
                        ("cwd", self.cwd.is_some()),
                    ],
                    "is for a server with `command`, not `url`",
                ));
                found
            }
        }
    }

    /// A stdio child's variables and working directory.
    fn environment_problems(&self, key_env: &[&str]) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for var in self.env.keys() {
            if let Err(message) = check_env_name(var) {
                found.push((format!("env.{var}"), message));
            }
        }
        for (i, var) in self.env_vars.iter().enumerate() {
            if let Err(message) = check_env_pass(var, key_env) {
                found.push((
                    format!("env_vars[{i}]"),
                    message.replace("commands", "MCP servers"),
                ));
            }
        }
        if let Some(cwd) = &self.cwd
            && let Err(message) = check_relative(cwd)
        {
            found.push(("cwd".to_owned(), message));
        }
        found
    }

    /// What an HTTP server is sent besides the request: a token's variable and headers.
    fn http_problems(&self) -> Vec<(String, String)> {
        let mut found = Vec::new();
        if let Some(var) = &self.bearer_token_env_var
            && let Err(message) = check_env_name(var)
        {
            found.push(("bearer_token_env_var".to_owned(), message));
        }
        for (header, value) in &self.http_headers {
            if !is_http_header(header, value) {
                found.push((format!("http_headers.{header}"), not_a_header(header)));
            }
        }
        found
    }

    /// `enabled_tools` and `disabled_tools` may not both name a tool, and
    /// `approval_tools` names only tools the model is given: a name it cannot be
    /// given is a mistake that would leave the tool meant ungated.
    fn tool_list_problems(&self) -> Vec<(String, String)> {
        let enabled = self.enabled_tools.as_deref();
        let mut found: Vec<(String, String)> = self
            .disabled_tools
            .iter()
            .filter(|tool| enabled.unwrap_or_default().contains(tool))
            .map(|tool| {
                (
                    "disabled_tools".to_owned(),
                    format!("`{tool}` is in enabled_tools too; keep it in one of them"),
                )
            })
            .collect();
        for (i, tool) in self.approval_tools.iter().enumerate() {
            let field = format!("approval_tools[{i}]");
            let message = if tool.starts_with("mcp__") {
                format!(
                    "`{tool}` is the name the model sees; use the server's own name for the tool (what follows `mcp__<server>__`)"
                )
            } else if self.disabled_tools.contains(tool) {
                format!("`{tool}` is in disabled_tools: the model is never given it")
            } else if enabled.is_some_and(|enabled| !enabled.contains(tool)) {
                format!("`{tool}` is not in enabled_tools: the model is never given it")
            } else {
                continue;
            };
            found.push((field, message));
        }
        found
    }
}

/// Whether reqwest can send this header: one it cannot fails every request.
fn is_http_header(name: &str, value: &str) -> bool {
    reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
        && reqwest::header::HeaderValue::from_str(value).is_ok()
}

fn not_a_header(name: &str) -> String {
    format!(
        "`{}` is not an HTTP header: a name of letters, digits and `-`, a value of printable text on one line",
        name.escape_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<HomeConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentq.toml");
        std::fs::write(&path, text).unwrap();
        HomeConfig::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn the_store_lease_is_a_duration_of_at_least_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentq.toml");
        std::fs::write(&path, "[store]\nlease = \"5s\"\n").unwrap();
        assert_eq!(
            HomeConfig::store_lease(&path).unwrap(),
            Some(std::time::Duration::from_secs(5))
        );
        assert!(HomeConfig::load(&path).is_ok());
        for (bad, says) in [
            ("\"500ms\"", "store.lease = \"500ms\": must be at least 1s"),
            ("\"soon\"", "store.lease: `soon` is not a duration"),
            ("30", "store.lease: expected a duration such as \"30s\""),
        ] {
            std::fs::write(&path, format!("[store]\nlease = {bad}\n")).unwrap();
            let alone = HomeConfig::store_lease(&path).unwrap_err().to_string();
            assert!(alone.contains(says), "{alone}");
            // The whole file's load refuses it too (a wrong type in serde's words).
            let whole = HomeConfig::load(&path).unwrap_err().to_string();
            assert!(whole.contains("lease"), "{whole}");
            if bad.starts_with('"') {
                assert_eq!(alone, whole, "the same refusal either way");
            }
        }
        std::fs::write(&path, "[store]\nurl = \"files\"\n").unwrap();
        assert_eq!(HomeConfig::store_lease(&path).unwrap(), None);
    }

    #[test]
    fn mcp_servers_take_codexs_keys_over_stdio_and_http() {
        let config = load(
            r#"
[mcp_servers.time]
command = "uvx"
args = ["mcp-server-time"]
env = { TZ = "UTC" }
env_vars = ["HOME"]
cwd = "tools"
startup_timeout = "20s"
tool_timeout = "60s"
enabled_tools = ["get_current_time"]
[mcp_servers.search]
url = "http://127.0.0.1:3001/mcp"
bearer_token_env_var = "SEARCH_TOKEN"
http_headers = { X-Team = "blue" }
disabled_tools = ["delete"]
required = true
"#,
        )
        .unwrap();
        let time = &config.mcp_servers["time"];
        assert_eq!(time.command.as_deref(), Some("uvx"));
        assert_eq!(
            time.enabled_tools.as_deref(),
            Some(&["get_current_time".to_owned()][..])
        );
        assert!(time.enabled && !time.required);
        let search = &config.mcp_servers["search"];
        assert_eq!(search.http_headers["X-Team"], "blue");
        assert!(search.required);
        assert_eq!(time.approval, Approval::Never, "the default");
        assert!(time.approval_tools.is_empty());
    }

    #[test]
    fn an_mcp_server_gates_all_its_tools_or_the_ones_approval_tools_names() {
        let config = load(
            r#"
[mcp_servers.all]
command = "a"
approval = "required"
[mcp_servers.some]
command = "a"
enabled_tools = ["read", "write"]
approval_tools = ["write"]
"#,
        )
        .unwrap();
        assert_eq!(config.mcp_servers["all"].approval, Approval::Required);
        let some = &config.mcp_servers["some"];
        assert_eq!(some.approval, Approval::Never);
        assert_eq!(some.approval_tools, ["write"]);
    }

    #[test]
    fn an_mcp_server_that_cannot_work_is_refused_naming_its_key() {
        let cases = [
            ("[mcp_servers.x]\n", "mcp_servers.x: needs `command`"),
            (
                "[mcp_servers.x]\ncommand = \"a\"\nurl = \"http://127.0.0.1/\"\n",
                "mcp_servers.x: has both",
            ),
            (
                "[mcp_servers.x]\ncommand = \" \"\n",
                "mcp_servers.x.command: is empty",
            ),
            (
                "[mcp_servers.x]\nurl = \"file:///etc/passwd\"\n",
                "mcp_servers.x.url",
            ),
            (
                "[mcp_servers.x]\nurl = \"http://127.0.0.1/\"\nargs = [\"a\"]\n",
                "mcp_servers.x.args: is for a server with `command`",
            ),
            (
                "[mcp_servers.x]\ncommand = \"a\"\nhttp_headers = { A = \"b\" }\n",
                "mcp_servers.x.http_headers: is for a server with `url`",
            ),
            (
                "[mcp_servers.x]\ncommand = \"a\"\nenv_vars = [\"OPENAI_API_KEY\"]\n",
                "mcp_servers.x.env_vars[0]",
            ),
            (
                "[mcp_servers.x]\ncommand = \"a\"\ncwd = \"../out\"\n",
                "mcp_servers.x.cwd",
            ),
            (
                "[mcp_servers.x]\ncommand = \"a\"\nstartup_timeout = \"0s\"\n",
                "mcp_servers.x.startup_timeout",
            ),
            (
                "[mcp_servers.x]\ncommand = \"a\"\nenabled_tools = [\"t\"]\ndisabled_tools = [\"t\"]\n",
                "in enabled_tools too",
            ),
            (
                "[mcp_servers.x]\ncommand = \"a\"\ndisabled_tools = [\"t\"]\napproval_tools = [\"t\"]\n",
                "mcp_servers.x.approval_tools[0]: `t` is in disabled_tools: the model is never given it",
            ),
            (
                "[mcp_servers.x]\ncommand = \"a\"\nenabled_tools = [\"t\"]\napproval_tools = [\"t\", \"u\"]\n",
                "mcp_servers.x.approval_tools[1]: `u` is not in enabled_tools: the model is never given it",
            ),
            (
                "[mcp_servers.x]\ncommand = \"a\"\napproval_tools = [\"mcp__x__t\"]\n",
                "mcp_servers.x.approval_tools[0]: `mcp__x__t` is the name the model sees; use the server's own name",
            ),
            (
                "[mcp_servers.x]\ncommand = \"a\"\napproval_tools = [\"t\", \"t\"]\n",
                "mcp_servers.x.approval_tools",
            ),
            (
                "[mcp_servers.x]\ncommand = \"a\"\napproval = \"always\"\n",
                "`approval = \"always\"`): unknown variant `always`, expected `never` or `required`",
            ),
            ("[mcp_servers.a__b]\ncommand = \"a\"\n", "not a server name"),
            (
                "[mcp_servers.x]\ncommand = \"a\"\ntimeout = \"1s\"\n",
                "unknown field `timeout`",
            ),
        ];
        for (text, says) in cases {
            let err = load(text).expect_err(text);
            assert!(err.contains(says), "{text}: {err}");
        }
    }

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
