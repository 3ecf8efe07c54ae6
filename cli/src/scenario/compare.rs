//! Expected vs actual: what a case produced, the parts its `then` states, and a line diff of
//! the two as pretty JSON.

use super::format::{Message, Then};
use serde_json::{Map, Value};
use tollgate_host_test::scenario::Outcome;

/// The parts of an outcome that say what the actor decided, as opposed to side effects.
const PRIMARY: [&str; 8] = ["events", "rejection", "decision", "rated", "rating_error", "commands", "ignored", "error"];

/// Keeps of `actual` only what `expected` states: object fields recursively, arrays item by
/// item; scalars and everything else as is.
pub fn partial(actual: &Value, expected: &Value) -> Value {
    match (actual, expected) {
        // An empty table states that the value is empty.
        (Value::Object(a), Value::Object(e)) if !e.is_empty() => {
            Value::Object(e.keys().filter_map(|k| a.get(k).map(|v| (k.clone(), partial(v, &e[k])))).collect())
        }
        (Value::Array(a), Value::Array(e)) => Value::Array(
            a.iter().enumerate().map(|(i, v)| e.get(i).map_or_else(|| v.clone(), |e| partial(v, e))).collect(),
        ),
        _ => actual.clone(),
    }
}

/// Keeps of an actual message its type, its whole payload and the envelope fields `expected` states.
fn message(actual: &Value, expected: Option<&Message>) -> Value {
    let mut out = Map::new();
    for field in ["type", "payload"] {
        out.insert(field.into(), actual.get(field).cloned().unwrap_or(Value::Null));
    }
    if let Some(e) = expected {
        for k in e.meta.keys() {
            if let Some(v) = actual.get(k) {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

fn messages(actual: &Value, expected: &[Message]) -> Value {
    match actual {
        Value::Array(items) => items.iter().enumerate().map(|(i, v)| message(v, expected.get(i))).collect(),
        other => other.clone(),
    }
}

/// A name or a table: a string compares with the value's `field` (or its one key for a
/// tagged value), a table compares partially.
fn name_or_partial(actual: &Value, expected: &Value, field: Option<&str>) -> Value {
    match expected {
        Value::String(_) => match (field, actual) {
            (Some(f), Value::Object(m)) => m.get(f).cloned().unwrap_or(Value::Null),
            (None, Value::Object(m)) if m.len() == 1 => Value::String(m.keys().next().cloned().unwrap_or_default()),
            _ => actual.clone(),
        },
        _ => partial(actual, expected),
    }
}

/// The result of comparing a case's `then` with its outcome.
pub struct Comparison {
    /// The stated expectations, as JSON.
    pub expected: Value,
    /// The matching parts of the outcome.
    pub actual: Value,
}

impl Comparison {
    /// Whether they agree.
    pub fn passed(&self) -> bool {
        self.expected == self.actual
    }

    /// A line diff of expected vs actual, pretty JSON, `-` expected and `+` actual.
    pub fn diff(&self) -> String {
        let expected = serde_json::to_string_pretty(&self.expected).expect("JSON encodes");
        let actual = serde_json::to_string_pretty(&self.actual).expect("JSON encodes");
        let diff = similar::TextDiff::from_lines(&expected, &actual);
        let mut out = String::from("--- expected\n+++ actual\n");
        for change in diff.iter_all_changes() {
            let sign = match change.tag() {
                similar::ChangeTag::Delete => '-',
                similar::ChangeTag::Insert => '+',
                similar::ChangeTag::Equal => ' ',
            };
            out.push(sign);
            out.push(' ');
            out.push_str(change.value().trim_end_matches('\n'));
            out.push('\n');
        }
        out
    }
}

/// Compares what `then` states (with its messages parsed) against the outcome.
pub fn compare(then: &Then, events: &[Message], commands: &[Message], outcome: &Outcome) -> Comparison {
    let actual_of = |name: &str| outcome.0.get(name).cloned().unwrap_or(Value::Null);
    let mut expected = Map::new();
    let mut actual = Map::new();
    let mut put = |name: &str, e: Value, a: Option<Value>| {
        expected.insert(name.into(), e);
        if let Some(a) = a {
            actual.insert(name.into(), a);
        }
    };
    let has = |name: &str| outcome.0.contains_key(name);
    if then.events.is_some() {
        let e = Value::Array(events.iter().map(Message::to_json).collect());
        put("events", e, has("events").then(|| messages(&actual_of("events"), events)));
    }
    if then.commands.is_some() {
        let e = Value::Array(commands.iter().map(Message::to_json).collect());
        put("commands", e, has("commands").then(|| messages(&actual_of("commands"), commands)));
    }
    if let Some(e) = &then.rejection {
        put(
            "rejection",
            e.clone(),
            has("rejection").then(|| name_or_partial(&actual_of("rejection"), e, Some("code"))),
        );
    }
    if let Some(e) = &then.decision {
        put("decision", e.clone(), has("decision").then(|| name_or_partial(&actual_of("decision"), e, None)));
    }
    if let Some(e) = &then.rating_error {
        let a = has("rating_error").then(|| name_or_partial(&actual_of("rating_error"), e, None));
        put("rating_error", e.clone(), a);
    }
    for (name, e) in [("rated", &then.rated), ("state", &then.state), ("timers", &then.timers)] {
        if let Some(e) = e {
            put(name, e.clone(), has(name).then(|| partial(&actual_of(name), e)));
        }
    }
    if let Some(e) = &then.cancelled_timers {
        put(
            "cancelled_timers",
            serde_json::to_value(e).expect("strings encode"),
            has("cancelled_timers").then(|| actual_of("cancelled_timers")),
        );
    }
    for (name, e) in [("finished", then.finished), ("ignored", then.ignored), ("duplicate", then.duplicate)] {
        if let Some(e) = e {
            put(name, Value::Bool(e), has(name).then(|| actual_of(name)));
        }
    }
    if let Some(kv) = &then.kv {
        let e = serde_json::to_value(kv).expect("JSON values encode");
        let a = partial(&actual_of("kv"), &e);
        put("kv", e, Some(a));
    }
    if let Some(calls) = &then.calls {
        put("calls", serde_json::to_value(calls).expect("strings encode"), Some(actual_of("calls")));
    }
    if let Some(e) = &then.error {
        // The stated part of the message must occur in the actual one.
        let a = match outcome.0.get("error") {
            Some(Value::String(s)) if s.contains(e.as_str()) => Some(Value::String(e.clone())),
            other => other.cloned(),
        };
        put("error", Value::String(e.clone()), a);
    }
    // Whenever the case fails, show what the actor did decide (a rejection with its code and
    // message, a trap, the events) beside what was stated: a case stating only `then.state`
    // must not hide the rejection that left the state as it was.
    if expected != actual {
        for p in PRIMARY {
            if let Some(v) = outcome.0.get(p)
                && !actual.contains_key(p)
            {
                actual.insert(p.into(), v.clone());
            }
        }
    }
    Comparison { expected: Value::Object(expected), actual: Value::Object(actual) }
}
