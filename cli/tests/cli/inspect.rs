//! `tollgate inspect` says everything a component lacks to run here.

use crate::{actor, run};

/// An aggregate component importing two interfaces this host does not provide.
pub fn needs_more() -> Vec<u8> {
    tollgate_host_test::fixtures::needs_more(&[
        ("ledger", "post: func();"),
        ("fx", "convert: func(source: string, target: string) -> u64;"),
    ])
}

#[test]
fn every_missing_import_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("needs-more.wasm");
    std::fs::write(&file, needs_more()).unwrap();
    let (code, out, err) = run(&["inspect", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("runnable: no"), "{out}");
    assert!(out.contains("missing import `test:needs-more/ledger`"), "{out}");
    assert!(out.contains("missing import `test:needs-more/fx`"), "{out}");
    let (code, json, _) = run(&["inspect", "--json", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["missing_imports"].as_array().unwrap().len(), 2, "{json}");
}

/// Like `wasi:http/types`, the missing interface re-exports a resource of one the host provides.
#[test]
fn a_missing_import_that_uses_a_host_resource_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("needs-http.wasm");
    let body = "use wasi:io/streams@0.2.0.{input-stream}; resource fields; consume: func(body: borrow<input-stream>) -> fields;";
    std::fs::write(&file, tollgate_host_test::fixtures::needs_more(&[("http", body)])).unwrap();
    let (code, json, err) = run(&["inspect", "--json", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{json}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let missing: Vec<&str> =
        report["missing_imports"].as_array().unwrap().iter().map(|m| m["import"].as_str().unwrap()).collect();
    assert_eq!(missing, ["test:needs-more/http"], "{json}");
    assert!(!json.contains("mismatched resource types"), "{json}");
}

#[test]
fn a_reference_actor_is_runnable() {
    let (code, out, _) = run(&["inspect", &actor("charging_session")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("kind:     process-manager") && out.contains("runnable: yes"), "{out}");
}

#[test]
fn every_verb_has_help() {
    for verb in ["test", "new", "inspect"] {
        let (code, out, _) = run(&[verb, "--help"]);
        assert_eq!(code, 0, "{verb}");
        assert!(out.contains("Usage: tollgate"), "{verb}: {out}");
    }
}
