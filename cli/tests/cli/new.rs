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
    let scenario = crate_dir.join("scenarios/example.toml");
    let test_with_target_dir = |target: &Path| {
        output(
            tollgate()
                .args(["test", scenario.to_str().unwrap()])
                .env("CARGO_TARGET_DIR", target)
                .current_dir(std::env::temp_dir())
                .output()
                .unwrap(),
        )
    };
    // Not built yet (an empty target dir): the error says how to build it in this crate, not
    // with the tollgate workspace's xtask.
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = test_with_target_dir(empty.path());
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("no such file") && err.contains("cargo build --target wasm32-wasip2 --release"), "{err}");
    assert!(!err.contains("xtask"), "{err}");

    let (code, out, err) = cargo(crate_dir, &["build", "--target", "wasm32-wasip2", "--release"]);
    assert_eq!(code, 0, "cargo build of the new {name} crate failed:\n{out}\n{err}");
    // Built into a shared target dir (`CARGO_TARGET_DIR`), not `<crate>/target`: the scenario
    // finds its component there, from any directory.
    assert!(!crate_dir.join("target").exists());
    test_with_target_dir(&scaffold_target())
}

#[test]
fn a_new_aggregate_builds_passes_its_scenario_and_fails_a_broken_rule() {
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = new(dir.path(), "loyalty-points", "aggregate");
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("[workspace]"), "{manifest}");
    // What `cargo build --release` makes is what ships: the settings of `cargo xtask build-actors`.
    let xtask = std::fs::read_to_string(root().join("xtask/src/main.rs")).unwrap();
    for setting in ["lto = true", "codegen-units = 1", "strip = true", "opt-level = 3"] {
        let flag = format!("profile.release.{}", setting.replace(' ', ""));
        assert!(xtask.contains(&format!("\"{flag}\"")), "xtask builds with {flag}");
        assert!(manifest.contains(setting), "{setting}: {manifest}");
    }
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(readme.contains("strip = true\nopt-level = 3\n"), "the README's actor Cargo.toml says the same");
    assert!(manifest.contains(&format!("path = {:?}", root().join("sdk").display().to_string())), "{manifest}");

    // Never overwrites.
    let (code, _, err) = run(&["new", "loyalty-points", "--kind", "aggregate", "--path", crate_dir.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");

    let (code, out, err) = build_and_test(&crate_dir, "loyalty-points");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.ends_with("3 passed, 0 failed\n"), "{out}");

    // The native test of the logic passes too.
    let (code, out, err) = cargo(&crate_dir, &["test"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // And the scenario file the Python and JavaScript examples pass: the same contract.
    let wasm = scaffold_target().join("wasm32-wasip2/release/loyalty_points.wasm");
    let loyalty = root().join("examples/loyalty.toml");
    let binding = format!("loyalty={}", wasm.display());
    let (code, out, err) = run(&["test", loyalty.to_str().unwrap(), "--actor", &binding]);
    assert_eq!(code, 0, "{out}\n{err}");

    // Break a rule: expect a different number of points.
    let scenario = crate_dir.join("scenarios/example.toml");
    let text = std::fs::read_to_string(&scenario).unwrap();
    std::fs::write(&scenario, text.replace("then.state = { balance = 6 }", "then.state = { balance = 7 }")).unwrap();
    let (code, out, _) = build_and_test(&crate_dir, "loyalty-points");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED") && out.contains("redeeming spends earned points"), "{out}");
    assert!(out.contains("-     \"balance\": 7") && out.contains("+     \"balance\": 6"), "{out}");
    assert!(out.ends_with("2 passed, 1 failed\n"), "{out}");
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
        let (code, out, err) = cargo(&crate_dir, &["test"]);
        assert_eq!(code, 0, "{kind}: the native tests:\n{out}\n{err}");
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

/// The events of another crate, which the second process manager wraps.
const EVENTS_CRATE: &str = r#"
/// The events of stream `loyalty`.
#[derive(serde::Deserialize, Debug)]
#[serde(rename_all = "kebab-case")]
pub enum PointsEvent {
    /// Points were added.
    Earned { points: u64 },
}
"#;

/// A process manager whose event enum wraps the other crate's with `#[serde(untagged)]`: a
/// shape no (type, payload) pair decodes into.
const WRAPPING_MANAGER: &str = r#"
use tollgate_sdk::process_manager::Reaction;
use tollgate_sdk::types::TimestampMs;
use tollgate_sdk::{Event, ProcessManager, Rejection, Timer};

#[derive(serde::Deserialize, Debug)]
#[serde(untagged)]
pub enum Wrapped {
    Points(points_events::PointsEvent),
}

pub struct Wire;

impl ProcessManager for Wire {
    const SUBSCRIPTIONS: &'static [&'static str] = &["loyalty"];
    type State = ();
    type Event = Wrapped;

    fn correlate(_event: &Wrapped, envelope: &Event) -> Option<String> {
        Some(envelope.key.clone())
    }

    fn react(_state: &mut (), _event: Wrapped, _envelope: &Event) -> Result<Reaction, Rejection> {
        Ok(Reaction::default())
    }

    fn on_timer(_state: &mut (), _timer: &Timer, _now: TimestampMs) -> Result<Reaction, Rejection> {
        Ok(Reaction::default())
    }
}

tollgate_sdk::export_process_manager!(Wire);
"#;

#[test]
fn an_event_enum_the_codec_cannot_decode_is_reported_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    // A fresh process manager passes its scenario...
    let (code, out, err) = build_and_test(&new(dir.path(), "bonus", "process-manager"), "bonus");
    assert_eq!(code, 0, "{out}\n{err}");

    // ...a second one, wrapping another crate's event enum, is refused on every event.
    let events = dir.path().join("points-events");
    std::fs::create_dir_all(events.join("src")).unwrap();
    std::fs::write(
        events.join("Cargo.toml"),
        "[package]\nname = \"points-events\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
         [dependencies]\nserde = { version = \"1\", features = [\"derive\"] }\n",
    )
    .unwrap();
    std::fs::write(events.join("src/lib.rs"), EVENTS_CRATE).unwrap();
    let wire = new(dir.path(), "wire", "process-manager");
    let manifest = std::fs::read_to_string(wire.join("Cargo.toml")).unwrap();
    let manifest =
        manifest.replace("[dependencies]\n", "[dependencies]\npoints-events = { path = \"../points-events\" }\n");
    std::fs::write(wire.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(wire.join("src/lib.rs"), WRAPPING_MANAGER).unwrap();
    std::fs::write(
        wire.join("tests/logic.rs"),
        "#[test]\nfn events_decode() {\n    tollgate_sdk::codec::check_enum::<wire::Wrapped>().unwrap();\n}\n",
    )
    .unwrap();

    let (code, out, err) = build_and_test(&wire, "wire");
    assert_eq!(code, 1, "{out}\n{err}");
    let first = out.split("FAILED").nth(1).unwrap_or_default();
    assert!(first.contains("\"code\": \"malformed-event\""), "a rejection, not `ignored`:\n{out}");
    assert!(first.contains("untagged") && first.contains("does not decode"), "the reason:\n{out}");
    assert!(!out.contains("\"ignored\": true"), "{out}");
    // The actor's log says it too, and the check an author runs natively fails with the type named.
    assert!(out.contains("refused rather than ignored"), "the log line:\n{out}");
    let (code, out, err) = cargo(&wire, &["test"]);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(format!("{out}{err}").contains("Wrapped") && format!("{out}{err}").contains("untagged"), "{out}\n{err}");
}
