//! The `tollgate` binary, run as a user would: scenario files, errors, `new`, `inspect`, and
//! a node over the embedded log.

#![allow(clippy::unwrap_used)] // a test fails loudly on the first unexpected error

mod abuse;
mod cluster;
mod errors;
mod guests;
mod hostile;
mod inspect;
mod lattice;
mod lattice_secure;
mod nchf;
mod new;
mod node;
mod oci;
mod scenarios;
mod security;
mod serve;
mod store;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary under test.
pub fn tollgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
}

/// Runs the binary with `args`, returning (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    output(tollgate().args(args).output().expect("run tollgate"))
}

/// Splits an output.
pub fn output(out: Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// A compiled actor of this workspace.
pub fn actor(name: &str) -> String {
    tollgate_host_test::fixtures::actor_path(name)
        .canonicalize()
        .unwrap_or_else(|_| panic!("{name}.wasm: run `cargo xtask build-actors`"))
        .display()
        .to_string()
}

/// Writes a scenario file into `dir`.
pub fn scenario(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}
