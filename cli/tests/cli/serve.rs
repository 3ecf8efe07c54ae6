//! `tollgate serve`: a real process answering a real HTTP client on a free loopback port.

use crate::node::manifest;
use crate::{run, tollgate};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

/// A running `tollgate serve`, killed if a test fails before it stops it.
pub(crate) struct Server {
    child: Option<Child>,
    pub(crate) base: String,
    agent: ureq::Agent,
}

/// An HTTP answer: status, content type, the body as JSON (or as a string when it is not),
/// `Location`, and whether `Tollgate-Repeat: true` marked it as a repeat.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) content_type: String,
    pub(crate) body: Value,
    pub(crate) location: Option<String>,
    /// `WWW-Authenticate`, on a refusal for a token.
    pub(crate) challenge: Option<String>,
    pub(crate) repeat: bool,
}

impl Server {
    pub(crate) fn start(manifest: &str, store: &str, extra: &[&str]) -> Server {
        Server::start_limited(manifest, store, extra, None)
    }

    /// [`Server::start`] under a descriptor limit (`ulimit -n`) of its own, when given: the
    /// binary is exec'd by `sh` after `ulimit`, so the child is the server itself.
    pub(crate) fn start_limited(manifest: &str, store: &str, extra: &[&str], nofile: Option<u32>) -> Server {
        let mut args = vec!["serve", manifest, "--store", store, "--listen", "127.0.0.1:0"];
        if !extra.contains(&"--node") {
            args.extend(["--node", "served"]);
        }
        args.extend(extra);
        let mut child = match nofile {
            None => tollgate(),
            Some(nofile) => {
                let mut sh = std::process::Command::new("sh");
                sh.args(["-c", &format!("ulimit -n {nofile} && exec \"$0\" \"$@\""), env!("CARGO_BIN_EXE_tollgate")]);
                sh
            }
        };
        let mut child = child.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let base =
            line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("first line: {line:?}")).to_string();
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut server = Server { child: Some(child), base, agent };
        // Readiness is a state the node reaches (catch-up done), polled without a deadline
        // of our own: the test harness's timeout is the bound.
        loop {
            let child = server.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
                panic!("tollgate serve exited ({status}) before it was ready: {err}");
            }
            if server.get("/readyz").status == 200 {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn answer(mut response: ureq::http::Response<ureq::Body>) -> Answer {
        let status = response.status().as_u16();
        let content_type =
            response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_string());
        let (location, challenge) = (header("location"), header("www-authenticate"));
        let repeat = response.headers().get("tollgate-repeat").is_some_and(|v| v == "true");
        let text = response.body_mut().read_to_string().unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer { status, content_type, body, location, challenge, repeat }
    }

    pub(crate) fn get(&self, path: &str) -> Answer {
        Server::answer(self.agent.get(format!("{}{path}", self.base)).call().unwrap())
    }

    pub(crate) fn post(&self, path: &str, body: &str) -> Answer {
        self.post_as(path, body, "application/json")
    }

    /// `post` with `content_type` as the body's type.
    pub(crate) fn post_as(&self, path: &str, body: &str, content_type: &str) -> Answer {
        let request = self.agent.post(format!("{}{path}", self.base)).header("content-type", content_type);
        Server::answer(request.send(body).unwrap())
    }

    /// `method` on `path` with `headers` (and `body` as JSON): the answer.
    pub(crate) fn send(&self, method: &str, path: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Answer {
        let url = format!("{}{path}", self.base);
        let response = match body {
            Some(body) => {
                let mut request = self.agent.post(url).header("content-type", "application/json");
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                assert_eq!(method, "POST");
                request.send(body)
            }
            None => {
                let mut request = self.agent.get(url);
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                assert_eq!(method, "GET");
                request.call()
            }
        };
        Server::answer(response.unwrap())
    }

    /// The node's address, `http://127.0.0.1:PORT`.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// `/metrics` once it contains `line`: the server folds some figures on its next tick.
    /// Polled without a deadline of our own (the harness's timeout bounds it).
    pub(crate) fn metrics_until(&self, line: &str) -> String {
        loop {
            let text = self.get("/metrics").body.as_str().unwrap().to_string();
            if text.contains(line) {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// `host:port`.
    pub(crate) fn address(&self) -> &str {
        self.base.strip_prefix("http://").unwrap()
    }

    /// Sends SIGTERM and waits: (exit code, stderr).
    pub(crate) fn terminate(self) -> (i32, String) {
        let pid = self.pid().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        self.terminate_sent()
    }

    /// Waits for a server already sent SIGTERM to exit: (exit code, stderr).
    pub(crate) fn terminate_sent(mut self) -> (i32, String) {
        let child = self.child.take().unwrap();
        let (code, _, err) = crate::output(child.wait_with_output().unwrap());
        (code, err)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether curl is here; under `CI=true` it must be (`.ci/run` installs it), elsewhere its
/// absence skips what needs it, saying so.
pub(crate) fn curl_available() -> bool {
    if std::process::Command::new("curl").arg("--version").output().is_ok() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "curl is missing and CI=true");
    tollgate_store::testing::record_skip("needs curl (apt-get install curl)");
    false
}

pub(crate) fn command(id: &str, command: Value) -> String {
    json!({ "id": id, "command": command }).to_string()
}

#[test]
fn a_served_node_answers_the_native_api_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let store = format!("file:{}", dir.path().join("log").display());
    let server = Server::start(&manifest, &store, &[]);
    assert_eq!(server.get("/healthz").status, 200);

    let open = server.post("/v1/commands/account/alice", &command("o1", json!({"open": {"currency": "EUR"}})));
    assert_eq!((open.status, open.body["accepted"][0]["type"].as_str()), (200, Some("opened")), "{}", open.body);
    let top_up = command("t1", json!({"top-up": {"amount": {"minor_units": 1000, "currency": "EUR"}}}));
    let first = server.post("/v1/commands/account/alice", &top_up);
    assert_eq!(first.status, 200);
    assert!(!first.repeat && first.body.get("repeat").is_none(), "a first answer is not a repeat: {}", first.body);
    // A retried command is answered with the original event, not applied twice, and says so.
    let again = server.post("/v1/commands/account/alice", &top_up);
    assert_eq!((again.status, again.body["accepted"][0]["sequence"].as_u64()), (200, Some(2)), "{}", again.body);
    assert!(again.repeat && again.body["repeat"] == json!(true), "a repeat is marked: {}", again.body);

    let admit = json!({"id": "r1", "subscriber": "alice", "offer": "voice", "units": 10}).to_string();
    let granted = server.post("/v1/admissions", &admit);
    assert_eq!(granted.status, 200, "{}", granted.body);
    assert!(granted.body["granted"]["grant"]["reservation_id"].is_string(), "{}", granted.body);
    let unknown = server.post("/v1/admissions", &admit.replace("alice", "nobody").replace("r1", "r2"));
    assert_eq!(unknown.status, 200, "a denial is a decision: {}", unknown.body);
    assert!(unknown.body["denied"].is_object(), "{}", unknown.body);

    // A business refusal: 422 ProblemDetails whose cause is the rejection code.
    let overdraw = command("d1", json!({"direct-debit": {"amount": {"minor_units": 5000, "currency": "EUR"}}}));
    let refused = server.post("/v1/commands/account/alice", &overdraw);
    assert_eq!((refused.status, refused.content_type.as_str()), (422, "application/problem+json"), "{}", refused.body);
    assert_eq!(
        (refused.body["status"].as_u64(), refused.body["cause"].as_str(), refused.body["kind"].as_str()),
        (Some(422), Some("insufficient-funds"), Some("business"))
    );

    // Every refusal by the actor is 422 whatever its kind, with the kind in the body: the request
    // was the JSON the route takes, the actor refused what it asked.
    for (body, kind, cause) in [
        (
            command("z1", json!({"top-up": {"amount": {"minor_units": 0, "currency": "EUR"}}})),
            "malformed",
            "zero-amount",
        ),
        (command("u1", json!({"frobnicate": {}})), "unknown-command", "unknown-command"),
        (
            command("t1", json!({"top-up": {"amount": {"minor_units": 7, "currency": "EUR"}}})),
            "malformed",
            "command-id-conflict",
        ),
    ] {
        let refused = server.post("/v1/commands/account/alice", &body);
        assert_eq!(
            (refused.status, refused.body["kind"].as_str(), refused.body["cause"].as_str()),
            (422, Some(kind), Some(cause)),
            "{}",
            refused.body
        );
    }

    // Malformed input: named, 400, nothing ran.
    let not_json = server.post("/v1/admissions", "{\"id\": ");
    assert_eq!(
        (not_json.status, not_json.body["cause"].as_str()),
        (400, Some("INVALID_MSG_FORMAT")),
        "{}",
        not_json.body
    );
    let empty_id = server.post("/v1/commands/account/alice", &command("", json!("close")));
    assert_eq!((empty_id.status, empty_id.body["cause"].as_str()), (400, Some("MANDATORY_IE_INCORRECT")));
    assert!(empty_id.body["detail"].as_str().unwrap().contains("`id` is empty"), "{}", empty_id.body);
    let untagged = server.post("/v1/commands/account/alice", &command("x1", json!(42)));
    assert_eq!(untagged.status, 400, "{}", untagged.body);
    let unknown_field = server.post("/v1/commands/account/alice", r#"{"id": "x2", "command": "close", "extra": 1}"#);
    assert!(unknown_field.body["detail"].as_str().unwrap().contains("extra"), "{}", unknown_field.body);
    let too_big = server.post("/v1/admissions", &"x".repeat(tollgate_serve::MAX_BODY_BYTES + 1));
    assert_eq!((too_big.status, too_big.content_type.as_str()), (413, "application/problem+json"));

    // Reads: the key's stream and the projector's read model.
    let events = server.get("/v1/streams/account/alice");
    let types: Vec<&str> = events.body.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["opened", "topped-up", "reserved"]);
    assert_eq!(server.get("/v1/streams/account/nobody").body, json!([]));
    let balance = server.get("/v1/kv/balances/alice?consistent=true");
    assert_eq!(
        (balance.body["balance"].as_i64(), balance.body["held"].as_i64()),
        (Some(1000), Some(20)),
        "{}",
        balance.body
    );
    let missing = server.get("/v1/kv/balances/bob?consistent=true");
    assert_eq!((missing.status, missing.body["cause"].as_str()), (404, Some("DATA_NOT_FOUND")));

    let metrics = server.get("/metrics");
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.contains(r#"tollgate_http_requests_total{route="/v1/admissions",method="POST",status="200"} 2"#),
        "{text}"
    );
    assert!(text.contains(r#"tollgate_commands_rejected_total{code="insufficient-funds"} 1"#), "{text}");
    assert!(text.contains(r#"tollgate_admissions_total{result="success"} 1"#), "{text}");
    assert!(text.contains("tollgate_http_request_duration_seconds_bucket{"), "{text}");
    // Three appends (open, top-up, the admission's reservation; the retry appended nothing).
    assert!(text.contains("tollgate_store_append_duration_seconds_count 3\n"), "{text}");
    // The admission's hold, folded from the log on the server's next tick.
    let text = server.metrics_until(r#"tollgate_grant_exposure_minor_units{currency="EUR"} 20"#);
    assert!(text.contains(r#"tollgate_grants_open{currency="EUR"} 1"#), "{text}");

    // Cleartext HTTP/2 (prior knowledge), as network functions speak it.
    if curl_available() {
        let out = std::process::Command::new("curl")
            .args(["-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
            .arg(format!("{}/v1/streams/account/alice", server.base))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
    }

    // SIGTERM: exit 0, counters recorded in the store.
    let (code, err) = server.terminate();
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["stats", &manifest, "--store", &store]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("counters of 1 recorded runs"), "{out}");
    assert!(out.contains("duplicates answered    1"), "{out}");
}

#[test]
fn outside_facts_reach_a_served_node_only_on_the_streams_its_manifest_allows() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("[reports]\nstreams = [\"gateway\"]\n{text}")).unwrap();
    let store = format!("file:{}", dir.path().join("log").display());
    let server = Server::start(&manifest, &store, &[]);

    let answered =
        json!({"id": "pay-1/answered", "event": {"answered": {"outcome": "paid"}}, "correlation_id": "pay-1"});
    let recorded = server.post("/v1/reports/gateway/pay-1", &answered.to_string());
    assert_eq!(recorded.status, 200, "{}", recorded.body);
    let event = &recorded.body["recorded"];
    assert_eq!(
        (event["type"].as_str(), event["sequence"].as_u64(), event["correlation_id"].as_str()),
        (Some("answered"), Some(1), Some("pay-1")),
        "{event}"
    );
    // The same id again is the fact first recorded, not a second one.
    let again = server.post("/v1/reports/gateway/pay-1", &answered.to_string());
    assert_eq!((again.status, &again.body["recorded"]["sequence"]), (200, &json!(1)), "{}", again.body);
    assert_eq!(server.get("/v1/streams/gateway/pay-1").body.as_array().unwrap().len(), 1);

    // Streams the manifest does not list, an aggregate's, and the runtime's own: 403, named.
    for (stream, says) in [
        ("other", "takes no reports on this node"),
        ("account", "takes no reports on this node"),
        ("tollgate.timers", "the runtime's own"),
        ("tollgate.refusals", "the runtime's own"),
    ] {
        let refused = server.post(&format!("/v1/reports/{stream}/k"), &answered.to_string());
        assert_eq!(
            (refused.status, refused.body["cause"].as_str()),
            (403, Some("REPORT_NOT_ALLOWED")),
            "{}",
            refused.body
        );
        let detail = refused.body["detail"].as_str().unwrap();
        assert!(detail.contains(&format!("`{stream}`")) && detail.contains(says), "{detail}");
    }
    assert_eq!(server.get("/v1/streams/other/k").body, json!([]), "nothing was recorded");
    // A body that is not a report is named, and a key in the body must be the path's.
    let keyed = json!({"key": "pay-2", "id": "x", "event": "answered"}).to_string();
    assert_eq!(server.post("/v1/reports/gateway/pay-1", &keyed).status, 400);
    let (code, err) = server.terminate();
    assert_eq!(code, 0, "{err}");

    // A manifest that lists an aggregate's stream is refused when the node starts.
    std::fs::write(&manifest, format!("[reports]\nstreams = [\"account\"]\n{text}")).unwrap();
    let (code, _, err) = run(&["serve", &manifest, "--store", &store, "--listen", "127.0.0.1:0"]);
    assert_ne!(code, 0);
    assert!(err.contains("`[reports] streams` names it, but aggregate `account` owns it"), "{err}");
}

#[test]
fn serve_refuses_a_bad_manifest_and_an_address_in_use_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().join("log").display());
    let missing = dir.path().join("missing.toml");
    let (code, _, err) = run(&["serve", missing.to_str().unwrap(), "--store", &store, "--listen", "127.0.0.1:0"]);
    assert_ne!(code, 0);
    assert!(err.contains("missing.toml"), "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let manifest = manifest(dir.path());
    let (code, _, err) = run(&["serve", &manifest, "--store", &store, "--listen", &address]);
    assert_ne!(code, 0);
    assert!(err.contains(&format!("--listen {address}: cannot bind")), "{err}");
}

/// The README's "Serving" requests: its curl block, run with `sh -e` against a served
/// `examples/edge.toml`.
#[test]
fn the_readmes_serving_requests_run_against_the_example_manifest() {
    if !curl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let actors = format!("{}/", tollgate_host_test::fixtures::actors_dir().display());
    let text = std::fs::read_to_string(crate::root().join("examples/edge.toml")).unwrap();
    let manifest = dir.path().join("edge.toml");
    std::fs::write(&manifest, text.replace("../target/wasm32-wasip2/release/", &actors)).unwrap();
    let store = format!("file:{}", dir.path().join("log").display());
    let server = Server::start(manifest.to_str().unwrap(), &store, &[]);

    let readme = std::fs::read_to_string(crate::root().join("README.md")).unwrap();
    let section = readme.split("## Serving").nth(1).unwrap();
    let block = section.split("```sh\n").find(|b| b.starts_with("TG=localhost:8080")).expect("the curl block");
    let script = block.split("```").next().unwrap();
    let address = server.base.strip_prefix("http://").unwrap();
    let script = script.replacen("TG=localhost:8080", &format!("TG={address}"), 1);
    let out = std::process::Command::new("sh").args(["-e", "-c", &script]).output().unwrap();
    let (code, out, err) = crate::output(out);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(r#"tollgate_admissions_total{result="success"} 3"#), "{out}");

    // 10 voice units held by the admission; 45 + 5 seconds charged by the Nchf session.
    let balance = server.get("/v1/kv/balances/alice?consistent=true").body;
    assert_eq!((balance["balance"].as_i64(), balance["held"].as_i64()), (Some(1000 - 50 * 2), Some(20)), "{balance}");
    let (code, err) = server.terminate();
    assert_eq!(code, 0, "{err}");
}

/// Clients hammering a server with top-ups until it goes away: each sends unique command ids
/// to its own account and returns the ids answered `200`.
fn load(server: &Server, clients: usize, after_acks: usize, stop: impl FnOnce()) -> Vec<(String, String)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let acked = AtomicUsize::new(0);
    let base = server.base.clone();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let (base, acked) = (&base, &acked);
                scope.spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                    let account = format!("load-{c}");
                    let mut mine = Vec::new();
                    // Bounded: a client stops at its first failed request, or after 100k.
                    for i in 0..100_000 {
                        let id = format!("{account}/t{i}");
                        let body = command(&id, json!({"top-up": {"amount": {"minor_units": 1, "currency": "EUR"}}}));
                        match agent.post(format!("{base}/v1/commands/account/{account}")).send(&body) {
                            Ok(r) if r.status().as_u16() == 200 => {
                                mine.push((account.clone(), id));
                                acked.fetch_add(1, Ordering::SeqCst);
                            }
                            _ => break,
                        }
                    }
                    mine
                })
            })
            .collect();
        while acked.load(Ordering::SeqCst) < after_acks {
            std::thread::yield_now();
        }
        stop();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    })
}

/// Every acknowledged command is in its account's log exactly once.
fn each_once(server: &Server, acked: &[(String, String)], clients: usize) {
    for c in 0..clients {
        let account = format!("load-{c}");
        let events = server.get(&format!("/v1/streams/account/{account}")).body;
        let ids: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["command_id"].as_str().unwrap()).collect();
        for (_, id) in acked.iter().filter(|(a, _)| *a == account) {
            assert_eq!(ids.iter().filter(|i| *i == id).count(), 1, "{id} in {account}'s log");
        }
        let unique: std::collections::BTreeSet<&&str> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "a command id twice in {account}'s log");
    }
}

#[test]
fn killed_under_load_every_acknowledged_request_is_in_the_log_once_and_sigterm_drains() {
    const CLIENTS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let store = format!("file:{}", dir.path().join("log").display());
    let workers = ["--workers", "3"];
    let mut server = Server::start(&manifest, &store, &workers);
    for c in 0..CLIENTS {
        let open = command("open", json!({"open": {"currency": "EUR"}}));
        assert_eq!(server.post(&format!("/v1/commands/account/load-{c}"), &open).status, 200);
    }
    let mut child = server.child.take().unwrap();
    let killed = load(&server, CLIENTS, 200, || child.kill().unwrap());
    child.wait().unwrap();
    assert!(killed.len() >= 200);

    // Restarted on the same store: all acknowledged, none twice; a client retrying every
    // acknowledged request changes nothing.
    let server = Server::start(&manifest, &store, &workers);
    each_once(&server, &killed, CLIENTS);
    let before: Vec<usize> = (0..CLIENTS)
        .map(|c| server.get(&format!("/v1/streams/account/load-{c}")).body.as_array().unwrap().len())
        .collect();
    for (account, id) in killed.iter().step_by(17) {
        let body = command(id, json!({"top-up": {"amount": {"minor_units": 1, "currency": "EUR"}}}));
        assert_eq!(server.post(&format!("/v1/commands/account/{account}"), &body).status, 200);
    }
    for (c, n) in before.iter().enumerate() {
        assert_eq!(server.get(&format!("/v1/streams/account/load-{c}")).body.as_array().unwrap().len(), *n);
    }
    // Requests for one key go to one worker: the node's workers never race each other.
    let metrics = server.get("/metrics").body;
    assert!(metrics.as_str().unwrap().contains("tollgate_occ_conflicts_total 0\n"), "{metrics}");
    let balances = server.get("/v1/kv/balances/load-0?consistent=true").body;
    // (A request cut off by the kill may be in the log without having been answered.)
    let top_ups = before[0] as i64 - 1;
    assert_eq!(balances["balance"].as_i64(), Some(top_ups), "the projector saw every worker's writes once: {balances}");

    // SIGTERM under load: requests in flight finish, the process exits 0.
    let pid = server.child.as_ref().unwrap().id().to_string();
    let drained = load(&server, CLIENTS, 200, || {
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    });
    let mut server = server;
    let child = server.child.take().unwrap();
    drop(server);
    let (code, _, err) = crate::output(child.wait_with_output().unwrap());
    assert_eq!(code, 0, "{err}");
    let server = Server::start(&manifest, &store, &[]);
    each_once(&server, &killed, CLIENTS);
    each_once(&server, &drained, CLIENTS);
}

#[test]
fn a_client_sending_its_body_slowly_holds_no_place_of_the_node() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let store = format!("file:{}", dir.path().join("log").display());
    // One place: were it taken by the slow request, every other request would be refused.
    let server = Server::start(&manifest, &store, &["--queue", "1", "--workers", "1"]);
    let body = command("o1", json!({"open": {"currency": "EUR"}}));
    let (head, tail) = body.split_at(body.len() / 2);
    let address = server.base.strip_prefix("http://").unwrap();
    let mut slow = std::net::TcpStream::connect(address).unwrap();
    let request = format!(
        "POST /v1/commands/account/slow HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{head}",
        body.len()
    );
    slow.write_all(request.as_bytes()).unwrap();
    // The server has the headers and half the body; others are served meanwhile.
    for c in 0..5 {
        let answer = server.post(&format!("/v1/commands/account/fast-{c}"), &body);
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    slow.write_all(tail.as_bytes()).unwrap();
    let mut response = String::new();
    slow.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(server.get("/v1/streams/account/slow").body.as_array().unwrap().len(), 1);
    let (code, err) = server.terminate();
    assert_eq!(code, 0, "{err}");
}

/// One client's answers under overload: (status, took, the admission's id) each.
type Answers = Vec<(u16, std::time::Duration, String)>;

#[test]
fn over_capacity_clients_get_fast_503s_and_every_admission_answered_200_is_held_once() {
    const CLIENTS: usize = 16;
    const PER_CLIENT: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let store = format!("file:{}", dir.path().join("log").display());
    // Two places for sixteen clients that send their next request as soon as one is answered.
    let server = Server::start(&manifest, &store, &["--queue", "2", "--workers", "1"]);
    for c in 0..CLIENTS {
        let path = format!("/v1/commands/account/over-{c}");
        assert_eq!(server.post(&path, &command("open", json!({"open": {"currency": "EUR"}}))).status, 200);
        let top_up = command("top-up", json!({"top-up": {"amount": {"minor_units": 1_000_000, "currency": "EUR"}}}));
        assert_eq!(server.post(&path, &top_up).status, 200);
    }
    let base = server.base.clone();
    let mut answers: Vec<Answers> = Vec::new();
    // Rounds until one has seen the node refuse (each round is sixteen clients racing for two
    // places, so the first almost surely does); bounded at ten.
    for round in 0..10 {
        answers = std::thread::scope(|scope| {
            let clients: Vec<_> = (0..CLIENTS)
                .map(|c| {
                    let base = &base;
                    scope.spawn(move || {
                        let agent: ureq::Agent =
                            ureq::Agent::config_builder().http_status_as_error(false).build().into();
                        (0..PER_CLIENT)
                            .map(|i| {
                                let id = format!("r{round}-{c}-{i}");
                                let admit =
                                    json!({"id": id, "subscriber": format!("over-{c}"), "offer": "voice", "units": 1});
                                let start = std::time::Instant::now();
                                let response =
                                    agent.post(format!("{base}/v1/admissions")).send(admit.to_string()).unwrap();
                                let took = start.elapsed();
                                let status = response.status().as_u16();
                                if status == 503 {
                                    assert_eq!(response.headers()["retry-after"], "1");
                                    let answer = Server::answer(response);
                                    assert_eq!(answer.content_type, "application/problem+json");
                                    assert_eq!(answer.body["cause"].as_str(), Some("NF_CONGESTION"), "{}", answer.body);
                                } else {
                                    let answer = Server::answer(response);
                                    assert_eq!(status, 200, "only 200 or 503 under overload: {}", answer.body);
                                    assert!(answer.body["granted"].is_object(), "{}", answer.body);
                                }
                                (status, took, id)
                            })
                            .collect::<Answers>()
                    })
                })
                .collect();
            clients.into_iter().map(|c| c.join().unwrap()).collect()
        });
        if answers.iter().flatten().any(|(status, _, _)| *status == 503) {
            break;
        }
    }
    let all: Vec<_> = answers.iter().flatten().collect();
    let refused: Vec<_> = all.iter().filter(|(s, _, _)| *s == 503).collect();
    assert!(!refused.is_empty(), "sixteen clients for two places never saw a 503 in ten rounds");
    let percentile = |mut took: Vec<std::time::Duration>, p: usize| {
        took.sort();
        took[(took.len() * p / 100).min(took.len() - 1)]
    };
    let accepted: Vec<_> = all.iter().filter(|(s, _, _)| *s == 200).map(|(_, t, _)| *t).collect();
    eprintln!(
        "overload: {} accepted (p99 {:?}), {} refused (p99 {:?})",
        accepted.len(),
        percentile(accepted.clone(), 99),
        refused.len(),
        percentile(refused.iter().map(|(_, t, _)| *t).collect(), 99)
    );

    // What was accepted is held exactly once; what was refused left no trace.
    for (c, client) in answers.iter().enumerate() {
        let events = server.get(&format!("/v1/streams/account/over-{c}")).body;
        let ids: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["command_id"].as_str().unwrap()).collect();
        for (status, _, id) in client {
            let expected = usize::from(*status == 200);
            assert_eq!(ids.iter().filter(|i| **i == id).count(), expected, "{id} ({status}) in {ids:?}");
        }
    }
    let text = server.get("/metrics").body.as_str().unwrap().to_string();
    let line = format!(
        r#"tollgate_http_requests_total{{route="/v1/admissions",method="POST",status="503"}} {}"#,
        refused.len()
    );
    assert!(text.contains(&line), "{text}");
    let (code, err) = server.terminate();
    assert_eq!(code, 0, "{err}");
}
