//! Tools the model may call. A tool never fails the execution: whatever goes wrong
//! (unknown tool, bad arguments, a path outside the workspace) becomes a tool result
//! marked as an error, which the model sees and may recover from.

pub mod files;

use std::path::PathBuf;

use serde_json::Value;

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

/// The tools granted to one agent, bound to its workspace.
pub struct Toolbox {
    workspace: Workspace,
    enabled: Vec<&'static ToolSpecDef>,
}

/// A built-in tool: its contract name, description and argument schema.
pub struct ToolSpecDef {
    pub name: &'static str,
    pub description: &'static str,
    pub parameters: fn() -> Value,
    run: fn(&Workspace, &Value) -> Result<String, String>,
}

static BUILTINS: &[ToolSpecDef] = &[
    ToolSpecDef {
        name: "read_file",
        description: "Read a text file in the workspace. `offset` is the first line (1-based), `limit` the number of lines.",
        parameters: files::read_file_schema,
        run: files::read_file,
    },
    ToolSpecDef {
        name: "write_file",
        description: "Create or overwrite a file in the workspace with `content`.",
        parameters: files::write_file_schema,
        run: files::write_file,
    },
    ToolSpecDef {
        name: "list_dir",
        description: "List a directory of the workspace; directories end with `/`.",
        parameters: files::list_dir_schema,
        run: files::list_dir,
    },
];

impl Toolbox {
    /// Grants the named built-ins (unknown names were refused when the definition was
    /// checked, and are skipped here).
    pub fn new(workspace_root: PathBuf, granted: &[String]) -> Toolbox {
        let enabled = BUILTINS
            .iter()
            .filter(|t| granted.iter().any(|g| g == t.name))
            .collect();
        Toolbox {
            workspace: Workspace::new(workspace_root),
            enabled,
        }
    }

    pub fn specs(&self) -> Vec<ToolSpec> {
        self.enabled
            .iter()
            .map(|t| ToolSpec {
                name: t.name,
                description: t.description,
                parameters: (t.parameters)(),
            })
            .collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.enabled.iter().map(|t| t.name.to_owned()).collect()
    }

    /// Runs one call. Only granted tools run; anything else is a tool error.
    pub fn call(&self, name: &str, arguments: &Value) -> ToolOutput {
        let Some(tool) = self.enabled.iter().find(|t| t.name == name) else {
            let granted = self.names().join(", ");
            return ToolOutput::error(format!(
                "unknown tool `{name}`; the tools available are: {}",
                if granted.is_empty() { "none" } else { &granted }
            ));
        };
        if !arguments.is_object() {
            return ToolOutput::error(format!("the arguments of `{name}` must be a JSON object"));
        }
        match (tool.run)(&self.workspace, arguments) {
            Ok(content) => ToolOutput::ok(content),
            Err(message) => ToolOutput::error(message),
        }
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

    #[test]
    fn only_granted_tools_run() {
        let dir = tempfile::tempdir().unwrap();
        let toolbox = Toolbox::new(dir.path().to_owned(), &["list_dir".to_owned()]);
        assert_eq!(toolbox.names(), vec!["list_dir"]);
        let out = toolbox.call("write_file", &json!({"path": "x", "content": "y"}));
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
        let toolbox = Toolbox::new(dir.path().to_owned(), &["list_dir".to_owned()]);
        assert!(toolbox.call("list_dir", &json!("notes")).is_error);
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
