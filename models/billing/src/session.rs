//! Charging sessions: what the network reports about usage under a grant.
//!
//! The runtime appends these to stream [`STREAM`] under key = session id, which is also the
//! events' correlation id: the admission request id that made the session's first
//! reservation. The `charging-session` process manager turns them into account debits and
//! re-reservations. JSON, externally tagged, kebab-case:
//!
//! ```json
//! {"started":{"account":"alice","offer":"video","currency":"EUR"}}
//! {"usage-reported":{"account":"alice","reservation_id":"req-1","used_units":10,"requested_units":10}}
//! {"terminated":{"account":"alice","reservation_id":"req-1/2","used_units":3}}
//! ```

use serde::{Deserialize, Serialize};

/// The stream of charging sessions.
pub const STREAM: &str = "session";

/// What happened in a charging session.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum SessionEvent {
    /// The session began (optional): tells the process manager the account's currency, which
    /// it needs to re-reserve (an account's `reserved` event carries amounts only).
    Started {
        /// The account charged.
        account: String,
        /// The offer used.
        offer: String,
        /// ISO 4217 code of the account.
        currency: String,
    },
    /// The network reports units used under a reservation and may ask for more.
    UsageReported {
        /// The account charged.
        account: String,
        /// The reservation the units were used under.
        reservation_id: String,
        /// Units used, at most those granted.
        used_units: u64,
        /// Further units wanted; 0 = none.
        #[serde(default)]
        requested_units: u64,
        /// ISO 4217 code of the account, needed to re-reserve when no `started` event said it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        currency: Option<String>,
    },
    /// The session ended: final usage under the last reservation.
    Terminated {
        /// The account charged.
        account: String,
        /// The reservation of the final usage.
        reservation_id: String,
        /// Units used under it.
        used_units: u64,
    },
}
