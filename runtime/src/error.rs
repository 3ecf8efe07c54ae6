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
    /// A projector refused a batch; its checkpoint did not move and its writes were dropped.
    #[error("projector `{projector}` refused events: {rejection}")]
    Projection {
        /// The projector.
        projector: String,
        /// Its rejection.
        rejection: String,
    },
    /// A process manager refused an event or timer.
    #[error("process manager `{manager}` (instance `{instance}`) failed: {rejection}")]
    Process {
        /// The process manager.
        manager: String,
        /// The process instance.
        instance: String,
        /// Its rejection.
        rejection: String,
    },
}
