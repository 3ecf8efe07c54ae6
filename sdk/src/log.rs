//! Logging through `wasi:logging`; natively, lines go to stderr.

pub use crate::bindings::aggregate::wasi::logging::logging::Level;

/// Emits one log line with a context (e.g. the actor's name).
///
/// ```
/// tollgate_sdk::log::log(tollgate_sdk::log::Level::Info, "prepaid-account", "opened alice");
/// ```
pub fn log(level: Level, context: &str, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::aggregate::wasi::logging::logging::log(level, context, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("{level:?} {context}: {message}");
}

/// Emits an info line.
///
/// ```
/// tollgate_sdk::log::info("rater", "tariffs loaded");
/// ```
pub fn info(context: &str, message: &str) {
    log(Level::Info, context, message)
}

/// Emits a warning.
///
/// ```
/// tollgate_sdk::log::warn("rater", "offer `x` has no geo-fence");
/// ```
pub fn warn(context: &str, message: &str) {
    log(Level::Warn, context, message)
}

/// Emits an error line.
///
/// ```
/// tollgate_sdk::log::error("wire-transfer", "event `x` does not decode");
/// ```
pub fn error(context: &str, message: &str) {
    log(Level::Error, context, message)
}
