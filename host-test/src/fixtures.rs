//! Where the compiled actors are. `cargo xtask build-actors` builds them once per run into
//! `target/wasm32-wasip2/release/`; tests and the CLI read them from there (or from
//! `TOLLGATE_ACTORS_DIR`).

use std::path::PathBuf;

/// The reference prepaid account aggregate.
pub const PREPAID_ACCOUNT: &str = "prepaid_account";
/// The reference rater (tariffs from configuration).
pub const RATER: &str = "rater";
/// The reference admission policy.
pub const ADMISSION_POLICY: &str = "admission_policy";
/// The reference balance projector.
pub const BALANCE_PROJECTOR: &str = "balance_projector";
/// The reference charging-session process manager.
pub const CHARGING_SESSION: &str = "charging_session";
/// The test fixture that panics, spins or grows memory on command.
pub const MISBEHAVING: &str = "misbehaving";

/// The directory holding the compiled actors.
pub fn actors_dir() -> PathBuf {
    match std::env::var_os("TOLLGATE_ACTORS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release"),
    }
}

/// The path of a compiled actor by crate name with underscores, e.g. `prepaid_account`.
pub fn actor_path(name: &str) -> PathBuf {
    actors_dir().join(format!("{name}.wasm"))
}
