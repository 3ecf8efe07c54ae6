//! A charging data session's record: each step it answered, on stream [`SESSION_STREAM`] keyed
//! by its charging data ref, with a digest of the step's content, so a retransmission is answered
//! with the original response and a different request under the same sequence number is told
//! apart from it.

use super::message::{ChargingDataResponse, UnitKind};
use crate::problem::Problem;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use tollgate_node::{Node, Request};

/// The stream on which each charging data session's steps are recorded, keyed by its ref.
pub const SESSION_STREAM: &str = "nchf-session";

/// An open grant of a session: the reservation holding its money.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenGrant {
    /// The reservation on the account.
    pub reservation_id: String,
    /// The kind of units granted.
    pub unit: UnitKind,
    /// The account's currency (empty in sessions recorded before it was kept).
    #[serde(default)]
    pub currency: String,
}

/// One recorded step of a session, on [`SESSION_STREAM`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionEvent {
    /// The session was created (or updated): its subscriber, the grants open after the
    /// step, and the answer given.
    Answered {
        /// The account.
        subscriber: String,
        /// The step's sequence number.
        sequence: u32,
        /// The digest of the step's content ([`content_digest`]); empty in steps recorded
        /// before it was kept.
        #[serde(default)]
        digest: String,
        /// The grants open afterwards, by rating group.
        grants: BTreeMap<u32, OpenGrant>,
        /// The response given (answered again to a retransmission).
        response: ChargingDataResponse,
    },
    /// The session was released.
    Released {
        /// The step's sequence number.
        sequence: u32,
        /// The digest of the step's content.
        #[serde(default)]
        digest: String,
    },
}

/// A session as its recorded steps leave it.
#[derive(Debug, Default)]
pub(crate) struct Session {
    pub(crate) subscriber: String,
    pub(crate) grants: BTreeMap<u32, OpenGrant>,
    /// The digest and response of each step answered, by sequence number.
    answered: BTreeMap<u32, (String, ChargingDataResponse)>,
    /// The release's sequence number and digest, once released.
    released: Option<(u32, String)>,
}

impl Session {
    /// The original answer when step `sequence` was answered already with the same content;
    /// `409` when it was answered for different content (a retransmission is the same request,
    /// never a new one: it would be charged as the original).
    pub(crate) fn answered(&self, sequence: u32, digest: &str) -> Result<Option<&ChargingDataResponse>, Problem> {
        match self.answered.get(&sequence) {
            None => Ok(None),
            Some((recorded, response)) if recorded.is_empty() || recorded == digest => Ok(Some(response)),
            Some(_) => Err(conflict(sequence)),
        }
    }

    /// Whether the session was released: `Ok(true)` for the release itself sent again,
    /// `409` for another request under its sequence number.
    pub(crate) fn released(&self, sequence: u32, digest: &str) -> Result<bool, Problem> {
        match &self.released {
            None => Ok(false),
            Some((s, d)) if *s == sequence && (d.is_empty() || d == digest) => Ok(true),
            Some((s, _)) if *s == sequence => Err(conflict(sequence)),
            Some(_) => Ok(true),
        }
    }
}

fn conflict(sequence: u32) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "INVOCATION_SEQUENCE_NUMBER_CONFLICT",
        format!(
            "`invocationSequenceNumber` {sequence} was answered for a request with other content; \
             a retransmission must repeat its request (only `retransmissionIndicator` may differ)"
        ),
    )
}

/// The digest of a request's content for `operation` (`create`, `update`, `release`): the body
/// without `retransmissionIndicator` (a retransmission is the same request), with object keys
/// in order, so the same content gives the same digest however its keys were ordered.
pub(crate) fn content_digest(operation: &str, body: &Value) -> String {
    fn canonical(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, key) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push(':');
                    canonical(&map[key], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    canonical(item, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut content = body.clone();
    if let Some(map) = content.as_object_mut() {
        map.remove("retransmissionIndicator");
    }
    let mut text = format!("{operation}:");
    canonical(&content, &mut text);
    Sha256::digest(text.as_bytes())[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The session recorded under `reference`, if any.
pub(crate) fn load(node: &Node, reference: &str) -> Result<Option<Session>, Problem> {
    let events = node.stream(SESSION_STREAM, reference)?;
    if events.is_empty() {
        return Ok(None);
    }
    let mut session = Session::default();
    for event in events {
        let tagged = Value::Object(serde_json::Map::from_iter([(event.event_type.clone(), event.payload.clone())]));
        let step: SessionEvent = serde_json::from_value(tagged).map_err(|e| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "SYSTEM_FAILURE",
                format!("session `{reference}` event {}: {e}", event.sequence),
            )
        })?;
        match step {
            SessionEvent::Answered { subscriber, sequence, digest, grants, response } => {
                session.subscriber = subscriber;
                session.grants = grants;
                session.answered.insert(sequence, (digest, response));
            }
            SessionEvent::Released { sequence, digest } => session.released = Some((sequence, digest)),
        }
    }
    Ok(Some(session))
}

/// Records `step` of session `reference` under id `id`.
pub(crate) fn record(node: &mut Node, reference: &str, id: &str, step: &SessionEvent) -> Result<(), Problem> {
    let event = serde_json::to_value(step)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "SYSTEM_FAILURE", e.to_string()))?;
    node.handle(Request::Report {
        stream: SESSION_STREAM.into(),
        key: reference.into(),
        id: id.into(),
        event,
        correlation_id: Some(reference.into()),
    })?;
    Ok(())
}

/// The subscriber of each session the node knows of, so every step of a session is served
/// where its subscriber's other requests are (one worker: no two steps of one session, and no
/// two requests of one account, run at once). Bounded: past [`Subscribers::CAPACITY`] the
/// oldest entries are forgotten and looked up in the store again when needed.
#[derive(Debug, Default)]
pub(crate) struct Subscribers {
    known: Mutex<(HashMap<String, String>, VecDeque<String>)>,
}

impl Subscribers {
    /// Sessions whose subscriber is kept in memory (the last created).
    pub(crate) const CAPACITY: usize = 100_000;

    /// The subscriber of session `reference`, if known.
    pub(crate) fn get(&self, reference: &str) -> Option<String> {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).0.get(reference).cloned()
    }

    /// Remembers that session `reference` belongs to `subscriber`.
    pub(crate) fn insert(&self, reference: &str, subscriber: &str) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *known;
        if map.insert(reference.into(), subscriber.into()).is_none() {
            order.push_back(reference.into());
        }
        // Bounded by insertions, not entries: a released session's place goes with its turn.
        while order.len() > Self::CAPACITY {
            match order.pop_front() {
                Some(oldest) => map.remove(&oldest),
                None => break,
            };
        }
    }

    /// Forgets session `reference` (released).
    pub(crate) fn remove(&self, reference: &str) {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).0.remove(reference);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn the_digest_ignores_key_order_and_the_retransmission_indicator_only() {
        let a =
            json!({"invocationSequenceNumber": 1, "multipleUnitUsage": [{"ratingGroup": 1, "x": {"b": 1, "a": 2}}]});
        let b: Value = serde_json::from_str(
            r#"{"retransmissionIndicator": true, "multipleUnitUsage": [{"x": {"a": 2, "b": 1}, "ratingGroup": 1}], "invocationSequenceNumber": 1}"#,
        )
        .unwrap();
        assert_eq!(content_digest("update", &a), content_digest("update", &b));
        let c =
            json!({"invocationSequenceNumber": 1, "multipleUnitUsage": [{"ratingGroup": 1, "x": {"b": 1, "a": 3}}]});
        assert_ne!(content_digest("update", &a), content_digest("update", &c));
        assert_ne!(content_digest("update", &a), content_digest("release", &a));
    }

    #[test]
    fn known_subscribers_are_bounded_oldest_first() {
        let known = Subscribers::default();
        known.insert("released", "imsi-0");
        known.remove("released");
        assert_eq!(known.get("released"), None);
        for i in 0..Subscribers::CAPACITY + 1 {
            known.insert(&format!("ref-{i}"), "imsi-1");
        }
        assert_eq!((known.get("ref-0"), known.get("ref-1").as_deref()), (None, Some("imsi-1")));
        let (map, order) = &*known.known.lock().unwrap();
        assert_eq!((map.len(), order.len()), (Subscribers::CAPACITY, Subscribers::CAPACITY));
    }
}
