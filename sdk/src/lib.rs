#![doc = include_str!("../../README.md")]

extern crate self as tollgate_sdk;

/// The bindings generator, re-exported so actor crates depend on the SDK alone.
pub use wit_bindgen;

pub mod aggregate;
pub mod batch;
pub mod bindings;
/// The message codec (also used by hosts), re-exported so actors depend on the SDK alone.
pub use tollgate_codec as codec;
pub mod config;
pub mod keyvalue;
pub mod log;
pub mod policy;
pub mod process_manager;
pub mod projector;
pub mod rater;
#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
pub mod testing;
pub mod types;

pub use aggregate::Aggregate;
pub use process_manager::ProcessManager;
pub use projector::Projector;
pub use types::{AggregateInfo, Command, Event, EventDraft, Rejection, RejectionKind, Timer};

/// Logs, once an actor is loaded (its subscriptions are asked for), that its event type has a
/// shape no event decodes into, so the mistake shows before the first event rather than as
/// refusals of every one.
pub(crate) fn log_undecodable<T: serde::de::DeserializeOwned>(kind: &str) {
    if let Err(e) = codec::check_enum::<T>() {
        log::error(kind, &format!("no event will decode: {e}"));
    }
}
