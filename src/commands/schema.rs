//! `agentq schema events`: the JSON Schema of an `events.ndjson` line, generated from
//! the Rust types that write it, so the published format cannot drift from the code.

use anyhow::Result;
use serde_json::{Value, json};

use super::Context;
use crate::cli::SchemaCommand;
use crate::domain::FORMAT_VERSION;
use crate::domain::event::EventPayload;

pub fn run(ctx: &Context, what: SchemaCommand) -> Result<u8> {
    match what {
        SchemaCommand::Events => ctx.out.json(&events_schema())?,
    }
    Ok(0)
}

/// The envelope, with one branch per event type tying `type` to its payload.
pub fn events_schema() -> Value {
    let mut generator = schemars::SchemaGenerator::default();
    let branches: Vec<Value> = EventPayload::payload_schemas(&mut generator)
        .into_iter()
        .map(|(name, schema)| {
            json!({
                "properties": {
                    "type": {"const": name},
                    "payload": schema.to_value(),
                }
            })
        })
        .collect();
    let definitions = generator.take_definitions(true);
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "agentq event",
        "description": "One line of <home>/sessions/<id>/events.ndjson. Readers ignore types and fields they do not know; new ones are additive, a breaking change bumps `v`.",
        "type": "object",
        "required": ["v", "seq", "type", "session_id", "execution_id", "timestamp", "payload"],
        "properties": {
            "v": {"const": FORMAT_VERSION},
            "seq": {"type": "integer", "minimum": 1, "description": "Starts at 1 and grows by exactly 1 per session"},
            "type": {"enum": EventPayload::TYPE_NAMES},
            "session_id": {"type": "string", "format": "uuid"},
            "execution_id": {"type": ["string", "null"], "format": "uuid", "description": "null for session-level events"},
            "timestamp": {"type": "string", "format": "date-time", "description": "UTC with milliseconds"},
            "payload": {"type": "object"}
        },
        "oneOf": branches,
        "$defs": definitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_has_a_branch_with_a_resolvable_payload() {
        let schema = events_schema();
        let branches = schema["oneOf"].as_array().unwrap();
        assert_eq!(branches.len(), EventPayload::TYPE_NAMES.len());
        let defs = schema["$defs"].as_object().unwrap();
        for branch in branches {
            let payload = &branch["properties"]["payload"];
            let reference = payload["$ref"].as_str().unwrap();
            let name = reference.trim_start_matches("#/$defs/");
            assert!(defs.contains_key(name), "{reference}");
        }
        assert!(defs["ExecutionFinished"]["properties"]["exit_code"].is_object());
    }
}
