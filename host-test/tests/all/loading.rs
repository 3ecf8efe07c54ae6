//! Loading checks each way a file can be wrong, with an error naming the problem.

use crate::fixture;
use tollgate_host::{Actor, ActorKind, HostEngine, HostError};
use tollgate_host_test::fixtures::{PREPAID_ACCOUNT, actor_path};

/// The size rule of `cargo xtask build-actors` (`ACTOR_SIZE_LIMIT`, where the reason is).
const ACTOR_SIZE_LIMIT: usize = 352 * 1024;

fn load_bytes(name: &str, bytes: &[u8]) -> HostError {
    let engine = HostEngine::shared().unwrap();
    match Actor::from_bytes(&engine, name, bytes) {
        Ok(_) => panic!("{name} loaded"),
        Err(e) => e,
    }
}

#[test]
fn the_reference_actor_is_an_aggregate_importing_only_what_the_host_provides() {
    let actor = fixture(PREPAID_ACCOUNT);
    assert_eq!(actor.kind(), ActorKind::Aggregate);
    assert!(actor.exports().iter().any(|e| e == "tollgate:eventsourcing/command-handler@0.2.0"));
    assert!(actor.size() <= ACTOR_SIZE_LIMIT, "{} bytes", actor.size());
    for import in actor.imports() {
        assert!(import.starts_with("wasi:") || import.starts_with("tollgate:"), "unexpected import {import}");
    }
}

#[test]
fn a_missing_file_names_the_file_and_the_build_command() {
    let engine = HostEngine::shared().unwrap();
    let err = Actor::load(&engine, actor_path("no_such_actor")).err().unwrap();
    assert!(matches!(err, HostError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("no_such_actor.wasm"), "{err}");
    assert!(err.to_string().contains("cargo xtask build-actors"), "{err}");
}

#[test]
fn text_is_not_webassembly() {
    let err = load_bytes("notes.txt", b"hello, I am not wasm");
    assert!(matches!(err, HostError::NotWasm { .. }), "{err}");
    assert!(err.to_string().starts_with("notes.txt: not a WebAssembly file"), "{err}");
}

#[test]
fn a_core_module_is_not_a_component() {
    // The smallest valid core module: magic + version 1.
    let err = load_bytes("core.wasm", b"\0asm\x01\0\0\0");
    assert!(matches!(err, HostError::CoreModule { .. }), "{err}");
    assert!(err.to_string().contains("wasm32-wasip2"), "{err}");
}

#[test]
fn a_truncated_component_is_invalid() {
    let bytes = std::fs::read(actor_path(PREPAID_ACCOUNT)).unwrap();
    let err = load_bytes("truncated.wasm", &bytes[..bytes.len() / 2]);
    assert!(matches!(err, HostError::Invalid { .. }), "{err}");
}

#[test]
fn a_component_exporting_no_tollgate_interface_is_the_wrong_kind() {
    // An empty component: valid, exports nothing.
    let err = load_bytes("empty.wasm", b"\0asm\x0d\0\x01\0");
    match &err {
        HostError::WrongKind { expected, found, .. } => {
            assert!(expected.contains("tollgate:eventsourcing/command-handler@0.2.0"), "{err}");
            assert_eq!(found, "nothing");
        }
        other => panic!("expected wrong kind, got {other}"),
    }
}

#[test]
fn an_aggregate_is_not_a_rater() {
    let err = fixture(PREPAID_ACCOUNT).expect_kind(ActorKind::Rater).unwrap_err();
    assert!(err.to_string().contains("does not export `tollgate:billing/rating@0.2.0`"), "{err}");
}

#[test]
fn a_rater_or_policy_built_against_the_retired_billing_0_1_is_refused_by_name() {
    // The shape of `rate` does not matter: a component is told by the interface it exports.
    let rater = tollgate_host_test::fixtures::exporting(
        "package tollgate:billing@0.1.0;\ninterface rating { rate: func(units: u64) -> s64; }",
        "tollgate:billing/rating@0.1.0",
    );
    let err = load_bytes("old-rater.wasm", &rater);
    match &err {
        HostError::RetiredContract { export, current, .. } => {
            assert_eq!(export, "tollgate:billing/rating@0.1.0");
            assert_eq!(current, "tollgate:billing/rating@0.2.0");
        }
        other => panic!("expected a retired contract, got {other}"),
    }
    assert!(err.to_string().contains("price plan"), "the error says what changed: {err}");
    let policy = tollgate_host_test::fixtures::exporting(
        "package tollgate:admission@0.1.0;\ninterface admission { decide: func(id: string) -> bool; }",
        "tollgate:admission/admission@0.1.0",
    );
    let err = load_bytes("old-policy.wasm", &policy);
    assert!(
        err.to_string().contains("`tollgate:admission/admission@0.1.0`, a contract this host no longer runs"),
        "{err}"
    );
    assert!(err.to_string().contains("rebuild it against `tollgate:admission/admission@0.2.0`"), "{err}");
}

#[test]
fn an_unprovided_import_is_named() {
    let component = tollgate_host_test::fixtures::needs_more(&[("ledger", "post: func();")]);

    let err = load_bytes("needs-more.wasm", &component);
    match &err {
        HostError::MissingImport { interface, .. } => assert_eq!(interface, "test:needs-more/ledger"),
        other => panic!("expected a missing import, got {other}"),
    }
    assert!(err.to_string().contains("imports `test:needs-more/ledger`, which this host does not provide"), "{err}");
}

#[test]
fn every_reference_actor_is_a_small_component_of_its_kind() {
    use tollgate_host_test::fixtures::{ADMISSION_POLICY, BALANCE_PROJECTOR, CHARGING_SESSION, RATER};
    for (name, kind) in [
        (PREPAID_ACCOUNT, ActorKind::Aggregate),
        (RATER, ActorKind::Rater),
        (ADMISSION_POLICY, ActorKind::Policy),
        (BALANCE_PROJECTOR, ActorKind::Projector),
        (CHARGING_SESSION, ActorKind::ProcessManager),
    ] {
        let actor = fixture(name);
        assert_eq!(actor.kind(), kind, "{name}");
        assert!(actor.exports().iter().any(|e| e.starts_with("tollgate:")), "{name}");
        assert!(actor.size() <= ACTOR_SIZE_LIMIT, "{name} is {} bytes", actor.size());
    }
}

#[test]
fn the_reference_actor_list_is_the_actors_directory() {
    // `cargo xtask build-actors` builds every crate under `actors/`; tests and registries use
    // `REFERENCE_ACTORS`. An actor added to one and not the other fails here.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../actors");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().replace('-', "_"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = tollgate_host_test::fixtures::REFERENCE_ACTORS.map(String::from).to_vec();
    listed.sort();
    assert_eq!(listed, on_disk);
}
