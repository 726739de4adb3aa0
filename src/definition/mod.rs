//! Agent definitions: `agents/<name>.toml`, checked, typed, and with a session's
//! `--set` overrides applied (ARCHITECTURE.md §5).

pub mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::{Table, Value};

use crate::config::HomeConfig;
use crate::error::UserError;
use crate::time::parse_duration;
use schema::Problem;

/// Built-in tools this version provides, by their contract names.
pub const BUILTIN_TOOLS: &[&str] = &[
    "read_file",
    "write_file",
    "edit_file",
    "list_dir",
    "search_files",
    "todo_write",
];

/// Providers this version knows.
pub const PROVIDERS: &[&str] = &["openai", "anthropic", "scripted"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub system: String,
    pub model: ModelConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub tools: ToolsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub provider: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    /// Model calls made in all for one step when the first ones fail before their
    /// stream begins (connection errors, 408, 409, 429, 5xx).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// How long a stream may stay silent before the step fails.
    #[serde(default, deserialize_with = "de_duration")]
    pub idle_timeout: Option<Duration>,
    /// The model's context window in tokens; older turns are compacted to fit it.
    #[serde(default)]
    pub context_window: Option<u64>,
    /// The share of the window a prompt may fill before compaction (default 0.8).
    #[serde(default)]
    pub compact_threshold: Option<f64>,
    /// Whether the model must call a tool: "auto", "required", "none" or a tool's name.
    #[serde(default)]
    pub tool_choice: Option<ToolChoice>,
    /// The `scripted` provider's answers, one per model call.
    #[serde(default)]
    pub script: Vec<ScriptEntry>,
}

/// `[model] tool_choice`: whether, and which, tool the model must call.
///
/// A choice that forces a call (`required`, or a tool's name) holds only until the
/// execution has called a tool; later steps leave the choice to the model, or it could
/// never answer (the OpenAI Agents SDK resets it the same way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides; said explicitly to the server.
    Auto,
    /// The model must call one of its tools.
    Required,
    /// The model may not call a tool.
    None,
    /// The model must call this tool.
    Tool(String),
}

impl ToolChoice {
    /// True for a choice that makes the model call a tool.
    pub fn forces_a_call(&self) -> bool {
        matches!(self, ToolChoice::Required | ToolChoice::Tool(_))
    }
}

impl<'de> Deserialize<'de> for ToolChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ToolChoice, D::Error> {
        Ok(match String::deserialize(d)?.as_str() {
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            "none" => ToolChoice::None,
            name => ToolChoice::Tool(name.to_owned()),
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScriptEntry {
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub tool_calls: Vec<ScriptToolCall>,
    #[serde(default)]
    pub usage: Option<ScriptUsage>,
    #[serde(default)]
    pub delay_ms: Option<u64>,
    #[serde(default)]
    pub error: Option<ScriptError>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScriptToolCall {
    pub name: String,
    #[serde(default)]
    pub arguments: Table,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScriptUsage {
    #[serde(default)]
    pub input: u64,
    #[serde(default)]
    pub output: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScriptError {
    pub status: u16,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_max_steps")]
    pub max_steps: u32,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub session_max_tokens: Option<u64>,
    #[serde(default, deserialize_with = "de_duration")]
    pub timeout: Option<Duration>,
    /// Per execution, priced with `[prices]` in agentq.toml.
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    /// What a failed tool call does: the model sees the error and carries on, or the
    /// execution fails.
    #[serde(default)]
    pub on_tool_error: ToolErrorPolicy,
    /// Steps in a row whose tool calls all failed before the execution fails.
    #[serde(default = "default_max_consecutive_errors")]
    pub max_consecutive_errors: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolErrorPolicy {
    #[default]
    Continue,
    Stop,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_steps: default_max_steps(),
            max_tokens: None,
            session_max_tokens: None,
            timeout: None,
            max_cost_usd: None,
            on_tool_error: ToolErrorPolicy::default(),
            max_consecutive_errors: default_max_consecutive_errors(),
        }
    }
}

fn default_max_consecutive_errors() -> u32 {
    3
}

fn default_max_steps() -> u32 {
    20
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsConfig {
    /// Built-in tools the agent may use; none unless granted.
    #[serde(default)]
    pub builtin: Vec<String>,
    /// `"session"` for the session's own `workspace/`, or a directory under the home.
    #[serde(default = "default_workspace")]
    pub workspace: String,
    /// Declared external commands; nothing else is ever executed.
    #[serde(default)]
    pub command: Vec<CommandToolDef>,
    /// The environment commands run with (src/tools/command.rs says what each keeps).
    #[serde(default)]
    pub env: EnvMode,
    /// Variables passed to commands even when they look like secrets, and besides the
    /// few of `env = "clean"`; never the agent's own `api_key_env`.
    #[serde(default)]
    pub env_pass: Vec<String>,
    /// The MCP servers of `agentq.toml` (`[mcp_servers.NAME]`) whose tools the agent may
    /// call, as `mcp__<server>__<tool>`.
    #[serde(default)]
    pub mcp: Vec<String>,
}

/// `[tools] env`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvMode {
    /// agentq's environment without the variables that look like secrets.
    #[default]
    Scrubbed,
    /// Only PATH, HOME, LANG, TZ, TMPDIR and `env_pass`.
    Clean,
}

/// `[[tools.command]]`: a program the model may run, with a fixed argv and no shell.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandToolDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub argv: Vec<String>,
    /// JSON Schema of the arguments; the arguments reach the process as JSON on stdin.
    #[serde(default)]
    pub parameters: Option<Table>,
    #[serde(default, deserialize_with = "de_duration")]
    pub timeout: Option<Duration>,
    /// Working directory, relative to the workspace.
    #[serde(default)]
    pub cwd: Option<String>,
    /// The command changes nothing (a linter, a query): it may run at the same time as
    /// the step's other read-only calls, and a resumed execution may run it again.
    #[serde(default)]
    pub read_only: bool,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        ToolsConfig {
            builtin: Vec::new(),
            workspace: default_workspace(),
            command: Vec::new(),
            env: EnvMode::default(),
            env_pass: Vec::new(),
            mcp: Vec::new(),
        }
    }
}

fn default_workspace() -> String {
    "session".to_owned()
}

/// An agent name is a file stem under `agents/`, so it is checked before it becomes one.
pub fn check_name(name: &str) -> Result<(), UserError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['-', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(UserError::usage(format!(
            "`{}` is not an agent name: use letters, digits, `-` and `_` (at most 64)",
            name.escape_default()
        )))
    }
}

/// A definition file as read from disk, before it is checked.
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn read(path: &Path) -> std::io::Result<Source> {
        Ok(Source {
            path: path.to_owned(),
            text: std::fs::read_to_string(path)?,
        })
    }

    /// A stable fingerprint of the file, recorded by sessions to notice later edits.
    pub fn hash(&self) -> String {
        // FNV-1a: not for security, only to tell two versions of a file apart.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.text.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("fnv1a64:{h:016x}")
    }

    fn stem(&self) -> String {
        self.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Parses and checks the definition, with session overrides applied on top.
    /// Returns every problem found, or the typed definition.
    pub fn load(
        &self,
        overrides: &BTreeMap<String, serde_json::Value>,
        home: &HomeConfig,
    ) -> Result<AgentDef, Vec<Problem>> {
        let mut table: Table =
            toml::from_str(&self.text).map_err(|e| vec![toml_problem(&self.text, &e)])?;
        for (key, value) in overrides {
            set_dotted(&mut table, key, json_to_toml(value)).map_err(|message| {
                vec![Problem {
                    key: key.clone(),
                    message,
                }]
            })?;
        }
        let mut problems = Vec::new();
        schema::check_table(&table, schema::AGENT, "", &mut problems);
        if let Some(Value::String(name)) = table.get("name") {
            problems.extend(check_file_name(name, &self.stem()));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let def: AgentDef = Value::Table(table).try_into().map_err(|e| {
            vec![Problem {
                key: String::new(),
                message: e.message().to_owned(),
            }]
        })?;
        let semantic = check_semantics(&def, home);
        if semantic.is_empty() {
            Ok(def)
        } else {
            Err(semantic)
        }
    }
}

/// The name must be the file's stem (and so a safe one).
fn check_file_name(name: &str, stem: &str) -> Option<Problem> {
    let message = if name != stem {
        format!(
            "`{}` does not match the file name `{stem}.toml`",
            name.escape_default()
        )
    } else {
        check_name(name).err()?.message
    };
    Some(Problem {
        key: "name".to_owned(),
        message,
    })
}

/// What the schema cannot say: values from a fixed set, combinations of keys.
fn check_semantics(def: &AgentDef, home: &HomeConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |key: &str, message: String| {
        problems.push(Problem {
            key: key.to_owned(),
            message,
        })
    };
    let provider = def.model.provider.as_str();
    let named = home.providers.contains_key(provider);
    if !named && !PROVIDERS.contains(&provider) {
        let mut known: Vec<&str> = PROVIDERS.to_vec();
        known.extend(home.providers.keys().map(String::as_str));
        problem(
            "model.provider",
            format!(
                "unknown provider `{provider}`; use one of {} (or define [providers.{provider}] in agentq.toml)",
                known.join(", ")
            ),
        );
    } else if (named || provider != "scripted") && def.model.name.is_none() {
        problem(
            "model.name",
            format!("missing (required for provider `{provider}`)"),
        );
    }
    if let Some(name) = &def.model.name
        && (name.trim().is_empty() || name.chars().any(char::is_control))
    {
        problem(
            "model.name",
            format!(
                "`{}` is not a model name; write it as the server knows it, such as gpt-4o-mini",
                name.escape_default()
            ),
        );
    }
    if let Some(url) = &def.model.base_url
        && let Err(message) = check_base_url(url)
    {
        problem("model.base_url", message);
    }
    if let Some(var) = &def.model.api_key_env
        && let Err(message) = check_env_name(var)
    {
        problem("model.api_key_env", message);
    }
    let anthropic = match home.providers.get(provider) {
        Some(named) => named.kind == crate::config::ProviderKind::Anthropic,
        None => provider == "anthropic",
    };
    if anthropic && let Some(t) = def.model.temperature.filter(|t| *t > 1.0) {
        // The schema allows OpenAI's 0 to 2; the Messages API refuses more than 1.
        problem(
            "model.temperature",
            format!("model.temperature = {t}: must be at most 1 for an anthropic provider"),
        );
    }
    if def.model.provider == "scripted" && def.model.script.is_empty() {
        problem(
            "model.script",
            "the scripted provider needs at least one [[model.script]] entry".to_owned(),
        );
    }
    for (i, entry) in def.model.script.iter().enumerate() {
        for (j, call) in entry.tool_calls.iter().enumerate() {
            if call.name.is_empty() {
                problem(
                    &format!("model.script[{i}].tool_calls[{j}].name"),
                    "is empty".to_owned(),
                );
            }
        }
    }
    // An MCP server's tools are known only once it runs; a granted server counts as tools.
    let no_tools =
        def.tools.builtin.is_empty() && def.tools.command.is_empty() && def.tools.mcp.is_empty();
    if def.model.tool_choice == Some(ToolChoice::Required) && no_tools {
        problem(
            "model.tool_choice",
            "\"required\" needs a tool to call; grant one in [tools], or leave tool_choice out"
                .to_owned(),
        );
    }
    if let Some(ToolChoice::Tool(name)) = &def.model.tool_choice {
        let granted = def.tools.builtin.iter().any(|t| t == name)
            || def.tools.command.iter().any(|c| &c.name == name)
            || def
                .tools
                .mcp
                .iter()
                .any(|server| name.starts_with(&format!("mcp__{server}__")));
        if !granted && BUILTIN_TOOLS.contains(&name.as_str()) {
            problem(
                "model.tool_choice",
                format!(
                    "`{name}` is a built-in tool this agent does not list; add it to `[tools] builtin`"
                ),
            );
        } else if !granted {
            problem(
                "model.tool_choice",
                format!(
                    "`{}` is neither \"auto\", \"required\", \"none\" nor a tool this agent has",
                    name.escape_default()
                ),
            );
        }
    }
    for (i, tool) in def.tools.builtin.iter().enumerate() {
        if !BUILTIN_TOOLS.contains(&tool.as_str()) {
            problem(
                &format!("tools.builtin[{i}]"),
                format!(
                    "unknown tool `{tool}`; built-in tools are {}",
                    BUILTIN_TOOLS.join(", ")
                ),
            );
        }
    }
    if let Err(message) = check_workspace(&def.tools.workspace) {
        problem("tools.workspace", message);
    }
    let key_env: Vec<&str> = def
        .model
        .api_key_env
        .iter()
        .chain(
            home.providers
                .get(provider)
                .and_then(|p| p.api_key_env.as_ref()),
        )
        .map(String::as_str)
        .collect();
    for (i, name) in def.tools.env_pass.iter().enumerate() {
        if let Err(message) = crate::tools::command::check_env_pass(name, &key_env) {
            problem(&format!("tools.env_pass[{i}]"), message);
        }
    }
    for (i, server) in def.tools.mcp.iter().enumerate() {
        match home.mcp_servers.get(server) {
            None => problem(
                &format!("tools.mcp[{i}]"),
                format!(
                    "no MCP server `{}` in agentq.toml; define [mcp_servers.{}] there{}",
                    server.escape_default(),
                    server.escape_default(),
                    known_servers(home)
                ),
            ),
            Some(config) if !config.enabled => problem(
                &format!("tools.mcp[{i}]"),
                format!(
                    "MCP server `{server}` is disabled in agentq.toml (enabled = false); enable it or leave it out"
                ),
            ),
            Some(_) => {}
        }
    }
    for (i, command) in def.tools.command.iter().enumerate() {
        let key = |field: &str| format!("tools.command[{i}].{field}");
        if check_name(&command.name).is_err() {
            problem(
                &key("name"),
                format!(
                    "`{}` is not a tool name: use letters, digits, `-` and `_`",
                    command.name.escape_default()
                ),
            );
        } else if BUILTIN_TOOLS.contains(&command.name.as_str())
            || def.tools.command[..i]
                .iter()
                .any(|c| c.name == command.name)
        {
            problem(
                &key("name"),
                format!("`{}` is already the name of another tool", command.name),
            );
        }
        if command.argv.first().is_none_or(|p| p.is_empty()) {
            problem(&key("argv"), "needs at least the program to run".to_owned());
        }
        if let Some(cwd) = &command.cwd
            && let Err(message) = check_relative(cwd)
        {
            problem(&key("cwd"), message);
        }
        // Sent to the model as the function's parameters, which must be an object
        // schema; any other is refused by the server at every step.
        if let Some(parameters) = &command.parameters
            && parameters.get("type").and_then(Value::as_str) != Some("object")
        {
            problem(
                &key("parameters"),
                "must be a JSON Schema of an object: type = \"object\", with its properties"
                    .to_owned(),
            );
        }
    }
    problems
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

/// `[tools] workspace`: "session", or a directory under the home that is not agentq's
/// own (an agent able to write `agents/` or `sessions/` could grant itself new tools,
/// raise its own limits or touch other sessions).
fn check_workspace(workspace: &str) -> Result<(), String> {
    if workspace == "session" {
        return Ok(());
    }
    check_relative(workspace)?;
    let first = Path::new(workspace).components().find_map(|c| match c {
        std::path::Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
        _ => None,
    });
    match first.as_deref() {
        None => Err(
            "the workspace cannot be the home itself; name a directory under it, or \"session\""
                .to_owned(),
        ),
        Some(reserved @ ("agents" | "sessions" | "agentq.toml")) => Err(format!(
            "the workspace cannot be inside `{reserved}`, which holds agentq's own files"
        )),
        Some(_) => Ok(()),
    }
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

/// One problem for a TOML syntax error, with its line and column.
fn toml_problem(text: &str, err: &toml::de::Error) -> Problem {
    Problem {
        key: String::new(),
        message: format!("invalid TOML: {}", describe_toml_error(text, err)),
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

/// Sets `a.b.c = value` in a table, creating intermediate tables.
fn set_dotted(table: &mut Table, key: &str, value: Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("is not a dotted key such as limits.max_steps".to_owned());
    }
    let (last, parents) = parts.split_last().ok_or("is empty")?;
    let mut current = table;
    for part in parents {
        let entry = current
            .entry((*part).to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        current = match entry {
            Value::Table(t) => t,
            _ => return Err(format!("`{part}` is not a table")),
        };
    }
    current.insert((*last).to_owned(), value);
    Ok(())
}

/// Parses the value of `--set KEY=VALUE`: a TOML value (`3`, `true`, `"x"`, `[..]`), or
/// else the text itself as a string, so `--set model.name=gpt-4o` needs no quotes.
/// One `--set` is one key: a value that would parse as more (`3\nname="x"`) is refused,
/// never cut down to its first.
pub fn parse_override_value(text: &str) -> Result<serde_json::Value, String> {
    match toml::from_str::<Table>(&format!("v = {text}")) {
        Ok(mut t) => {
            let value = t.remove("v").unwrap_or(Value::Boolean(false));
            if let Value::Float(x) = value
                && !x.is_finite()
            {
                // Overrides are kept as JSON in session.json, which has no nan or inf;
                // none of the keys could take one anyway.
                return Err(format!("{text}: must be a finite number"));
            }
            let value = toml_to_json(value);
            match t.keys().next() {
                None => Ok(value),
                Some(other) => Err(format!(
                    "the value sets another key too (`{}`); give each key its own --set",
                    other.escape_default()
                )),
            }
        }
        Err(_) => Ok(serde_json::Value::String(text.to_owned())),
    }
}

pub fn toml_to_json(value: Value) -> serde_json::Value {
    match value {
        Value::String(s) => serde_json::Value::String(s),
        Value::Integer(i) => i.into(),
        Value::Float(f) => {
            serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into)
        }
        Value::Boolean(b) => b.into(),
        Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        Value::Array(items) => items.into_iter().map(toml_to_json).collect(),
        Value::Table(t) => {
            serde_json::Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

fn json_to_toml(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::String(String::new()),
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Value::Integer)
            .unwrap_or_else(|| Value::Float(n.as_f64().unwrap_or(0.0))),
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(items) => Value::Array(items.iter().map(json_to_toml).collect()),
        serde_json::Value::Object(map) => Value::Table(
            map.iter()
                .map(|(k, v)| (k.clone(), json_to_toml(v)))
                .collect(),
        ),
    }
}

/// Where the definition of agent `name` lives; the name is checked first.
pub fn path_for(agents_dir: &Path, name: &str) -> Result<PathBuf, UserError> {
    check_name(name)?;
    Ok(agents_dir.join(format!("{name}.toml")))
}

/// Reads and checks agent `name`, with overrides. Every failure is a usage error that
/// names the file and lists its problems.
pub fn load_named(
    agents_dir: &Path,
    name: &str,
    overrides: &BTreeMap<String, serde_json::Value>,
    home: &HomeConfig,
) -> Result<(AgentDef, Source), UserError> {
    let path = path_for(agents_dir, name)?;
    let source = Source::read(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            UserError::usage(format!(
                "no agent `{name}`: {} does not exist; `agentq agents list` shows the agents, `agentq init` creates the demo",
                path.display()
            ))
        } else {
            UserError::usage(format!("cannot read {}: {e}", path.display()))
        }
    })?;
    match source.load(overrides, home) {
        Ok(def) => Ok((def, source)),
        Err(problems) => Err(invalid_file(&path, &problems)),
    }
}

/// `; the servers defined are: a, b` (or nothing when there are none).
fn known_servers(home: &HomeConfig) -> String {
    if home.mcp_servers.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = home.mcp_servers.keys().map(String::as_str).collect();
        format!("; the servers defined are: {}", names.join(", "))
    }
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

    fn source(name: &str, text: &str) -> Source {
        Source {
            path: PathBuf::from(format!("agents/{name}.toml")),
            text: text.to_owned(),
        }
    }

    const MINIMAL: &str = r#"
        name = "bot"
        [model]
        provider = "scripted"
        [[model.script]]
        text = "hi"
    "#;

    #[test]
    fn a_minimal_definition_gets_the_defaults() {
        let def = source("bot", MINIMAL)
            .load(&BTreeMap::new(), &HomeConfig::default())
            .unwrap();
        assert_eq!(def.limits.max_steps, 20);
        assert_eq!(def.tools.workspace, "session");
        assert!(def.tools.builtin.is_empty());
    }

    #[test]
    fn an_agent_takes_tools_only_from_mcp_servers_agentq_toml_defines_and_enables() {
        let text = format!("{MINIMAL}\n[tools]\nmcp = [\"time\", \"off\", \"nobody\"]\n");
        let home: HomeConfig = toml::from_str(
            "[mcp_servers.time]\ncommand = \"uvx\"\n[mcp_servers.off]\ncommand = \"x\"\nenabled = false\n",
        )
        .unwrap();
        let problems = source("bot", &text)
            .load(&BTreeMap::new(), &home)
            .unwrap_err();
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(
            shown[0].starts_with("tools.mcp[1]: MCP server `off` is disabled"),
            "{shown:?}"
        );
        assert!(
            shown[1].starts_with("tools.mcp[2]: no MCP server `nobody` in agentq.toml")
                && shown[1].ends_with("the servers defined are: off, time"),
            "{shown:?}"
        );
        let granted = format!("{MINIMAL}\n[tools]\nmcp = [\"time\"]\n").replace(
            "[model]",
            "[model]\ntool_choice = \"mcp__time__get_current_time\"",
        );
        let def = source("bot", &granted)
            .load(&BTreeMap::new(), &home)
            .unwrap();
        assert_eq!(def.tools.mcp, ["time"]);
    }

    #[test]
    fn the_name_must_match_the_file() {
        let problems = source("other", MINIMAL)
            .load(&BTreeMap::new(), &HomeConfig::default())
            .unwrap_err();
        assert_eq!(problems[0].key, "name");
        assert!(problems[0].message.contains("other.toml"));
    }

    #[test]
    fn overrides_apply_and_are_checked_like_the_file() {
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "limits.max_steps".to_owned(),
            parse_override_value("3").unwrap(),
        );
        let def = source("bot", MINIMAL)
            .load(&overrides, &HomeConfig::default())
            .unwrap();
        assert_eq!(def.limits.max_steps, 3);

        overrides.insert(
            "limits.max_stepz".to_owned(),
            parse_override_value("3").unwrap(),
        );
        let problems = source("bot", MINIMAL)
            .load(&overrides, &HomeConfig::default())
            .unwrap_err();
        assert_eq!(problems[0].key, "limits.max_stepz");
    }

    #[test]
    fn override_values_are_toml_or_else_text() {
        let parsed = |text| parse_override_value(text).unwrap();
        assert_eq!(parsed("3"), serde_json::json!(3));
        assert_eq!(parsed("true"), serde_json::json!(true));
        assert_eq!(parsed("gpt-4o"), serde_json::json!("gpt-4o"));
        assert_eq!(parsed("\"30s\""), serde_json::json!("30s"));
        assert_eq!(
            parsed("\"\"\"two\nlines\"\"\""),
            serde_json::json!("two\nlines")
        );
    }

    #[test]
    fn one_override_sets_one_key() {
        for smuggled in ["3\nname=\"x\"", "3\n[tools]\nbuiltin=[\"write_file\"]"] {
            let err = parse_override_value(smuggled).unwrap_err();
            assert!(err.contains("its own --set"), "{smuggled:?}: {err}");
        }
    }

    #[test]
    fn syntax_errors_say_where() {
        let problems = source("bot", "name = \n")
            .load(&BTreeMap::new(), &HomeConfig::default())
            .unwrap_err();
        assert!(
            problems[0].message.starts_with("invalid TOML: line 1"),
            "{:?}",
            problems
        );
    }

    #[test]
    fn workspaces_stay_under_the_home() {
        assert!(check_workspace("session").is_ok());
        assert!(check_workspace("projects/site").is_ok());
        for bad in [
            "/etc",
            "../x",
            "a/../../b",
            "",
            ".",
            "./",
            "agents",
            "sessions/x",
            "./agents",
        ] {
            assert!(check_workspace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn max_consecutive_errors_leaves_the_model_one_failed_step_to_learn_from() {
        let with = |n: &str| {
            source(
                "bot",
                &format!("{MINIMAL}\n        [limits]\n        max_consecutive_errors = {n}\n"),
            )
            .load(&BTreeMap::new(), &HomeConfig::default())
        };
        let problems = with("1").unwrap_err();
        assert_eq!(problems[0].key, "limits.max_consecutive_errors");
        assert!(
            problems[0].message.contains("on_tool_error"),
            "{problems:?}"
        );
        assert_eq!(with("2").unwrap().limits.max_consecutive_errors, 2);
    }

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

    #[test]
    fn names_are_safe_file_stems() {
        for good in ["demo", "general-assistant", "a_1"] {
            assert!(check_name(good).is_ok());
        }
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b", "é"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
