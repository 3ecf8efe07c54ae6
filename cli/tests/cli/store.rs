//! `tollgate store verify` / `store repair`, and read-only commands over a damaged log.

use super::run;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tollgate_store::{EventStore, ExpectedVersion, FileOptions, FileStore, NewEvent};

fn event(command_id: &str, payload: &str) -> NewEvent {
    NewEvent {
        event_type: "noted".into(),
        schema_version: 1,
        content_type: "application/json".into(),
        payload: payload.as_bytes().to_vec(),
        command_id: command_id.into(),
        command_digest: Vec::new(),
        correlation_id: command_id.into(),
        causation_id: String::new(),
        time_ms: 1_700_000_000_000,
    }
}

/// A store of 12 one-event appends to `acct/k`, over several small segments.
fn small_store(dir: &Path) -> Vec<PathBuf> {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let store = FileStore::open_with(dir, FileOptions { segment_bytes: 400, ..FileOptions::default() }).unwrap();
        for i in 0..12 {
            let payload = format!("{{\"n\":{i}}}");
            store.append("acct", "k", ExpectedVersion::Any, vec![event(&format!("c{i}"), &payload)]).await.unwrap();
        }
    });
    let segments: Vec<PathBuf> = files(dir).into_keys().filter(|p| p.extension().is_some_and(|e| e == "seg")).collect();
    assert!(segments.len() >= 3, "{segments:?}");
    segments
}

fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect()
}

fn url(dir: &Path) -> String {
    format!("file:{}", dir.display())
}

/// The offset `verify` reports for the first problem in `path`.
fn problem_offset(out: &str, path: &Path) -> u64 {
    let prefix = format!("PROBLEM {} offset ", path.display());
    let line =
        out.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no problem in {path:?}: {out}"));
    line.split(':').next().unwrap().parse().unwrap()
}

#[test]
fn verify_reports_a_healthy_log() {
    let dir = tempfile::tempdir().unwrap();
    let segments = small_store(dir.path());
    let (code, out, err) = run(&["store", "verify", "--store", &url(dir.path())]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("records        ") && out.contains("(12 events)"), "{out}");
    assert!(out.contains("last position  12"), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("segment ")).count(), segments.len(), "{out}");
    assert!(out.contains("ok: the log opens"), "{out}");
}

#[test]
fn damage_is_refused_by_read_only_commands_then_verified_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let segments = small_store(dir.path());
    let store = url(dir.path());
    // A flipped bit inside a record of the second segment, acknowledged records after it.
    let mut bytes = std::fs::read(&segments[1]).unwrap();
    bytes[48 + 30] ^= 0x08;
    std::fs::write(&segments[1], &bytes).unwrap();
    let before = files(dir.path());

    let (code, out, err) = run(&["events", "acct", "k", "--store", &store]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains(&segments[1].display().to_string()) && err.contains("offset 48"), "{err}");
    assert_eq!(files(dir.path()), before, "a read-only command wrote to a damaged store");

    let (code, out, _) = run(&["store", "verify", "--store", &store]);
    assert_eq!(code, 1, "{out}");
    let offset = problem_offset(&out, &segments[1]);
    assert_eq!(offset, 48, "{out}");
    assert!(out.contains("corrupt: 1 problem(s)"), "{out}");
    assert_eq!(files(dir.path()), before, "verify wrote");

    let (code, _, err) = run(&["store", "repair", "--store", &store, "--truncate-at", "2:50"]);
    assert_ne!(code, 0);
    assert!(err.contains("offset 50 is not a record boundary"), "{err}");
    let (code, _, err) = run(&["store", "repair", "--store", &store, "--truncate-at", "2"]);
    assert!(code != 0 && err.contains("expected SEGMENT:OFFSET"), "{err}");
    assert_eq!(files(dir.path()), before, "a refused repair wrote");

    let cut = format!("{}:{offset}", segments[1].file_name().unwrap().to_str().unwrap());
    let (code, out, err) = run(&["store", "repair", "--store", &store, "--truncate-at", &cut]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("removed ") && out.contains("events at positions ") && out.contains("-12"), "{out}");
    assert!(out.contains("ok: the log opens"), "{out}");
    let logged = std::fs::read_to_string(dir.path().join("REPAIRS.log")).unwrap();
    assert!(logged.contains(&format!("at offset {offset}: removed")), "{logged}");

    let (code, out, err) = run(&["events", "acct", "k", "--store", &store]);
    assert_eq!(code, 0, "{err}");
    let kept = out.lines().count();
    assert!((1..12).contains(&kept), "{out}");
    let (code, out, _) = run(&["store", "verify", "--store", &store]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("last position  {kept}")), "{out}");
}

#[test]
fn a_torn_final_record_is_said_on_stderr_and_left_alone_by_read_only_commands() {
    let dir = tempfile::tempdir().unwrap();
    small_store(dir.path());
    // A crash in the middle of writing a 13th append: its record is cut short, and the store
    // marker does not acknowledge it.
    let marker = dir.path().join("COMMITTED");
    let acknowledged = std::fs::read(&marker).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let store = FileStore::open(dir.path()).unwrap();
        store.append("acct", "k", ExpectedVersion::Any, vec![event("c12", "{\"n\":12}")]).await.unwrap();
    });
    std::fs::write(&marker, acknowledged).unwrap();
    let segments: Vec<PathBuf> =
        files(dir.path()).into_keys().filter(|p| p.extension().is_some_and(|e| e == "seg")).collect();
    let last = segments.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    bytes.truncate(bytes.len() - 3);
    std::fs::write(last, &bytes).unwrap();
    let before = files(dir.path());
    let (code, out, err) = run(&["events", "acct", "k", "--store", &url(dir.path())]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 12, "{out}");
    assert!(err.contains("incomplete final record") && err.contains(&last.display().to_string()), "{err}");
    assert_eq!(files(dir.path()), before, "the read-only command truncated the log");
    let (code, out, _) = run(&["store", "verify", "--store", &url(dir.path())]);
    assert_eq!(code, 0, "a torn tail is not corruption: {out}");
    assert!(out.contains("incomplete final record"), "{out}");
    assert!(out.contains("acknowledged   up to segment") && out.contains("(event position 12)"), "{out}");
}

#[test]
fn acknowledged_events_cut_from_the_log_are_refused_and_named_then_given_up_by_repair() {
    let dir = tempfile::tempdir().unwrap();
    let segments = small_store(dir.path());
    let store = url(dir.path());
    // The last acknowledged record loses its last 3 bytes: not a torn write.
    let last = segments.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    bytes.truncate(bytes.len() - 3);
    std::fs::write(last, &bytes).unwrap();
    let before = files(dir.path());
    let (code, _, err) = run(&["events", "acct", "k", "--store", &store]);
    assert_ne!(code, 0);
    assert!(err.contains("acknowledged records are gone, not a torn write") && err.contains("position 12"), "{err}");
    let repair = err.split("`tollgate ").nth(1).and_then(|r| r.split('`').next()).expect("the repair command");
    assert!(repair.starts_with("store repair --store file:") && repair.contains("--truncate-at"), "{err}");
    let (code, out, _) = run(&["store", "verify", "--store", &store]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(files(dir.path()), before, "the refusals wrote");
    let args: Vec<&str> = repair.split(' ').collect();
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("acknowledged events at positions 12-12 were already gone"), "{out}");
    let (code, out, err) = run(&["events", "acct", "k", "--store", &store]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 11, "{out}");
    // The marker deleted: refused until the operator accepts the log as it is.
    std::fs::remove_file(dir.path().join("COMMITTED")).unwrap();
    let (code, _, err) = run(&["events", "acct", "k", "--store", &store]);
    assert!(code != 0 && err.contains("store marker is missing") && err.contains("--accept-end"), "{err}");
    let (code, out, err) = run(&["store", "repair", "--store", &store, "--accept-end"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = run(&["store", "verify", "--store", &store]);
    assert_eq!(code, 0, "{out}");
    let (code, _, err) = run(&["store", "repair", "--store", &store]);
    assert!(code != 0 && err.contains("--truncate-at") && err.contains("--accept-end"), "{err}");
}

#[test]
fn a_log_whose_segments_were_deleted_is_refused_never_started_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let segments = small_store(dir.path());
    let store = url(dir.path());
    for segment in &segments {
        std::fs::remove_file(segment).unwrap();
    }
    let before = files(dir.path());
    let (code, _, err) = run(&["events", "acct", "k", "--store", &store]);
    assert!(code != 0 && err.contains("segments are gone") && err.contains("event position 12"), "{err}");
    let (code, out, _) = run(&["store", "verify", "--store", &store]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("PROBLEM") && out.contains("segments are gone"), "{out}");
    // A node (a writable open) refuses too, rather than starting a new store in the folder.
    let manifest = super::root().join("examples/edge.toml");
    let (code, _, err) = super::output(
        super::tollgate()
            .args(["run".as_ref(), manifest.as_os_str(), "--store".as_ref(), store.as_ref()])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap(),
    );
    assert!(code != 0 && err.contains("segments are gone"), "{err}");
    assert_eq!(files(dir.path()), before, "a refused open wrote");
}

#[test]
fn store_commands_name_what_they_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let (code, _, err) = run(&["store", "verify", "--store", &url(&missing)]);
    assert!(code != 0 && err.contains("no such directory"), "{err}");
    assert!(!missing.exists(), "verify created the directory");
    let (code, _, err) = run(&["events", "acct", "k", "--store", &url(&missing)]);
    assert!(code != 0 && err.contains("no such directory"), "{err}");
    assert!(!missing.exists(), "a read-only command created the store");
    let (code, _, err) = run(&["store", "verify", "--store", "nats://127.0.0.1:4222"]);
    assert!(code != 0 && err.contains("file:DIR"), "{err}");
    small_store(dir.path());
    let (code, _, err) = run(&["store", "repair", "--store", &url(dir.path()), "--truncate-at", "9:48"]);
    assert!(code != 0 && err.contains("no segment 9"), "{err}");
}
