//! Agent definitions: `agents/<name>.toml`, checked, typed, and with a session's
//! `--set` overrides applied (ARCHITECTURE.md §5).
//!
//! A definition is checked twice, and every problem of a pass is reported at once: its
//! table against the schema ([`schema::AGENT`]), then the typed definition against the
//! home's config (`check.rs`).

mod check;
pub mod hooks;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::{Table, Value};

use crate::config::{HomeConfig, ResponseFormat};
use crate::error::UserError;
use crate::time::parse_duration;
/// Also reachable here, where the commands that report a definition's problems look
/// for it (`definition::schema::Problem`).
pub use crate::validate::schema;
use crate::validate::{self, Problem, is_name};
use check::{check_file_name, check_semantics, resolve_output};

/// Built-in tools this version provides, by their contract names.
pub const BUILTIN_TOOLS: &[&str] = &[
    "read_file",
    "write_file",
    "edit_file",
    "list_dir",
    "search_files",
    "todo_write",
];

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
    /// `[[checks]]`: what must pass before an answer completes the execution.
    #[serde(default)]
    pub checks: Vec<CheckDef>,
    /// `[output]`: the JSON Schema the final answer must be valid against.
    #[serde(default)]
    pub output: Option<OutputDef>,
    /// `[hooks]`: what runs once an execution has settled.
    #[serde(default)]
    pub hooks: hooks::HooksDef,
}

/// `[output]`: the final answer must be one JSON value valid against a JSON Schema,
/// given inline (`schema`, a table or a string holding JSON) or in a file
/// (`schema_file`, relative to the `agents/` directory). Exactly one of the two.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputDef {
    #[serde(default)]
    pub schema: Option<Value>,
    #[serde(default)]
    pub schema_file: Option<String>,
    /// Whether the model server is asked to keep the answer to the schema (OpenAI's
    /// `response_format`; Anthropic's forced answer tool when the agent has no tools).
    /// Validation holds either way; `false` for a server that refuses the request.
    #[serde(default = "yes")]
    pub constrain: bool,
    /// The schema as JSON, read and checked when the definition is loaded.
    #[serde(skip)]
    pub resolved: serde_json::Value,
}

impl OutputDef {
    /// A validator for `schema`, or why none can be built: not a valid schema for its
    /// draft (meta-validation), or a `$ref` it cannot resolve (nothing is fetched).
    pub fn validator_for(schema: &serde_json::Value) -> Result<jsonschema::Validator, String> {
        if !(schema.is_object() || schema.is_boolean()) {
            return Err("is not a JSON Schema: expected an object (or true/false)".to_owned());
        }
        jsonschema::validator_for(schema).map_err(|e| format!("is not a valid JSON Schema: {e}"))
    }

    /// The validator for the resolved schema (checked when the definition was loaded).
    pub fn validator(&self) -> Result<jsonschema::Validator, String> {
        OutputDef::validator_for(&self.resolved)
    }
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
    /// How the server takes the `[output]` schema (else the named provider's).
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
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
    /// Rounds of `[[checks]]` that may fail before the execution fails
    /// (`checks_failed`); the last one's failure is not sent back to the model.
    #[serde(default = "default_max_check_rounds")]
    pub max_check_rounds: u32,
    /// How long a call may wait for approval before it is denied by itself.
    #[serde(default, deserialize_with = "de_duration")]
    pub approval_timeout: Option<Duration>,
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
            max_check_rounds: default_max_check_rounds(),
            approval_timeout: None,
        }
    }
}

fn default_max_consecutive_errors() -> u32 {
    3
}

fn default_max_check_rounds() -> u32 {
    3
}

fn yes() -> bool {
    true
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
    /// `approval = "required"`: every call waits for a person (`agentq approve`).
    #[serde(default)]
    pub approval: Approval,
}

/// Whether a declared command's calls wait for a person before they run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    #[default]
    Never,
    Required,
}

/// `[[checks]]`: a program that says whether the work is done, run in the workspace
/// when the model answers, exactly as a declared command runs (no shell, scrubbed
/// environment, own process group, capped output, timeout). Exit code 0 passes.
/// Checks run again on every round and when an execution is resumed, so they must
/// be idempotent.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckDef {
    pub name: String,
    pub argv: Vec<String>,
    #[serde(default, deserialize_with = "de_duration")]
    pub timeout: Option<Duration>,
    /// Working directory, relative to the workspace.
    #[serde(default)]
    pub cwd: Option<String>,
}

impl CheckDef {
    /// The check as a declared command, so it runs through the same code as one.
    pub fn as_command(&self) -> CommandToolDef {
        CommandToolDef {
            name: self.name.clone(),
            description: String::new(),
            argv: self.argv.clone(),
            parameters: None,
            timeout: self.timeout,
            cwd: self.cwd.clone(),
            read_only: false,
            approval: Approval::Never,
        }
    }
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
    if is_name(name) {
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
            set_dotted(&mut table, key, json_to_toml(value))
                .map_err(|message| vec![Problem::new(key.clone(), message)])?;
        }
        let mut problems = Vec::new();
        schema::check_table(&table, schema::AGENT, "", &mut problems);
        if let Some(Value::String(name)) = table.get("name") {
            problems.extend(check_file_name(name, &self.stem()));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut def: AgentDef = Value::Table(table)
            .try_into()
            .map_err(|e| vec![Problem::new(String::new(), e.message())])?;
        let mut semantic = check_semantics(&def, home);
        if let Some(output) = &mut def.output {
            let agents_dir = self.path.parent().unwrap_or(Path::new("."));
            semantic.extend(resolve_output(output, agents_dir));
        }
        if semantic.is_empty() {
            Ok(def)
        } else {
            Err(semantic)
        }
    }
}

/// One problem for a TOML syntax error, with its line and column.
fn toml_problem(text: &str, err: &toml::de::Error) -> Problem {
    Problem::new(
        String::new(),
        format!("invalid TOML: {}", validate::describe_toml_error(text, err)),
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
        Err(problems) => Err(validate::invalid_file(&path, &problems)),
    }
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
    fn names_are_safe_file_stems() {
        for good in ["demo", "general-assistant", "a_1"] {
            assert!(check_name(good).is_ok());
        }
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b", "é"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
