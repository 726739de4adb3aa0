//! Input schemas that model providers accept as function parameters.
//!
//! MCP allows any JSON Schema object; OpenAI and Anthropic require the top level to be
//! a plain `{"type": "object", ...}` and reject a top-level `oneOf`/`anyOf`/`allOf`/
//! `not`/`enum` outright. Like codex's conversion of MCP tools, this fixes the shape
//! and otherwise passes the schema through: the server still validates its arguments.

use serde_json::{Map, Value, json};

/// Top-level keywords providers reject (or that mean nothing to them).
const REJECTED_AT_TOP: &[&str] = &["$schema", "$id", "oneOf", "anyOf", "allOf", "not", "enum"];

/// The schema with an object type and properties at the top, the keywords providers
/// reject there removed, and boolean property schemas (`true` = anything) made `{}`.
pub fn clean_schema(schema: &Value) -> Value {
    let Value::Object(top) = schema else {
        return json!({"type": "object", "properties": {}});
    };
    let mut top: Map<String, Value> = top
        .iter()
        .filter(|(key, _)| !REJECTED_AT_TOP.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    top.insert("type".to_owned(), json!("object"));
    match top.get_mut("properties") {
        Some(Value::Object(properties)) => {
            for property in properties.values_mut() {
                if let Value::Bool(true) = property {
                    *property = json!({});
                }
            }
        }
        _ => {
            top.insert("properties".to_owned(), json!({}));
        }
    }
    // `required` naming a property that is not declared is refused by OpenAI.
    if let Some(Value::Array(required)) = top.get("required") {
        let declared = top.get("properties").and_then(Value::as_object);
        let kept: Vec<Value> = required
            .iter()
            .filter(|name| {
                name.as_str()
                    .is_some_and(|name| declared.is_some_and(|d| d.contains_key(name)))
            })
            .cloned()
            .collect();
        top.insert("required".to_owned(), Value::Array(kept));
    } else {
        top.remove("required");
    }
    Value::Object(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_schema_passes_through() {
        let schema = json!({
            "type": "object",
            "properties": {"text": {"type": "string", "format": "uri"}},
            "required": ["text"],
            "additionalProperties": false
        });
        assert_eq!(clean_schema(&schema), schema);
    }

    #[test]
    fn a_missing_type_or_properties_is_added() {
        assert_eq!(
            clean_schema(&json!({})),
            json!({"type": "object", "properties": {}})
        );
        assert_eq!(
            clean_schema(&json!({"properties": {"a": {"type": "integer"}}})),
            json!({"type": "object", "properties": {"a": {"type": "integer"}}})
        );
        assert_eq!(
            clean_schema(&json!({"type": ["object", "null"], "properties": null})),
            json!({"type": "object", "properties": {}})
        );
    }

    #[test]
    fn what_is_not_an_object_becomes_an_empty_one() {
        for schema in [json!(true), json!(null), json!("object"), json!([1])] {
            assert_eq!(
                clean_schema(&schema),
                json!({"type": "object", "properties": {}})
            );
        }
    }

    #[test]
    fn rejected_top_level_keywords_are_dropped_and_nested_ones_kept() {
        let schema = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "$id": "urn:x",
            "type": "object",
            "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
            "oneOf": [], "allOf": [], "not": {}, "enum": [{}],
            "properties": {
                "a": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "b": true
            },
            "$defs": {"x": {"type": "string"}}
        });
        assert_eq!(
            clean_schema(&schema),
            json!({
                "type": "object",
                "properties": {
                    "a": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                    "b": {}
                },
                "$defs": {"x": {"type": "string"}}
            })
        );
    }

    #[test]
    fn required_keeps_only_declared_properties() {
        assert_eq!(
            clean_schema(&json!({"properties": {"a": {}}, "required": ["a", "ghost", 3]})),
            json!({"type": "object", "properties": {"a": {}}, "required": ["a"]})
        );
        assert_eq!(
            clean_schema(&json!({"required": "a"})),
            json!({"type": "object", "properties": {}})
        );
    }
}
