//! "serve": admissions and Nchf charging sessions over HTTP, and admissions over NATS
//! request/reply, against `tollgate serve` on a durable embedded store, each served figure
//! beside the limits measured in the same run (issue #31, "Know the limits").
//!
//! The node is the release CLI in a process of its own when `TOLLGATE_BIN` names it (`cargo
//! xtask bench` builds it), else the same server in this process. The load generator is
//! `wrk` (one thread, `--latency`) when it is on `PATH`, else the in-process hyper driver
//! (each connection sending its next request when the last is answered).
//!
//! - `serve-admissions`, `serve-admissions-256`: `POST /v1/admissions` over 64 and 256
//!   keep-alive connections, every admission with an id of its own, over `SUBSCRIBERS`
//!   funded subscribers; the manifest is `examples/edge.toml` without the projector and the
//!   process manager. Answers outside 2xx and socket errors are counted as errors.
//! - the limits, beside each: the same HTTP stack answering a constant body (`GET /healthz`
//!   on the same node, same connections: the transport's limit), `Runtime::admit` in
//!   process over a durable file store, the best of 2, 8 and 32 runtimes a core (the
//!   engine's limit; one runtime alone beside it), and records per
//!   fsync from the node's `/metrics` over the run (`n/a` when the node does not count them).
//! - `nchf-sessions`: Nchf create + update + release over HTTP, 64 connections.
//! - `nats-core-admissions`: the same admissions as NATS request/reply at a core node
//!   (`tollgate.bench.admit`) with `NATS_IN_FLIGHT` requests in flight.
//! - `serve-admission-https-token`: the cost of HTTPS with an ES256 bearer token checked per
//!   request, as a ratio to the same node in the clear (both in process, hyper driver).

#![allow(clippy::unwrap_used)] // a benchmark stops on the first unexpected error

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tollgate_benches::client::{self, Access, Connection};
use tollgate_benches::external::{self, Load};
use tollgate_benches::measure::{self, PHASE, Report, drive};
use tollgate_benches::served::{self, InProcess, Node};
use tollgate_billing_model::account::{AccountCommand, Money};
use tollgate_host::aggregate::Outcome;
use tollgate_runtime::access::AuthSpec;
use tollgate_runtime::{AdmissionRequest, Decision, Journal, Loader, Manifest, Runtime, engine_for_runtimes};
use tollgate_serve::auth::Verifier;
use tollgate_serve::tls::{Tls, TlsFiles};
use tollgate_serve::{Config, NodeSpec};
use tollgate_store::testing::NatsServer;

/// Funded subscribers the admissions go to.
const SUBSCRIBERS: usize = 1000;

/// Keep-alive connections of the peak scenario (and of the Nchf and HTTPS scenarios).
const CONNECTIONS: usize = 64;

/// Keep-alive connections of the wide scenario.
const WIDE: usize = 256;

/// NATS requests in flight at once (one connection).
const NATS_IN_FLIGHT: usize = 256;

/// Worker runtimes of an in-process node (a process of its own uses its own default). A
/// worker waits for its append's fsync; the embedded log shares one fsync among the appends
/// in flight, so throughput grows with concurrent workers until the cores are busy.
const WORKERS: usize = CONNECTIONS;

/// Runtimes the engine's limit is measured on, a core's worth times each (the node's default
/// worker count has been 8 and 2 a core): one fsync serves the appends in flight, so more
/// runtimes help until the cores are busy; the limit is the best of them.
const ENGINE_RUNTIMES_PER_CORE: [usize; 3] = [2, 8, 32];

/// How long each measured phase runs.
fn phase() -> Duration {
    if measure::bench_mode() { PHASE * 4 } else { Duration::from_millis(200) }
}

/// What one load run measured, whichever generator ran it.
struct Measured {
    per_sec: f64,
    p50_ns: u64,
    p99_ns: u64,
    errors: u64,
}

impl From<external::WrkRun> for Measured {
    fn from(run: external::WrkRun) -> Measured {
        Measured { per_sec: run.per_sec(), p50_ns: run.p50_us * 1000, p99_ns: run.p99_us * 1000, errors: run.errors() }
    }
}

/// The load generator: wrk when installed, else this process's hyper driver on `client`.
struct Generator<'a> {
    wrk: Option<std::path::PathBuf>,
    client: &'a tokio::runtime::Runtime,
    dir: &'a Path,
}

impl Generator<'_> {
    fn name(&self) -> &'static str {
        if self.wrk.is_some() { "wrk -t1 --latency" } else { "the in-process hyper driver (wrk not on PATH)" }
    }

    /// `GET /healthz` over `connections` connections: the transport's limit.
    fn healthz(&self, address: SocketAddr, connections: usize) -> Measured {
        if let Some(wrk) = &self.wrk {
            return external::wrk(wrk, self.dir, address, connections, phase().as_secs().max(1), Load::Get("/healthz"))
                .into();
        }
        self.client.block_on(async {
            let clients: Vec<_> =
                client::connect(address, &Access::default(), connections).await.into_iter().map(|c| (c, 0)).collect();
            let (timing, clients) =
                drive(clients, phase(), |_, _, (mut connection, errors): (Connection, u64)| async move {
                    let t0 = Instant::now();
                    let status = connection.get("/healthz").await;
                    let took = t0.elapsed();
                    ((connection, errors + u64::from(status != 200)), took)
                })
                .await;
            measured(&timing, &clients)
        })
    }

    /// Admissions with ids of their own (`prefix` keeps runs apart) over `connections`.
    fn admissions(&self, address: SocketAddr, connections: usize, prefix: &'static str) -> Measured {
        if let Some(wrk) = &self.wrk {
            let load = Load::Admissions { prefix, subscribers: SUBSCRIBERS };
            return external::wrk(wrk, self.dir, address, connections, phase().as_secs().max(1), load).into();
        }
        self.client.block_on(async {
            let clients: Vec<_> =
                client::connect(address, &Access::default(), connections).await.into_iter().map(|c| (c, 0)).collect();
            let (timing, clients) =
                drive(clients, phase(), move |c, n, (mut connection, errors): (Connection, u64)| async move {
                    let t0 = Instant::now();
                    let (status, body, _) =
                        connection.post("/v1/admissions", admission(prefix, c, n, connections)).await;
                    let took = t0.elapsed();
                    let failed = !(200..300).contains(&status) || body.get("granted").is_none();
                    ((connection, errors + u64::from(failed)), took)
                })
                .await;
            measured(&timing, &clients)
        })
    }
}

/// An admission request with an id of its own: the `n`-th of connection `c` of `width`.
fn admission(prefix: &str, c: usize, n: u64, width: usize) -> Value {
    let subscriber = (c as u64 + n * width as u64) % SUBSCRIBERS as u64;
    json!({"id": format!("{prefix}-{c}-{n}"), "subscriber": format!("sub-{subscriber}"), "offer": "voice", "units": 1})
}

/// A driver's timing with the errors its clients counted.
fn measured<C>(timing: &measure::Timing, clients: &[(C, u64)]) -> Measured {
    Measured {
        per_sec: timing.ops_per_sec,
        p50_ns: timing.p50(),
        p99_ns: timing.p99(),
        errors: clients.iter().map(|(_, e)| e).sum(),
    }
}

/// The node's `/metrics` text (empty when it does not answer).
fn scrape(client: &tokio::runtime::Runtime, address: SocketAddr) -> String {
    client.block_on(external::get(address, "/metrics")).unwrap_or_default()
}

/// `value` or `n/a`, for the printed lines.
fn or_na(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".into(), |v| format!("{v:.1}"))
}

/// Admissions per second through `Runtime::admit` in this process, no transport: `runtimes`
/// runtimes on a thread each over one durable file store (as a node's workers share its
/// log, so one fsync serves the appends in flight), each admitting in turn to subscribers of
/// its own (`SUBSCRIBERS` in all, funded first), with no reservation released (as in the
/// served scenarios).
fn in_process(manifest: &Path, dir: &Path, runtimes: usize) -> f64 {
    let parsed = Manifest::load(manifest).unwrap();
    let journal = Journal::open(&format!("file:{}", dir.join(format!("in-process-{runtimes}")).display())).unwrap();
    let engine = engine_for_runtimes(&parsed, runtimes).unwrap();
    let per_runtime = SUBSCRIBERS.div_ceil(runtimes);
    let ready = std::sync::Barrier::new(runtimes + 1);
    let (ready, parsed, engine, journal) = (&ready, &parsed, &engine, &journal);
    let (start, counts) = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..runtimes)
            .map(|t| {
                scope.spawn(move || {
                    let mut rt = Runtime::open(parsed, &mut Loader::new(engine.clone()), journal.clone()).unwrap();
                    let subscribers: Vec<String> = (0..per_runtime).map(|s| format!("local-{t}-{s}")).collect();
                    for subscriber in &subscribers {
                        let open = AccountCommand::Open { currency: "EUR".into(), overdraft_limit: 0 };
                        let top_up = AccountCommand::TopUp { amount: Money::new(1_000_000_000_000_000, "EUR") };
                        for (id, c) in [("open", open), ("top-up", top_up)] {
                            let c = rt.command("account", subscriber, id, &c).unwrap();
                            assert!(matches!(rt.execute(&c).unwrap(), Outcome::Accepted(_)));
                        }
                    }
                    // Every runtime starts admitting at once, once all are funded.
                    ready.wait();
                    let deadline = Instant::now() + phase();
                    let mut done = 0u64;
                    while Instant::now() < deadline {
                        let request = AdmissionRequest {
                            request_id: format!("local-{t}-{done}"),
                            subscriber: subscribers[done as usize % per_runtime].clone(),
                            offer: "voice".into(),
                            rating_group: 1,
                            requested_units: 1,
                            country: None,
                        };
                        match rt.admit(&request).unwrap() {
                            Decision::Granted(_) => {}
                            Decision::Denied(d) => panic!("denied: {}", d.message),
                        }
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        ready.wait();
        let start = Instant::now();
        (start, threads.into_iter().map(|t| t.join().unwrap()).collect::<Vec<u64>>())
    });
    counts.iter().sum::<u64>() as f64 / start.elapsed().as_secs_f64()
}

/// The engine's limit: admissions through `Runtime::admit` in process, no transport.
#[derive(Clone, Copy)]
struct Engine {
    /// Admissions per second on `runtimes` runtimes, the best of those measured.
    per_sec: f64,
    /// Runtimes admitting at once in the best run.
    runtimes: usize,
    /// Admissions per second on one runtime alone.
    one: f64,
}

impl Engine {
    /// `report` with this limit beside it.
    fn beside(&self, report: Report) -> Report {
        report
            .with("engine_limit_ops_per_sec", self.per_sec)
            .with("engine_limit_runtimes", self.runtimes as u64)
            .with("engine_one_runtime_ops_per_sec", self.one)
    }
}

/// Admissions over NATS request/reply at a core node: `NATS_IN_FLIGHT` requesters on one
/// connection, each sending its next admission when the last is answered.
fn nats_core(dir: &Path, manifest: &Path, client: &tokio::runtime::Runtime, engine: Engine) {
    let server = match NatsServer::start() {
        Ok(server) => server,
        Err(why) => {
            println!("tollgate-bench nats-core-admissions skipped: {why}");
            return;
        }
    };
    let node = Node::start(dir, manifest, "served-nats", Some(&server.url), WORKERS);
    let address = node.address();
    let url = server.url.clone();
    let (timing, errors, records_per_fsync) = client.block_on(async move {
        let connections = client::connect(address, &Access::default(), 16).await;
        client::fund(connections, SUBSCRIBERS).await;
        let nats = async_nats::connect(&url).await.unwrap();
        let subject = tollgate_serve::lattice::subject("bench", "admit");
        // The service's endpoints are added after the listener answers: wait for the first
        // admission to be answered before measuring.
        let first = json!({"id": "nats-first", "subscriber": "sub-0", "offer": "voice", "units": 1});
        let deadline = Instant::now() + Duration::from_secs(30);
        while nats.request(subject.clone(), first.to_string().into()).await.is_err() {
            assert!(Instant::now() < deadline, "the node answered no admission over NATS in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let before = external::get(address, "/metrics").await.unwrap_or_default();
        let clients: Vec<_> = (0..NATS_IN_FLIGHT).map(|_| (nats.clone(), subject.clone(), 0u64)).collect();
        let (timing, clients) = drive(clients, phase(), |c, n, (nats, subject, errors)| async move {
            let body = admission("n", c, n, NATS_IN_FLIGHT);
            let t0 = Instant::now();
            let answer = nats.request(subject.clone(), body.to_string().into()).await;
            let took = t0.elapsed();
            let granted = answer
                .ok()
                .and_then(|m| serde_json::from_slice::<Value>(&m.payload).ok())
                .is_some_and(|v| v.get("granted").is_some());
            ((nats, subject, errors + u64::from(!granted)), took)
        })
        .await;
        let after = external::get(address, "/metrics").await.unwrap_or_default();
        let errors: u64 = clients.iter().map(|(_, _, e)| e).sum();
        (timing, errors, external::records_per_fsync(&before, &after))
    });
    let kind = node.kind();
    node.stop();
    drop(server);
    let op = format!(
        "admission over NATS request/reply at a core node ({kind}), {NATS_IN_FLIGHT} in flight on one connection, {SUBSCRIBERS} subscribers, durable file store; records/fsync {}",
        or_na(records_per_fsync)
    );
    let met = timing.ops_per_sec >= 30_000.0 && errors == 0;
    engine
        .beside(Report::new("nats-core-admissions", &op, &timing))
        .with("errors", errors)
        .with("engine_fraction", timing.ops_per_sec / engine.per_sec)
        .with("records_per_fsync", records_per_fsync)
        .with("load_average_1m", served::load_average())
        .target(">= 30k admissions/s, no errors", met)
        .write();
}

/// Nchf sessions (create + update + release) over `CONNECTIONS` connections: sessions/s.
fn nchf_sessions(address: SocketAddr, client: &tokio::runtime::Runtime) -> (measure::Timing, Option<f64>) {
    client.block_on(async {
        let connections = client::connect(address, &Access::default(), CONNECTIONS).await;
        let before = external::get(address, "/metrics").await.unwrap_or_default();
        let (timing, _) = drive(connections, phase(), |c, n, mut connection| async move {
            let nchf = "/nchf-convergedcharging/v3/chargingdata";
            let subscriber = (c as u64 + n * CONNECTIONS as u64) % SUBSCRIBERS as u64;
            let request = |sequence: u32, usage: Value| {
                json!({
                    "subscriberIdentifier": format!("sub-{subscriber}"),
                    "nfConsumerIdentification": {"nodeFunctionality": "SMF", "nFName": format!("bench-{c}-{n}")},
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
        let after = external::get(address, "/metrics").await.unwrap_or_default();
        (timing, external::records_per_fsync(&before, &after))
    })
}

/// The HTTPS + token node against the same node in the clear, both in process with the hyper
/// driver (so the ratio compares like with like).
fn https_cost(dir: &Path, manifest: &Path, client: &tokio::runtime::Runtime) {
    let spec = |store: &str| NodeSpec {
        manifest: manifest.to_path_buf(),
        store: format!("file:{}", dir.join(store).display()),
        name: "bench".into(),
        workers: WORKERS,
        ..NodeSpec::default()
    };
    let run = |node: InProcess, access: Access| {
        let address = node.address;
        let timing = client.block_on(async {
            let connections = client::connect(address, &access, CONNECTIONS).await;
            let connections = client::fund(connections, CONNECTIONS).await;
            let (timing, _) = drive(connections, phase(), |c, n, mut connection| async move {
                let admit =
                    json!({"id": format!("t-{c}-{n}"), "subscriber": format!("sub-{c}"), "offer": "voice", "units": 1});
                let t0 = Instant::now();
                let (status, body, _) = connection.post("/v1/admissions", admit).await;
                let took = t0.elapsed();
                assert!(status == 200 && body.get("granted").is_some(), "{status} {body}");
                (connection, took)
            })
            .await;
            timing
        });
        node.stop();
        timing
    };
    let clear =
        run(InProcess::start(spec("clear"), Config { queue: 4 * CONNECTIONS, ..Config::default() }), Access::default());
    let (config, access) = secured(dir);
    let tls = run(InProcess::start(spec("tls"), config), access);
    let op = format!(
        "admission over HTTPS (TLS 1.3) with an ES256 bearer token checked per request, {CONNECTIONS} keep-alive connections, {WORKERS} workers, in process (vs the same node in the clear in this run: {:.0}/s)",
        clear.ops_per_sec
    );
    let ratio = tls.ops_per_sec / clear.ops_per_sec;
    Report::new("serve-admission-https-token", &op, &tls)
        .ratio(ratio)
        .target("costs under 15 % of the cleartext node's throughput", ratio >= 0.85)
        .write();
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
    let manifest = served::manifest(dir.path(), "serve.toml", false);
    // The engine's limit first, while nothing else of this bench runs; one runtime alone
    // too, which waits for every fsync by itself.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut engine = Engine { per_sec: 0.0, runtimes: 0, one: in_process(&manifest, dir.path(), 1) };
    for runtimes in ENGINE_RUNTIMES_PER_CORE.map(|n| n * cores) {
        let per_sec = in_process(&manifest, dir.path(), runtimes);
        println!(
            "tollgate-bench engine (Runtime::admit in process, durable file store): {per_sec:.0} admissions/s on {runtimes} runtimes"
        );
        if per_sec > engine.per_sec {
            (engine.per_sec, engine.runtimes) = (per_sec, runtimes);
        }
    }
    println!(
        "tollgate-bench engine limit: {:.0} admissions/s on {} runtimes ({:.0}/s on one)",
        engine.per_sec, engine.runtimes, engine.one
    );
    // The in-process generator's own runtime, as a separate client process would have.
    let client = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let generator = Generator { wrk: external::on_path("wrk"), client: &client, dir: dir.path() };

    let node = Node::start(dir.path(), &manifest, "served", None, WORKERS);
    let address = node.address();
    client.block_on(async {
        let connections = client::connect(address, &Access::default(), 16).await;
        client::fund(connections, SUBSCRIBERS).await;
    });
    for (name, connections, prefix) in
        [("serve-admissions", CONNECTIONS, "a64"), ("serve-admissions-256", WIDE, "a256")]
    {
        let load = served::load_average();
        let transport = generator.healthz(address, connections);
        let before = scrape(&client, address);
        let served = generator.admissions(address, connections, prefix);
        let records_per_fsync = external::records_per_fsync(&before, &scrape(&client, address));
        let op = format!(
            "admission over HTTP/1.1 keep-alive, {connections} connections, {SUBSCRIBERS} subscribers, durable file store, admission-only manifest; {}; load by {}; transport limit (GET /healthz) {:.0}/s, engine limit {:.0}/s, records/fsync {}",
            node.kind(),
            generator.name(),
            transport.per_sec,
            engine.per_sec,
            or_na(records_per_fsync)
        );
        let (target, met) = if connections == CONNECTIONS {
            (
                ">= 40k admissions/s, p99 <= 5 ms, no errors",
                served.per_sec >= 40_000.0 && served.p99_ns <= 5_000_000 && served.errors == 0,
            )
        } else {
            ("p99 <= 20 ms, no errors", served.p99_ns <= 20_000_000 && served.errors == 0)
        };
        engine
            .beside(Report::figures(name, &op, served.per_sec, served.p50_ns, served.p99_ns))
            .with("errors", served.errors)
            .with("transport_limit_ops_per_sec", transport.per_sec)
            .with("transport_limit_p99_ns", transport.p99_ns)
            .with("transport_limit_errors", transport.errors)
            .with("transport_fraction", served.per_sec / transport.per_sec)
            .with("engine_fraction", served.per_sec / engine.per_sec)
            .with("records_per_fsync", records_per_fsync)
            .with("load_average_1m", load)
            .target(target, met)
            .write();
    }

    let transport = generator.healthz(address, CONNECTIONS);
    let (sessions, records_per_fsync) = nchf_sessions(address, &client);
    let op = format!(
        "Nchf session (create + update + release: 3 HTTP requests) over HTTP/1.1, {CONNECTIONS} connections, {}, in-process hyper driver; records/fsync {}",
        node.kind(),
        or_na(records_per_fsync)
    );
    engine
        .beside(Report::new("nchf-sessions", &op, &sessions))
        .with("transport_limit_ops_per_sec", transport.per_sec)
        // Three requests a session: the fraction of the transport's requests per second.
        .with("transport_fraction", 3.0 * sessions.ops_per_sec / transport.per_sec)
        .with("engine_fraction", sessions.ops_per_sec / engine.per_sec)
        .with("records_per_fsync", records_per_fsync)
        .with("load_average_1m", served::load_average())
        .target(">= 10k sessions/s", sessions.ops_per_sec >= 10_000.0)
        .write();
    let (took, clean) = node.stop();
    println!(
        "tollgate-bench served node stopped in {:.2} s ({})",
        took.as_secs_f64(),
        if clean { "clean" } else { "NOT clean" }
    );

    nats_core(dir.path(), &manifest, &client, engine);
    https_cost(dir.path(), &manifest, &client);
}
