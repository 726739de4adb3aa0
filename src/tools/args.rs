//! Checks a tool call's arguments against the tool's JSON Schema before the tool runs.
//!
//! One checker serves every tool (the built-ins, `todo_write`, declared commands), so a
//! model that gets an argument wrong is always told which argument, what a valid value
//! is (with the schema's `description`), and what it sent, and can fix its next call.
//!
//! It judges the part of JSON Schema the tools use: `type`, `required`, `properties`,
//! `minimum`, `maximum`, `enum` and `items`, recursively. Everything else a schema says
//! is accepted unjudged: a declared command may use any JSON Schema, and a call is never
//! refused for a rule this checker does not understand. Arguments the schema does not
//! name are not an error (models add harmless extras), and `null` is the same as
//! leaving an argument out.

use serde_json::{Map, Value};

use crate::text::preview;

/// The longest rendering of a received value in a message.
const SHOWN_CHARS: usize = 60;
/// The most members an example object shows.
const EXAMPLE_MEMBERS: usize = 6;

/// Refuses `args` when they break `schema`, with a message saying what a valid call is.
pub fn check(tool: &str, schema: &Value, args: &Value) -> Result<(), String> {
    let Value::Object(given) = args else {
        return Err(format!(
            "the arguments of `{tool}` must be a JSON object like {}, not {}",
            example(schema),
            shown(args)
        ));
    };
    check_members(schema, given, &Place::top(tool))
}

/// Where in the arguments a value sits: `todos[1].status` of `todo_write`.
struct Place<'a> {
    tool: &'a str,
    /// Empty for the arguments object itself.
    path: String,
}

impl<'a> Place<'a> {
    fn top(tool: &'a str) -> Place<'a> {
        Place {
            tool,
            path: String::new(),
        }
    }

    fn member(&self, name: &str) -> Place<'a> {
        let path = if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        };
        Place {
            tool: self.tool,
            path,
        }
    }

    fn item(&self, index: usize) -> Place<'a> {
        Place {
            tool: self.tool,
            path: format!("{}[{index}]", self.path),
        }
    }

    /// Who takes the members at this place: the tool, or a nested object.
    fn owner(&self) -> String {
        if self.path.is_empty() {
            self.tool.to_owned()
        } else {
            format!("`{}`", self.path)
        }
    }
}

fn check_value(schema: &Value, value: &Value, at: &Place) -> Result<(), String> {
    if !accepts(schema, value) {
        return Err(format!(
            "argument `{}` must be {}, not {}{}",
            at.path,
            expectation(schema).unwrap_or_else(|| "a valid value".to_owned()),
            shown(value),
            quoted_hint(schema, value)
        ));
    }
    match value {
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items").filter(|s| s.is_object()) {
                for (index, item) in items.iter().enumerate() {
                    check_value(item_schema, item, &at.item(index))?;
                }
            }
            Ok(())
        }
        Value::Object(members) => check_members(schema, members, at),
        _ => Ok(()),
    }
}

/// The names a schema's `required` lists.
fn required(schema: &Value) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// Checks an object's members: the required ones are there, the known ones are valid.
fn check_members(schema: &Value, given: &Map<String, Value>, at: &Place) -> Result<(), String> {
    let properties = schema.get("properties").and_then(Value::as_object);
    let required = required(schema);
    let present = |name: &str| given.get(name).is_some_and(|v| !v.is_null());
    let missing: Vec<&str> = required.iter().copied().filter(|n| !present(n)).collect();
    if let Some(first) = missing.first() {
        let mut message = format!("missing argument `{}`", at.member(first).path);
        let member = properties.and_then(|p| p.get(*first));
        match (member.and_then(valid), member.and_then(description)) {
            (Some(valid), Some(about)) => {
                message.push_str(&format!(", which must be {valid} ({about})"))
            }
            (Some(valid), None) => message.push_str(&format!(", which must be {valid}")),
            (None, Some(about)) => message.push_str(&format!(" ({about})")),
            (None, None) => {}
        }
        if missing.len() > 1 {
            message.push_str(&format!("; also missing: {}", missing[1..].join(", ")));
        }
        let known = |name: &str| properties.is_some_and(|p| p.contains_key(name));
        if given.keys().any(|name| !known(name)) {
            let gave: Vec<&str> = given.keys().map(String::as_str).collect();
            message.push_str(&format!(
                "; {} takes: {}; you gave: {}",
                at.owner(),
                takes(properties, &required),
                gave.join(", ")
            ));
        }
        return Err(message);
    }
    let Some(properties) = properties else {
        return Ok(());
    };
    for (name, value) in given {
        if value.is_null() {
            continue;
        }
        if let Some(member) = properties.get(name) {
            check_value(member, value, &at.member(name))?;
        }
    }
    Ok(())
}

/// Whether `value` itself (not its members or items) fits the schema's type, `enum`
/// and bounds.
fn accepts(schema: &Value, value: &Value) -> bool {
    let types = type_names(schema);
    let typed = types.is_empty() || types.iter().any(|t| has_type(t, value));
    let listed = schema
        .get("enum")
        .and_then(Value::as_array)
        .is_none_or(|options| options.contains(value));
    let bounded = value.as_f64().is_none_or(|n| {
        bound(schema, "minimum").is_none_or(|min| n >= min)
            && bound(schema, "maximum").is_none_or(|max| n <= max)
    });
    typed && listed && bounded
}

/// The type names a schema allows; empty when it says nothing this checker can use.
fn type_names(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(name)) => vec![name.as_str()],
        Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn has_type(name: &str, value: &Value) -> bool {
    match name {
        "string" => value.is_string(),
        "integer" => is_integer(value),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        // A type this checker does not know: not judged.
        _ => true,
    }
}

/// JSON Schema counts `2.0` as an integer too.
fn is_integer(value: &Value) -> bool {
    value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|n| n.fract() == 0.0)
}

fn bound(schema: &Value, key: &str) -> Option<f64> {
    schema.get(key).and_then(Value::as_f64)
}

/// What a valid value is, then what the argument is for: `an integer ≥ 1 (First line…)`.
fn expectation(schema: &Value) -> Option<String> {
    match (valid(schema), description(schema)) {
        (Some(valid), Some(about)) => Some(format!("{valid} ({about})")),
        (valid, about) => valid.or_else(|| about.map(str::to_owned)),
    }
}

fn description(schema: &Value) -> Option<&str> {
    schema
        .get("description")
        .and_then(Value::as_str)
        .map(|d| d.trim().trim_end_matches('.'))
        .filter(|d| !d.is_empty())
}

/// A valid value in words: `one of "a", "b"`, `an integer from 1 to 10`, `a list like …`.
fn valid(schema: &Value) -> Option<String> {
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        let options: Vec<String> = options.iter().map(Value::to_string).collect();
        return Some(format!("one of {}", options.join(", ")));
    }
    let mut types = type_names(schema);
    if types.is_empty()
        && (bound(schema, "minimum").is_some() || bound(schema, "maximum").is_some())
    {
        types.push("number");
    }
    if types.is_empty() {
        return None;
    }
    let words: Vec<String> = types.iter().map(|t| one_type(t, schema)).collect();
    Some(words.join(" or "))
}

fn one_type(name: &str, schema: &Value) -> String {
    match name {
        "string" => "a string".to_owned(),
        "integer" => format!("an integer{}", range(schema)),
        "number" => format!("a number{}", range(schema)),
        "boolean" => "true or false".to_owned(),
        "null" => "null".to_owned(),
        "array" => match schema.get("items").filter(|s| s.is_object()) {
            Some(items) if items.get("properties").is_some() => {
                format!("a list like [{}]", example(items))
            }
            Some(items) => match valid(items) {
                Some(each) => format!("a list, each item {each}"),
                None => "a list".to_owned(),
            },
            None => "a list".to_owned(),
        },
        "object" if schema.get("properties").is_some() => {
            format!("an object like {}", example(schema))
        }
        "object" => "an object".to_owned(),
        other => format!("a value of type `{other}`"),
    }
}

fn range(schema: &Value) -> String {
    let shown = |key| {
        schema
            .get(key)
            .filter(|v| v.is_number())
            .map(Value::to_string)
    };
    match (shown("minimum"), shown("maximum")) {
        (Some(min), Some(max)) => format!(" from {min} to {max}"),
        (Some(min), None) => format!(" ≥ {min}"),
        (None, Some(max)) => format!(" ≤ {max}"),
        (None, None) => String::new(),
    }
}

/// A value the schema accepts, to show its shape: `{"content":"…","status":"pending"}`.
fn example(schema: &Value) -> Value {
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|o| o.first())
    {
        return first.clone();
    }
    let number = || {
        ["minimum", "maximum"]
            .iter()
            .find_map(|key| schema.get(*key).filter(|v| v.is_number()).cloned())
            .unwrap_or_else(|| Value::from(1))
    };
    let properties = schema.get("properties").and_then(Value::as_object);
    match type_names(schema).first().copied() {
        Some("integer" | "number") => number(),
        Some("boolean") => Value::Bool(true),
        Some("array") => Value::Array(schema.get("items").map(example).into_iter().collect()),
        Some("object") | None if properties.is_some() => {
            let properties = properties.into_iter().flatten();
            let required = required(schema);
            // The required members show the shape; without any, every member does.
            let members = properties
                .filter(|(name, _)| required.is_empty() || required.contains(&name.as_str()))
                .take(EXAMPLE_MEMBERS)
                .map(|(name, member)| (name.clone(), example(member)))
                .collect();
            Value::Object(members)
        }
        Some("object") => Value::Object(Map::new()),
        _ => Value::String("…".to_owned()),
    }
}

/// The members an object takes, the required first: `path, and optionally limit, offset`.
fn takes(properties: Option<&Map<String, Value>>, required: &[&str]) -> String {
    let optional: Vec<&str> = properties
        .into_iter()
        .flatten()
        .map(|(name, _)| name.as_str())
        .filter(|name| !required.contains(name))
        .collect();
    match (required.is_empty(), optional.is_empty()) {
        (_, true) => required.join(", "),
        (true, false) => format!("optionally {}", optional.join(", ")),
        (false, false) => format!(
            "{}, and optionally {}",
            required.join(", "),
            optional.join(", ")
        ),
    }
}

fn shown(value: &Value) -> String {
    preview(&value.to_string(), SHOWN_CHARS)
}

/// A hint for a valid value sent as text, like `"5"` for an integer or `"[…]"` for a list.
fn quoted_hint(schema: &Value, value: &Value) -> &'static str {
    let Value::String(text) = value else {
        return "";
    };
    match serde_json::from_str::<Value>(text) {
        Ok(parsed) if !parsed.is_string() && accepts(schema, &parsed) => {
            " (that is text; write the value itself, without quotes)"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn todo_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "todos": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "content": {"type": "string"},
                            "status": {"type": "string", "enum": ["pending", "done"]}
                        },
                        "required": ["content", "status"]
                    }
                },
                "count": {"type": "integer", "minimum": 1, "description": "How many."},
                "ratio": {"type": "number", "minimum": 0, "maximum": 1},
                "flag": {"type": "boolean"}
            },
            "required": ["todos"]
        })
    }

    fn refusal(args: Value) -> String {
        check("plan", &todo_schema(), &args).unwrap_err()
    }

    #[test]
    fn a_valid_call_passes_with_extras_and_nulls() {
        let args = json!({
            "todos": [{"content": "a", "status": "done", "note": "extra"}],
            "count": 2.0,
            "ratio": 0.5,
            "flag": null,
            "unknown": [1, 2]
        });
        assert_eq!(check("plan", &todo_schema(), &args), Ok(()));
    }

    #[test]
    fn each_kind_of_value_is_named_with_what_is_valid() {
        assert_eq!(
            refusal(json!({"todos": [], "count": 0})),
            "argument `count` must be an integer ≥ 1 (How many), not 0"
        );
        assert_eq!(
            refusal(json!({"todos": [], "count": 1.5})),
            "argument `count` must be an integer ≥ 1 (How many), not 1.5"
        );
        assert_eq!(
            refusal(json!({"todos": [], "ratio": 2})),
            "argument `ratio` must be a number from 0 to 1, not 2"
        );
        assert_eq!(
            refusal(json!({"todos": [], "flag": "yes"})),
            "argument `flag` must be true or false, not \"yes\""
        );
        assert_eq!(
            refusal(json!({"todos": "buy milk"})),
            "argument `todos` must be a list like [{\"content\":\"…\",\"status\":\"pending\"}], not \"buy milk\""
        );
    }

    #[test]
    fn items_and_their_members_are_checked_by_position() {
        assert_eq!(
            refusal(
                json!({"todos": [{"content": "a", "status": "done"}, {"content": "b", "status": "later"}]})
            ),
            "argument `todos[1].status` must be one of \"pending\", \"done\", not \"later\""
        );
        assert_eq!(
            refusal(json!({"todos": [{"content": "a", "state": "done"}]})),
            "missing argument `todos[0].status`, which must be one of \"pending\", \"done\"; \
             `todos[0]` takes: content, status; you gave: content, state"
        );
        assert_eq!(
            refusal(json!({"todos": ["a"]})),
            "argument `todos[0]` must be an object like {\"content\":\"…\",\"status\":\"pending\"}, not \"a\""
        );
    }

    #[test]
    fn a_missing_argument_names_what_was_given_instead() {
        assert_eq!(
            refusal(json!({})),
            "missing argument `todos`, which must be a list like [{\"content\":\"…\",\"status\":\"pending\"}]"
        );
        assert_eq!(
            refusal(json!({"tasks": [], "count": 1})),
            "missing argument `todos`, which must be a list like [{\"content\":\"…\",\"status\":\"pending\"}]; \
             plan takes: todos, and optionally count, flag, ratio; you gave: count, tasks"
        );
        assert_eq!(
            refusal(json!({"todos": null})),
            "missing argument `todos`, which must be a list like [{\"content\":\"…\",\"status\":\"pending\"}]",
            "null is the same as absent"
        );
        let two = json!({"type": "object", "required": ["a", "b"]});
        assert_eq!(
            check("t", &two, &json!({})).unwrap_err(),
            "missing argument `a`; also missing: b"
        );
    }

    #[test]
    fn a_value_sent_as_text_gets_a_hint_and_long_values_are_shortened() {
        assert_eq!(
            refusal(json!({"todos": [], "count": "5"})),
            "argument `count` must be an integer ≥ 1 (How many), not \"5\" \
             (that is text; write the value itself, without quotes)"
        );
        assert!(
            refusal(json!({"todos": "[{\"content\": \"a\", \"status\": \"done\"}]"}))
                .ends_with("(that is text; write the value itself, without quotes)")
        );
        let long = refusal(json!({"todos": "x".repeat(500)}));
        let received = long.rsplit("not ").next().unwrap();
        assert_eq!(received.chars().count(), SHOWN_CHARS, "{long}");
        assert!(received.ends_with('…'), "{long}");
    }

    #[test]
    fn arguments_that_are_not_an_object_are_shown_an_example() {
        assert_eq!(
            check("plan", &todo_schema(), &json!("notes")).unwrap_err(),
            "the arguments of `plan` must be a JSON object like {\"todos\":[{\"content\":\"…\",\"status\":\"pending\"}]}, not \"notes\""
        );
    }

    #[test]
    fn what_the_checker_does_not_understand_is_accepted() {
        let exotic = json!({
            "type": "object",
            "properties": {
                "when": {"type": "string", "format": "date-time", "pattern": "^2"},
                "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "odd": {"type": "decimal"},
                "many": {"type": ["string", "null"]},
                "tuple": {"type": "array", "items": [{"type": "string"}]},
                "weird": {"type": 5, "minimum": "one"}
            },
            "additionalProperties": false,
            "required": 7
        });
        let args = json!({
            "when": "not a date",
            "either": [true],
            "odd": {},
            "many": "x",
            "tuple": [1],
            "weird": -3,
            "extra": 1
        });
        assert_eq!(check("cmd", &exotic, &args), Ok(()));
        assert_eq!(check("cmd", &json!(true), &json!({"a": 1})), Ok(()));
        assert!(
            check("cmd", &exotic, &json!({"many": 3}))
                .unwrap_err()
                .contains("must be a string or null, not 3")
        );
    }
}
