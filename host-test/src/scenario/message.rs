//! The messages and requests a case states, as data: what the runners take. Reading them out
//! of a file (TOML, YAML, error positions) is the CLI's part.

use serde::Deserialize;
use serde_json::{Map, Value};

/// A timer firing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerSpec {
    /// The timer id.
    pub id: String,
    /// The process instance (default: the only one with state, else the case key).
    #[serde(default)]
    pub instance: Option<String>,
    /// When it was due (default: the one set during `given`, else now).
    #[serde(default)]
    pub fire_at: Option<u64>,
    /// Its payload (default: the one set during `given`, else empty); JSON unless a string.
    #[serde(default)]
    pub payload: Option<Value>,
}

/// An admission request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionSpec {
    /// The request id (default `req-1`).
    #[serde(default)]
    pub request_id: Option<String>,
    /// The subscriber (default the case key).
    #[serde(default)]
    pub subscriber: Option<String>,
    /// The offer.
    pub offer: String,
    /// The rating group (default 1).
    #[serde(default = "one")]
    pub rating_group: u32,
    /// Units asked for.
    pub requested_units: u64,
    /// Where the subscriber is.
    #[serde(default)]
    pub country: Option<String>,
}

/// A rating request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    /// The offer.
    pub offer: String,
    /// Units used.
    pub units: u64,
    /// The rating group (default 1).
    #[serde(default = "one")]
    pub rating_group: u32,
    /// Where.
    #[serde(default)]
    pub country: Option<String>,
    /// The account's tariff counters.
    #[serde(default)]
    pub counters: Vec<CounterSpec>,
}

/// A tariff counter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterSpec {
    /// The offer.
    pub offer: String,
    /// The counter's name.
    pub name: String,
    /// Its value.
    pub value: u64,
}

fn one() -> u32 {
    1
}

/// An event or command as a case states it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The type, e.g. `topped-up`.
    pub ty: String,
    /// The payload, as JSON.
    pub payload: Value,
    /// Envelope fields the file states (`key`, `sequence`, `command_id`, ...).
    pub meta: Map<String, Value>,
}

/// Envelope fields a message may state.
const META: [&str; 9] =
    ["stream", "key", "sequence", "time", "command_id", "correlation_id", "causation_id", "schema_version", "instance"];

impl Message {
    /// Reads `{type = "..", payload = {..}, ...}`, `{"<type>" = {payload}}` or `"<type>"`;
    /// `field` names the value in the error.
    pub fn parse(value: &Value, field: &str) -> Result<Message, String> {
        match value {
            Value::String(ty) => Ok(Message { ty: ty.clone(), payload: Value::Null, meta: Map::new() }),
            Value::Object(map) if map.contains_key("type") => {
                let ty = map["type"].as_str().ok_or_else(|| format!("`{field}.type` must be a string"))?.to_string();
                let mut meta = Map::new();
                let mut payload = Value::Null;
                for (k, v) in map {
                    match k.as_str() {
                        "type" => {}
                        "payload" => payload = v.clone(),
                        k if META.contains(&k) => {
                            meta.insert(k.to_string(), v.clone());
                        }
                        other => {
                            return Err(format!(
                                "`{field}`: unknown field `{other}`, expected `type`, `payload` or one of {}",
                                META.map(|m| format!("`{m}`")).join(", ")
                            ));
                        }
                    }
                }
                Ok(Message { ty, payload, meta })
            }
            Value::Object(map) if map.len() == 1 => {
                let (ty, payload) = map.iter().next().expect("the match arm checked one entry");
                Ok(Message { ty: ty.clone(), payload: payload.clone(), meta: Map::new() })
            }
            _ => Err(format!(
                "`{field}` must be `{{ type = \"..\", payload = {{..}} }}`, `{{ <type> = {{..}} }}` or a type name, not {value}"
            )),
        }
    }

    /// The payload bytes (JSON).
    pub fn payload_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.payload).expect("a JSON value always encodes")
    }

    /// A stated string envelope field.
    pub fn meta_str(&self, name: &str) -> Option<String> {
        self.meta.get(name).map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
    }

    /// A stated number envelope field.
    pub fn meta_u64(&self, name: &str) -> Result<Option<u64>, String> {
        match self.meta.get(name) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| format!("`{name}` must be a non-negative integer, not {v}")),
        }
    }

    /// A stated envelope field that must fit 32 bits (`schema_version`).
    pub fn meta_u32(&self, name: &str) -> Result<Option<u32>, String> {
        match self.meta_u64(name)? {
            None => Ok(None),
            Some(v) => u32::try_from(v)
                .map(Some)
                .map_err(|_| format!("`{name}` is {v}, above the largest allowed, {}", u32::MAX)),
        }
    }

    /// `{type, payload}` plus the stated envelope fields, as the diff shows it.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("type".into(), Value::String(self.ty.clone()));
        map.insert("payload".into(), self.payload.clone());
        map.extend(self.meta.clone());
        Value::Object(map)
    }
}

/// Converts a config or key-value value to its stored text: strings as is, others as JSON.
pub fn stored_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
