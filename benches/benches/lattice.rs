//! "lattice": admissions through NATS request/reply, at an edge with a warm grant and at the
//! core, in one run. One nats-server on loopback; the core and the edge are in-process
//! `tollgate serve`s (durable embedded stores), each on a tokio runtime of its own; the load
//! generator is `CLIENTS` requesters sharing one NATS connection, each sending its next
//! admission when the last is answered.
//!
//! The edge's grants are sized so that one grant per subscriber covers the whole phase (a
//! warm grant): an edge admission is a local decision and one append to the edge's log. A core
//! admission runs the policy, the rater and the account; every `RELEASE_EVERY` admissions a
//! requester releases its reservations over NATS (on the clock), so account states stay
//! bounded.

#![allow(clippy::unwrap_used)] // a benchmark stops on the first unexpected error

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tollgate_benches::measure::{self, PHASE, Report, drive};
use tollgate_serve::{Config, NodeSpec, Role, serve};
use tollgate_store::testing::NatsServer;

/// Concurrent requesters.
const CLIENTS: usize = 64;

/// Reservations a requester holds at the core at most before releasing them.
const RELEASE_EVERY: usize = 16;

/// How long each measured phase runs.
fn phase() -> Duration {
    if measure::bench_mode() { PHASE * 4 } else { Duration::from_millis(200) }
}

/// The example lattice's manifests on the built actors, with grants no phase uses up.
fn manifests(dir: &Path) -> (PathBuf, PathBuf) {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lattice");
    let actors = format!("{}/", tollgate_host_test::fixtures::actors_dir().display());
    let quota = |text: String| {
        text.replace("grant_units = 50", "grant_units = 1000000000")
            .replace("validity_ms = 60000", "validity_ms = 3600000")
    };
    let core = quota(std::fs::read_to_string(example.join("core.toml")).unwrap())
        .replace("../../target/wasm32-wasip2/release/", &actors);
    let edge = quota(std::fs::read_to_string(example.join("edge.toml")).unwrap());
    let (core_path, edge_path) = (dir.join("core.toml"), dir.join("edge.toml"));
    std::fs::write(&core_path, core).unwrap();
    std::fs::write(&edge_path, edge).unwrap();
    (core_path, edge_path)
}

/// Starts a node on a runtime of its own; returns the runtime, its HTTP address, the stop
/// signal and the server's task.
fn start(
    spec: NodeSpec,
) -> (tokio::runtime::Runtime, std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, ServerTask) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = Config { queue: 4 * CLIENTS, ..Config::default() };
    let task = runtime.spawn(serve(listener, spec, config, async move {
        let _ = stopped.await;
    }));
    (runtime, address, stop, task)
}

type ServerTask = tokio::task::JoinHandle<Result<tollgate_runtime::Stats, tollgate_serve::ServeError>>;

/// Asks `subject` over NATS: the reply's JSON.
async fn ask(client: &async_nats::Client, subject: &str, body: Value) -> Value {
    let reply = client.request(subject.to_string(), body.to_string().into()).await.unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

/// Waits until `address` answers `/readyz` with 200.
async fn ready(address: std::net::SocketAddr) {
    loop {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(address).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let request = format!("GET /readyz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            if stream.write_all(request.as_bytes()).await.is_ok()
                && stream.read_to_string(&mut answer).await.is_ok()
                && answer.starts_with("HTTP/1.1 200")
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn main() {
    let nats = NatsServer::start()
        .unwrap_or_else(|why| panic!("the lattice bench needs nats-server (apt-get install nats-server): {why}"));
    let dir = tempfile::tempdir().unwrap();
    let (core_manifest, edge_manifest) = manifests(dir.path());
    let core = start(NodeSpec {
        manifest: core_manifest,
        store: format!("file:{}", dir.path().join("core").display()),
        name: "core".into(),
        workers: CLIENTS,
        nats: Some(nats.url.clone()),
        ..NodeSpec::default()
    });
    let edge = start(NodeSpec {
        manifest: edge_manifest,
        store: format!("file:{}", dir.path().join("edge").display()),
        name: "edge".into(),
        role: Role::Edge { url: nats.url.clone(), core: "core".into() },
        nats: Some(nats.url.clone()),
        ..NodeSpec::default()
    });

    let load = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let url = nats.url.clone();
    let (core_address, edge_address) = (core.1, edge.1);
    load.block_on(async move {
        ready(core_address).await;
        ready(edge_address).await;
        let client = async_nats::connect(&url).await.unwrap();
        for c in 0..CLIENTS {
            let open = json!({"key": format!("sub-{c}"), "id": "open", "command": {"open": {"currency": "EUR"}}});
            let top_up = json!({"key": format!("sub-{c}"), "id": "top-up", "command": {"top-up": {"amount": {"minor_units": 1_000_000_000_000_000i64, "currency": "EUR"}}}});
            for body in [open, top_up] {
                let answer = ask(&client, "tollgate.core.command.account", body).await;
                assert!(answer.get("accepted").is_some(), "{answer}");
            }
        }
        let clients = vec![client; CLIENTS];

        // The edge: warm each subscriber's grant first, so the phase measures warm admissions.
        for (c, client) in clients.iter().enumerate() {
            let warm = json!({"id": format!("warm-{c}"), "subscriber": format!("sub-{c}"), "offer": "voice", "units": 1});
            let answer = ask(client, "tollgate.edge.admit", warm).await;
            assert!(answer.get("granted").is_some(), "{answer}");
        }
        let (edge_timing, clients) = drive(clients, phase(), |c, n, client| async move {
            let admit = json!({"id": format!("e-{c}-{n}"), "subscriber": format!("sub-{c}"), "offer": "voice", "units": 1});
            let t0 = Instant::now();
            let answer = ask(&client, "tollgate.edge.admit", admit).await;
            let took = t0.elapsed();
            assert!(answer.get("granted").is_some(), "{answer}");
            (client, took)
        })
        .await;

        let (core_timing, _) = drive(clients, phase(), |c, n, client| async move {
            let admit = json!({"id": format!("c-{c}-{n}"), "subscriber": format!("sub-{c}"), "offer": "voice", "units": 1});
            let t0 = Instant::now();
            let answer = ask(&client, "tollgate.core.admit", admit).await;
            let took = t0.elapsed();
            assert!(answer.get("granted").is_some(), "{answer}");
            if (n as usize + 1).is_multiple_of(RELEASE_EVERY) {
                for k in (n + 1 - RELEASE_EVERY as u64)..=n {
                    let reservation = format!("c-{c}-{k}");
                    let release = json!({"key": format!("sub-{c}"), "id": format!("release-{reservation}"), "command": {"release": {"reservation_id": reservation}}});
                    let answer = ask(&client, "tollgate.core.command.account", release).await;
                    assert!(answer.get("accepted").is_some(), "{answer}");
                }
            }
            (client, took)
        })
        .await;

        let op = format!("admission over NATS request/reply at an edge with a warm grant, {CLIENTS} requesters, durable edge log (vs the same at the core)");
        Report::new("lattice-edge-admission-nats", &op, &edge_timing).ratio(edge_timing.ops_per_sec / core_timing.ops_per_sec).write();
        let op = format!("admission over NATS request/reply at the core (policy, rater, account), {CLIENTS} requesters, {CLIENTS} workers, durable store");
        Report::new("lattice-core-admission-nats", &op, &core_timing).write();
    });
    for (runtime, _, stop, task) in [edge, core] {
        let _ = stop.send(());
        runtime.block_on(task).unwrap().unwrap();
    }
    drop(nats);
}
