//! The billing domain's shared model: account commands, events and state.
//!
//! One crate for every party that speaks about accounts: the `prepaid-account` actor decodes
//! these types, the host's charging facade and the runtime encode them, and tests and scenario
//! files are written in their JSON form. Amounts are integer minor units, never floats; state
//! uses ordered maps so its encoding is deterministic.

pub mod account;
pub mod balance;
pub mod pricing;
pub mod session;
pub mod tariff;

pub use account::{Account, AccountCommand, AccountEvent, Counter, Money, Reservation};
