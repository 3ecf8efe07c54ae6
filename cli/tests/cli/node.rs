//! `tollgate run`, `events`, `kv`, `stats`, `replay` and `dead-letters` on the embedded log.

use crate::{actor, run, tollgate};
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use tollgate_host_test::fixtures::{ADMISSION_POLICY, BALANCE_PROJECTOR, PREPAID_ACCOUNT, RATER};

/// Writes a manifest wiring the reference account, rater, policy and projector into `dir`.
pub(crate) fn manifest(dir: &Path) -> String {
    let text = format!(
        r#"
[actors.account]
kind = "aggregate"
file = "{}"

[actors.rater]
kind = "rater"
file = "{}"
config = {{ "offer.voice" = '{{"kind":"per-unit","currency":"EUR","unit_price":2}}' }}

[actors.policy]
kind = "policy"
file = "{}"
links = {{ charging = "account", rating = "rater" }}

[actors.balances]
kind = "projector"
file = "{}"
"#,
        actor(PREPAID_ACCOUNT),
        actor(RATER),
        actor(ADMISSION_POLICY),
        actor(BALANCE_PROJECTOR)
    );
    let path = dir.join("node.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Runs `tollgate run` with `lines` on stdin: (exit code, reply lines, stderr).
fn node(manifest: &str, store: &str, lines: &[&str]) -> (i32, Vec<serde_json::Value>, String) {
    let mut child = tollgate()
        .args(["run", manifest, "--store", store, "--node", "test"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    let (code, out, err) = crate::output(child.wait_with_output().unwrap());
    (code, out.lines().map(|l| serde_json::from_str(l).unwrap()).collect(), err)
}

/// Opens account `alice`.
pub(crate) const OPEN: &str =
    r#"{"execute": {"stream": "account", "key": "alice", "id": "o1", "command": {"open": {"currency": "EUR"}}}}"#;
/// Tops `alice` up by 1000.
pub(crate) const TOP_UP: &str = r#"{"execute": {"stream": "account", "key": "alice", "id": "t1", "command": {"top-up": {"amount": {"minor_units": 1000, "currency": "EUR"}}}}}"#;
/// Admits 10 voice units for `alice`.
pub(crate) const ADMIT: &str = r#"{"admit": {"id": "r1", "subscriber": "alice", "offer": "voice", "units": 10}}"#;

#[test]
fn a_node_keeps_its_log_and_answers_repeats_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let store = format!("file:{}", dir.path().join("log").display());
    let (code, replies, err) = node(&manifest, &store, &[OPEN, "", "# a comment", TOP_UP, ADMIT]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(replies.len(), 3);
    assert_eq!(replies[1]["ok"]["accepted"][0]["type"], "topped-up");
    let reservation = replies[2]["ok"]["granted"]["grant"]["reservation_id"].clone();
    assert!(reservation.is_string(), "{}", replies[2]);

    // A second run of the same requests changes nothing and answers the same.
    let (code, again, err) = node(&manifest, &store, &[TOP_UP, ADMIT]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(again[0]["ok"]["accepted"][0]["sequence"], 2, "the original event");
    assert_eq!(again[1]["ok"]["granted"]["grant"]["reservation_id"], reservation);
    let (code, out, _) = run(&["events", "account", "alice", "--store", &store]);
    assert_eq!(code, 0);
    let types: Vec<&str> = out.lines().map(|l| l.split_whitespace().nth(2).unwrap()).collect();
    assert_eq!(types, ["opened", "topped-up", "reserved"]);

    let (code, out, err) = run(&["stats", &manifest, "--store", &store]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("counters of 2 recorded runs"), "{out}");
    assert!(out.contains("duplicates answered    2"), "{out}");
    assert!(out.contains("admission success               2"), "{out}");
    assert!(out.contains("outstanding grants: 1 over 1 accounts, exposure 20 minor units EUR"), "{out}");

    let (code, out, err) = run(&["replay", &manifest, "--store", &store, "--check"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("read 5 events"), "{out}");
    assert!(out.contains("matches the store"), "{out}");
}

#[test]
fn a_projectors_read_model_is_shown_by_key_and_by_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let store = format!("file:{}", dir.path().join("log").display());
    let overdraw = r#"{"execute": {"stream": "account", "key": "alice", "id": "d1", "command": {"direct-debit": {"amount": {"minor_units": 5000, "currency": "EUR"}}}}}"#;
    let (code, replies, err) = node(&manifest, &store, &[OPEN, TOP_UP, ADMIT, overdraw]);
    assert_eq!(code, 0, "{err}");
    // A rejected command says what kind of refusal it was.
    let rejected = &replies[3]["ok"]["rejected"];
    assert_eq!((rejected["kind"].as_str(), rejected["code"].as_str()), (Some("business"), Some("insufficient-funds")));

    // Found through the manifest: one key, as JSON.
    let (code, out, err) = run(&["kv", "balances", "alice", "--store", &store, "--manifest", &manifest]);
    assert_eq!(code, 0, "{err}");
    let view: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((view["balance"].as_i64(), view["held"].as_i64()), (Some(1_000), Some(20)), "{out}");
    // The whole bucket, one JSON object per line.
    let (code, out, err) = run(&["kv", "balances", "--store", &store, "--projector", "balances", "--json"]);
    assert_eq!(code, 0, "{err}");
    let entries: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(entries.len(), 1, "{out}");
    assert_eq!((entries[0]["key"].as_str(), entries[0]["value"]["available"].as_i64()), (Some("alice"), Some(980)));

    // A missing key, a bucket no projector writes, the runtime's own bucket: named, exit 1.
    let (code, _, err) = run(&["kv", "balances", "bob", "--store", &store, "--projector", "balances"]);
    assert_eq!(code, 1);
    assert!(err.contains("balances/bob: no entry"), "{err}");
    let (code, _, err) = run(&["kv", "nope", "--store", &store, "--manifest", &manifest]);
    assert_eq!(code, 1);
    assert!(err.contains("bucket `nope`: no projector") && err.contains("`balances`"), "{err}");
    let (code, _, err) = run(&["kv", "tollgate.meta", "--store", &store, "--projector", "balances"]);
    assert_eq!(code, 1);
    assert!(err.contains("tollgate.meta"), "{err}");
    // A projector or bucket named by hand that is not there says so, not "no entry".
    let (code, _, err) = run(&["kv", "balances", "alice", "--store", &store, "--projector", "balance"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown projector `balance`") && !err.contains("no entry"), "{err}");
    let (code, _, err) = run(&["kv", "points", "alice", "--store", &store, "--projector", "balances"]);
    assert_eq!(code, 1);
    assert!(err.contains("projector `balances` has written no bucket `points` (its buckets: `balances`)"), "{err}");
    let (code, _, err) = run(&["kv", "balances", "--store", &store]);
    assert_eq!(code, 2, "clap asks for --manifest or --projector: {err}");
}

#[test]
fn a_bad_request_line_is_named_and_the_rest_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let store = format!("file:{}", dir.path().join("log").display());
    let (code, replies, _) = node(&manifest, &store, &[OPEN, r#"{"nope": 1}"#, TOP_UP]);
    assert_eq!(code, 1);
    let error = replies[1]["error"].as_str().unwrap();
    assert!(error.contains("<stdin>:2: not a request") && error.contains("nope"), "{error}");
    assert_eq!(replies[2]["ok"]["accepted"][0]["type"], "topped-up");
    let report =
        r#"{"report": {"stream": "account", "key": "alice", "id": "x", "event": {"topped-up": {"amount": 5}}}}"#;
    let (_, replies, _) = node(&manifest, &store, &[report]);
    let error = replies[0]["error"].as_str().unwrap();
    assert!(error.contains("aggregate `account` owns it"), "{error}");
}

#[test]
fn dead_letters_are_listed_and_redriven() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let log = dir.path().join("log");
    let store = format!("file:{}", log.display());
    assert_eq!(node(&manifest, &store, &[OPEN]).0, 0);
    {
        // An event the projector cannot read, as a damaged or foreign writer would leave it.
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let s = tollgate_store::FileStore::open(&log).unwrap();
        let poison = tollgate_store::NewEvent {
            event_type: "topped-up".into(),
            schema_version: 2,
            content_type: "application/json".into(),
            payload: b"not json".to_vec(),
            command_id: "poison".into(),
            command_digest: Vec::new(),
            correlation_id: String::new(),
            causation_id: String::new(),
            time_ms: 0,
        };
        use tollgate_store::EventStore;
        rt.block_on(s.append("account", "mallory", tollgate_store::ExpectedVersion::Any, vec![poison])).unwrap();
    }
    assert_eq!(node(&manifest, &store, &[]).0, 0, "the node keeps running past a poison event");
    let (code, out, _) = run(&["dead-letters", "balances", "--store", &store]);
    assert_eq!(code, 0);
    assert!(out.contains("balances: 1 dead letters"), "{out}");
    assert!(out.contains("account/mallory #1 topped-up") && out.contains("5 attempts"), "{out}");
    let (code, out, _) = run(&["dead-letters", "balances", "--store", &store, "--redrive-all"]);
    assert_eq!(code, 0);
    assert!(out.contains("redriven"), "{out}");
    assert!(run(&["dead-letters", "balances", "--store", &store]).1.contains("0 dead letters"));
    node(&manifest, &store, &[]);
    assert!(run(&["dead-letters", "balances", "--store", &store]).1.contains("1 dead letters"), "failed again");
    let (code, out, _) = run(&["stats", &manifest, "--store", &store]);
    assert_eq!(code, 0);
    assert!(out.contains("balances               1"), "{out}");
}

#[test]
fn the_example_requests_run_on_the_example_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let actors = format!("{}/", tollgate_host_test::fixtures::actors_dir().display());
    let text = std::fs::read_to_string(crate::root().join("examples/edge.toml")).unwrap();
    let manifest = dir.path().join("edge.toml");
    std::fs::write(&manifest, text.replace("../target/wasm32-wasip2/release/", &actors)).unwrap();
    let input = crate::root().join("examples/requests.jsonl");
    let store = format!("file:{}", dir.path().join("log").display());
    let (code, out, err) =
        run(&["run", manifest.to_str().unwrap(), "--store", &store, "--input", input.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let replies: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(replies.len(), 7);
    assert!(replies.iter().all(|r| r.get("ok").is_some()), "{out}");
    assert_eq!(replies[3]["ok"]["granted"]["grant"]["granted_units"], 60);
    assert_eq!(replies[5]["ok"]["denied"]["code"], "end-user-service-rejected");
}
