//! The lattice: `tollgate serve --nats` answering a peer over a real nats-server, and a core
//! with edge processes (`--role edge`) that admit from grants, cut off and healed through a
//! loopback proxy, killed and restarted.

use crate::serve::{Server, command, curl_available};
use crate::{root, run};
use serde_json::{Value, json};
use std::time::Duration;
use tollgate_store::testing::{NatsServer, Partition};

/// A NATS peer: a client on its own tokio runtime.
pub(crate) struct Peer {
    tokio: tokio::runtime::Runtime,
    client: async_nats::Client,
}

impl Peer {
    pub(crate) fn connect(url: &str) -> Peer {
        let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = tokio.block_on(async_nats::connect(url)).unwrap();
        Peer { tokio, client }
    }

    /// Sends `body` to `subject`: the reply's JSON and its error code header, if any.
    pub(crate) fn request(&self, subject: &str, body: &str) -> (Value, Option<String>) {
        let (value, code, _) = self.request_noting_repeat(subject, body);
        (value, code)
    }

    /// [`Peer::request`], and whether the header `Tollgate-Repeat: true` marked a repeat.
    fn request_noting_repeat(&self, subject: &str, body: &str) -> (Value, Option<String>, bool) {
        let reply = self
            .tokio
            .block_on(self.client.request(subject.to_string(), body.to_string().into()))
            .unwrap_or_else(|e| panic!("{subject}: {e}"));
        let header = |name: &str| reply.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.to_string());
        let code = header(async_nats::service::NATS_SERVICE_ERROR_CODE);
        let repeat = header("Tollgate-Repeat").as_deref() == Some("true");
        (serde_json::from_slice(&reply.payload).unwrap_or(Value::Null), code, repeat)
    }
}

/// A core manifest: the example's actors, with the quota the test needs.
pub(crate) fn core_manifest(dir: &std::path::Path, quota: &str) -> String {
    let example = std::fs::read_to_string(root().join("examples/lattice/core.toml")).unwrap();
    let actors = example.split("[actors.account]").nth(1).unwrap();
    let base = root().join("examples/lattice").display().to_string();
    let text = format!("[quota]\n{quota}\n[actors.account]{}", actors.replace("../../", &format!("{base}/../../")));
    let path = dir.join("core.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn edge_manifest(dir: &std::path::Path, quota: &str) -> String {
    let path = dir.join("edge.toml");
    std::fs::write(&path, format!("[quota]\n{quota}\n")).unwrap();
    path.display().to_string()
}

/// Grants of 30 units at 10 minor units, valid 2 s, with a 1 s clock-skew margin.
pub(crate) const QUOTA: &str =
    "grant_units = 30\nunit_price = 10\ncurrency = \"EUR\"\nvalidity_ms = 2000\nclock_skew_ms = 1000";

pub(crate) fn open_account(core: &Server, key: &str, balance: i64) {
    let opened =
        core.post(&format!("/v1/commands/account/{key}"), &command("open", json!({"open": {"currency": "EUR"}})));
    assert_eq!(opened.status, 200, "{}", opened.body);
    let topped = json!({"top-up": {"amount": {"minor_units": balance, "currency": "EUR"}}});
    assert_eq!(core.post(&format!("/v1/commands/account/{key}"), &command("top-up", topped)).status, 200);
}

fn admission(id: &str, units: u64) -> String {
    json!({"id": id, "subscriber": "sub", "offer": "voice", "units": units}).to_string()
}

/// Whether an admission was granted (`200` and `granted`) or denied (`200` and `denied`); any
/// other answer fails the test.
fn granted(server: &Server, id: &str) -> bool {
    let answer = server.post("/v1/admissions", &admission(id, 1));
    assert_eq!(answer.status, 200, "{id}: {}", answer.body);
    match (&answer.body["granted"], &answer.body["denied"]) {
        (Value::Object(_), _) => true,
        (_, Value::Object(_)) => false,
        _ => panic!("{id}: neither granted nor denied: {}", answer.body),
    }
}

/// Admits `n` single units at `server`: how many were granted.
fn admit_n(server: &Server, prefix: &str, n: usize) -> usize {
    (0..n).filter(|i| granted(server, &format!("{prefix}-{i}"))).count()
}

/// Admits single units at `server` until the core has no money left for it: a refusal counts
/// only once the edge has settled every grant it finished (their holds freed at the core).
fn spend_all(server: &Server, node: &str) -> usize {
    let held_none = format!("tollgate_edge_grants_held{{node=\"{node}\"}} 0");
    let mut admitted = 0;
    loop {
        if granted(server, &format!("{node}-spend-{admitted}")) {
            admitted += 1;
            continue;
        }
        server.metrics_until(&held_none);
        if !granted(server, &format!("{node}-spend-{admitted}-again")) {
            return admitted;
        }
        admitted += 1;
    }
}

/// The account's events at the core.
fn account_events(core: &Server, key: &str) -> Vec<Value> {
    core.get(&format!("/v1/streams/account/{key}")).body.as_array().unwrap().clone()
}

/// The account's balance, folded from its events: top-ups in, debits and direct debits out.
fn balance(events: &[Value]) -> i64 {
    events
        .iter()
        .map(|e| match e["type"].as_str().unwrap() {
            "topped-up" => e["payload"]["amount"].as_i64().unwrap(),
            "debited" => -e["payload"]["charged"].as_i64().unwrap(),
            "direct-debited" => -e["payload"]["amount"].as_i64().unwrap(),
            _ => 0,
        })
        .sum()
}

/// Polls until `done` holds; the harness's timeout bounds it, never a clock of ours.
fn until(mut done: impl FnMut() -> bool) {
    while !done() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_peer_admits_over_nats_as_over_http_and_the_service_answers_ping() {
    let Some(nats) = NatsServer::start_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().join("core").display());
    let manifest = root().join("examples/lattice/core.toml").display().to_string();
    let core = Server::start(&manifest, &store, &["--node", "core", "--nats", &nats.url]);
    open_account(&core, "sub", 10_000);
    let peer = Peer::connect(&nats.url);

    // One request id asked over HTTP, then over NATS: the same decision, charged once.
    let over_http = core.post("/v1/admissions", &admission("call-1", 10));
    assert_eq!(over_http.status, 200, "{}", over_http.body);
    let (over_nats, code) = peer.request("tollgate.core.admit", &admission("call-1", 10));
    assert_eq!((over_nats, code), (over_http.body.clone(), None));
    // A new request over NATS is decided like one over HTTP (ids and times aside).
    let (fresh, _) = peer.request("tollgate.core.admit", &admission("call-2", 10));
    let shape = |v: &Value| (v["granted"]["price"].clone(), v["granted"]["grant"]["granted_units"].clone());
    assert_eq!(shape(&fresh), shape(&over_http.body));
    assert_eq!(shape(&fresh).0, json!({"minor_units": 20, "currency": "EUR"}), "{fresh}");

    // Commands, with the key in the body.
    let top_up = json!({"key": "sub", "id": "nats-top-up", "command": {"top-up": {"amount": {"minor_units": 5, "currency": "EUR"}}}});
    let (accepted, code, repeat) = peer.request_noting_repeat("tollgate.core.command.account", &top_up.to_string());
    assert_eq!(
        (accepted["accepted"][0]["type"].as_str(), code, repeat),
        (Some("topped-up"), None, false),
        "{accepted}"
    );
    // The same command again is its original answer, marked as a repeat.
    let (again, code, repeat) = peer.request_noting_repeat("tollgate.core.command.account", &top_up.to_string());
    assert_eq!((&again["accepted"], code, repeat), (&accepted["accepted"], None, true), "{again}");
    assert_eq!(again["repeat"], json!(true), "{again}");
    // Refusals carry the code in the headers and ProblemDetails in the body.
    let (refused, code) = peer.request("tollgate.core.command.account", r#"{"key": "sub", "id": "x", "command": {"direct-debit": {"amount": {"minor_units": 999999999, "currency": "EUR"}, "description": "too much"}}}"#);
    assert_eq!(code.as_deref(), Some("422"), "{refused}");
    assert_eq!(
        (refused["kind"].as_str(), refused["cause"].as_str()),
        (Some("business"), Some("insufficient-funds")),
        "{refused}"
    );
    let (malformed, code) = peer.request("tollgate.core.admit", "not json");
    assert_eq!((code.as_deref(), malformed["cause"].as_str()), (Some("400"), Some("INVALID_MSG_FORMAT")));
    let (keyless, code) = peer.request("tollgate.core.command.account", r#"{"id": "y", "command": "close"}"#);
    assert_eq!(code.as_deref(), Some("400"));
    assert!(keyless["detail"].as_str().unwrap().contains("`key`"), "{keyless}");

    // The micro service protocol: PING and INFO name the node and its endpoints.
    let (ping, _) = peer.request("$SRV.PING.tollgate", "");
    assert_eq!((ping["name"].as_str(), ping["metadata"]["node"].as_str()), (Some("tollgate"), Some("core")), "{ping}");
    let (info, _) = peer.request("$SRV.INFO.tollgate", "");
    let subjects: Vec<&str> =
        info["endpoints"].as_array().unwrap().iter().map(|e| e["subject"].as_str().unwrap()).collect();
    assert!(subjects.contains(&"tollgate.core.admit") && subjects.contains(&"tollgate.core.command.account"), "{info}");
    let (stats, _) = peer.request("$SRV.STATS.tollgate", "");
    let admit = stats["endpoints"].as_array().unwrap().iter().find(|e| e["name"] == "admit").unwrap().clone();
    assert_eq!(admit["num_requests"], 3, "{stats}");

    let (code, err) = core.terminate();
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_peer_reports_outside_facts_over_nats_on_the_streams_the_manifest_allows() {
    let Some(nats) = NatsServer::start_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::node::manifest(dir.path());
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("[reports]\nstreams = [\"gateway\"]\n{text}")).unwrap();
    let store = format!("file:{}", dir.path().join("log").display());
    let core = Server::start(&manifest, &store, &["--node", "core", "--nats", &nats.url]);
    let peer = Peer::connect(&nats.url);

    let answered = json!({"key": "pay-1", "id": "pay-1/answered", "event": {"answered": {"outcome": "paid"}}});
    let (recorded, code) = peer.request("tollgate.core.report.gateway", &answered.to_string());
    assert_eq!((recorded["recorded"]["type"].as_str(), code), (Some("answered"), None), "{recorded}");
    // Over HTTP the same fact is the one recorded over NATS.
    let events = core.get("/v1/streams/gateway/pay-1").body;
    assert_eq!(events.as_array().unwrap().len(), 1, "{events}");
    assert_eq!(events[0]["sequence"], recorded["recorded"]["sequence"]);
    let (keyless, code) = peer.request("tollgate.core.report.gateway", r#"{"id": "x", "event": "answered"}"#);
    assert_eq!(code.as_deref(), Some("400"), "{keyless}");
    // Only the allowed streams have an endpoint: the service lists no other report subject.
    let (info, _) = peer.request("$SRV.INFO.tollgate", "");
    let reports: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["subject"].as_str().filter(|s| s.contains(".report.")))
        .collect();
    assert_eq!(reports, ["tollgate.core.report.gateway"], "{info}");
    let (code, err) = core.terminate();
    assert_eq!(code, 0, "{err}");
}

#[test]
fn edges_cut_off_admit_within_their_grants_and_settle_to_the_sum_of_admitted_uses() {
    let Some(nats) = NatsServer::start_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let partition = Partition::new(&nats.url).unwrap();
    let core_store = format!("file:{}", dir.path().join("core").display());
    let core = Server::start(&core_manifest(dir.path(), QUOTA), &core_store, &["--node", "core", "--nats", &nats.url]);
    open_account(&core, "sub", 1_000);
    let edge_manifest = edge_manifest(dir.path(), QUOTA);
    let edge = |name: &str, core_url: &str| {
        let store = format!("file:{}", dir.path().join(name).display());
        Server::start(&edge_manifest, &store, &["--role", "edge", "--core", core_url, "--node", name])
    };
    // Edge a reaches the core through the proxy; edge b directly.
    let a = edge("a", &partition.url);
    let b = edge("b", &nats.url);

    assert_eq!(admit_n(&a, "a0", 10), 10);
    assert_eq!(admit_n(&b, "b0", 10), 10);
    let exposure_at_cut = a.metrics_until("tollgate_edge_grants_held{node=\"a\"} 1");
    assert!(
        exposure_at_cut.contains("tollgate_edge_exposure_minor_units{node=\"a\",currency=\"EUR\"} 300"),
        "{exposure_at_cut}"
    );

    partition.cut();
    // Cut off, a admits what its grant has left (20 units) and refuses beyond it.
    assert_eq!(admit_n(&a, "a1", 25), 20);
    let refused = a.post("/v1/admissions", &admission("a1-late", 1));
    assert_eq!(refused.body["denied"]["code"], "end-user-service-denied", "{}", refused.body);

    // The core expires a's grant once its validity and the clock-skew margin have passed,
    // which frees its money for b: b spends the whole balance (10 units a call's worth at a
    // time, never more than the core holds for it).
    until(|| account_events(&core, "sub").iter().any(|e| e["type"] == "expired"));
    let b_admitted = 10 + spend_all(&b, "b");
    assert_eq!(b_admitted, 100, "b used all 1000: the 300 freed by a's expired grant too");

    // Healed, a settles its grant late: what the balance cannot cover is reported unpaid.
    partition.heal();
    let healed = a.metrics_until("tollgate_edge_grants_held{node=\"a\"} 0");
    let unpaid = |text: &str, node: &str| -> i64 {
        let prefix = format!("tollgate_edge_unpaid_minor_units{{node=\"{node}\",currency=\"EUR\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap().parse().unwrap()
    };
    let a_unpaid = unpaid(&healed, "a");
    let (code, err) = a.terminate();
    assert_eq!(code, 0, "{err}");
    let b_metrics = b.get("/metrics").body.as_str().unwrap().to_string();
    let b_unpaid = unpaid(&b_metrics, "b");
    let (code, err) = b.terminate();
    assert_eq!(code, 0, "{err}");

    // Every admitted use was charged or reported unpaid; the overspend is at most the grant
    // a held when it was cut off.
    let events = account_events(&core, "sub");
    let used = (30 + b_admitted) as i64 * 10;
    let charged = 1_000 - balance(&events);
    assert_eq!(charged + a_unpaid + b_unpaid, used, "events: {events:#?}");
    assert_eq!(a_unpaid, 300, "a's late usage found the balance spent: the whole grant at the cut");
    assert_eq!(charged, 1_000);
    assert_eq!(b_unpaid, 0);
    println!(
        "admitted: a 30, b {b_admitted}; charged {charged}; unpaid (overspend) {a_unpaid} of 300 exposed at the cut"
    );
    let (code, err) = core.terminate();
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_killed_edge_settles_its_admitted_uses_exactly_once_after_a_restart() {
    let Some(nats) = NatsServer::start_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let quota = QUOTA.replace("validity_ms = 2000", "validity_ms = 600000");
    let core_store = format!("file:{}", dir.path().join("core").display());
    let core = Server::start(&core_manifest(dir.path(), &quota), &core_store, &["--node", "core", "--nats", &nats.url]);
    open_account(&core, "sub", 1_000);
    let manifest = edge_manifest(dir.path(), &quota);
    let store = format!("file:{}", dir.path().join("edge").display());
    let args = ["--role", "edge", "--core", nats.url.as_str(), "--node", "edge"];

    let edge = Server::start(&manifest, &store, &args);
    assert_eq!(admit_n(&edge, "before", 15), 15);
    drop(edge); // SIGKILL: nothing settled
    assert!(!account_events(&core, "sub").iter().any(|e| e["type"] == "debited"));

    let edge = Server::start(&manifest, &store, &args);
    // Requests answered before the kill are answered the same, using nothing twice.
    assert_eq!(admit_n(&edge, "before", 15), 15);
    assert_eq!(admit_n(&edge, "after", 5), 5);
    let (code, err) = edge.terminate();
    assert_eq!(code, 0, "{err}");
    // And a restart after the settlement settles nothing again.
    let edge = Server::start(&manifest, &store, &args);
    let (code, err) = edge.terminate();
    assert_eq!(code, 0, "{err}");

    let events = account_events(&core, "sub");
    let debits: Vec<&Value> = events.iter().filter(|e| e["type"] == "debited").collect();
    assert_eq!(debits.len(), 1, "{events:#?}");
    let id = debits[0]["command_id"].as_str().unwrap();
    assert!(id.starts_with("edge/") && id.ends_with("/sub/1/settle"), "{id}");
    assert_eq!(debits[0]["payload"]["charged"], 200);
    assert_eq!(balance(&events), 800);

    let (code, out, err) = run(&["stats", &manifest, "--store", &store]);
    assert_eq!(code, 0, "{err}");
    let line = format!("{:<22} grants held 0, exposure 0 EUR, unsettled usage 0 units", "edge");
    assert!(out.contains(&line), "{out}");
    let (code, err) = core.terminate();
    assert_eq!(code, 0, "{err}");
}

/// The README's walk-through, on free ports and in a temporary directory.
#[test]
fn the_lattice_walk_through_runs() {
    if !curl_available() {
        return;
    }
    let Some(nats) = NatsServer::start_or_skip() else { return };
    let (code, stdout, stderr) =
        walk_through("examples/lattice/README.md", "/tmp/tollgate-lattice", &[("nats://127.0.0.1:4222", &nats.url)], 3);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("tollgate_edge_grants_held{node=\"edge-a\"} 1"), "{stdout}");
    let mut ids = stdout.split("\"command_id\":\"edge-a/").skip(1).filter_map(|rest| rest.split('"').next());
    assert!(ids.any(|id| id.ends_with("/alice/1/settle")), "{stdout}");
    assert!(stdout.contains("\"charged\":30"), "{stdout}");
    assert!(stdout.contains(&format!("{:<22} grants held 0", "edge-b")), "{stdout}");
}

/// Runs the `sh` block of `readme` that starts with `NATS=` with `sh -e`, in a temporary
/// directory standing for `data`, with `replace`d texts and the example HTTP ports 8080,
/// 8081, ... (`ports` of them) moved to free ones: (exit code, stdout, stderr).
pub(crate) fn walk_through(readme: &str, data: &str, replace: &[(&str, &str)], ports: usize) -> (i32, String, String) {
    let text = std::fs::read_to_string(root().join(readme)).unwrap();
    let block = text.split("```sh\n").find(|b| b.starts_with("NATS=")).unwrap().split("```").next().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let free: Vec<u16> = (0..ports).map(|_| tollgate_store::testing::free_port().unwrap()).collect();
    // Through placeholders, so that no port put in (free, or of `replace`) matches an example
    // port's text.
    let mut script = block.to_string();
    for i in 0..free.len() {
        script = script.replace(&(8080 + i).to_string(), &format!("@{i}@"));
    }
    script = script.replace(data, &dir.path().display().to_string());
    for (from, to) in replace {
        script = script.replace(from, to);
    }
    for (i, port) in free.iter().enumerate() {
        script = script.replace(&format!("@{i}@"), &port.to_string());
    }
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_tollgate")).parent().unwrap().display().to_string();
    let out = std::process::Command::new("sh")
        .args(["-ec", &script])
        .current_dir(root())
        .env("PATH", format!("{bin}:{}", std::env::var("PATH").unwrap_or_default()))
        .output()
        .unwrap();
    crate::output(out)
}

#[test]
fn serve_refuses_an_edge_without_a_quota_and_a_node_name_nats_cannot_carry() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().join("store").display());
    let bare = dir.path().join("bare.toml");
    std::fs::write(&bare, "# no [quota]\n").unwrap();
    let bare = bare.display().to_string();
    let edge = ["serve", &bare, "--store", &store, "--listen", "127.0.0.1:0", "--role", "edge"];
    let (code, _, err) = run(&edge);
    assert_ne!(code, 0);
    assert!(err.contains("--core"), "{err}");
    let (code, _, err) = run(&[&edge[..], &["--core", "nats://127.0.0.1:9"]].concat());
    assert_ne!(code, 0);
    assert!(err.contains("bare.toml") && err.contains("`quota`"), "{err}");
    let (code, _, err) = run(&["serve", &bare, "--store", &store, "--core", "nats://127.0.0.1:9"]);
    assert_ne!(code, 0);
    assert!(err.contains("--core is for --role edge"), "{err}");

    let quota = dir.path().join("quota.toml");
    std::fs::write(
        &quota,
        "[quota]\ngrant_units = 0\nunit_price = 1\ncurrency = \"EUR\"\nvalidity_ms = 1\nclock_skew_ms = 0\n",
    )
    .unwrap();
    let (code, _, err) = run(&["serve", &quota.display().to_string(), "--store", &store, "--listen", "127.0.0.1:0"]);
    assert_ne!(code, 0);
    assert!(err.contains("`quota.grant_units`: must be > 0"), "{err}");

    let Some(nats) = NatsServer::start_or_skip() else { return };
    let manifest = root().join("examples/lattice/core.toml").display().to_string();
    let args = ["serve", &manifest, "--store", &store, "--listen", "127.0.0.1:0", "--nats", &nats.url, "--node", "a.b"];
    let (code, _, err) = run(&args);
    assert_ne!(code, 0);
    assert!(err.contains("--node") && err.contains("`a.b` contains '.'"), "{err}");
}

/// The node's admissions counted in its `/metrics`, over every result code.
fn admissions_counted(server: &Server) -> u64 {
    let text = server.get("/metrics").body.as_str().unwrap().to_string();
    text.lines()
        .filter(|l| l.starts_with("tollgate_admissions_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn two_cores_started_under_one_name_share_its_requests() {
    let Some(nats) = NatsServer::start_or_skip() else { return };
    let manifest = root().join("examples/lattice/core.toml").display().to_string();
    // Both over the same JetStream store: one set of accounts, two processes answering.
    let start = || Server::start(&manifest, &nats.url, &["--node", "core", "--nats", &nats.url, "--workers", "2"]);
    let (first, second) = (start(), start());
    open_account(&first, "sub", 1_000_000);
    let peer = Peer::connect(&nats.url);
    let (before_first, before_second) = (admissions_counted(&first), admissions_counted(&second));
    for i in 0..40 {
        let (answer, code) = peer.request("tollgate.core.admit", &admission(&format!("shared-{i}"), 1));
        assert_eq!((answer["granted"].is_object(), code), (true, None), "{answer}");
    }
    let (by_first, by_second) =
        (admissions_counted(&first) - before_first, admissions_counted(&second) - before_second);
    // The queue group hands each request to one of them; 40 all to one has odds of 2^-39.
    assert_eq!(by_first + by_second, 40);
    assert!(by_first > 0 && by_second > 0, "first {by_first}, second {by_second}");
    // Every admission held once at the one account, whichever node answered it.
    let held = account_events(&first, "sub").iter().filter(|e| e["type"] == "reserved").count();
    assert_eq!(held, 40);
    for server in [first, second] {
        let (code, err) = server.terminate();
        assert_eq!(code, 0, "{err}");
    }
}
