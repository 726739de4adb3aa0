//! `todo_write`: the agent's plan, a list of tasks each pending, in progress or
//! completed, with at most one in progress. The whole list is replaced on each call
//! and kept in the session state.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::domain::state::{Todo, TodoStatus};

const MAX_TODOS: usize = 100;

pub fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "todos": {
                "type": "array",
                "description": format!("The whole task list, replacing the previous one; at most {MAX_TODOS} tasks"),
                "items": {
                    "type": "object",
                    "properties": {
                        "content": {"type": "string", "description": "What the task is, in a few words"},
                        "status": {
                            "type": "string",
                            "enum": ["pending", "in_progress", "completed"],
                            "description": "Where the task stands; at most one task may be in_progress"
                        }
                    },
                    "required": ["content", "status"]
                }
            }
        },
        "required": ["todos"]
    })
}

/// Replaces `todos` with the list in `args`; refuses a malformed list and keeps the old.
/// The list's shape was checked against [`schema`] before the call (`super::args::check`);
/// the rules a schema does not express are checked here.
pub fn write(todos: &mut Vec<Todo>, args: &Value) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Args {
        todos: Vec<Todo>,
    }
    let Args { todos: new } = serde_json::from_value(args.clone()).map_err(|e| {
        format!("`todos` must be a list of {{content, status}} with status pending, in_progress or completed ({e})")
    })?;
    if new.len() > MAX_TODOS {
        return Err(format!(
            "`todos` has {} tasks; at most {MAX_TODOS}: merge or drop some",
            new.len()
        ));
    }
    if let Some(blank) = new.iter().position(|t| t.content.trim().is_empty()) {
        return Err(format!(
            "`todos[{blank}].content` is blank; every task needs a few words saying what it is"
        ));
    }
    let count = |status| new.iter().filter(|t| t.status == status).count();
    let in_progress = count(TodoStatus::InProgress);
    if in_progress > 1 {
        return Err(format!(
            "{in_progress} tasks are in_progress; at most one may be: mark the others pending or completed"
        ));
    }
    let summary = format!(
        "{}: {} completed, {} in progress, {} pending",
        crate::plural::count(new.len() as u64, "task", "tasks"),
        count(TodoStatus::Completed),
        in_progress,
        count(TodoStatus::Pending)
    );
    *todos = new;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_replaced_and_summarised() {
        let mut todos = Vec::new();
        let out = write(
            &mut todos,
            &json!({"todos": [
                {"content": "read", "status": "completed"},
                {"content": "write", "status": "in_progress"},
                {"content": "test", "status": "pending"}
            ]}),
        )
        .unwrap();
        assert_eq!(out, "3 tasks: 1 completed, 1 in progress, 1 pending");
        assert_eq!(todos[1].status, TodoStatus::InProgress);
    }

    #[test]
    fn malformed_lists_are_refused_and_the_old_one_kept() {
        let mut todos = vec![Todo {
            content: "keep".into(),
            status: TodoStatus::Pending,
        }];
        let two_in_progress = json!({"todos": [
            {"content": "a", "status": "in_progress"},
            {"content": "b", "status": "in_progress"}
        ]});
        assert!(
            write(&mut todos, &two_in_progress)
                .unwrap_err()
                .contains("at most one")
        );
        assert!(
            write(
                &mut todos,
                &json!({"todos": [{"content": "a", "status": "done"}]})
            )
            .is_err()
        );
        assert!(
            write(
                &mut todos,
                &json!({"todos": [{"content": " ", "status": "pending"}]})
            )
            .is_err()
        );
        assert_eq!(todos[0].content, "keep");
    }
}
