//! "serve": admissions and Nchf charging sessions over HTTP/1.1 keep-alive against an
//! in-process `tollgate serve` (durable embedded store, `WORKERS` worker runtimes), with
//! the load generator in the same process: `CONNECTIONS` connections, each with its own
//! account, each sending its next request when the last is answered. The baseline is the
//! same admissions through `Runtime::admit` in-process, on one thread, over a durable store.
//!
//! Every `RELEASE_EVERY` admissions a connection releases its open reservations (on the
//! clock: the throughput counts them as time spent), so account states stay bounded.
//!
//! The same admissions then run against a second node serving HTTPS (TLS 1.3, ECDSA P-256
//! certificate) that checks an ES256 bearer token on every request: the cost of TLS and
//! token checks, as a ratio to the cleartext node measured in the same run.

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
use tollgate_runtime::access::AuthSpec;
use tollgate_runtime::{AdmissionRequest, Decision, Journal, Loader, Manifest, Runtime, engine_for};
use tollgate_serve::auth::Verifier;
use tollgate_serve::tls::{Tls, TlsFiles};
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

/// One keep-alive HTTP/1.1 connection, in the clear or over TLS, with a bearer token or none.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
    authorization: Option<String>,
}

/// How a connection reaches a node: TLS trusting the node's certificate, and a token.
#[derive(Clone, Default)]
struct Access {
    tls: Option<tokio_rustls::TlsConnector>,
    token: Option<String>,
}

impl Connection {
    async fn open(address: SocketAddr, access: &Access) -> Connection {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let sender = match &access.tls {
            None => {
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
                tokio::spawn(connection);
                sender
            }
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let stream = tls.connect(name, stream).await.unwrap();
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
                tokio::spawn(connection);
                sender
            }
        };
        let authorization = access.token.as_ref().map(|t| format!("Bearer {t}"));
        Connection { sender, host: address.to_string(), authorization }
    }

    fn request(&self, builder: hyper::http::request::Builder) -> hyper::http::request::Builder {
        let builder = builder.header(header::HOST, &self.host);
        match &self.authorization {
            Some(token) => builder.header(header::AUTHORIZATION, token),
            None => builder,
        }
    }

    /// GETs `path`: its status.
    async fn get(&mut self, path: &str) -> u16 {
        self.sender.ready().await.unwrap();
        let request = self.request(Request::get(path)).body(Full::new(Bytes::new())).unwrap();
        let response = self.sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        response.into_body().collect().await.unwrap();
        status
    }

    /// POSTs `body` to `path`: (status, body as JSON or `Null`, `Location`).
    async fn post(&mut self, path: &str, body: Value) -> (u16, Value, Option<String>) {
        self.sender.ready().await.unwrap();
        let request = self
            .request(Request::post(path))
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

/// A node serving `spec` on its own runtime until `stop` is sent: its address.
struct Node {
    runtime: tokio::runtime::Runtime,
    address: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<tollgate_runtime::Stats, tollgate_serve::ServeError>>,
}

impl Node {
    fn start(spec: NodeSpec, config: Config) -> Node {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = runtime.spawn(serve(listener, spec, config, async move {
            let _ = stopped.await;
        }));
        Node { runtime, address, stop, server }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        self.runtime.block_on(self.server).unwrap().unwrap();
    }
}

/// `CONNECTIONS` connections to a ready node, each with a funded account `sub-<c>`.
async fn funded(address: SocketAddr, access: &Access) -> Vec<Connection> {
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        connections.push(Connection::open(address, access).await);
    }
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
    connections
}

/// Admissions on every connection for one phase, releasing every `RELEASE_EVERY`.
async fn admissions(connections: Vec<Connection>) -> (measure::Timing, Vec<Connection>) {
    drive(connections, phase(), |c, n, mut connection| async move {
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
    .await
}

/// A CA, a certificate for `localhost` signed by it, and an ES256 token issuer, written to
/// `dir`: the secured node's configuration and the client's access.
fn secured(dir: &Path) -> (Config, Access) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("node.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("node.key"), key.serialize_pem()).unwrap();
    let files = TlsFiles { cert: dir.join("node.pem"), key: dir.join("node.key"), client_ca: None };

    let signer = KeyPair::generate().unwrap();
    std::fs::write(dir.join("nrf.pem"), signer.public_key_pem()).unwrap();
    let spec = AuthSpec {
        issuers: vec!["nrf.bench".into()],
        audience: vec!["CHF".into()],
        keys: vec![dir.join("nrf.pem")],
        leeway_secs: 30,
        protect_metrics: false,
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({"iss": "nrf.bench", "sub": "smf-1", "aud": "CHF", "scope": "tollgate-admissions tollgate-admin",
        "iat": now, "exp": now + 3600});
    let encoding = jsonwebtoken::EncodingKey::from_ec_pem(signer.serialize_pem().as_bytes()).unwrap();
    let token =
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256), &claims, &encoding).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let client =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let config = Config {
        queue: 4 * CONNECTIONS,
        tls: Some(std::sync::Arc::new(Tls::load(files).unwrap())),
        auth: Some(std::sync::Arc::new(Verifier::load(&spec).unwrap())),
        ..Config::default()
    };
    let access =
        Access { tls: Some(tokio_rustls::TlsConnector::from(std::sync::Arc::new(client))), token: Some(token) };
    (config, access)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let baseline = in_process(&manifest, dir.path());
    let workers = WORKERS;
    let spec = |store: &str| NodeSpec {
        manifest: manifest.clone(),
        store: format!("file:{}", dir.path().join(store).display()),
        name: "bench".into(),
        workers,
        ..NodeSpec::default()
    };
    // The load generator: a runtime of its own, as a separate client process would have.
    let client = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    let node = Node::start(spec("served"), Config { queue: 4 * CONNECTIONS, ..Config::default() });
    let cleartext = client.block_on(async {
        let connections = funded(node.address, &Access::default()).await;
        let (timing, connections) = admissions(connections).await;
        let op = format!("admission over HTTP/1.1 keep-alive, {CONNECTIONS} connections, durable file store, {workers} workers, load generator in process (vs Runtime::admit in process, one thread)");
        let met = timing.ops_per_sec >= 30_000.0 && timing.p99() <= 5_000_000;
        Report::new("serve-admission-http", &op, &timing)
            .ratio(timing.ops_per_sec / baseline)
            .target(">= 30k admissions/s, p99 <= 5 ms", met)
            .write();

        let (nchf, _) = drive(connections, phase(), |c, n, mut connection| async move {
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
        Report::new("serve-nchf-session-http", &op, &nchf).write();
        timing
    });
    node.stop();

    let (config, access) = secured(dir.path());
    let node = Node::start(spec("served-tls"), config);
    client.block_on(async {
        let connections = funded(node.address, &access).await;
        let (timing, _) = admissions(connections).await;
        let op = format!("admission over HTTPS (TLS 1.3) with an ES256 bearer token checked per request, {CONNECTIONS} keep-alive connections, {workers} workers (vs the cleartext node in this run)");
        let ratio = timing.ops_per_sec / cleartext.ops_per_sec;
        Report::new("serve-admission-https-token", &op, &timing)
            .ratio(ratio)
            .target("costs under 15 % of the cleartext node's throughput", ratio >= 0.85)
            .write();
    });
    node.stop();
    println!("tollgate-bench in-process admission baseline: {baseline:.0} admissions/s");
}
