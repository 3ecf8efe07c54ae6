//! Runtime failures.

use crate::manifest::ManifestError;
use tollgate_host::HostError;

/// Why the runtime could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The manifest is unusable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// An actor failed to load or trapped.
    #[error(transparent)]
    Host(HostError),
    /// An `oci://` actor could not be pulled.
    #[error(transparent)]
    Oci(#[from] tollgate_oci::Error),
    /// No actor of that name.
    #[error("no actor named `{0}` in the manifest")]
    NoSuchActor(String),
    /// No aggregate owns the stream a command was sent to.
    #[error("no aggregate owns stream `{0}`")]
    NoSuchStream(String),
    /// Two aggregates claim the same stream.
    #[error("actors `{0}` and `{1}` both own stream `{2}`")]
    DuplicateStream(String, String, String),
    /// The event store failed (or could not be opened).
    #[error("event store {url}: {message}")]
    Store {
        /// The store's URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// A command kept losing the optimistic-concurrency race on its key.
    #[error("{stream}/{key}: gave up after {attempts} attempts lost to concurrent writers")]
    Contention {
        /// The stream.
        stream: String,
        /// The key.
        key: String,
        /// Attempts made.
        attempts: u32,
    },
    /// A process manager's reaction went over a bound of the manifest's `[reactions]`; it
    /// had no effect.
    #[error("{message}: over `reactions.{bound}` = {limit}")]
    ReactionBound {
        /// The manifest field, e.g. `max_cascade_depth`.
        bound: &'static str,
        /// Its value.
        limit: u64,
        /// Which reaction, and how far it went.
        message: String,
    },
    /// An actor or a client reached for a stream or bucket of the runtime's own namespace.
    #[error("{what} `{name}`: names starting with `{prefix}` are reserved for the runtime", prefix = crate::core::RESERVED_PREFIX)]
    Reserved {
        /// Who tried what, e.g. "projector `p` may not subscribe to stream".
        what: String,
        /// The reserved name.
        name: String,
    },
    /// A reported fact was refused.
    #[error("cannot record a fact on stream `{stream}`: {message}")]
    Report {
        /// The stream.
        stream: String,
        /// Why.
        message: String,
    },
}
