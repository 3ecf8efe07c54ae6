//! Runtime failures.

use crate::manifest::ManifestError;
use tollgate_codec::CodecError;
use tollgate_host::HostError;
use tollgate_store::StoreError;

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
    #[cfg(feature = "oci")]
    #[error(transparent)]
    Oci(#[from] tollgate_oci::Error),
    /// An actor's file is an `oci://` reference, but this runtime was built without its `oci`
    /// feature, so it cannot pull it. (A manifest naming one is refused sooner, with
    /// [`ManifestError::OciDisabled`]; this is for files that reach the loader another way.)
    #[error(
        "{}`{reference}` is an OCI reference, but tollgate-runtime was built without its `oci` feature \
         (enable `tollgate-runtime/oci` to pull actors from registries)",
        actor.as_ref().map(|a| format!("actor `{a}`: ")).unwrap_or_default()
    )]
    OciDisabled {
        /// The actor, when the file came from a manifest.
        actor: Option<String>,
        /// The reference, `oci://...`.
        reference: String,
    },
    /// No actor of that name.
    #[error("no actor named `{0}` in the manifest")]
    NoSuchActor(String),
    /// No aggregate owns the stream a command was sent to.
    #[error("no aggregate owns stream `{0}`")]
    NoSuchStream(String),
    /// Two aggregates claim the same stream.
    #[error("actors `{0}` and `{1}` both own stream `{2}`")]
    DuplicateStream(String, String, String),
    /// A call to the event store failed (or the store could not be opened).
    #[error("event store {url}: {operation}: {source}")]
    Store {
        /// The store's URL.
        url: String,
        /// What the runtime asked of it, e.g. `append` or `read snapshot`.
        operation: String,
        /// The store's error (boxed: it is large, and every `Result` of the runtime carries
        /// this enum).
        #[source]
        source: Box<StoreError>,
    },
    /// The tokio runtime the event store is driven on could not be started.
    #[error("event store: cannot start its tokio runtime: {0}")]
    Tokio(#[source] std::io::Error),
    /// The temporary directory of an ephemeral event store could not be created.
    #[error("ephemeral event store: cannot create its temporary directory: {0}")]
    EphemeralDir(#[source] std::io::Error),
    /// The store named a repeated report's original event, but has no event there.
    #[error("duplicate report on {stream}/{key} has no event at #{sequence}")]
    MissingEvent {
        /// The stream.
        stream: String,
        /// The key.
        key: String,
        /// Where the store said the original is.
        sequence: u64,
    },
    /// An event read from the store (or answered by an aggregate) cannot be decoded as the
    /// runtime reads it.
    #[error("event {stream}/{key} #{sequence} of type `{event_type}` cannot be decoded: {source}")]
    UndecodableEvent {
        /// The stream.
        stream: String,
        /// The key.
        key: String,
        /// The event's sequence in its key.
        sequence: u64,
        /// The event's type.
        event_type: String,
        /// Why.
        #[source]
        source: CodecError,
    },
    /// An aggregate's state cannot be decoded as the runtime reads it (e.g. an account).
    #[error("state of {stream}/{key} as of #{sequence} cannot be decoded: {source}")]
    UndecodableState {
        /// The stream.
        stream: String,
        /// The key.
        key: String,
        /// The last event folded into the state.
        sequence: u64,
        /// Why.
        #[source]
        source: CodecError,
    },
    /// A value the runtime was asked to write (e.g. a caller's typed command) cannot be
    /// encoded.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What, e.g. "a command for account/alice".
        what: String,
        /// Why.
        #[source]
        source: CodecError,
    },
    /// A policy has no actor linked to one of its imports.
    #[error("policy `{policy}` has no `{link}` link")]
    MissingLink {
        /// The policy.
        policy: String,
        /// The import, `charging` or `rating`.
        link: &'static str,
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
    #[error("{what} `{name}`: names starting with `{prefix}` are reserved for the runtime", prefix = crate::namespace::RESERVED_PREFIX)]
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
    /// An edge node's grant could not be settled: the core refused its usage, or the usage
    /// cannot be priced.
    #[error("settling grant {reservation_id}: {code}: {message}")]
    SettlementRefused {
        /// The grant (its reservation at the core).
        reservation_id: String,
        /// The rejection code, e.g. `amount-overflow`.
        code: String,
        /// The rejection message.
        message: String,
    },
    /// An edge node could not reach its core (cut off, timed out, or the core could not run
    /// the command now); whether the command ran is unknown, so it is retried with its id.
    #[error("the core at `{subject}` did not answer: {reason}")]
    CoreUnreachable {
        /// Where the core was asked, e.g. `tollgate.core.command.account`.
        subject: String,
        /// Why there is no answer.
        reason: String,
    },
    /// The core answered a command with events the runtime cannot use.
    #[error("{command} answered with {answer}")]
    UnexpectedAnswer {
        /// The command, e.g. "reserve `node/alice/1` on account `alice`".
        command: String,
        /// The events it got.
        answer: String,
    },
    /// A projector refused the log while it was replayed.
    #[error("projector `{projector}` refused the log during replay: {code}: {message}")]
    ReplayRefused {
        /// The projector.
        projector: String,
        /// The rejection code.
        code: String,
        /// The rejection message.
        message: String,
    },
}

impl RuntimeError {
    /// Event `sequence` of `stream`/`key`, of type `event_type`, could not be decoded.
    pub fn undecodable_event(
        stream: &str,
        key: &str,
        sequence: u64,
        event_type: &str,
        source: CodecError,
    ) -> RuntimeError {
        RuntimeError::UndecodableEvent {
            stream: stream.into(),
            key: key.into(),
            sequence,
            event_type: event_type.into(),
            source,
        }
    }
}

impl From<HostError> for RuntimeError {
    fn from(e: HostError) -> Self {
        RuntimeError::Host(e)
    }
}
