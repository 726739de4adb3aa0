//! Tools the model may call. A tool never fails the execution: whatever goes wrong
//! (unknown tool, bad arguments, a path outside the workspace) becomes a tool result
//! marked as an error, which the model sees and may recover from.

pub mod args;
pub mod command;
pub mod files;
pub mod process;
pub mod todo;

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use crate::definition::{AgentDef, CheckDef, CommandToolDef};
use crate::domain::state::Todo;
use crate::provider::ToolSpec;
use files::Workspace;

/// What a tool call produced, as the model will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    pub content: String,
    pub is_error: bool,
}

impl ToolOutput {
    pub fn ok(content: impl Into<String>) -> ToolOutput {
        ToolOutput {
            content: content.into(),
            is_error: false,
        }
    }

    pub fn error(content: impl Into<String>) -> ToolOutput {
        ToolOutput {
            content: content.into(),
            is_error: true,
        }
    }
}

/// What a tool may touch besides the workspace.
pub struct ToolContext<'a> {
    /// The agent's task list, kept in the session state (`todo_write`).
    pub todos: &'a mut Vec<Todo>,
    /// Asked while a long tool runs (a command): true when the execution should stop,
    /// and the tool should end its work (killing its processes) and return.
    pub stop: &'a mut (dyn FnMut() -> bool + Send),
}

/// How a built-in tool does its work.
enum Action {
    /// A file operation inside the workspace.
    File(fn(&Workspace, &Value) -> Result<String, String>),
    /// Replaces the task list.
    Todo,
}

/// A built-in tool: its contract name, description and argument schema.
struct Builtin {
    name: &'static str,
    description: &'static str,
    parameters: fn() -> Value,
    /// Changes nothing: may run at the same time as other read-only calls.
    read_only: bool,
    action: Action,
}

static BUILTINS: &[Builtin] = &[
    Builtin {
        name: "read_file",
        description: "Read a text file in the workspace. `offset` is the first line (1-based), `limit` the number of lines.",
        parameters: files::read_file_schema,
        read_only: true,
        action: Action::File(files::read_file),
    },
    Builtin {
        name: "write_file",
        description: "Create or overwrite a file in the workspace with `content`.",
        parameters: files::write_file_schema,
        read_only: false,
        action: Action::File(files::write_file),
    },
    Builtin {
        name: "edit_file",
        description: "Replace the one occurrence of `old_string` in a file with `new_string`. `old_string` must match exactly and be unique: include surrounding lines.",
        parameters: files::edit_file_schema,
        read_only: false,
        action: Action::File(files::edit_file),
    },
    Builtin {
        name: "search_files",
        description: "Search the workspace's text files for `pattern` (a regular expression, or plain text if it is not one), optionally under `path`. Returns `file:line: text` matches.",
        parameters: files::search_files_schema,
        read_only: true,
        action: Action::File(files::search_files),
    },
    Builtin {
        name: "todo_write",
        description: "Replace your task list: `todos` is the whole list of {content, status} with status pending, in_progress or completed; at most one in progress.",
        parameters: todo::schema,
        read_only: false,
        action: Action::Todo,
    },
    Builtin {
        name: "list_dir",
        description: "List a directory of the workspace; directories end with `/`.",
        parameters: files::list_dir_schema,
        read_only: true,
        action: Action::File(files::list_dir),
    },
];

/// The tools granted to one agent, bound to its workspace.
pub struct Toolbox {
    workspace: Workspace,
    builtins: Vec<&'static Builtin>,
    commands: Vec<CommandToolDef>,
    env: command::EnvPolicy,
    /// The agent whose definition grants the tools, named when a tool is not granted.
    agent: Option<String>,
    /// The session commands run for ([`process::Owner`]).
    owner: Option<process::Owner>,
    /// The tools of the agent's MCP servers.
    mcp: Arc<dyn ToolSource>,
}

/// Tools that come from outside agentq (an agent's MCP servers): a toolbox lists them
/// beside its own and hands their calls over. The source checks its own arguments.
pub trait ToolSource: Send + Sync {
    fn specs(&self) -> Vec<ToolSpec>;

    fn names(&self) -> Vec<String>;

    /// Whether calls of the tool may run alongside others (it changes nothing).
    fn is_read_only(&self, name: &str) -> bool;

    /// Whether calls of the tool wait for a person's approval before they run.
    fn needs_approval(&self, _name: &str) -> bool {
        false
    }

    /// The server a tool comes from, for events and `watch`.
    fn server_of(&self, name: &str) -> Option<&str>;

    /// Runs a call of one of its tools; `None` when the name is not one of them.
    /// `stop` is polled while the call runs: true cancels it.
    fn call<'a>(
        &'a self,
        name: &'a str,
        arguments: &'a Value,
        stop: &'a mut (dyn FnMut() -> bool + Send),
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<ToolOutput>> + Send + 'a>>;
}

/// A source with no tools, for a toolbox without MCP servers.
struct NoTools;

impl ToolSource for NoTools {
    fn specs(&self) -> Vec<ToolSpec> {
        Vec::new()
    }

    fn names(&self) -> Vec<String> {
        Vec::new()
    }

    fn is_read_only(&self, _: &str) -> bool {
        false
    }

    fn server_of(&self, _: &str) -> Option<&str> {
        None
    }

    fn call<'a>(
        &'a self,
        _: &'a str,
        _: &'a Value,
        _: &'a mut (dyn FnMut() -> bool + Send),
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<ToolOutput>> + Send + 'a>> {
        Box::pin(std::future::ready(None))
    }
}

impl Toolbox {
    /// Grants the named built-ins and the declared commands (unknown names were
    /// refused when the definition was checked, and are skipped here).
    pub fn new(
        workspace_root: PathBuf,
        granted: &[String],
        commands: Vec<CommandToolDef>,
    ) -> Toolbox {
        let builtins = BUILTINS
            .iter()
            .filter(|t| granted.iter().any(|g| g == t.name))
            .collect();
        Toolbox {
            workspace: Workspace::new(workspace_root),
            builtins,
            commands,
            env: command::EnvPolicy::default(),
            agent: None,
            owner: None,
            mcp: Arc::new(NoTools),
        }
    }

    /// The tools `def` grants, with its command environment (`[tools] env`, `env_pass`).
    pub fn for_agent(workspace_root: PathBuf, def: &AgentDef) -> Toolbox {
        let mut toolbox = Toolbox::new(
            workspace_root,
            &def.tools.builtin,
            def.tools.command.clone(),
        );
        toolbox.env.mode = def.tools.env;
        toolbox.env.pass = def.tools.env_pass.clone();
        toolbox.agent = Some(def.name.clone());
        toolbox
    }

    /// Withholds these environment variables from commands, whatever they are called
    /// and whatever `env_pass` says (the names the agent's keys are read from).
    pub fn withholding(mut self, names: Vec<String>) -> Toolbox {
        self.env.withheld = names;
        self
    }

    /// Marks and records the processes of commands as working for this session, so
    /// that whatever a dead worker left behind is found and killed by the next one.
    pub fn for_session(mut self, owner: process::Owner) -> Toolbox {
        self.owner = Some(owner);
        self
    }

    /// Adds the tools of the MCP servers the worker started for the session.
    pub fn with_mcp(mut self, mcp: impl ToolSource + 'static) -> Toolbox {
        self.mcp = Arc::new(mcp);
        self
    }

    /// The MCP server a tool comes from; `None` for a built-in or a command.
    pub fn server_of(&self, name: &str) -> Option<&str> {
        self.mcp.server_of(name)
    }

    pub fn specs(&self) -> Vec<ToolSpec> {
        let builtins = self.builtins.iter().map(|t| ToolSpec {
            name: t.name.to_owned(),
            description: t.description.to_owned(),
            parameters: (t.parameters)(),
        });
        let commands = self.commands.iter().map(command::spec);
        builtins.chain(commands).chain(self.mcp.specs()).collect()
    }

    pub fn names(&self) -> Vec<String> {
        let builtins = self.builtins.iter().map(|t| t.name.to_owned());
        builtins
            .chain(self.commands.iter().map(|c| c.name.clone()))
            .chain(self.mcp.names())
            .collect()
    }

    /// True for tools that change nothing, which may run concurrently: the read-only
    /// built-ins, the commands declared `read_only` and the MCP tools their server
    /// marks so. Never for a tool that needs approval, whatever its server says: a
    /// read-only batch runs without passing the gate.
    pub fn is_read_only(&self, name: &str) -> bool {
        let read_only = self.builtins.iter().any(|t| t.name == name && t.read_only)
            || self.commands.iter().any(|c| c.name == name && c.read_only)
            || self.mcp.is_read_only(name);
        read_only && !self.needs_approval(name)
    }

    /// Whether calls of `name` wait for a person's approval before they run (a command
    /// declared `approval = "required"`, a tool of an MCP server with `approval` or
    /// `approval_tools`).
    pub fn needs_approval(&self, name: &str) -> bool {
        self.commands
            .iter()
            .any(|c| c.name == name && c.approval == crate::definition::Approval::Required)
            || self.mcp.needs_approval(name)
    }

    /// Why `name` cannot be called, and what would make it callable: a built-in tool
    /// the definition does not list is named as such, with the key that grants it.
    fn not_granted(&self, name: &str) -> String {
        let definition = match &self.agent {
            Some(agent) => format!("agents/{agent}.toml"),
            None => "the agent's definition".to_owned(),
        };
        let granted = self.names();
        let available = if granted.is_empty() {
            "this agent has no tools".to_owned()
        } else {
            format!("the tools available are: {}", granted.join(", "))
        };
        if BUILTINS.iter().any(|t| t.name == name) {
            format!(
                "`{name}` is a built-in tool this agent does not list; add it to `[tools] builtin` in {definition} ({available})"
            )
        } else if granted.is_empty() {
            format!(
                "unknown tool `{name}`; {available} (grant built-in ones with `[tools] builtin` or declare commands with `[[tools.command]]` in {definition})"
            )
        } else {
            format!("unknown tool `{name}`; {available}")
        }
    }

    /// Runs a `[[checks]]` entry exactly as a declared command runs, in this toolbox's
    /// workspace, environment and process records, with nothing on its standard input.
    /// `Err` when it could not start.
    pub async fn run_check(
        &self,
        check: &CheckDef,
        stop: &mut (dyn FnMut() -> bool + Send),
    ) -> Result<command::CommandRun, String> {
        command::execute(
            &check.as_command(),
            &self.workspace,
            &[],
            &self.env,
            self.owner.as_ref(),
            stop,
        )
        .await
    }

    /// Runs one call. Only granted tools run, and only with arguments their schema
    /// accepts ([`args::check`]); anything else is a tool error.
    pub async fn call(
        &self,
        name: &str,
        arguments: &Value,
        ctx: &mut ToolContext<'_>,
    ) -> ToolOutput {
        enum Granted<'t> {
            Builtin(&'static Builtin),
            Command(&'t CommandToolDef),
        }
        let tool = if let Some(tool) = self.builtins.iter().find(|t| t.name == name) {
            Granted::Builtin(tool)
        } else if let Some(command) = self.commands.iter().find(|c| c.name == name) {
            Granted::Command(command)
        } else if let Some(output) = self.mcp.call(name, arguments, ctx.stop).await {
            // The server checks its own arguments against its own schema.
            return output;
        } else {
            return ToolOutput::error(self.not_granted(name));
        };
        let schema = match tool {
            Granted::Builtin(tool) => (tool.parameters)(),
            Granted::Command(command) => command::spec(command).parameters,
        };
        if let Err(message) = args::check(name, &schema, arguments) {
            return ToolOutput::error(message);
        }
        match tool {
            Granted::Builtin(tool) => {
                let result = match tool.action {
                    Action::File(run) => {
                        // On the blocking pool, so that the read-only calls of a step
                        // really run at the same time (and a slow disk stalls no task).
                        let workspace = self.workspace.clone();
                        let arguments = arguments.clone();
                        tokio::task::spawn_blocking(move || run(&workspace, &arguments))
                            .await
                            .unwrap_or_else(|e| Err(format!("the tool `{name}` failed: {e}")))
                    }
                    Action::Todo => todo::write(ctx.todos, arguments),
                };
                match result {
                    Ok(content) => ToolOutput::ok(content),
                    Err(message) => ToolOutput::error(message),
                }
            }
            Granted::Command(command) => {
                command::run(
                    command,
                    &self.workspace,
                    arguments,
                    &self.env,
                    self.owner.as_ref(),
                    ctx.stop,
                )
                .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(toolbox: &Toolbox, name: &str, args: Value) -> ToolOutput {
        let mut todos = Vec::new();
        let mut stop = || false;
        let mut ctx = ToolContext {
            todos: &mut todos,
            stop: &mut stop,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(toolbox.call(name, &args, &mut ctx))
    }

    #[test]
    fn only_granted_tools_run() {
        let dir = tempfile::tempdir().unwrap();
        let toolbox = Toolbox::new(dir.path().to_owned(), &["list_dir".to_owned()], Vec::new());
        assert_eq!(toolbox.names(), vec!["list_dir"]);
        let out = call(&toolbox, "write_file", json!({"path": "x", "content": "y"}));
        assert!(out.is_error);
        assert_eq!(
            out.content,
            "`write_file` is a built-in tool this agent does not list; add it to `[tools] builtin` in the agent's definition (the tools available are: list_dir)"
        );
        let out = call(&toolbox, "shell", json!({}));
        assert_eq!(
            out.content,
            "unknown tool `shell`; the tools available are: list_dir"
        );
        assert!(!dir.path().join("x").exists());
    }

    #[test]
    fn a_built_in_the_agent_does_not_list_names_the_key_that_grants_it() {
        let dir = tempfile::tempdir().unwrap();
        let agent = |tools: &str| -> AgentDef {
            toml::from_str(&format!(
                "name = \"helper\"\n[model]\nprovider = \"scripted\"\n[tools]\n{tools}"
            ))
            .unwrap()
        };
        let bare = Toolbox::for_agent(dir.path().to_owned(), &agent(""));
        let listing = Toolbox::for_agent(dir.path().to_owned(), &agent("builtin = [\"list_dir\"]"));
        for tool in BUILTINS {
            let out = call(&bare, tool.name, json!({}));
            assert_eq!(
                out.content,
                format!(
                    "`{}` is a built-in tool this agent does not list; add it to `[tools] builtin` in agents/helper.toml (this agent has no tools)",
                    tool.name
                )
            );
            if tool.name != "list_dir" {
                let out = call(&listing, tool.name, json!({}));
                assert!(out.is_error);
                assert!(
                    out.content
                        .ends_with("in agents/helper.toml (the tools available are: list_dir)"),
                    "{}",
                    out.content
                );
            }
        }
        assert_eq!(
            call(&bare, "shell", json!({})).content,
            "unknown tool `shell`; this agent has no tools (grant built-in ones with `[tools] builtin` or declare commands with `[[tools.command]]` in agents/helper.toml)"
        );
    }

    #[test]
    fn arguments_must_be_an_object() {
        let dir = tempfile::tempdir().unwrap();
        let toolbox = Toolbox::new(dir.path().to_owned(), &["list_dir".to_owned()], Vec::new());
        let out = call(&toolbox, "list_dir", json!("notes"));
        assert!(out.is_error);
        assert_eq!(
            out.content,
            "the arguments of `list_dir` must be a JSON object like {\"path\":\"…\"}, not \"notes\""
        );
    }

    /// Every built-in, and a declared `weather` command, over a workspace holding
    /// `notes.md` and `src/main.rs`.
    fn every_tool() -> (tempfile::TempDir, Toolbox) {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(ws.join("src")).unwrap();
        std::fs::write(ws.join("notes.md"), "one\ntwo\n").unwrap();
        std::fs::write(ws.join("src/main.rs"), "fn main() {}\n").unwrap();
        let weather: CommandToolDef = toml::from_str(
            r#"
            name = "weather"
            argv = ["cat"]
            [parameters]
            type = "object"
            required = ["city"]
            [parameters.properties.city]
            type = "string"
            description = "City name, like \"Paris\""
            [parameters.properties.days]
            type = "integer"
            minimum = 1
            maximum = 14
            description = "Days of forecast"
            [parameters.properties.units]
            type = "string"
            enum = ["metric", "imperial"]
            [parameters.properties.when]
            type = "string"
            format = "date"
            "#,
        )
        .unwrap();
        let granted: Vec<String> = BUILTINS.iter().map(|t| t.name.to_owned()).collect();
        let toolbox = Toolbox::new(ws, &granted, vec![weather]);
        (dir, toolbox)
    }

    #[test]
    fn bad_arguments_are_refused_saying_what_a_valid_value_is() {
        let (dir, toolbox) = every_tool();
        let cases: &[(&str, Value, &[&str])] = &[
            (
                "read_file",
                json!({"path": "notes.md", "offset": -1}),
                &[
                    "argument `offset` must be an integer ≥ 1 (First line to read, 1 by default; lines are numbered from 1), not -1",
                ],
            ),
            (
                "read_file",
                json!({"path": "notes.md", "offset": 0}),
                &["argument `offset` must be an integer ≥ 1", "not 0"],
            ),
            (
                "read_file",
                json!({"path": "notes.md", "limit": "10"}),
                &[
                    "argument `limit` must be an integer ≥ 1 (How many lines to read, 2000 by default), not \"10\" (that is text; write the value itself, without quotes)",
                ],
            ),
            (
                "read_file",
                json!({"file_path": "notes.md"}),
                &[
                    "missing argument `path`, which must be a string (File to read, relative to the workspace, like \"notes.md\" or \"src/main.rs\"); read_file takes: path, and optionally limit, offset; you gave: file_path",
                ],
            ),
            (
                "read_file",
                json!({}),
                &["missing argument `path`, which must be a string (File to read"],
            ),
            (
                "read_file",
                json!({"path": "/Users/me/project/notes.md"}),
                &[
                    "`/Users/me/project/notes.md` is an absolute path; use a path relative to the workspace. Did you mean `notes.md`? The workspace holds: notes.md, src/.",
                ],
            ),
            (
                "write_file",
                json!({"path": "a.md"}),
                &[
                    "missing argument `content`, which must be a string (The whole new content of the file, as text)",
                ],
            ),
            (
                "write_file",
                json!({"path": "a.md", "content": ["line"]}),
                &["argument `content` must be a string", "not [\"line\"]"],
            ),
            (
                "write_file",
                json!({"path": "../a.md", "content": "x"}),
                &[
                    "`../a.md` is outside the workspace",
                    "The workspace holds: notes.md, src/.",
                ],
            ),
            (
                "edit_file",
                json!({"path": "notes.md", "old": "one", "new": "1"}),
                &[
                    "missing argument `old_string`",
                    "also missing: new_string",
                    "edit_file takes: path, old_string, new_string; you gave: new, old, path",
                ],
            ),
            (
                "edit_file",
                json!({"path": "notes.md", "old_string": "", "new_string": "1"}),
                &["`old_string` is empty"],
            ),
            (
                "edit_file",
                json!({"path": "notes.txt", "old_string": "one", "new_string": "1"}),
                &["`notes.txt` does not exist. The workspace holds: notes.md, src/."],
            ),
            (
                "list_dir",
                json!({"path": 3}),
                &[
                    "argument `path` must be a string (Directory relative to the workspace",
                    "not 3",
                ],
            ),
            (
                "list_dir",
                json!({"path": "lib"}),
                &["`lib` does not exist. The workspace holds: notes.md, src/."],
            ),
            (
                "search_files",
                json!({"path": "src"}),
                &["missing argument `pattern`, which must be a string (What to look for"],
            ),
            (
                "search_files",
                json!({"pattern": "x", "path": "src/bin"}),
                &["`src/bin` does not exist. `src/` holds: main.rs."],
            ),
            (
                "todo_write",
                json!({"todos": "buy milk"}),
                &[
                    "argument `todos` must be a list like [{\"content\":\"…\",\"status\":\"pending\"}] (The whole task list",
                    "not \"buy milk\"",
                ],
            ),
            (
                "todo_write",
                json!({"todos": [{"content": "a", "status": "pending"}, {"content": "b", "status": "done"}]}),
                &[
                    "argument `todos[1].status` must be one of \"pending\", \"in_progress\", \"completed\" (Where the task stands; at most one task may be in_progress), not \"done\"",
                ],
            ),
            (
                "todo_write",
                json!({"todos": [{"task": "a"}]}),
                &[
                    "missing argument `todos[0].content`",
                    "also missing: status",
                    "`todos[0]` takes: content, status; you gave: task",
                ],
            ),
            (
                "todo_write",
                json!({"todos": [{"content": "a", "status": "in_progress"}, {"content": "b", "status": "in_progress"}]}),
                &["at most one may be"],
            ),
            (
                "weather",
                json!({"town": "Paris"}),
                &[
                    "missing argument `city`, which must be a string (City name, like \"Paris\"); weather takes: city, and optionally days, units, when; you gave: town",
                ],
            ),
            (
                "weather",
                json!({"city": "Paris", "days": 30}),
                &["argument `days` must be an integer from 1 to 14 (Days of forecast), not 30"],
            ),
            (
                "weather",
                json!({"city": "Paris", "units": "kelvin"}),
                &["argument `units` must be one of \"metric\", \"imperial\", not \"kelvin\""],
            ),
        ];
        for (tool, args, expected) in cases {
            let out = call(&toolbox, tool, args.clone());
            assert!(out.is_error, "{tool} {args}: {}", out.content);
            for fragment in *expected {
                assert!(
                    out.content.contains(fragment),
                    "{tool} {args}:\n  got      {}\n  expected {fragment}",
                    out.content
                );
            }
        }
        let ws = dir.path().join("ws");
        assert_eq!(
            std::fs::read_to_string(ws.join("notes.md")).unwrap(),
            "one\ntwo\n"
        );
        assert!(!ws.join("a.md").exists() && !dir.path().join("a.md").exists());
    }

    #[test]
    fn extras_nulls_and_rules_the_checker_cannot_judge_are_accepted() {
        let (_dir, toolbox) = every_tool();
        let cases: &[(&str, Value)] = &[
            (
                "read_file",
                json!({"path": "notes.md", "offset": null, "limit": null, "reason": "look"}),
            ),
            ("read_file", json!({"path": "notes.md", "offset": 2.0})),
            ("list_dir", json!({})),
            ("search_files", json!({"pattern": "main", "path": null})),
            (
                "todo_write",
                json!({"todos": [{"content": "a", "status": "pending", "why": "x"}]}),
            ),
            (
                "weather",
                json!({"city": "Paris", "when": "soon", "extra": [1]}),
            ),
        ];
        for (tool, args) in cases {
            let out = call(&toolbox, tool, args.clone());
            assert!(!out.is_error, "{tool} {args}: {}", out.content);
        }
    }

    /// MCP-like tools, all marked read-only by their server; `gated` need approval.
    struct Annotated {
        gated: &'static [&'static str],
    }

    impl ToolSource for Annotated {
        fn specs(&self) -> Vec<ToolSpec> {
            Vec::new()
        }

        fn names(&self) -> Vec<String> {
            vec!["mcp__s__look".to_owned(), "mcp__s__peek".to_owned()]
        }

        fn is_read_only(&self, _: &str) -> bool {
            true
        }

        fn needs_approval(&self, name: &str) -> bool {
            self.gated.contains(&name)
        }

        fn server_of(&self, _: &str) -> Option<&str> {
            Some("s")
        }

        fn call<'a>(
            &'a self,
            _: &'a str,
            _: &'a Value,
            _: &'a mut (dyn FnMut() -> bool + Send),
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<ToolOutput>> + Send + 'a>>
        {
            Box::pin(std::future::ready(Some(ToolOutput::ok("seen"))))
        }
    }

    #[test]
    fn a_source_tool_that_needs_approval_is_never_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let toolbox = Toolbox::new(dir.path().to_owned(), &[], Vec::new()).with_mcp(Annotated {
            gated: &["mcp__s__look"],
        });
        assert!(toolbox.needs_approval("mcp__s__look"));
        assert!(
            !toolbox.is_read_only("mcp__s__look"),
            "batched with read-only calls, it would run without passing the gate"
        );
        assert!(!toolbox.needs_approval("mcp__s__peek"));
        assert!(toolbox.is_read_only("mcp__s__peek"));
        assert!(
            !Toolbox::new(dir.path().to_owned(), &[], Vec::new()).needs_approval("mcp__s__look")
        );
    }
}
