//! `tollgate run` against hostile actors and hostile clients: the node survives, answers the
//! next request, and its peak memory stays within a bound.
//!
//! Peak RSS is the child's `VmHWM` (Linux `/proc/<pid>/status`), read after its last reply and
//! before its input closes.

use crate::node::{ADMIT, OPEN, TOP_UP, manifest};
use crate::{actor, run, tollgate};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use tollgate_host_test::fixtures::{LOG_FLOODER, SLEEPER};

/// The peak RSS a node running one small actor may reach, in KiB: its baseline (engine,
/// compiled code, store, about 40 MiB on x86-64) with room to spare, and well below what the
/// floods below would add if any of it were kept (128 MiB of logs).
const PEAK_RSS_BOUND_KIB: u64 = 96 << 10;

/// A node run to the end of its input.
struct NodeRun {
    code: i32,
    replies: Vec<Value>,
    stderr: String,
    peak_rss_kib: u64,
}

/// Runs `tollgate run` with `input` on stdin and `env` set, reads `replies` reply lines, then its
/// peak RSS, then closes its input and waits for it.
fn run_node(manifest: &str, store: &str, input: Vec<u8>, replies: usize, env: &[(&str, &str)]) -> NodeRun {
    let stderr_file = tempfile::NamedTempFile::new().unwrap();
    let mut child = tollgate()
        .args(["run", manifest, "--store", store, "--node", "hostile"])
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr_file.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (close, closed) = std::sync::mpsc::channel::<()>();
    // Written from another thread: the node reads while this thread reads its replies.
    let writer = std::thread::spawn(move || {
        let written = stdin.write_all(&input);
        let _ = closed.recv();
        drop(stdin);
        written
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let stderr = || std::fs::read_to_string(stderr_file.path()).unwrap();
    let mut lines = Vec::new();
    for _ in 0..replies {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            let _ = child.wait();
            panic!("the node ended after {} replies: {}", lines.len(), stderr());
        }
        lines.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let peak_rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    close.send(()).unwrap();
    writer.join().unwrap().expect("the node read all its input");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "", "no more replies than lines");
    let code = child.wait().unwrap().code().unwrap_or(-1);
    NodeRun { code, replies: lines, stderr: stderr(), peak_rss_kib }
}

/// A manifest naming one fixture aggregate, in `dir`.
fn fixture_manifest(dir: &Path, fixture: &str) -> String {
    let path = dir.join("node.toml");
    let text =
        format!("[limits]\ncpu_ms = 100\n\n[actors.fixture]\nkind = \"aggregate\"\nfile = \"{}\"\n", actor(fixture));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn execute(stream: &str, id: &str, command: &str) -> String {
    format!(r#"{{"execute": {{"stream": "{stream}", "key": "k", "id": "{id}", "command": {command}}}}}"#)
}

fn lines(lines: &[String]) -> Vec<u8> {
    lines.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect()
}

#[test]
fn a_sleeper_neither_hangs_the_node_nor_outlives_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = fixture_manifest(dir.path(), SLEEPER);
    let store = format!("file:{}", dir.path().join("log").display());
    let input = lines(&[
        execute("sleeper", "s1", r#""sleep""#),
        execute("sleeper", "s2", r#""wait-an-hour""#),
        execute("sleeper", "s3", r#""ok""#),
    ]);
    let node = run_node(&manifest, &store, input, 3, &[]);
    assert_eq!(node.replies[0]["ok"]["accepted"][0]["type"], "slept", "an hour's sleep returns at once");
    let error = node.replies[1]["error"].as_str().expect("an error reply");
    assert!(error.contains("`limits.clock_calls`"), "a loop polling the clock is stopped by its budget: {error}");
    assert_eq!(node.replies[2]["ok"]["accepted"][0]["type"], "ok", "the next request works");
    assert_eq!(node.code, 1, "a failed line fails the run: {}", node.stderr);
    assert!(node.peak_rss_kib < PEAK_RSS_BOUND_KIB, "peak RSS {} KiB", node.peak_rss_kib);
    eprintln!("sleeper: peak RSS {} KiB", node.peak_rss_kib);
}

#[test]
fn a_log_flooder_does_not_grow_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = fixture_manifest(dir.path(), LOG_FLOODER);
    let store = format!("file:{}", dir.path().join("log").display());
    let mut requests: Vec<String> =
        (1..=4).map(|n| execute("flood", &format!("f{n}"), r#"{"log": {"mib": 3}}"#)).collect();
    // The same 1 MiB line logged until the call's log budget stops it.
    requests.push(execute("flood", "forever", r#"{"log-forever": {"kib": 1024}}"#));
    requests.push(execute("flood", "ok", r#""ok""#));
    let node = run_node(&manifest, &store, lines(&requests), 6, &[("TOLLGATE_LOG", "tollgate::guest=debug")]);
    for reply in &node.replies[..4] {
        assert_eq!(reply["ok"]["accepted"][0]["type"], "flooded", "{reply}");
    }
    let error = node.replies[4]["error"].as_str().expect("an error reply");
    assert!(error.contains("`limits.log_bytes`") && error.contains("wasi:logging"), "{error}");
    assert_eq!(node.replies[5]["ok"]["accepted"][0]["type"], "ok", "the next request works");
    assert_eq!(node.code, 1, "a failed line fails the run: {}", &node.stderr[node.stderr.len().saturating_sub(2000)..]);
    assert_eq!(node.stderr.matches("guest log truncated: 32 lines").count(), 4, "one marker per flooding call");
    assert!(node.stderr.len() < 4 << 20, "logs reach stderr bounded per call: {} bytes", node.stderr.len());
    assert!(node.peak_rss_kib < PEAK_RSS_BOUND_KIB, "peak RSS {} KiB after 16 MiB of logs", node.peak_rss_kib);
    eprintln!("log flooder: peak RSS {} KiB", node.peak_rss_kib);
}

/// One bad line and what its error reply must say.
struct Bad {
    line: Vec<u8>,
    says: &'static str,
}

fn bad(line: impl Into<Vec<u8>>, says: &'static str) -> Bad {
    Bad { line: line.into(), says }
}

#[test]
fn every_bad_request_line_gets_one_error_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let store = format!("file:{}", dir.path().join("log").display());
    let account = |command: &str| execute("account", "x1", command).replace(r#""key": "k""#, r#""key": "alice""#);
    let long_key = "k".repeat(257);
    let matrix = [
        // `command` that is not a command.
        bad(account("5"), "`command` is a number"),
        bad(account("{}"), "`command` is an object with 0 keys"),
        bad(account("[]"), "`command` is an array"),
        bad(account("null"), "`command` is null"),
        bad(account("true"), "`command` is a boolean"),
        bad(account(r#"{"open": {}, "close": {}}"#), "`command` is an object with 2 keys"),
        bad(account(r#""""#), "`command type` is empty"),
        bad(r#"{"report": {"stream": "session", "key": "c", "id": "r", "event": [1]}}"#, "`event` is an array"),
        // Not UTF-8, not JSON, not a request.
        bad(b"{\"advance_ms\": 1}\xff\xfe".to_vec(), "not UTF-8: invalid byte at offset 17"),
        bad(b"\xc3\x28".to_vec(), "not UTF-8: invalid byte at offset 0"),
        bad("5", "not a request"),
        bad("{", "not a request"),
        bad("[".repeat(100_000), "not a request"),
        bad(r#"{"execute": {}, "admit": {}}"#, "not a request"),
        // Over-long lines and names.
        bad(format!(r#"{{"advance_ms": 0, "pad": "{}"}}"#, "x".repeat(2 << 20)), "over the limit of 1048576"),
        bad(
            execute("account", "x2", r#""close""#).replace(r#""key": "k""#, &format!(r#""key": "{long_key}""#)),
            "`key` is 257 bytes long, over the limit of 256",
        ),
        bad(
            format!(r#"{{"admit": {{"id": "r9", "subscriber": "{long_key}", "offer": "voice", "units": 1}}}}"#),
            "`subscriber` is 257 bytes long",
        ),
        bad(execute("", "x3", r#""close""#), "`stream` is empty"),
        bad(execute("account", "", r#""close""#), "`id` is empty"),
        bad(execute("account", "x4\\u0000", r#""close""#), "`id` contains the control character"),
        // Out-of-range numbers.
        bad(
            r#"{"admit": {"id": "r2", "subscriber": "alice", "offer": "voice", "units": -1}}"#,
            "invalid value: integer `-1`",
        ),
        bad(
            r#"{"admit": {"id": "r3", "subscriber": "alice", "offer": "voice", "units": 18446744073709551616}}"#,
            "not a request",
        ),
        bad(
            r#"{"admit": {"id": "r4", "subscriber": "alice", "offer": "voice", "units": 1.5}}"#,
            "invalid type: floating point",
        ),
        bad(
            r#"{"admit": {"id": "r5", "subscriber": "alice", "offer": "voice", "units": 1, "rating_group": 4294967296}}"#,
            "not a request",
        ),
        bad(r#"{"advance_ms": 18446744073709551615}"#, "past 253402300799999 ms"),
        bad(r#"{"advance_ms": 1e400}"#, "not a request"),
    ];
    let mut input = Vec::new();
    input.extend_from_slice(format!("{OPEN}\n").as_bytes());
    for case in &matrix {
        input.extend_from_slice(&case.line);
        input.push(b'\n');
    }
    input.extend_from_slice(format!("{TOP_UP}\n{ADMIT}\n").as_bytes());
    let node = run_node(&manifest, &store, input, matrix.len() + 3, &[]);
    assert_eq!(node.code, 1, "bad lines fail the run: {}", node.stderr);
    assert_eq!(node.replies[0]["ok"]["accepted"][0]["type"], "opened", "{}", node.replies[0]);
    for (n, case) in matrix.iter().enumerate() {
        let reply = &node.replies[n + 1];
        assert_eq!(reply["line"], n + 2, "one reply per line, in order: {reply}");
        let error = reply["error"].as_str().unwrap_or_else(|| panic!("line {}: not an error: {reply}", n + 2));
        assert!(error.contains(case.says), "line {}: `{}` not in: {error}", n + 2, case.says);
        assert!(error.len() < 4096, "line {}: the error does not echo a long line: {} bytes", n + 2, error.len());
    }
    let later = &node.replies[matrix.len() + 1..];
    assert_eq!(later[0]["ok"]["accepted"][0]["type"], "topped-up", "{}", later[0]);
    assert!(later[1]["ok"]["granted"].is_object(), "{}", later[1]);

    let (code, out, err) = run(&["stats", &manifest, "--store", &store]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("counters of 1 recorded runs"), "the run's counters were recorded: {out}");
    assert!(out.contains("admission success               1"), "{out}");
    let (code, out, _) = run(&["events", "account", "alice", "--store", &store]);
    assert_eq!(code, 0);
    let types: Vec<&str> = out.lines().map(|l| l.split_whitespace().nth(2).unwrap()).collect();
    assert_eq!(types, ["opened", "topped-up", "reserved"], "no bad line wrote anything");
}
