//! Tools the model may call. A tool never fails the execution: whatever goes wrong
//! (unknown tool, bad arguments, a path outside the workspace) becomes a tool result
//! marked as an error, which the model sees and may recover from.

pub mod command;
pub mod files;
pub mod todo;

use std::path::PathBuf;

use serde_json::Value;

use crate::definition::CommandToolDef;
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
    /// Variables withheld from commands besides the `*_KEY`-like ones.
    secret_env: Vec<String>,
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
            secret_env: Vec::new(),
        }
    }

    /// Withholds these environment variables from commands too (the names the agent's
    /// keys are read from, whatever they are called).
    pub fn withholding(mut self, names: Vec<String>) -> Toolbox {
        self.secret_env = names;
        self
    }

    pub fn specs(&self) -> Vec<ToolSpec> {
        let builtins = self.builtins.iter().map(|t| ToolSpec {
            name: t.name.to_owned(),
            description: t.description.to_owned(),
            parameters: (t.parameters)(),
        });
        let commands = self.commands.iter().map(command::spec);
        builtins.chain(commands).collect()
    }

    pub fn names(&self) -> Vec<String> {
        let builtins = self.builtins.iter().map(|t| t.name.to_owned());
        builtins
            .chain(self.commands.iter().map(|c| c.name.clone()))
            .collect()
    }

    /// True for tools that change nothing, which may run concurrently.
    pub fn is_read_only(&self, name: &str) -> bool {
        self.builtins.iter().any(|t| t.name == name && t.read_only)
    }

    /// Runs one call. Only granted tools run; anything else is a tool error.
    pub async fn call(
        &self,
        name: &str,
        arguments: &Value,
        ctx: &mut ToolContext<'_>,
    ) -> ToolOutput {
        if !arguments.is_object() {
            return ToolOutput::error(format!("the arguments of `{name}` must be a JSON object"));
        }
        if let Some(tool) = self.builtins.iter().find(|t| t.name == name) {
            let result = match tool.action {
                Action::File(run) => run(&self.workspace, arguments),
                Action::Todo => todo::write(ctx.todos, arguments),
            };
            return match result {
                Ok(content) => ToolOutput::ok(content),
                Err(message) => ToolOutput::error(message),
            };
        }
        if let Some(command) = self.commands.iter().find(|c| c.name == name) {
            return command::run(
                command,
                &self.workspace,
                arguments,
                &self.secret_env,
                ctx.stop,
            )
            .await;
        }
        let granted = self.names().join(", ");
        ToolOutput::error(format!(
            "unknown tool `{name}`; the tools available are: {}",
            if granted.is_empty() { "none" } else { &granted }
        ))
    }
}

/// A short, one-line rendering of tool arguments for events: `path: 'src/main.rs'`.
pub fn summarize_args(arguments: &Value, max_chars: usize) -> String {
    // What identifies the call (the path, the pattern) comes first, bulky content last.
    const FIRST: &[&str] = &["path", "pattern", "name", "command"];
    let rank = |key: &str| FIRST.iter().position(|k| *k == key).unwrap_or(FIRST.len());
    let text = match arguments {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by_key(|(k, _)| rank(k));
            entries
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}: '{s}'"),
                    other => format!("{k}: {other}"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
        other => other.to_string(),
    };
    crate::store::session::preview(&text, max_chars)
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
        assert!(
            out.content.contains("unknown tool `write_file`"),
            "{}",
            out.content
        );
        assert!(!dir.path().join("x").exists());
    }

    #[test]
    fn arguments_must_be_an_object() {
        let dir = tempfile::tempdir().unwrap();
        let toolbox = Toolbox::new(dir.path().to_owned(), &["list_dir".to_owned()], Vec::new());
        assert!(call(&toolbox, "list_dir", json!("notes")).is_error);
    }

    #[test]
    fn argument_summaries_are_short_and_quoted() {
        assert_eq!(
            summarize_args(&json!({"path": "src/main.rs"}), 100),
            "path: 'src/main.rs'"
        );
        assert_eq!(
            summarize_args(&json!({"content": "x", "path": "a.md"}), 100),
            "path: 'a.md', content: 'x'"
        );
        let long = summarize_args(&json!({"content": "x".repeat(500)}), 100);
        assert_eq!(long.chars().count(), 100);
    }
}
