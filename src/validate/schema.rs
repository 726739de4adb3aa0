//! Checks an agent definition or `agentq.toml` and reports every problem at once, each
//! with its key.
//!
//! serde stops at the first error; `agentq agents validate` must list them all, so the
//! raw TOML table is walked against a schema first, and only a table that passed is
//! deserialised into the typed definition.
//!
//! The schema is also where every number and duration gets its valid range, so a value
//! that cannot work (a timeout of `0s`, a temperature of `-5.0`, `inf`) is refused in
//! one place, with the same words, wherever a definition or `agentq.toml` is read:
//! `agents validate`, `session new`, `run`, and the worker before each execution.

use toml::{Table, Value};

use crate::time::parse_duration;

/// One thing wrong with a definition or `agentq.toml`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// Dotted path of the key, for example `model.script[1].text`; empty for the whole file.
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }

    /// `KEY = VALUE: must be RANGE`: a value of the right type that cannot work.
    pub fn out_of_range(key: &str, value: &Value, range: &str) -> Problem {
        Problem {
            key: key.to_owned(),
            message: format!("{key} = {}: must be {range}", value_text(value)),
        }
    }
}

/// A value as it would be written in TOML, shortened so a line stays a line.
fn value_text(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A message that starts with its key (`KEY = VALUE: …`) says it once.
        if self.key.is_empty() || self.message.starts_with(&self.key) {
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
    /// A whole number from `min` to `max`.
    Int {
        min: i64,
        max: i64,
    },
    /// A finite number in the range.
    Number(Range),
    /// A limit or a wait (`500ms`, `20s`, `5m`, `1h`): see [`crate::time::LIMIT_RANGE`].
    Duration,
    /// A database store's lease: a duration of at least [`crate::store::MIN_LEASE`].
    Lease,
    StrList,
    /// A list of strings, none twice.
    StrSet,
    /// A string from a fixed set.
    OneOf(&'static [&'static str]),
    Table(&'static [Field]),
    TableArray(&'static [Field]),
    /// A table whose keys are free, such as tool arguments.
    AnyTable,
    /// A JSON value written as a table, or as a string holding JSON (for what TOML
    /// cannot write, such as `null`); the string's JSON is checked by its reader.
    JsonTable,
    /// A table whose keys are free names, each holding a table of these fields, such as
    /// `[providers.NAME]`.
    TableOf(&'static [Field]),
}

/// The values a (finite) number may take: from `min` (or above it, when `min_excluded`)
/// to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub min: f64,
    pub min_excluded: bool,
    pub max: f64,
}

impl Range {
    fn holds(&self, x: f64) -> bool {
        x.is_finite()
            && x <= self.max
            && if self.min_excluded {
                x > self.min
            } else {
                x >= self.min
            }
    }

    fn describe(&self) -> String {
        let low = if self.min_excluded {
            format!("more than {}", self.min)
        } else {
            format!("at least {}", self.min)
        };
        if self.max.is_finite() {
            format!("{low} and at most {}", self.max)
        } else {
            format!("a finite number {low}")
        }
    }
}

/// Whole numbers: `0..` for counts that may be zero, `1..` for limits and sizes, which
/// cannot work at zero.
const COUNT: Kind = Kind::Int {
    min: 0,
    max: i64::MAX,
};
const POSITIVE: Kind = Kind::Int {
    min: 1,
    max: i64::MAX,
};
/// A `u32` setting: larger values would not fit the typed definition.
const POSITIVE_U32: Kind = Kind::Int {
    min: 1,
    max: u32::MAX as i64,
};
const MORE_THAN_ZERO: Kind = Kind::Number(Range {
    min: 0.0,
    min_excluded: true,
    max: f64::INFINITY,
});
const ZERO_OR_MORE: Kind = Kind::Number(Range {
    min: 0.0,
    min_excluded: false,
    max: f64::INFINITY,
});

#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
    /// Why the range is what it is, appended to an out-of-range message.
    pub why: Option<&'static str>,
}

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
        why: None,
    }
}

const fn req(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
        why: None,
    }
}

impl Field {
    const fn because(self, why: &'static str) -> Field {
        Field {
            why: Some(why),
            ..self
        }
    }
}

const SCRIPT_TOOL_CALL: &[Field] = &[req("name", Kind::Str), opt("arguments", Kind::AnyTable)];
const SCRIPT_USAGE: &[Field] = &[opt("input", COUNT), opt("output", COUNT)];
const SCRIPT_ERROR: &[Field] = &[
    req("status", Kind::Int { min: 100, max: 599 }).because("an HTTP status"),
    opt("message", Kind::Str),
];
const SCRIPT_ENTRY: &[Field] = &[
    opt("text", Kind::Str),
    opt("tool_calls", Kind::TableArray(SCRIPT_TOOL_CALL)),
    opt("usage", Kind::Table(SCRIPT_USAGE)),
    opt("delay_ms", COUNT),
    opt("error", Kind::Table(SCRIPT_ERROR)),
];
const MODEL: &[Field] = &[
    req("provider", Kind::Str),
    opt("name", Kind::Str),
    opt("base_url", Kind::Str),
    opt("api_key_env", Kind::Str),
    opt(
        "temperature",
        Kind::Number(Range {
            min: 0.0,
            min_excluded: false,
            max: 2.0,
        }),
    ),
    opt("max_output_tokens", POSITIVE_U32),
    opt("max_attempts", POSITIVE_U32).because("it counts the first call too"),
    opt("idle_timeout", Kind::Duration),
    opt("response_format", RESPONSE_FORMAT),
    opt("context_window", POSITIVE),
    opt(
        "compact_threshold",
        Kind::Number(Range {
            min: 0.0,
            min_excluded: true,
            max: 1.0,
        }),
    )
    .because("it is the share of context_window a prompt may fill"),
    opt("tool_choice", Kind::Str),
    opt("script", Kind::TableArray(SCRIPT_ENTRY)),
];
const LIMITS: &[Field] = &[
    opt("max_steps", POSITIVE_U32),
    opt("max_tokens", POSITIVE),
    opt("session_max_tokens", POSITIVE),
    opt("timeout", Kind::Duration),
    opt("max_cost_usd", MORE_THAN_ZERO),
    opt("on_tool_error", Kind::OneOf(&["continue", "stop"])),
    opt("max_consecutive_errors", Kind::Int { min: 2, max: u32::MAX as i64 }).because(
        "it counts steps whose tool calls all failed, and the model sees its errors at least once before the execution fails (on_tool_error = \"stop\" fails at the first error)",
    ),
    opt("max_check_rounds", POSITIVE_U32),
    opt("approval_timeout", Kind::Duration),
];
const COMMAND_TOOL: &[Field] = &[
    req("name", Kind::Str),
    opt("description", Kind::Str),
    req("argv", Kind::StrList),
    opt("parameters", Kind::AnyTable),
    opt("timeout", Kind::Duration),
    opt("cwd", Kind::Str),
    opt("read_only", Kind::Bool),
    opt("approval", Kind::OneOf(&["never", "required"])),
];
const CHECK: &[Field] = &[
    req("name", Kind::Str),
    req("argv", Kind::StrList),
    opt("timeout", Kind::Duration),
    opt("cwd", Kind::Str),
];
const HOOK: &[Field] = &[
    opt("argv", Kind::StrList),
    opt("url", Kind::Str),
    opt("url_env", Kind::Str),
    opt("when", Kind::StrSet),
    opt("timeout", Kind::Duration),
    opt("max_attempts", POSITIVE_U32).because("it counts the first attempt too"),
    opt("cwd", Kind::Str),
];
const HOOKS: &[Field] = &[opt("on_finish", Kind::TableArray(HOOK))];
const OUTPUT: &[Field] = &[
    opt("schema", Kind::JsonTable),
    opt("schema_file", Kind::Str),
    opt("constrain", Kind::Bool),
];
const TOOLS: &[Field] = &[
    opt("builtin", Kind::StrSet),
    opt("workspace", Kind::Str),
    opt("command", Kind::TableArray(COMMAND_TOOL)),
    opt("env", Kind::OneOf(&["scrubbed", "clean"])),
    opt("env_pass", Kind::StrList),
    opt("mcp", Kind::StrSet),
];

/// The keys of `agents/<name>.toml` (ARCHITECTURE.md §5).
pub const AGENT: &[Field] = &[
    req("name", Kind::Str),
    opt("description", Kind::Str),
    opt("system", Kind::Str),
    req("model", Kind::Table(MODEL)),
    opt("limits", Kind::Table(LIMITS)),
    opt("tools", Kind::Table(TOOLS)),
    opt("checks", Kind::TableArray(CHECK)),
    opt("output", Kind::Table(OUTPUT)),
    opt("hooks", Kind::Table(HOOKS)),
];

const INBOX: &[Field] = &[opt("max_message_bytes", POSITIVE)];
const NAMED_PROVIDER: &[Field] = &[
    req("kind", Kind::OneOf(&["openai", "anthropic"])),
    opt("base_url", Kind::Str),
    opt("api_key_env", Kind::Str),
    opt("headers", Kind::AnyTable),
    opt("max_attempts", POSITIVE_U32).because("it counts the first call too"),
    opt("idle_timeout", Kind::Duration),
    opt("response_format", RESPONSE_FORMAT),
];
/// The shapes of `src/config.rs::ResponseFormat`.
const RESPONSE_FORMAT: Kind = Kind::OneOf(&["json_schema", "json_object"]);
const PRICE: &[Field] = &[
    req("input_per_mtok", ZERO_OR_MORE),
    req("output_per_mtok", ZERO_OR_MORE),
];

/// `[mcp_servers.NAME]`: codex's keys (ARCHITECTURE.md §9). Which keys go with which
/// transport is checked with the typed config (src/config.rs).
const MCP_SERVER: &[Field] = &[
    opt("command", Kind::Str),
    opt("args", Kind::StrList),
    opt("env", Kind::AnyTable),
    opt("env_vars", Kind::StrSet),
    opt("cwd", Kind::Str),
    opt("url", Kind::Str),
    opt("bearer_token_env_var", Kind::Str),
    opt("http_headers", Kind::AnyTable),
    opt("startup_timeout", Kind::Duration),
    opt("tool_timeout", Kind::Duration),
    opt("enabled_tools", Kind::StrSet),
    opt("disabled_tools", Kind::StrSet),
    opt("approval", Kind::OneOf(&["never", "required"])),
    opt("approval_tools", Kind::StrSet),
    opt("enabled", Kind::Bool),
    opt("required", Kind::Bool),
];

/// `[store]`: where the home's sessions are kept (ARCHITECTURE.md §8), and how long a
/// database store's lease lasts unless renewed.
pub const STORE: &[Field] = &[opt("url", Kind::Str), opt("lease", Kind::Lease)];

/// The keys of `agentq.toml`.
pub const HOME: &[Field] = &[
    opt("inbox", Kind::Table(INBOX)),
    opt("store", Kind::Table(STORE)),
    opt("mcp_servers", Kind::TableOf(MCP_SERVER)),
    opt("providers", Kind::TableOf(NAMED_PROVIDER)),
    opt("prices", Kind::TableOf(PRICE)),
];

/// Checks `table` against `fields`, appending every problem found.
pub fn check_table(table: &Table, fields: &[Field], path: &str, problems: &mut Vec<Problem>) {
    for (key, value) in table {
        let key_path = join(path, key);
        match fields.iter().find(|f| f.name == key) {
            Some(field) => check_value(value, field.kind, &key_path, problems, field.why),
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

/// Checks one value: a list or table is walked, anything else is checked by itself.
fn check_value(
    value: &Value,
    kind: Kind,
    path: &str,
    problems: &mut Vec<Problem>,
    why: Option<&str>,
) {
    match (kind, value) {
        (Kind::StrList, Value::Array(items)) => check_strings(items, false, path, problems),
        (Kind::StrSet, Value::Array(items)) => check_strings(items, true, path, problems),
        (Kind::Table(fields), Value::Table(table)) => check_table(table, fields, path, problems),
        (Kind::TableArray(fields), Value::Array(items)) => {
            let items = items
                .iter()
                .enumerate()
                .map(|(i, item)| (format!("{path}[{i}]"), item));
            check_tables(items, fields, problems);
        }
        (Kind::TableOf(fields), Value::Table(tables)) => {
            let items = tables.iter().map(|(name, item)| (join(path, name), item));
            check_tables(items, fields, problems);
        }
        _ => problems.extend(check_scalar(value, kind, path, why)),
    }
}

/// The one problem of a value that holds no others to check (or of a list or table
/// given where another type belongs; one of the right type was walked by
/// [`check_value`]).
fn check_scalar(value: &Value, kind: Kind, path: &str, why: Option<&str>) -> Option<Problem> {
    let out_of_range = |range: String| {
        let range = match why {
            Some(why) => format!("{range} ({why})"),
            None => range,
        };
        Some(Problem::out_of_range(path, value, &range))
    };
    let wrong = |expected: &str| {
        Some(Problem {
            key: path.to_owned(),
            message: format!("expected {expected}, found {}", describe(value)),
        })
    };
    match (kind, value) {
        (Kind::Str, Value::String(_))
        | (Kind::Bool, Value::Boolean(_))
        | (Kind::AnyTable | Kind::JsonTable, Value::Table(_))
        | (Kind::JsonTable, Value::String(_)) => None,
        (Kind::Int { min, max }, Value::Integer(n)) => {
            if *n < min {
                out_of_range(int_range(min, max))
            } else if *n > max {
                out_of_range(format!("from {min} to {max}"))
            } else {
                None
            }
        }
        (Kind::Int { min, max }, _) => wrong(&format!("a whole number ({})", int_range(min, max))),
        (Kind::Number(range), Value::Integer(n)) if !range.holds(*n as f64) => {
            out_of_range(range.describe())
        }
        (Kind::Number(range), Value::Float(x)) if !range.holds(*x) => {
            out_of_range(range.describe())
        }
        (Kind::Number(_), Value::Integer(_) | Value::Float(_)) => None,
        (Kind::Duration, Value::String(text)) => match parse_duration(text) {
            Err(message) => Some(Problem {
                key: path.to_owned(),
                message,
            }),
            // Every duration agentq reads is a limit or a wait: zero cannot work.
            Ok(d) if d.is_zero() || d > crate::time::MAX_LIMIT => {
                out_of_range(crate::time::LIMIT_RANGE.to_owned())
            }
            Ok(_) => None,
        },
        (Kind::Lease, Value::String(text)) => match parse_duration(text) {
            Err(message) => Some(Problem {
                key: path.to_owned(),
                message,
            }),
            Ok(d) if d < crate::store::MIN_LEASE || d > crate::time::MAX_LIMIT => {
                out_of_range(crate::store::LEASE_RANGE.to_owned())
            }
            Ok(_) => None,
        },
        (Kind::OneOf(choices), Value::String(s)) if choices.contains(&s.as_str()) => None,
        (Kind::OneOf(choices), _) => wrong(&format!("one of {}", choices.join(", "))),
        (Kind::Str, _) => wrong("a string"),
        (Kind::Bool, _) => wrong("true or false"),
        (Kind::Number(_), _) => wrong("a number"),
        (Kind::Duration | Kind::Lease, _) => wrong("a duration such as \"30s\""),
        (Kind::StrList | Kind::StrSet, _) => wrong("a list of strings"),
        (Kind::Table(_) | Kind::AnyTable | Kind::TableOf(_), _) => wrong("a table"),
        (Kind::TableArray(_), _) => wrong("a list of tables"),
        (Kind::JsonTable, _) => wrong("a table, or a string holding JSON"),
    }
}

/// A list of strings; with `once`, none may be listed twice.
fn check_strings(items: &[Value], once: bool, path: &str, problems: &mut Vec<Problem>) {
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        check_value(item, Kind::Str, &item_path, problems, None);
        if once && let Some(first) = items[..i].iter().position(|x| x == item) {
            problems.push(Problem::out_of_range(
                &item_path,
                item,
                &format!("listed once (it is {path}[{first}] too)"),
            ));
        }
    }
}

/// Tables of the same fields, each under its own path (`[[a]]`, `[a.NAME]`).
fn check_tables<'v>(
    items: impl Iterator<Item = (String, &'v Value)>,
    fields: &[Field],
    problems: &mut Vec<Problem>,
) {
    for (item_path, item) in items {
        match item {
            Value::Table(table) => check_table(table, fields, &item_path, problems),
            other => problems.push(Problem {
                key: item_path,
                message: format!("expected a table, found {}", describe(other)),
            }),
        }
    }
}

/// The range of a whole number as people need it: a bound no one would reach (the
/// largest `u32` or more) only clutters the message.
fn int_range(min: i64, max: i64) -> String {
    if max >= i64::from(u32::MAX) {
        format!("{min} or more")
    } else {
        format!("from {min} to {max}")
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
                "limits.max_steps = -1: must be 1 or more",
                "limits.timeout: `soon` is not a duration: write it like 500ms, 20s, 5m or 1h",
                "model.script[0].delay: unknown key; did you mean `delay_ms`?",
                "model.script[0].text: expected a string, found an integer",
                "name: expected a string, found an integer",
            ]
        );
    }

    #[test]
    fn values_that_cannot_work_name_the_key_the_value_and_the_range() {
        let found = problems(
            r#"
            name = "x"
            [model]
            provider = "scripted"
            temperature = nan
            compact_threshold = 1.5
            max_attempts = 0
            [limits]
            timeout = "0s"
            max_cost_usd = inf
            [tools]
            builtin = ["read_file", "list_dir", "read_file"]
            "#,
        );
        assert_eq!(
            found,
            vec![
                "limits.max_cost_usd = inf: must be a finite number more than 0",
                "limits.timeout = \"0s\": must be longer than 0 and at most 8784h (a year), such as \"500ms\" or \"30s\"",
                "model.compact_threshold = 1.5: must be more than 0 and at most 1 (it is the share of context_window a prompt may fill)",
                "model.max_attempts = 0: must be 1 or more (it counts the first call too)",
                "model.temperature = nan: must be at least 0 and at most 2",
                "tools.builtin[2] = \"read_file\": must be listed once (it is tools.builtin[0] too)",
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
