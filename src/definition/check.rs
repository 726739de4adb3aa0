//! What the schema cannot say about an agent definition: values from a fixed set
//! (providers, built-in tools, the home's MCP servers), keys that only work together,
//! and the names and paths a run will use. The definition is checked against the
//! home's config, whose providers and servers it may name.
//!
//! Every problem is reported, in the order of the keys: `[model]`, its script, the
//! tool choice, then `[tools]` and its commands, then `[[checks]]`, `[hooks]`, then `[output]`
//! (whose schema is read, from its file if it has one, and checked as a JSON Schema).

use std::path::Path;

use toml::Value;

use super::{
    AgentDef, BUILTIN_TOOLS, CheckDef, CommandToolDef, OutputDef, ToolChoice, check_name,
    toml_to_json,
};
use crate::config::{HomeConfig, ProviderKind};
use crate::validate::{
    PROVIDERS, Problem, check_base_url, check_env_name, check_env_pass, check_relative, is_name,
};

/// Every problem of a definition that passed the schema.
pub(super) fn check_semantics(def: &AgentDef, home: &HomeConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    check_model(def, home, &mut problems);
    check_script(def, &mut problems);
    check_tool_choice(def, &mut problems);
    check_tools(def, home, &mut problems);
    for (i, command) in def.tools.command.iter().enumerate() {
        check_command(def, i, command, &mut problems);
    }
    for (i, check) in def.checks.iter().enumerate() {
        check_check(def, i, check, &mut problems);
    }
    super::hooks::check_hooks(def, &mut problems);
    problems
}

/// `[output]`: reads its schema (inline, or from `schema_file` under `agents_dir`)
/// into `output.resolved` and checks it is a JSON Schema a validator can be built
/// from (its draft's meta-schema; a `$ref` outside the schema cannot be resolved).
pub(super) fn resolve_output(output: &mut OutputDef, agents_dir: &Path) -> Vec<Problem> {
    let (key, schema) = match (&output.schema, &output.schema_file) {
        (Some(_), Some(_)) => {
            return vec![Problem::new(
                "output",
                "give `schema` or `schema_file`, not both",
            )];
        }
        (None, None) => {
            return vec![Problem::new(
                "output",
                "give the answer's JSON Schema: `schema = { ... }` or `schema_file = \"NAME.json\"`",
            )];
        }
        (Some(Value::String(text)), None) => (
            "output.schema",
            serde_json::from_str(text).map_err(|e| format!("is not JSON: {e}")),
        ),
        (Some(table), None) => ("output.schema", Ok(toml_to_json(table.clone()))),
        (None, Some(file)) => ("output.schema_file", read_schema_file(file, agents_dir)),
    };
    let checked = schema.and_then(|schema| {
        OutputDef::validator_for(&schema)?;
        Ok(schema)
    });
    match checked {
        Ok(schema) => {
            output.resolved = schema;
            Vec::new()
        }
        Err(message) => vec![Problem::new(key, message)],
    }
}

/// The JSON in `schema_file`, a path relative to the `agents/` directory.
fn read_schema_file(file: &str, agents_dir: &Path) -> Result<serde_json::Value, String> {
    check_relative(file)?;
    let path = agents_dir.join(file);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

/// The name must be the file's stem (and so a safe one).
pub(super) fn check_file_name(name: &str, stem: &str) -> Option<Problem> {
    let message = if name != stem {
        format!(
            "`{}` does not match the file name `{stem}.toml`",
            name.escape_default()
        )
    } else {
        check_name(name).err()?.message
    };
    Some(Problem::new("name", message))
}

/// `[model]`: a provider that exists, the model name it needs, an endpoint and a key
/// variable that can be used, and a temperature the provider's protocol takes.
fn check_model(def: &AgentDef, home: &HomeConfig, problems: &mut Vec<Problem>) {
    let provider = def.model.provider.as_str();
    let named = home.providers.get(provider);
    if named.is_none() && !PROVIDERS.contains(&provider) {
        let mut known: Vec<&str> = PROVIDERS.to_vec();
        known.extend(home.providers.keys().map(String::as_str));
        problems.push(Problem::new(
            "model.provider",
            format!(
                "unknown provider `{provider}`; use one of {} (or define [providers.{provider}] in agentq.toml)",
                known.join(", ")
            ),
        ));
    } else if (named.is_some() || provider != "scripted") && def.model.name.is_none() {
        problems.push(Problem::new(
            "model.name",
            format!("missing (required for provider `{provider}`)"),
        ));
    }
    if let Some(name) = &def.model.name
        && (name.trim().is_empty() || name.chars().any(char::is_control))
    {
        problems.push(Problem::new(
            "model.name",
            format!(
                "`{}` is not a model name; write it as the server knows it, such as gpt-4o-mini",
                name.escape_default()
            ),
        ));
    }
    if let Some(url) = &def.model.base_url
        && let Err(message) = check_base_url(url)
    {
        problems.push(Problem::new("model.base_url", message));
    }
    if let Some(var) = &def.model.api_key_env
        && let Err(message) = check_env_name(var)
    {
        problems.push(Problem::new("model.api_key_env", message));
    }
    let anthropic = match named {
        Some(named) => named.kind == ProviderKind::Anthropic,
        None => provider == "anthropic",
    };
    if anthropic && let Some(t) = def.model.temperature.filter(|t| *t > 1.0) {
        // The schema allows OpenAI's 0 to 2; the Messages API refuses more than 1.
        problems.push(Problem::new(
            "model.temperature",
            format!("model.temperature = {t}: must be at most 1 for an anthropic provider"),
        ));
    }
}

/// `[[model.script]]`: the scripted provider answers from it, so it needs an entry,
/// and each scripted call needs a tool to name.
fn check_script(def: &AgentDef, problems: &mut Vec<Problem>) {
    if def.model.provider == "scripted" && def.model.script.is_empty() {
        problems.push(Problem::new(
            "model.script",
            "the scripted provider needs at least one [[model.script]] entry",
        ));
    }
    for (i, entry) in def.model.script.iter().enumerate() {
        for (j, call) in entry.tool_calls.iter().enumerate() {
            if call.name.is_empty() {
                problems.push(Problem::new(
                    format!("model.script[{i}].tool_calls[{j}].name"),
                    "is empty",
                ));
            }
        }
    }
}

/// `[model] tool_choice`: a call it forces must be one the agent can make.
fn check_tool_choice(def: &AgentDef, problems: &mut Vec<Problem>) {
    // An MCP server's tools are known only once it runs; a granted server counts as tools.
    let no_tools =
        def.tools.builtin.is_empty() && def.tools.command.is_empty() && def.tools.mcp.is_empty();
    if def.model.tool_choice == Some(ToolChoice::Required) && no_tools {
        problems.push(Problem::new(
            "model.tool_choice",
            "\"required\" needs a tool to call; grant one in [tools], or leave tool_choice out",
        ));
    }
    let Some(ToolChoice::Tool(name)) = &def.model.tool_choice else {
        return;
    };
    let granted = def.tools.builtin.iter().any(|t| t == name)
        || def.tools.command.iter().any(|c| &c.name == name)
        || def
            .tools
            .mcp
            .iter()
            .any(|server| name.starts_with(&format!("mcp__{server}__")));
    if !granted && BUILTIN_TOOLS.contains(&name.as_str()) {
        problems.push(Problem::new(
            "model.tool_choice",
            format!(
                "`{name}` is a built-in tool this agent does not list; add it to `[tools] builtin`"
            ),
        ));
    } else if !granted {
        problems.push(Problem::new(
            "model.tool_choice",
            format!(
                "`{}` is neither \"auto\", \"required\", \"none\" nor a tool this agent has",
                name.escape_default()
            ),
        ));
    }
}

/// `[tools]` but its commands: built-in tools that exist, a workspace of its own,
/// variables that may be passed, and MCP servers the home defines and enables.
fn check_tools(def: &AgentDef, home: &HomeConfig, problems: &mut Vec<Problem>) {
    for (i, tool) in def.tools.builtin.iter().enumerate() {
        if !BUILTIN_TOOLS.contains(&tool.as_str()) {
            problems.push(Problem::new(
                format!("tools.builtin[{i}]"),
                format!(
                    "unknown tool `{tool}`; built-in tools are {}",
                    BUILTIN_TOOLS.join(", ")
                ),
            ));
        }
    }
    if let Err(message) = check_workspace(&def.tools.workspace) {
        problems.push(Problem::new("tools.workspace", message));
    }
    let key_env = key_env(def, home);
    for (i, name) in def.tools.env_pass.iter().enumerate() {
        if let Err(message) = check_env_pass(name, &key_env) {
            problems.push(Problem::new(format!("tools.env_pass[{i}]"), message));
        }
    }
    for (i, server) in def.tools.mcp.iter().enumerate() {
        match home.mcp_servers.get(server) {
            None => problems.push(Problem::new(
                format!("tools.mcp[{i}]"),
                format!(
                    "no MCP server `{}` in agentq.toml; define [mcp_servers.{}] there{}",
                    server.escape_default(),
                    server.escape_default(),
                    known_servers(home)
                ),
            )),
            Some(config) if !config.enabled => problems.push(Problem::new(
                format!("tools.mcp[{i}]"),
                format!(
                    "MCP server `{server}` is disabled in agentq.toml (enabled = false); enable it or leave it out"
                ),
            )),
            Some(_) => {}
        }
    }
}

/// The variables the agent's key is read from: its own `api_key_env` and its named
/// provider's.
fn key_env<'a>(def: &'a AgentDef, home: &'a HomeConfig) -> Vec<&'a str> {
    def.model
        .api_key_env
        .iter()
        .chain(
            home.providers
                .get(&def.model.provider)
                .and_then(|p| p.api_key_env.as_ref()),
        )
        .map(String::as_str)
        .collect()
}

/// `[[tools.command]]` number `i`: a name no other tool has, a program, a working
/// directory inside the workspace, and parameters the model's server accepts.
fn check_command(def: &AgentDef, i: usize, command: &CommandToolDef, problems: &mut Vec<Problem>) {
    let key = |field: &str| format!("tools.command[{i}].{field}");
    if !is_name(&command.name) {
        problems.push(Problem::new(
            key("name"),
            format!(
                "`{}` is not a tool name: use letters, digits, `-` and `_`",
                command.name.escape_default()
            ),
        ));
    } else if BUILTIN_TOOLS.contains(&command.name.as_str())
        || def.tools.command[..i]
            .iter()
            .any(|c| c.name == command.name)
    {
        problems.push(Problem::new(
            key("name"),
            format!("`{}` is already the name of another tool", command.name),
        ));
    }
    check_program(&command.argv, command.cwd.as_deref(), &key, problems);
    // Sent to the model as the function's parameters, which must be an object
    // schema; any other is refused by the server at every step.
    if let Some(parameters) = &command.parameters
        && parameters.get("type").and_then(Value::as_str) != Some("object")
    {
        problems.push(Problem::new(
            key("parameters"),
            "must be a JSON Schema of an object: type = \"object\", with its properties",
        ));
    }
    // A read-only call may run again on resume and beside others: nothing a person
    // would have to approve first.
    if command.read_only && command.approval == super::Approval::Required {
        problems.push(Problem::new(
            key("approval"),
            "a read_only command cannot require approval: remove read_only, or approval",
        ));
    }
}

/// `[[checks]]` number `i`: a name no other check has (events and `execution.finished`
/// tell them apart by it), a program, and a working directory inside the workspace.
fn check_check(def: &AgentDef, i: usize, check: &CheckDef, problems: &mut Vec<Problem>) {
    let key = |field: &str| format!("checks[{i}].{field}");
    if !is_name(&check.name) {
        problems.push(Problem::new(
            key("name"),
            format!(
                "`{}` is not a check name: use letters, digits, `-` and `_`",
                check.name.escape_default()
            ),
        ));
    } else if def.checks[..i].iter().any(|c| c.name == check.name) {
        problems.push(Problem::new(
            key("name"),
            format!("`{}` is already the name of another check", check.name),
        ));
    }
    check_program(&check.argv, check.cwd.as_deref(), &key, problems);
}

/// What a declared command and a check share: a program to run, and a working
/// directory inside the workspace. `key` names a field of the entry.
fn check_program(
    argv: &[String],
    cwd: Option<&str>,
    key: &dyn Fn(&str) -> String,
    problems: &mut Vec<Problem>,
) {
    if argv.first().is_none_or(|p| p.is_empty()) {
        problems.push(Problem::new(
            key("argv"),
            "needs at least the program to run",
        ));
    }
    if let Some(cwd) = cwd
        && let Err(message) = check_relative(cwd)
    {
        problems.push(Problem::new(key("cwd"), message));
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

/// `; the servers defined are: a, b` (or nothing when there are none).
fn known_servers(home: &HomeConfig) -> String {
    if home.mcp_servers.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = home.mcp_servers.keys().map(String::as_str).collect();
        format!("; the servers defined are: {}", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_need_a_unique_name_a_program_and_a_working_directory_inside_the_workspace() {
        let text = r#"
            name = "ci"
            [model]
            provider = "scripted"
            [[model.script]]
            text = "done"
            [[checks]]
            name = "tests"
            argv = ["cargo", "test"]
            [[checks]]
            name = "tests"
            argv = []
            cwd = "../outside"
            [[checks]]
            name = "a b"
            argv = [""]
            cwd = "/etc"
        "#;
        let source = super::super::Source {
            path: "agents/ci.toml".into(),
            text: text.to_owned(),
        };
        let problems = source
            .load(&Default::default(), &HomeConfig::default())
            .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "checks[1].name",
                "checks[1].argv",
                "checks[1].cwd",
                "checks[2].name",
                "checks[2].argv",
                "checks[2].cwd"
            ],
            "{problems:?}"
        );
        assert!(
            problems[0].message.contains("another check"),
            "{problems:?}"
        );

        let unknown = source.text.replace("cwd = \"/etc\"", "shell = true");
        let problems = super::super::Source {
            text: unknown,
            ..source
        }
        .load(&Default::default(), &HomeConfig::default())
        .unwrap_err();
        assert_eq!(problems[0].key, "checks[2].shell", "{problems:?}");
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
}
