//! "durable": commands/s appended to an event store by many concurrent appenders (64 tokio
//! tasks on a 2-worker runtime, each owning one account key and appending one `reserved`
//! event per command with optimistic concurrency `Exact(last)` and a unique command id).
//!
//! * `durable-file`: the embedded `FileStore` in a temp dir; group commit makes one
//!   `fdatasync` cover every append queued meanwhile.
//! * `durable-jetstream`: `NatsStore` against a nats-server started on a free loopback port
//!   (skipped with a message when nats-server is not installed).
//! * `durable-jetstream-cluster-r1` / `-r3`: a three-server cluster on loopback, the events
//!   stream kept on one server, then on all three (each append is acknowledged once a majority
//!   has it); the R3 figure's ratio is against R1 in the same run.

#![allow(clippy::unwrap_used)] // a benchmark stops on the first unexpected error

use hdrhistogram::Histogram;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tollgate_benches::fixtures;
use tollgate_benches::measure::{self, PHASE, Report, Timing};
use tollgate_store::testing::{NatsCluster, NatsServer};
use tollgate_store::{EventStore, ExpectedVersion, FileStore, NatsOptions, NatsStore, NewEvent};

/// Concurrent appenders.
const TASKS: usize = 64;

/// Appenders' keys and their last sequences, shared across runs against one store.
struct Appenders {
    store: Arc<dyn EventStore>,
    last: Arc<Vec<AtomicU64>>,
    ids: Arc<AtomicU64>,
    payload: Vec<u8>,
}

#[derive(Clone, Copy)]
enum Stop {
    /// Each task appends this many times.
    Count(u64),
    /// Each task appends until the deadline.
    Deadline(Instant),
}

impl Appenders {
    fn new(store: Arc<dyn EventStore>) -> Appenders {
        let last = fixtures::realistic_history().pop().expect("the history is not empty");
        let event = fixtures::events(&[last], 1).remove(0);
        Appenders {
            store,
            last: Arc::new((0..TASKS).map(|_| AtomicU64::new(0)).collect()),
            ids: Arc::new(AtomicU64::new(0)),
            payload: event.payload,
        }
    }

    /// Runs every task; returns the appends made, the wall time, and the merged latencies.
    async fn run(&self, stop: Stop) -> (u64, Duration, Histogram<u64>) {
        let start = Instant::now();
        let mut handles = Vec::new();
        for t in 0..TASKS {
            let (store, last, ids, payload) =
                (self.store.clone(), self.last.clone(), self.ids.clone(), self.payload.clone());
            handles.push(tokio::spawn(async move {
                let key = format!("acct-{t:03}");
                let mut seq = last[t].load(Ordering::Relaxed);
                let mut hist = measure::histogram();
                let mut done = 0u64;
                loop {
                    match stop {
                        Stop::Count(n) if done >= n => break,
                        Stop::Deadline(d) if Instant::now() >= d => break,
                        _ => {}
                    }
                    let id = format!("cmd-{}", ids.fetch_add(1, Ordering::Relaxed));
                    let event = NewEvent {
                        event_type: "reserved".into(),
                        schema_version: 1,
                        content_type: "application/json".into(),
                        payload: payload.clone(),
                        command_id: id.clone(),
                        // As the runtime writes them: a SHA-256 per command.
                        command_digest: vec![0xab; 32],
                        correlation_id: id,
                        causation_id: String::new(),
                        time_ms: 1_700_000_000_000,
                    };
                    let t0 = Instant::now();
                    let result = store.append("account", &key, ExpectedVersion::Exact(seq), vec![event]).await;
                    measure::record(&mut hist, t0.elapsed());
                    let result = result.unwrap_or_else(|e| panic!("append to {key}: {e}"));
                    seq = result.last_sequence;
                    done += 1;
                }
                last[t].store(seq, Ordering::Relaxed);
                (done, hist)
            }));
        }
        let mut total = 0;
        let mut hist = measure::histogram();
        for h in handles {
            let (done, h) = h.await.expect("appender task");
            total += done;
            hist.add(h).expect("histograms of the same bounds");
        }
        (total, start.elapsed(), hist)
    }
}

/// Connects to `url`, retrying while the servers are still electing leaders (at most 60 s).
fn connect(rt: &Runtime, url: &str, options: NatsOptions) -> NatsStore {
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match NatsStore::connect(url, options.clone()).await {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("nats not ready yet: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("connect to {url}: {e}"),
            }
        }
    })
}

/// Criterion's measurement, then (in bench mode) a timed phase: its figures.
fn scenario(c: &mut criterion::Criterion, rt: &Runtime, name: &str, appenders: &Appenders) -> Option<Timing> {
    c.bench_function(&format!("{name} ({TASKS} appenders)"), |b| {
        b.iter_custom(|iters| {
            let per_task = iters.div_ceil(TASKS as u64).max(1);
            let (done, elapsed, _) = rt.block_on(appenders.run(Stop::Count(per_task)));
            elapsed.mul_f64(iters as f64 / done as f64)
        })
    });
    if !measure::bench_mode() {
        return None;
    }
    let (done, elapsed, latencies) = rt.block_on(appenders.run(Stop::Deadline(Instant::now() + PHASE)));
    let ops_per_sec = done as f64 / elapsed.as_secs_f64();
    Some(Timing { ops_per_sec, mean_ns: 1e9 / ops_per_sec, latencies })
}

fn report(name: &str, timing: &Timing) -> Report {
    let op = format!("one append of one event (1 command), {TASKS} concurrent appenders; latency per append");
    Report::new(name, &op, timing)
}

/// [`scenario`], reported against a throughput target.
fn with_target(c: &mut criterion::Criterion, rt: &Runtime, name: &str, appenders: &Appenders, target: (&str, f64)) {
    if let Some(timing) = scenario(c, rt, name, appenders) {
        report(name, &timing).target(target.0, timing.ops_per_sec >= target.1).write();
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let mut c = measure::criterion();

    let dir = tempfile::tempdir().expect("temp dir");
    let file = FileStore::open(dir.path()).expect("open the file store");
    let appenders = Appenders::new(Arc::new(file.clone()));
    with_target(&mut c, &rt, "durable-file", &appenders, (">= 50k commands/s", 50_000.0));
    let stats = file.stats();
    println!(
        "durable-file: {} records in {} fdatasyncs ({:.1} records per sync)",
        stats.records,
        stats.syncs,
        stats.records as f64 / stats.syncs.max(1) as f64
    );
    drop(appenders);

    match NatsServer::start() {
        Err(why) => println!("durable-jetstream: skipped: {why}"),
        Ok(server) => {
            let store = connect(&rt, &server.url, NatsOptions::default());
            let appenders = Appenders::new(Arc::new(store));
            with_target(&mut c, &rt, "durable-jetstream", &appenders, (">= 10k commands/s", 10_000.0));
            drop(appenders);
            drop(server);
        }
    }

    match NatsCluster::start(3) {
        Err(why) => println!("durable-jetstream-cluster: skipped: {why}"),
        Ok(cluster) => {
            let mut r1: Option<Timing> = None;
            for replicas in [1, 3] {
                // One prefix per replica count: two sets of streams in the one cluster.
                let options = NatsOptions { prefix: format!("r{replicas}"), replicas, ..NatsOptions::default() };
                let appenders = Appenders::new(Arc::new(connect(&rt, &cluster.url(), options)));
                let name = format!("durable-jetstream-cluster-r{replicas}");
                let Some(timing) = scenario(&mut c, &rt, &name, &appenders) else { continue };
                match &r1 {
                    // The ratio column holds R3 / R1 of this run.
                    Some(one) => report(&name, &timing).ratio(timing.ops_per_sec / one.ops_per_sec).write(),
                    None => report(&name, &timing).write(),
                }
                if replicas == 1 {
                    r1 = Some(timing);
                }
            }
        }
    }
    c.final_summary();
}
