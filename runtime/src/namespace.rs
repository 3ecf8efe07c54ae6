//! The runtime's own namespace: streams and buckets whose names start with
//! [`RESERVED_PREFIX`] are the runtime's; no actor or client can own, subscribe to, report on
//! or write them.

use crate::error::RuntimeError;

/// Prefix of the runtime's own streams and buckets ([`TIMER_STREAM`],
/// [`crate::stats::STATS_STREAM`], the instance and meta buckets).
pub const RESERVED_PREFIX: &str = "tollgate.";
/// Stream of due process-manager timers (key `manager/instance`).
pub const TIMER_STREAM: &str = "tollgate.timers";
/// Stream of process managers' refused commands (key `manager/instance`), each delivered to
/// the instance that sent it.
pub use tollgate_codec::refusal::REFUSALS_STREAM;
/// Bucket of a process manager's instance states.
pub(crate) const INSTANCES: &str = "tollgate.instances";
/// Bucket listing the buckets a projector wrote, so a restart can load them.
pub(crate) const META: &str = "tollgate.meta";

/// Whether `name` (a stream or a bucket) is in the runtime's own namespace.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// Refuses an actor that subscribes to one of the runtime's own streams.
pub(crate) fn refuse_reserved_subscriptions(
    kind: &str,
    name: &str,
    subscriptions: &[String],
) -> Result<(), RuntimeError> {
    match subscriptions.iter().find(|s| is_reserved(s)) {
        Some(stream) => Err(RuntimeError::Reserved {
            what: format!("{kind} `{name}` may not subscribe to stream"),
            name: stream.clone(),
        }),
        None => Ok(()),
    }
}
