//! A process manager's command that its aggregate refused, as the runtime tells the manager.
//!
//! The runtime records each refusal as an event on [`REFUSALS_STREAM`] (key
//! `manager/instance`, type [`COMMAND_REFUSED`], payload a [`CommandRefused`] in JSON) and
//! delivers it to the manager's instance that sent the command, through the manager's `react`
//! (`tollgate:eventsourcing/process`), checkpointed like any other delivery. The SDK calls
//! `ProcessManager::on_refused` with it.

use serde::{Deserialize, Serialize};

/// The runtime's stream of refused process-manager commands.
pub const REFUSALS_STREAM: &str = "tollgate.refusals";
/// The type of the events on [`REFUSALS_STREAM`].
pub const COMMAND_REFUSED: &str = "command-refused";

/// What was refused, and why.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CommandRefused {
    /// The process manager (its name in the manifest).
    pub manager: String,
    /// The process instance that sent the command.
    pub instance: String,
    /// The command's stream.
    pub stream: String,
    /// The command's key.
    pub key: String,
    /// The command's id.
    pub command_id: String,
    /// The command's type.
    pub command_type: String,
    /// The command's payload, as sent (JSON text; empty for another content type).
    pub payload: String,
    /// The rejection's kind: `business`, `malformed` or `unknown-command`.
    pub kind: String,
    /// The rejection's code, e.g. `insufficient-funds`, `command-id-conflict`.
    pub code: String,
    /// The rejection's message.
    pub message: String,
}

impl CommandRefused {
    /// The refused command as a typed command of the manager's own (an externally tagged enum).
    ///
    /// ```
    /// #[derive(serde::Deserialize, Debug, PartialEq)]
    /// #[serde(rename_all = "kebab-case")]
    /// enum Cmd { Release { reservation_id: String } }
    ///
    /// let refused = tollgate_codec::refusal::CommandRefused {
    ///     manager: "sessions".into(), instance: "s1".into(), stream: "account".into(), key: "alice".into(),
    ///     command_id: "s1/release".into(), command_type: "release".into(),
    ///     payload: r#"{"reservation_id":"r1"}"#.into(),
    ///     kind: "business".into(), code: "unknown-reservation".into(), message: "no r1".into(),
    /// };
    /// assert_eq!(refused.command::<Cmd>().unwrap(), Cmd::Release { reservation_id: "r1".into() });
    /// ```
    pub fn command<T: serde::de::DeserializeOwned>(&self) -> Result<T, crate::CodecError> {
        crate::decode(&self.command_type, self.payload.as_bytes())
    }
}
