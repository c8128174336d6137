//! What issue 18 part C adds to the YAML: header and query conditions of a route's `match:`,
//! and request body limits (`max_body_bytes`, per route and at the top level).

use std::borrow::Cow;

use super::values::scalar;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{de, Deserialize, Deserializer};

/// The top-level `max_body_bytes` when the file leaves it out: 10 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;

/// Serde default of the top-level `max_body_bytes`.
pub fn default_max_body_bytes() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

/// One `match.headers` condition: an exact value, or `{ present: true }`.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderMatchConfig {
    /// The header must be there, and every value it has must be exactly this one.
    Value(String),
    /// The header must be there, with any value (`{ present: true }`; `false` is refused
    /// when the config is compiled).
    Present(bool),
}

impl<'de> Deserialize<'de> for HeaderMatchConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_yaml::Value::deserialize(d)?;
        if let Some(text) = scalar(&value) {
            return Ok(HeaderMatchConfig::Value(text));
        }
        if let serde_yaml::Value::Mapping(map) = &value {
            if map.len() == 1 {
                if let Some(serde_yaml::Value::Bool(b)) = map.get("present") {
                    return Ok(HeaderMatchConfig::Present(*b));
                }
            }
        }
        Err(de::Error::custom(
            "expected an exact value or `{ present: true }`",
        ))
    }
}

impl JsonSchema for HeaderMatchConfig {
    fn schema_name() -> Cow<'static, str> {
        "HeaderMatch".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "The header's exact value (case-sensitive; every value the request has for it must be this one), or `{ present: true }` for any value.",
            "anyOf": [
                { "type": ["string", "number", "boolean"] },
                {
                    "type": "object",
                    "properties": { "present": { "const": true } },
                    "required": ["present"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

/// One `match.query` condition: the parameter's exact value, percent-decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryMatchConfig(pub String);

impl<'de> Deserialize<'de> for QueryMatchConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_yaml::Value::deserialize(d)?;
        scalar(&value)
            .map(QueryMatchConfig)
            .ok_or_else(|| de::Error::custom("expected the parameter's exact value"))
    }
}

impl JsonSchema for QueryMatchConfig {
    fn schema_name() -> Cow<'static, str> {
        "QueryMatch".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "The parameter's exact value, decoded (`%XX` and `+` as in a form); every occurrence of the parameter must have it.",
            "type": ["string", "number", "boolean"]
        })
    }
}
