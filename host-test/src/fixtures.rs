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
/// Every reference actor (one per crate under `actors/`), the list tests and registries use.
pub const REFERENCE_ACTORS: [&str; 5] = [PREPAID_ACCOUNT, RATER, ADMISSION_POLICY, BALANCE_PROJECTOR, CHARGING_SESSION];

/// The test fixture that panics, spins or grows memory on command.
pub const MISBEHAVING: &str = "misbehaving";
/// The test fixture that sleeps an hour or polls the clock until an hour has passed.
pub const SLEEPER: &str = "sleeper";
/// The test fixture that logs MiBs per command, floods stderr before panicking, or loops over
/// logging, stderr or stdout.
pub const LOG_FLOODER: &str = "log_flooder";
/// The test fixture projector that writes hundreds of MiB to key-value storage in one delivery,
/// or loops over logging or stderr after writing.
pub const BUCKET_HOG: &str = "bucket_hog";

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

/// An aggregate component that also imports `interfaces` of package `test:needs-more` (each a
/// `(name, WIT body)` pair), which no tollgate host provides: the fixture for load errors.
///
/// A body may `use wasi:io/streams@0.2.0.{input-stream};`, a resource the host does provide, the
/// way `wasi:http/types` does.
pub fn needs_more(interfaces: &[(&str, &str)]) -> Vec<u8> {
    use wit_component::{ComponentEncoder, StringEncoding, dummy_module, embed_component_metadata};
    use wit_parser::{ManglingAndAbi, Resolve};

    let mut resolve = Resolve::default();
    resolve.push_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../wit/eventsourcing")).expect("tollgate WIT");
    resolve
        .push_str("wasi-io.wit", "package wasi:io@0.2.0;\ninterface streams { resource input-stream; }")
        .expect("wasi:io WIT");
    let declared: String = interfaces.iter().map(|(name, body)| format!("interface {name} {{ {body} }}\n")).collect();
    let imported: String = interfaces.iter().map(|(name, _)| format!("import {name};\n")).collect();
    let text = format!(
        "package test:needs-more;\n{declared}world needs-more {{\n{imported}export tollgate:eventsourcing/command-handler@0.2.0;\n}}"
    );
    let pkg = resolve.push_str("needs-more.wit", &text).expect("fixture WIT");
    let world = resolve.select_world(&[pkg], Some("needs-more")).expect("fixture world");
    let mut module = dummy_module(&resolve, world, ManglingAndAbi::Standard32);
    embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8).expect("embed metadata");
    ComponentEncoder::default().module(&module).and_then(|e| e.validate(true).encode()).expect("encode component")
}

/// A component that exports the one interface `export` of the package `package_wit` (WIT text
/// declaring it) and does nothing: the fixture for contracts the host refuses by name.
pub fn exporting(package_wit: &str, export: &str) -> Vec<u8> {
    use wit_component::{ComponentEncoder, StringEncoding, dummy_module, embed_component_metadata};
    use wit_parser::{ManglingAndAbi, Resolve};

    let mut resolve = Resolve::default();
    resolve.push_str("exported.wit", package_wit).expect("fixture package WIT");
    let pkg = resolve
        .push_str("exporting.wit", &format!("package test:exporting;\nworld exporting {{ export {export}; }}"))
        .expect("fixture world WIT");
    let world = resolve.select_world(&[pkg], Some("exporting")).expect("fixture world");
    let mut module = dummy_module(&resolve, world, ManglingAndAbi::Standard32);
    embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8).expect("embed metadata");
    ComponentEncoder::default().module(&module).and_then(|e| e.validate(true).encode()).expect("encode component")
}
