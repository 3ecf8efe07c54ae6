//! "serve": admissions and Nchf charging sessions over HTTP/1.1 keep-alive against an
//! in-process `tollgate serve` (durable embedded store, `WORKERS` worker runtimes), with
//! the load generator in the same process: `CONNECTIONS` connections, each with its own
//! account, each sending its next request when the last is answered. The baseline is the
//! same admissions through `Runtime::admit` in-process, on one thread, over a durable store.
//!
//! Every `RELEASE_EVERY` admissions a connection releases its open reservations (on the
//! clock: the throughput counts them as time spent), so account states stay bounded.

#![allow(clippy::unwrap_used)] // a benchmark stops on the first unexpected error

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, header};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tollgate_benches::measure::{self, PHASE, Report, drive};
use tollgate_billing_model::account::{AccountCommand, Money};
use tollgate_host::aggregate::Outcome;
use tollgate_runtime::{AdmissionRequest, Decision, Journal, Loader, Manifest, Runtime, engine_for};
use tollgate_serve::{Config, NodeSpec, serve};

/// Concurrent keep-alive connections.
const CONNECTIONS: usize = 64;

/// Worker runtimes: one per connection. A worker waits for its append's fsync; the embedded
/// log shares one fsync among the appends in flight, so throughput grows with concurrent
/// workers until the cores are busy (on 2 cores: 8 gave 4.1k admissions/s, 32 4.3k, 64 4.7k).
const WORKERS: usize = CONNECTIONS;

/// Reservations a connection holds at most before releasing them.
const RELEASE_EVERY: usize = 16;

/// How long each measured phase runs.
fn phase() -> Duration {
    if measure::bench_mode() { PHASE * 4 } else { Duration::from_millis(200) }
}

/// `examples/edge.toml` without the projector and process manager, on the built actors,
/// written to `dir`.
fn manifest(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/edge.toml")).unwrap();
    let actors = format!("{}/", tollgate_host_test::fixtures::actors_dir().display());
    let admission_only = text.split("[actors.balances]").next().unwrap();
    let path = dir.join("serve.toml");
    std::fs::write(&path, admission_only.replace("../target/wasm32-wasip2/release/", &actors)).unwrap();
    path
}

/// One keep-alive HTTP/1.1 connection.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Connection {
    async fn open(address: SocketAddr) -> Connection {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        Connection { sender, host: address.to_string() }
    }

    /// GETs `path`: its status.
    async fn get(&mut self, path: &str) -> u16 {
        self.sender.ready().await.unwrap();
        let request = Request::get(path).header(header::HOST, &self.host).body(Full::new(Bytes::new())).unwrap();
        let response = self.sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        response.into_body().collect().await.unwrap();
        status
    }

    /// POSTs `body` to `path`: (status, body as JSON or `Null`, `Location`).
    async fn post(&mut self, path: &str, body: Value) -> (u16, Value, Option<String>) {
        self.sender.ready().await.unwrap();
        let request = Request::post(path)
            .header(header::HOST, &self.host)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = self.sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let location = response.headers().get(header::LOCATION).map(|l| l.to_str().unwrap().to_string());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), location)
    }
}

/// Admissions per second through `Runtime::admit` on one thread over a durable store.
fn in_process(manifest: &Path, dir: &Path) -> f64 {
    let parsed = Manifest::load(manifest).unwrap();
    let journal = Journal::open(&format!("file:{}", dir.join("in-process").display())).unwrap();
    let mut rt = Runtime::open(&parsed, &mut Loader::new(engine_for(&parsed).unwrap()), journal).unwrap();
    let open = AccountCommand::Open { currency: "EUR".into(), overdraft_limit: 0 };
    let top_up = AccountCommand::TopUp { amount: Money::new(1_000_000_000_000, "EUR") };
    for (id, c) in [("open", open), ("top-up", top_up)] {
        let c = rt.command("account", "local", id, &c).unwrap();
        assert!(matches!(rt.execute(&c).unwrap(), Outcome::Accepted(_)));
    }
    let (start, deadline) = (Instant::now(), Instant::now() + phase());
    let (mut done, mut open) = (0u64, Vec::new());
    while Instant::now() < deadline {
        let request = AdmissionRequest {
            request_id: format!("local-{done}"),
            subscriber: "local".into(),
            offer: "voice".into(),
            rating_group: 1,
            requested_units: 1,
            country: None,
        };
        match rt.admit(&request).unwrap() {
            Decision::Granted(g) => open.push(g.grant.reservation_id),
            Decision::Denied(d) => panic!("denied: {}", d.message),
        }
        done += 1;
        if open.len() == RELEASE_EVERY {
            for id in open.drain(..) {
                let release = AccountCommand::Release { reservation_id: id.clone() };
                rt.execute(&rt.command("account", "local", &format!("release-{id}"), &release).unwrap()).unwrap();
            }
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let baseline = in_process(&manifest, dir.path());

    let server_runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let listener = server_runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let address = listener.local_addr().unwrap();
    let workers = WORKERS;
    let spec = NodeSpec {
        manifest: manifest.clone(),
        store: format!("file:{}", dir.path().join("served").display()),
        name: "bench".into(),
        workers,
        ..NodeSpec::default()
    };
    let config = Config { queue: 4 * CONNECTIONS, ..Config::default() };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = server_runtime.spawn(serve(listener, spec, config, async move {
        let _ = stopped.await;
    }));

    // The load generator: a runtime of its own, as a separate client process would have.
    let client = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    client.block_on(async move {
        let mut connections = Vec::new();
        for _ in 0..CONNECTIONS {
            connections.push(Connection::open(address).await);
        }
        // Readiness, then one funded account per connection.
        while connections[0].get("/readyz").await != 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for (c, connection) in connections.iter_mut().enumerate() {
            let path = format!("/v1/commands/account/sub-{c}");
            let open = json!({"id": "open", "command": {"open": {"currency": "EUR"}}});
            let top_up = json!({"id": "top-up", "command": {"top-up": {"amount": {"minor_units": 1_000_000_000_000i64, "currency": "EUR"}}}});
            assert_eq!(connection.post(&path, open).await.0, 200);
            assert_eq!(connection.post(&path, top_up).await.0, 200);
        }

        let (timing, connections) = drive(connections, phase(), |c, n, mut connection| async move {
            let admit = json!({"id": format!("a-{c}-{n}"), "subscriber": format!("sub-{c}"), "offer": "voice", "units": 1});
            let t0 = Instant::now();
            let (status, body, _) = connection.post("/v1/admissions", admit).await;
            let took = t0.elapsed();
            assert!(status == 200 && body.get("granted").is_some(), "{status} {body}");
            // The n-th admission's reservation; release the last RELEASE_EVERY together.
            if (n as usize + 1).is_multiple_of(RELEASE_EVERY) {
                for k in (n + 1 - RELEASE_EVERY as u64)..=n {
                    let reservation = format!("a-{c}-{k}");
                    let release = json!({"id": format!("release-{reservation}"), "command": {"release": {"reservation_id": reservation}}});
                    let (status, body, _) = connection.post(&format!("/v1/commands/account/sub-{c}"), release).await;
                    assert_eq!(status, 200, "{body}");
                }
            }
            (connection, took)
        })
        .await;
        let op = format!("admission over HTTP/1.1 keep-alive, {CONNECTIONS} connections, durable file store, {workers} workers, load generator in process (vs Runtime::admit in process, one thread)");
        let met = timing.ops_per_sec >= 30_000.0 && timing.p99() <= 5_000_000;
        Report::new("serve-admission-http", &op, &timing)
            .ratio(timing.ops_per_sec / baseline)
            .target(">= 30k admissions/s, p99 <= 5 ms", met)
            .write();

        let (timing, _) = drive(connections, phase(), |c, n, mut connection| async move {
            let nchf = "/nchf-convergedcharging/v3/chargingdata";
            let request = |sequence: u32, usage: Value| {
                json!({
                    "subscriberIdentifier": format!("sub-{c}"),
                    "nfConsumerIdentification": {"nodeFunctionality": "SMF", "nFName": format!("bench-{n}")},
                    "invocationTimeStamp": "2026-12-01T10:00:00Z",
                    "invocationSequenceNumber": sequence,
                    "multipleUnitUsage": usage,
                })
            };
            let t0 = Instant::now();
            let create = request(0, json!([{"ratingGroup": 100, "requestedUnit": {"time": 60}}]));
            let (status, body, location) = connection.post(nchf, create).await;
            assert_eq!(status, 201, "{body}");
            let reference = location.unwrap().rsplit('/').next().unwrap().to_string();
            let update = request(1, json!([{"ratingGroup": 100, "usedUnitContainer": [{"localSequenceNumber": 1, "time": 30}], "requestedUnit": {"time": 60}}]));
            assert_eq!(connection.post(&format!("{nchf}/{reference}/update"), update).await.0, 200);
            let release = request(2, json!([{"ratingGroup": 100, "usedUnitContainer": [{"localSequenceNumber": 1, "time": 10}]}]));
            assert_eq!(connection.post(&format!("{nchf}/{reference}/release"), release).await.0, 204);
            (connection, t0.elapsed())
        })
        .await;
        let op = format!("Nchf session (create + update + release) over HTTP/1.1, {CONNECTIONS} connections, {workers} workers");
        Report::new("serve-nchf-session-http", &op, &timing).write();
    });
    let _ = stop.send(());
    server_runtime.block_on(server).unwrap().unwrap();
    println!("tollgate-bench in-process admission baseline: {baseline:.0} admissions/s");
}
