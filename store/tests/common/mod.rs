//! Helpers shared by the store test binaries.

#![allow(dead_code)]

pub mod conformance;

use tollgate_store::NewEvent;

/// An event whose payload is derived from `tag`.
pub fn event(event_type: &str, command_id: &str, tag: &str) -> NewEvent {
    NewEvent {
        event_type: event_type.to_owned(),
        schema_version: 1,
        content_type: "application/octet-stream".to_owned(),
        payload: tag.as_bytes().to_vec(),
        command_id: command_id.to_owned(),
        correlation_id: format!("corr-{command_id}"),
        causation_id: format!("cause-{command_id}"),
        time_ms: 1_700_000_000_000,
    }
}
