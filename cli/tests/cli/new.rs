//! `tollgate new`, then what a new user does from the README: build the component, run its
//! scenario green, break a rule, see the diff and a non-zero exit.
//!
//! The generated crates build into one shared target dir, `target/scaffold`, so the SDK and
//! its dependencies compile once (not per crate or per run).

use crate::{output, root, run, tollgate};
use std::path::{Path, PathBuf};
use std::process::Command;

fn scaffold_target() -> PathBuf {
    root().join("target/scaffold")
}

fn cargo(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let attempt = |offline: bool| {
        let mut cmd = Command::new(&cargo);
        cmd.args(args).current_dir(dir).env("CARGO_TARGET_DIR", scaffold_target()).env_remove("RUSTFLAGS");
        if offline {
            cmd.arg("--offline");
        }
        output(cmd.output().expect("run cargo"))
    };
    // Every dependency is in the local registry cache already; fall back to the network only
    // when the lockfile does not resolve offline.
    let first = attempt(true);
    if first.0 == 0 { first } else { attempt(false) }
}

fn new(dir: &Path, name: &str, kind: &str) -> PathBuf {
    let path = dir.join(name);
    let (code, out, err) = run(&["new", name, "--kind", kind, "--path", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    path
}

fn build_and_test(crate_dir: &Path, name: &str) -> (i32, String, String) {
    let (code, out, err) = cargo(crate_dir, &["build", "--target", "wasm32-wasip2", "--release"]);
    assert_eq!(code, 0, "cargo build of the new {name} crate failed:\n{out}\n{err}");
    let stem = name.replace('-', "_");
    let wasm = scaffold_target().join(format!("wasm32-wasip2/release/{stem}.wasm"));
    let binding = format!("{stem}={}", wasm.display());
    output(
        tollgate()
            .args(["test", "scenarios/example.toml", "--actor", &binding])
            .current_dir(crate_dir)
            .output()
            .unwrap(),
    )
}

#[test]
fn a_new_aggregate_builds_passes_its_scenario_and_fails_a_broken_rule() {
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = new(dir.path(), "loyalty-points", "aggregate");
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("[workspace]"), "{manifest}");
    assert!(manifest.contains(&format!("path = {:?}", root().join("sdk").display().to_string())), "{manifest}");

    // Never overwrites.
    let (code, _, err) = run(&["new", "loyalty-points", "--kind", "aggregate", "--path", crate_dir.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");

    let (code, out, err) = build_and_test(&crate_dir, "loyalty-points");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.ends_with("2 passed, 0 failed\n"), "{out}");

    // The native test of the logic passes too.
    let (code, out, err) = cargo(&crate_dir, &["test"]);
    assert_eq!(code, 0, "{out}\n{err}");

    // Break a rule: expect a different number of points.
    let scenario = crate_dir.join("scenarios/example.toml");
    let text = std::fs::read_to_string(&scenario).unwrap();
    std::fs::write(&scenario, text.replace("then.state = { balance = 6 }", "then.state = { balance = 7 }")).unwrap();
    let (code, out, _) = build_and_test(&crate_dir, "loyalty-points");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED") && out.contains("redeeming spends earned points"), "{out}");
    assert!(out.contains("-     \"balance\": 7") && out.contains("+     \"balance\": 6"), "{out}");
    assert!(out.ends_with("1 passed, 1 failed\n"), "{out}");
}

#[test]
fn every_other_kind_builds_and_passes_its_scenario() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ["projector", "process-manager", "rater", "policy"] {
        let name = format!("new-{kind}");
        let crate_dir = new(dir.path(), &name, kind);
        let (code, out, err) = build_and_test(&crate_dir, &name);
        assert_eq!(code, 0, "{kind}:\n{out}\n{err}");
        assert!(out.ends_with(" 0 failed\n"), "{kind}: {out}");
    }
}

#[test]
fn bad_names_and_missing_sdks_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x");
    let (code, _, err) = run(&["new", "Bad Name", "--kind", "rater", "--path", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("not a crate name"), "{err}");
    let (code, _, err) =
        run(&["new", "x", "--kind", "rater", "--path", path.to_str().unwrap(), "--sdk-path", "/no/such/sdk"]);
    assert_eq!(code, 1);
    assert!(err.contains("/no/such/sdk"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing left behind");
}
