//! Helpers for validating job parameters with messages that name the key.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Deserialize parameters into `T` (which should `deny_unknown_fields` and
/// carry defaults), turning serde's message into one that names the key.
pub fn parse<T: DeserializeOwned>(params: &Value) -> Result<T, String> {
    let params = if params.is_null() {
        Value::Object(Default::default())
    } else {
        params.clone()
    };
    if !params.is_object() {
        return Err("parameters must be a JSON object".into());
    }
    serde_json::from_value(params).map_err(|e| {
        let msg = e.to_string();
        // serde says "unknown field `x`, expected one of ..." and
        // "invalid type: ..., expected ..." ; both already name the key or
        // the value; make them read as advice.
        format!("invalid parameters: {msg}")
    })
}

/// Parameters as JSON with every default filled in.
pub fn normalized<T: serde::Serialize>(p: &T) -> Result<Value, String> {
    serde_json::to_value(p).map_err(|e| format!("cannot encode parameters: {e}"))
}
