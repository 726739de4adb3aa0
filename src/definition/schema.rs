//! Checks an agent definition and reports every problem at once, each with its key.
//!
//! serde stops at the first error; `agentq agents validate` must list them all, so the
//! raw TOML table is walked against a schema first, and only a table that passed is
//! deserialised into the typed definition.

use toml::{Table, Value};

use crate::time::parse_duration;

/// One thing wrong with a definition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// Dotted path of the key, for example `model.script[1].text`; empty for the whole file.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Str,
    Bool,
    /// A non-negative integer.
    Count,
    Number,
    Duration,
    StrList,
    /// A string from a fixed set.
    OneOf(&'static [&'static str]),
    Table(&'static [Field]),
    TableArray(&'static [Field]),
    /// A table whose keys are free, such as tool arguments.
    AnyTable,
}

#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
}

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}

const fn req(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

const SCRIPT_TOOL_CALL: &[Field] = &[req("name", Kind::Str), opt("arguments", Kind::AnyTable)];
const SCRIPT_USAGE: &[Field] = &[opt("input", Kind::Count), opt("output", Kind::Count)];
const SCRIPT_ERROR: &[Field] = &[req("status", Kind::Count), opt("message", Kind::Str)];
const SCRIPT_ENTRY: &[Field] = &[
    opt("text", Kind::Str),
    opt("tool_calls", Kind::TableArray(SCRIPT_TOOL_CALL)),
    opt("usage", Kind::Table(SCRIPT_USAGE)),
    opt("delay_ms", Kind::Count),
    opt("error", Kind::Table(SCRIPT_ERROR)),
];
const MODEL: &[Field] = &[
    req("provider", Kind::Str),
    opt("name", Kind::Str),
    opt("base_url", Kind::Str),
    opt("api_key_env", Kind::Str),
    opt("temperature", Kind::Number),
    opt("max_output_tokens", Kind::Count),
    opt("max_attempts", Kind::Count),
    opt("idle_timeout", Kind::Duration),
    opt("context_window", Kind::Count),
    opt("compact_threshold", Kind::Number),
    opt("tool_choice", Kind::Str),
    opt("script", Kind::TableArray(SCRIPT_ENTRY)),
];
const LIMITS: &[Field] = &[
    opt("max_steps", Kind::Count),
    opt("max_tokens", Kind::Count),
    opt("session_max_tokens", Kind::Count),
    opt("timeout", Kind::Duration),
    opt("max_cost_usd", Kind::Number),
    opt("on_tool_error", Kind::OneOf(&["continue", "stop"])),
    opt("max_consecutive_errors", Kind::Count),
];
const COMMAND_TOOL: &[Field] = &[
    req("name", Kind::Str),
    opt("description", Kind::Str),
    req("argv", Kind::StrList),
    opt("parameters", Kind::AnyTable),
    opt("timeout", Kind::Duration),
    opt("cwd", Kind::Str),
    opt("read_only", Kind::Bool),
];
const TOOLS: &[Field] = &[
    opt("builtin", Kind::StrList),
    opt("workspace", Kind::Str),
    opt("command", Kind::TableArray(COMMAND_TOOL)),
    opt("env", Kind::OneOf(&["scrubbed", "clean"])),
    opt("env_pass", Kind::StrList),
];

/// The keys of `agents/<name>.toml` (ARCHITECTURE.md §5).
pub const AGENT: &[Field] = &[
    req("name", Kind::Str),
    opt("description", Kind::Str),
    opt("system", Kind::Str),
    req("model", Kind::Table(MODEL)),
    opt("limits", Kind::Table(LIMITS)),
    opt("tools", Kind::Table(TOOLS)),
];

/// Checks `table` against `fields`, appending every problem found.
pub fn check_table(table: &Table, fields: &[Field], path: &str, problems: &mut Vec<Problem>) {
    for (key, value) in table {
        let key_path = join(path, key);
        match fields.iter().find(|f| f.name == key) {
            Some(field) => check_value(value, field.kind, &key_path, problems),
            None => problems.push(Problem {
                key: key_path,
                message: format!("unknown key{}", suggestion(key, fields)),
            }),
        }
    }
    for field in fields.iter().filter(|f| f.required) {
        if !table.contains_key(field.name) {
            problems.push(Problem {
                key: join(path, field.name),
                message: "missing (required)".to_owned(),
            });
        }
    }
}

fn check_value(value: &Value, kind: Kind, path: &str, problems: &mut Vec<Problem>) {
    let mut wrong = |expected: &str| {
        problems.push(Problem {
            key: path.to_owned(),
            message: format!("expected {expected}, found {}", describe(value)),
        })
    };
    match (kind, value) {
        (Kind::Str, Value::String(_))
        | (Kind::Bool, Value::Boolean(_))
        | (Kind::AnyTable, Value::Table(_)) => {}
        (Kind::Count, Value::Integer(n)) if *n >= 0 => {}
        (Kind::Count, _) => wrong("a whole number of 0 or more"),
        (Kind::Number, Value::Integer(_) | Value::Float(_)) => {}
        (Kind::Duration, Value::String(text)) => {
            if let Err(message) = parse_duration(text) {
                problems.push(Problem {
                    key: path.to_owned(),
                    message,
                });
            }
        }
        (Kind::OneOf(choices), Value::String(s)) if choices.contains(&s.as_str()) => {}
        (Kind::OneOf(choices), _) => wrong(&format!("one of {}", choices.join(", "))),
        (Kind::StrList, Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                check_value(item, Kind::Str, &format!("{path}[{i}]"), problems);
            }
        }
        (Kind::Table(fields), Value::Table(table)) => check_table(table, fields, path, problems),
        (Kind::TableArray(fields), Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                match item {
                    Value::Table(table) => check_table(table, fields, &item_path, problems),
                    other => problems.push(Problem {
                        key: item_path,
                        message: format!("expected a table, found {}", describe(other)),
                    }),
                }
            }
        }
        (Kind::Str, _) => wrong("a string"),
        (Kind::Bool, _) => wrong("true or false"),
        (Kind::Number, _) => wrong("a number"),
        (Kind::Duration, _) => wrong("a duration such as \"30s\""),
        (Kind::StrList, _) => wrong("a list of strings"),
        (Kind::Table(_) | Kind::AnyTable, _) => wrong("a table"),
        (Kind::TableArray(_), _) => wrong("a list of tables"),
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(n) if *n < 0 => "a negative number",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// "; did you mean `x`?" when a known key is one or two edits away, or starts the same.
fn suggestion(key: &str, fields: &[Field]) -> String {
    fields
        .iter()
        .map(|f| {
            let prefix = key.len() >= 3 && (f.name.starts_with(key) || key.starts_with(f.name));
            (
                if prefix {
                    1
                } else {
                    edit_distance(key, f.name)
                },
                f.name,
            )
        })
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, name)| format!("; did you mean `{name}`?"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let table: Table = toml::from_str(text).unwrap();
        let mut found = Vec::new();
        check_table(&table, AGENT, "", &mut found);
        found.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let found = problems(
            r#"
            name = 3
            colour = "blue"
            [model]
            provider = "scripted"
            [[model.script]]
            text = 1
            delay = 5
            [limits]
            timeout = "soon"
            max_steps = -1
            "#,
        );
        assert_eq!(
            found,
            vec![
                "colour: unknown key",
                "limits.max_steps: expected a whole number of 0 or more, found a negative number",
                "limits.timeout: `soon` is not a duration: write it like 500ms, 20s, 5m or 1h",
                "model.script[0].delay: unknown key; did you mean `delay_ms`?",
                "model.script[0].text: expected a string, found an integer",
                "name: expected a string, found an integer",
            ]
        );
    }

    #[test]
    fn missing_required_keys_are_reported() {
        assert_eq!(
            problems("description = 'x'"),
            vec!["name: missing (required)", "model: missing (required)"]
        );
    }
}
