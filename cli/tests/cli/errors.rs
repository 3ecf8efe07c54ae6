//! Each way a run can go wrong says what is wrong, and setup errors print no case output.

use crate::{actor, run, scenario};
use std::path::Path;

fn aggregate_scenario(actor: &str, command: &str) -> String {
    format!("actor = {actor:?}\n[[case]]\nname = \"acts\"\nwhen.command = {command}\n")
}

/// Runs a scenario that must fail before any case: exit 1, nothing on stdout.
fn setup_error(dir: &Path, text: &str) -> String {
    let file = scenario(dir, "s.toml", text);
    let (code, out, err) = run(&["test", &file]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert_eq!(out, "", "a setup error must not print case output");
    assert!(err.contains("s.toml"), "the error names the scenario file: {err}");
    err
}

#[test]
fn a_missing_scenario_file_is_named() {
    let (code, out, err) = run(&["test", "/no/such/scenario.toml"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(err.contains("/no/such/scenario.toml: no such scenario file"), "{err}");
}

#[test]
fn a_missing_actor_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = setup_error(dir.path(), &aggregate_scenario("missing.wasm", "\"open\""));
    assert!(err.contains("missing.wasm: no such file"), "{err}");
}

#[test]
fn a_text_file_is_not_webassembly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.wasm"), "hello").unwrap();
    let err = setup_error(dir.path(), &aggregate_scenario("notes.wasm", "\"open\""));
    assert!(err.contains("not a WebAssembly file"), "{err}");
}

#[test]
fn a_core_module_is_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let err = setup_error(dir.path(), &aggregate_scenario("core.wasm", "\"open\""));
    assert!(err.contains("is a core WebAssembly module, not a component"), "{err}");
}

#[test]
fn a_command_to_a_rater_names_the_export_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let err = setup_error(dir.path(), &aggregate_scenario(&actor("rater"), "\"open\""));
    assert!(err.contains("case #1 `acts`"), "{err}");
    assert!(err.contains("does not export `tollgate:eventsourcing/command-handler@0.2.0`"), "{err}");
}

#[test]
fn a_stated_kind_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("kind = \"projector\"\n{}", aggregate_scenario(&actor("prepaid_account"), "\"open\""));
    let err = setup_error(dir.path(), &text);
    assert!(err.contains("does not export `tollgate:eventsourcing/projection@0.2.0`"), "{err}");
}

#[test]
fn a_missing_import_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("needs-more.wasm"), crate::inspect::needs_more()).unwrap();
    let err = setup_error(dir.path(), &aggregate_scenario("needs-more.wasm", "\"open\""));
    assert!(err.contains("imports `test:needs-more/ledger`, which this host does not provide"), "{err}");
}

#[test]
fn a_misspelt_field_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        format!("actor = {:?}\n\n[[case]]\nname = \"typo\"\nwhne.command = \"open\"\n", actor("prepaid_account"));
    let err = setup_error(dir.path(), &text);
    assert!(err.contains("s.toml:5:1: unknown field `whne`"), "{err}");
}

#[test]
fn a_field_of_the_wrong_type_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "actor = {:?}\n[[case]]\nname = \"t\"\nwhen.rate = {{ offer = \"voice\", units = \"many\" }}\n",
        actor("rater")
    );
    let err = setup_error(dir.path(), &text);
    assert!(err.contains("s.toml:4:"), "{err}");
    assert!(err.contains("invalid type"), "{err}");
}

#[test]
fn a_malformed_message_names_case_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "actor = {:?}\n[[case]]\nname = \"m\"\nwhen.command = {{ type = \"open\", payloud = {{}} }}\n",
        actor("prepaid_account")
    );
    let err = setup_error(dir.path(), &text);
    assert!(err.contains("case #1 `m`") && err.contains("`when.command`: unknown field `payloud`"), "{err}");
}

#[test]
fn a_given_payload_that_does_not_decode_fails_the_case_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "actor = {:?}\n[[case]]\nname = \"bad payload\"\ngiven.events = [{{ opened = {{ currency = \"EUR\" }} }}]\nwhen.command = \"open\"\nthen.rejection = \"already-open\"\n",
        actor("prepaid_account")
    );
    let file = scenario(dir.path(), "s.toml", &text);
    let (code, out, _) = run(&["test", &file]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED") && out.contains(":: bad payload"), "{out}");
    assert!(out.contains("opened") && out.contains("missing field `overdraft_limit`"), "{out}");
    assert!(out.ends_with("0 passed, 1 failed\n"), "{out}");
}

fn misbehave(command: &str, extra: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "actor = {:?}\n[[case]]\nname = \"misbehaves\"\nwhen.command = {command:?}\nthen.events = [\"ok\"]\n\n[[case]]\nname = \"behaves after\"\nwhen.command = \"ok\"\nthen.events = [\"ok\"]\n",
        actor("misbehaving")
    );
    let file = scenario(dir.path(), "s.toml", &text);
    let args: Vec<&str> = ["test", file.as_str()].into_iter().chain(extra.iter().copied()).collect();
    let (code, out, _) = run(&args);
    assert!(out.lines().any(|l| l.starts_with("ok") && l.ends_with(":: behaves after")), "a fresh instance: {out}");
    assert!(out.ends_with("1 passed, 1 failed\n"), "{out}");
    (code, out)
}

#[test]
fn a_trap_shows_the_guests_panic_message() {
    let (code, out) = misbehave("panic", &[]);
    assert_eq!(code, 1);
    assert!(out.contains("trapped in `execute`"), "{out}");
    assert!(out.contains("misbehaving fixture was told to panic"), "{out}");
}

#[test]
fn a_spin_hits_the_cpu_cap() {
    let (code, out) = misbehave("spin", &[]);
    assert_eq!(code, 1);
    assert!(out.contains("exceeded the CPU cap"), "{out}");
}

#[test]
fn a_memory_hog_hits_the_memory_cap() {
    // A generous CPU cap, so a loaded machine cannot hit it first; a smaller memory cap.
    let (code, out) = misbehave("grow", &["--cpu-ms", "10000", "--memory-mib", "32"]);
    assert_eq!(code, 1);
    assert!(out.contains("exceeded the memory cap"), "{out}");
}

#[test]
fn an_expected_trap_passes() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "actor = {:?}\n[[case]]\nname = \"panics\"\nwhen.command = \"panic\"\nthen.error = \"told to panic\"\n",
        actor("misbehaving")
    );
    let (code, out, _) = run(&["test", &scenario(dir.path(), "s.toml", &text)]);
    assert_eq!(code, 0, "{out}");
}
