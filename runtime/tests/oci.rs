//! Actors pulled from a real OCI registry (Debian's `docker-registry` on 127.0.0.1) run an
//! admission end to end: the manifest names every actor as `oci://127.0.0.1:PORT/...`.
//!
//! One test in its own binary: it points `TOLLGATE_CACHE_DIR` at a temporary directory, which
//! must not race with other tests.

#![allow(clippy::unwrap_used)] // a test fails loudly on the first unexpected error

use std::path::{Path, PathBuf};
use tollgate_billing_model::account::{AccountCommand, Money};
use tollgate_billing_model::tariff::{Pricing, Tariff, config_key};
use tollgate_host::aggregate::Outcome;
use tollgate_host_test::fixtures::REFERENCE_ACTORS;
use tollgate_oci::testing::{Registry, push_actors, require_actors};
use tollgate_runtime::{AdmissionRequest, Decision, Manifest, ResultCode, Runtime, RuntimeError, resolve_actor};

/// Every file under `dir`, recursively, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() { out.extend(files(&path)) } else { out.push(path) }
    }
    out.sort();
    out
}

fn manifest_text(references: &[(&str, String)], plain_http: bool) -> String {
    let file = |stem: &str| &references.iter().find(|(s, _)| *s == stem).unwrap().1;
    let tariff = serde_json::to_string(&Tariff::new("EUR", Pricing::PerUnit { unit_price: 2 })).unwrap();
    format!(
        r#"
[registry]
plain_http = {plain_http}

[actors.account]
kind = "aggregate"
file = "oci://{account}"

[actors.rater]
kind = "rater"
file = "oci://{rater}"
config = {{ {offer:?} = {tariff:?} }}

[actors.policy]
kind = "policy"
file = "oci://{policy}"
links = {{ charging = "account", rating = "rater" }}

[actors.balances]
kind = "projector"
file = "oci://{projector}"

[actors.sessions]
kind = "process-manager"
file = "oci://{sessions}"
"#,
        account = file("prepaid_account"),
        rater = file("rater"),
        policy = file("admission_policy"),
        projector = file("balance_projector"),
        sessions = file("charging_session"),
        offer = config_key("voice"),
    )
}

fn request(id: &str, units: u64) -> AdmissionRequest {
    AdmissionRequest {
        request_id: id.into(),
        subscriber: "alice".into(),
        offer: "voice".into(),
        rating_group: 1,
        requested_units: units,
        country: None,
    }
}

#[test]
fn pulled_actors_run_an_admission_end_to_end() {
    let Some(actors) = require_actors(&REFERENCE_ACTORS) else { return };
    let Some(registry) = Registry::start() else { return };
    let cache = tempfile::tempdir().unwrap();
    // SAFETY: this binary holds a single test and no other thread has started yet.
    unsafe { std::env::set_var("TOLLGATE_CACHE_DIR", cache.path()) };

    let pushed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(push_actors(&registry.host(), &actors));
    // By tag for most actors; the policy by digest, as a deployment would pin it.
    let references: Vec<(&str, String)> = pushed
        .iter()
        .map(|(stem, _, p)| (*stem, if *stem == "admission_policy" { p.pinned.clone() } else { p.reference.clone() }))
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let manifest_path = dir.path().join("edge.toml");
    std::fs::write(&manifest_path, manifest_text(&references, true)).unwrap();
    let manifest = Manifest::load(&manifest_path).unwrap();
    assert!(manifest.registry.plain_http);
    assert!(manifest.actors["account"].file.to_str().unwrap().starts_with("oci://127.0.0.1:"));

    // Runtime::load: manifest -> oci:// pulled into the cache -> compiled (and cached) -> run.
    let mut rt = Runtime::load(&manifest_path).unwrap_or_else(|e| panic!("{e}"));
    let open = rt
        .command("account", "alice", "alice/open", &AccountCommand::Open { currency: "EUR".into(), overdraft_limit: 0 })
        .unwrap();
    assert!(matches!(rt.execute(&open).unwrap(), Outcome::Accepted(_)));
    let top_up = rt
        .command("account", "alice", "alice/top-up", &AccountCommand::TopUp { amount: Money::new(120, "EUR") })
        .unwrap();
    assert!(matches!(rt.execute(&top_up).unwrap(), Outcome::Accepted(_)));
    match rt.admit(&request("r1", 60)).unwrap() {
        Decision::Granted(g) => {
            assert_eq!((g.grant.granted_units, g.price.minor_units), (60, 120));
            assert!(g.grant.final_unit.is_some(), "the grant uses up the balance");
        }
        Decision::Denied(d) => panic!("denied {:?}: {}", d.code, d.message),
    }
    match rt.admit(&request("r2", 1)).unwrap() {
        Decision::Denied(d) => assert_eq!(d.code, ResultCode::QuotaLimitReached, "{}", d.message),
        Decision::Granted(g) => panic!("granted {g:?}"),
    }
    let alice = rt.account("alice").unwrap().unwrap();
    assert_eq!((alice.balance, alice.held, alice.available()), (120, 120, 0));

    // The cache holds each pulled component, byte-identical, and its compiled code.
    let cached = files(cache.path());
    for (stem, path, p) in &pushed {
        let blob = cache.path().join("oci/blobs/sha256").join(format!("{}.wasm", &p.layer_digest["sha256:".len()..]));
        assert!(cached.contains(&blob), "{stem}: {} not cached", blob.display());
        assert!(std::fs::read(&blob).unwrap() == std::fs::read(path).unwrap(), "{stem}: pulled bytes differ");
    }
    let compiled = |files: &[PathBuf]| files.iter().filter(|f| f.extension().is_some_and(|e| e == "cwasm")).count();
    assert_eq!(compiled(&cached), actors.len(), "{cached:#?}");

    // The helper the CLI uses resolves the same references to the same cached files.
    let account = &references[0];
    assert_eq!(account.0, "prepaid_account");
    let path = resolve_actor(&format!("oci://{}", account.1), dir.path(), true).unwrap();
    assert!(path.starts_with(cache.path()), "{}", path.display());
    assert_eq!(resolve_actor("rel.wasm", dir.path(), true).unwrap(), dir.path().join("rel.wasm"));

    // Without `plain_http` the registry is spoken to over HTTPS, which this one does not serve.
    std::fs::write(&manifest_path, manifest_text(&references, false)).unwrap();
    match Runtime::load(&manifest_path) {
        Err(RuntimeError::Oci(tollgate_oci::Error::Registry { .. })) => {}
        Err(other) => panic!("expected a registry error, got: {other}"),
        Ok(_) => panic!("plain HTTP was used without `plain_http`"),
    }

    // With the registry gone, a second start is served from the cache when pinned by digest;
    // tags must be resolved, so they need the registry.
    drop(registry);
    let pinned: Vec<(&str, String)> = pushed.iter().map(|(stem, _, p)| (*stem, p.pinned.clone())).collect();
    std::fs::write(&manifest_path, manifest_text(&pinned, true)).unwrap();
    let mut rt = Runtime::load(&manifest_path).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(rt.execute(&open).unwrap(), Outcome::Accepted(_)));
    assert_eq!(files(cache.path()), cached, "nothing pulled or compiled again");
    std::fs::write(&manifest_path, manifest_text(&references, true)).unwrap();
    match Runtime::load(&manifest_path) {
        Err(RuntimeError::Oci(tollgate_oci::Error::Registry { .. })) => {}
        Err(other) => panic!("expected a registry error, got: {other}"),
        Ok(_) => panic!("a tag resolved without its registry"),
    }
}
