//! "durable" commands through the runtime: each command is decided by the prepaid-account
//! component and appended with optimistic concurrency, on the embedded log (fsync'd group
//! commit) and on JetStream. `THREADS` threads, each a runtime of its own on one shared
//! store, each topping up its own account; latency is per command, decision included.

#![allow(clippy::unwrap_used)] // a benchmark stops on the first unexpected error

use hdrhistogram::Histogram;
use std::time::{Duration, Instant};
use tollgate_benches::measure::{self, PHASE, Report, Timing};
use tollgate_billing_model::account::{AccountCommand, Money};
use tollgate_host::HostEngine;
use tollgate_host::aggregate::Outcome;
use tollgate_runtime::{Journal, Loader, Manifest, Runtime};
use tollgate_store::NatsOptions;
use tollgate_store::testing::NatsServer;

/// As many concurrent writers as the store-level `durable` scenario's appenders: group commit
/// shares one fsync among the commands in flight, and a runtime has one in flight at a time
/// (with 8 runtimes the embedded log gave 19k/s, p50 about one fsync).
const THREADS: usize = 64;

fn manifest() -> Manifest {
    let file = tollgate_benches::fixtures::actor("prepaid_account");
    let text = format!("[actors.account]\nkind = \"aggregate\"\nfile = {:?}\n", file.display().to_string());
    Manifest::parse(std::path::Path::new("bench.toml"), &text, std::path::Path::new(".")).expect("manifest")
}

/// Runs every thread until `stop` commands each or the deadline; returns (commands, wall time, latencies).
fn run(
    runtimes: &mut [Runtime],
    round: usize,
    count: Option<u64>,
    deadline: Instant,
) -> (u64, Duration, Histogram<u64>) {
    let start = Instant::now();
    let results: Vec<(u64, Histogram<u64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = runtimes
            .iter_mut()
            .enumerate()
            .map(|(t, rt)| {
                s.spawn(move || {
                    let mut hist = measure::histogram();
                    let mut done = 0;
                    let key = format!("acct-{t}");
                    while count.is_none_or(|n| done < n) && (count.is_some() || Instant::now() < deadline) {
                        let top_up = AccountCommand::TopUp { amount: Money::new(1, "EUR") };
                        let command =
                            rt.command("account", &key, &format!("r{round}-{done}"), &top_up).expect("encode");
                        let t0 = Instant::now();
                        let outcome = rt.execute(&command).expect("command");
                        measure::record(&mut hist, t0.elapsed());
                        assert!(matches!(outcome, Outcome::Accepted(_)), "top-up refused");
                        done += 1;
                    }
                    (done, hist)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("bench thread")).collect()
    });
    let mut hist = measure::histogram();
    let mut total = 0;
    for (done, h) in results {
        total += done;
        hist.add(h).expect("histograms of the same bounds");
    }
    (total, start.elapsed(), hist)
}

fn scenario(c: &mut criterion::Criterion, name: &str, journal: Journal, target: (&str, f64)) {
    let mut loader = Loader::new(HostEngine::shared().expect("engine"));
    let mut runtimes: Vec<Runtime> =
        (0..THREADS).map(|_| Runtime::open(&manifest(), &mut loader, journal.clone()).expect("runtime")).collect();
    for (t, rt) in runtimes.iter_mut().enumerate() {
        let key = format!("acct-{t}");
        let open = rt
            .command("account", &key, "open", &AccountCommand::Open { currency: "EUR".into(), overdraft_limit: 0 })
            .expect("encode");
        rt.execute(&open).expect("open");
    }
    let mut round = 0;
    c.bench_function(&format!("{name} ({THREADS} runtimes)"), |b| {
        b.iter_custom(|iters| {
            round += 1;
            let per_thread = iters.div_ceil(THREADS as u64).max(1);
            let (done, elapsed, _) = run(&mut runtimes, round, Some(per_thread), Instant::now());
            elapsed.mul_f64(iters as f64 / done as f64)
        })
    });
    if !measure::bench_mode() {
        return;
    }
    let (done, elapsed, latencies) = run(&mut runtimes, usize::MAX, None, Instant::now() + PHASE);
    let ops_per_sec = done as f64 / elapsed.as_secs_f64();
    let timing = Timing { ops_per_sec, mean_ns: 1e9 / ops_per_sec, latencies };
    let op = format!("top-up decided by the wasm account and appended (OCC), {THREADS} runtimes on one store");
    Report::new(name, &op, &timing).target(target.0, ops_per_sec >= target.1).write();
}

fn main() {
    let mut c = measure::criterion();
    let dir = tempfile::tempdir().expect("temp dir");
    let journal = Journal::open(&format!("file:{}", dir.path().display())).expect("file store");
    scenario(&mut c, "durable-runtime-file", journal, (">= 50k commands/s", 50_000.0));
    match NatsServer::start() {
        Err(why) => println!("durable-runtime-jetstream: skipped: {why}"),
        Ok(server) => {
            let journal = Journal::connect_nats(&server.url, NatsOptions::default()).expect("JetStream");
            scenario(&mut c, "durable-runtime-jetstream", journal, (">= 10k commands/s", 10_000.0));
        }
    }
    c.final_summary();
}
