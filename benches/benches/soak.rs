//! "soak": the sustained run of issue #31. `tollgate serve` (a process of its own when
//! `TOLLGATE_BIN` names the CLI) on the whole `examples/edge.toml` (the balance projector and
//! the charging-session process manager: timers and expiry run), a durable file store.
//!
//! First a short peak (`TOLLGATE_SOAK_PEAK_SECS`, default 10) with the in-process driver,
//! each of `CONNECTIONS` connections sending its next admission when the last is answered;
//! then `TOLLGATE_SOAK_SECS` (default 600) at 80 % of that peak (or `TOLLGATE_SOAK_RATE`
//! admissions/s), paced by the same driver: each connection sends on a fixed schedule and a
//! latency is timed from when its request was due, so a node falling behind shows as
//! latency (no coordinated omission) and as throughput below the rate. The peak is taken
//! with the driver that paces the soak, so 80 % of it is a rate that driver can hold; with
//! wrk installed the wrk peak is reported beside it.
//!
//! Every `TOLLGATE_SOAK_SAMPLE_SECS` (default 10, less for short runs) one sample: answers
//! per second, p99, the node's RSS, the backlog gauges from `/metrics`
//! (`tollgate_backlog_events`, `tollgate_backlog_timers`; `n/a` when absent). Then SIGTERM,
//! timed until the process exits. The report compares the first and last windows (a minute
//! each, or a fifth of a short run).

#![allow(clippy::unwrap_used)] // a benchmark stops on the first unexpected error

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate_benches::client::{self, Access, Connection};
use tollgate_benches::external::{self, Load};
use tollgate_benches::measure::{self, Report, drive};
use tollgate_benches::served::{self, Node};

/// Funded subscribers the admissions go to.
const SUBSCRIBERS: usize = 1000;

/// Keep-alive connections the driver uses.
const CONNECTIONS: usize = 64;

/// Worker runtimes of an in-process node (a process of its own uses its own default).
const WORKERS: usize = CONNECTIONS;

/// The share of the peak the soak runs at.
const SHARE: f64 = 0.8;

/// The grace period `tollgate serve` gives requests in flight at SIGTERM (its default).
const GRACE: Duration = Duration::from_secs(10);

/// A whole number from the environment, or `default`.
fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// An admission with an id of its own: the `n`-th of connection `c`.
fn admission(prefix: &str, c: usize, n: u64) -> Value {
    let subscriber = (c as u64 + n * CONNECTIONS as u64) % SUBSCRIBERS as u64;
    json!({"id": format!("{prefix}-{c}-{n}"), "subscriber": format!("sub-{subscriber}"), "offer": "voice", "units": 1})
}

/// Admits once on `connection`: whether it was granted. A connection the node closed (its
/// header timeout, a restart) is opened again and the admission counted as not granted.
async fn admit(node: SocketAddr, connection: &mut Connection, body: Value) -> bool {
    match connection.try_post("/v1/admissions", body).await {
        Ok((status, answer, _)) => (200..300).contains(&status) && answer.get("granted").is_some(),
        Err(_) => {
            *connection = Connection::open(node, &Access::default()).await;
            false
        }
    }
}

/// What the paced connections answered since the last sample.
struct Interval {
    answered: u64,
    errors: u64,
    latencies: Histogram<u64>,
}

impl Interval {
    fn new() -> Interval {
        Interval { answered: 0, errors: 0, latencies: measure::histogram() }
    }
}

/// One sample of the soak.
#[derive(Debug, Clone, serde::Serialize)]
struct Sample {
    /// Seconds since the paced load started, at the end of the interval.
    at_secs: f64,
    /// Answers over the interval.
    answered: u64,
    /// Answers per second over the interval.
    per_sec: f64,
    /// 99th percentile latency over the interval (from when each request was due), ns.
    p99_ns: u64,
    /// Answers that were not granted admissions.
    errors: u64,
    /// The node's resident set size, KiB.
    rss_kib: Option<u64>,
    /// Events committed but not yet delivered to projectors and process managers.
    backlog_events: Option<f64>,
    /// Timers due but not yet fired.
    backlog_timers: Option<f64>,
    /// Requests waiting for a worker.
    requests_waiting: Option<f64>,
}

/// Runs `connections` at `rate` admissions/s in all for `length`, sampling every `every`:
/// the samples and the latencies of the whole run.
async fn paced(
    node: SocketAddr,
    connections: Vec<Connection>,
    rate: f64,
    length: Duration,
    every: Duration,
    rss: impl Fn() -> Option<u64>,
) -> (Vec<Sample>, Histogram<u64>) {
    let interval = Arc::new(Mutex::new(Interval::new()));
    let width = connections.len();
    // Each connection's share of the rate, its sends spread evenly over the period.
    let period = Duration::from_secs_f64(width as f64 / rate);
    let start = tokio::time::Instant::now();
    let deadline = start + length;
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(c, mut connection)| {
            let interval = interval.clone();
            tokio::spawn(async move {
                let mut due = start + period.mul_f64(c as f64 / width as f64);
                let mut n = 0u64;
                // Behind schedule, a connection still stops at the deadline: the soak lasts
                // as long as it says, however far the node fell behind.
                while due < deadline && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep_until(due).await;
                    let granted = admit(node, &mut connection, admission("s", c, n)).await;
                    let latency = due.elapsed();
                    {
                        let mut i = interval.lock().unwrap();
                        i.answered += 1;
                        i.errors += u64::from(!granted);
                        measure::record(&mut i.latencies, latency);
                    }
                    n += 1;
                    // Behind schedule, the next is due at once: the connection catches up.
                    due += period;
                }
            })
        })
        .collect();
    let mut samples = Vec::new();
    let mut whole = measure::histogram();
    let mut last = start;
    let mut tick = tokio::time::interval_at(start + every, every);
    loop {
        let at = tick.tick().await;
        let taken = std::mem::replace(&mut *interval.lock().unwrap(), Interval::new());
        whole.add(&taken.latencies).unwrap();
        let metrics = external::get(node, "/metrics").await.unwrap_or_default();
        let sample = Sample {
            at_secs: (at - start).as_secs_f64(),
            answered: taken.answered,
            per_sec: taken.answered as f64 / (at - last).as_secs_f64(),
            p99_ns: taken.latencies.value_at_quantile(0.99),
            errors: taken.errors,
            rss_kib: rss(),
            backlog_events: external::metric(&metrics, "tollgate_backlog_events"),
            backlog_timers: external::metric(&metrics, "tollgate_backlog_timers"),
            requests_waiting: external::metric(&metrics, "tollgate_requests_waiting"),
        };
        println!(
            "tollgate-bench soak {:>6.0} s  {:>9.0} admissions/s  p99 {:>8.2} ms  errors {}  rss {} KiB  backlog events {} timers {}  waiting {}",
            sample.at_secs,
            sample.per_sec,
            sample.p99_ns as f64 / 1e6,
            sample.errors,
            sample.rss_kib.map_or("n/a".into(), |r| r.to_string()),
            sample.backlog_events.map_or("n/a".into(), |b| b.to_string()),
            sample.backlog_timers.map_or("n/a".into(), |b| b.to_string()),
            sample.requests_waiting.map_or("n/a".into(), |b| b.to_string()),
        );
        samples.push(sample);
        last = at;
        if at >= deadline {
            break;
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Answers that came in after the last sample (requests due before the deadline).
    let rest = std::mem::replace(&mut *interval.lock().unwrap(), Interval::new());
    whole.add(&rest.latencies).unwrap();
    (samples, whole)
}

/// The samples' answers per second, p99 (the largest of the window's), RSS at the end and
/// largest backlog over `window`.
fn window(samples: &[Sample]) -> (f64, u64, Option<u64>, Option<f64>) {
    let per_sec = samples.iter().map(|s| s.per_sec).sum::<f64>() / samples.len() as f64;
    let p99 = samples.iter().map(|s| s.p99_ns).max().unwrap_or(0);
    let rss = samples.last().and_then(|s| s.rss_kib);
    (per_sec, p99, rss, max_backlog(samples))
}

/// The largest backlog (events + timers) over `samples`, if the node reports one.
fn max_backlog(samples: &[Sample]) -> Option<f64> {
    samples
        .iter()
        .filter_map(|s| match (s.backlog_events, s.backlog_timers) {
            (None, None) => None,
            (e, t) => Some(e.unwrap_or(0.0) + t.unwrap_or(0.0)),
        })
        .reduce(f64::max)
}

fn main() {
    let short = !measure::bench_mode();
    let soak_secs = if short { 2 } else { env_u64("TOLLGATE_SOAK_SECS", 600).max(1) };
    let peak_secs = if short { 1 } else { env_u64("TOLLGATE_SOAK_PEAK_SECS", 10).max(1) };
    let sample_secs = env_u64("TOLLGATE_SOAK_SAMPLE_SECS", (soak_secs / 6).clamp(1, 10)).max(1);

    let dir = tempfile::tempdir().unwrap();
    let manifest = served::manifest(dir.path(), "edge.toml", true);
    let node = Node::start(dir.path(), &manifest, "soak", None, WORKERS);
    let address = node.address();
    let client = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let connections = client.block_on(async {
        let connections = client::connect(address, &Access::default(), CONNECTIONS).await;
        client::fund(connections, SUBSCRIBERS).await
    });

    let (peak, _) =
        client.block_on(drive(connections, Duration::from_secs(peak_secs), move |c, n, mut connection| async move {
            let t0 = Instant::now();
            assert!(admit(address, &mut connection, admission("p", c, n)).await, "a peak admission was refused");
            (connection, t0.elapsed())
        }));
    let wrk_peak = external::on_path("wrk").map(|wrk| {
        let load = Load::Admissions { prefix: "w", subscribers: SUBSCRIBERS };
        external::wrk(&wrk, dir.path(), address, CONNECTIONS, peak_secs, load).per_sec()
    });
    let rate = std::env::var("TOLLGATE_SOAK_RATE")
        .ok()
        .and_then(|r| r.parse::<f64>().ok())
        .unwrap_or(SHARE * peak.ops_per_sec);
    println!(
        "tollgate-bench soak: peak {:.0} admissions/s (driver), {} (wrk); pacing {rate:.0}/s for {soak_secs} s, a sample every {sample_secs} s",
        peak.ops_per_sec,
        wrk_peak.map_or("n/a".into(), |w| format!("{w:.0}/s")),
    );

    // Fresh connections: those of the peak sat idle through the wrk run, past the node's
    // header timeout.
    let connections = client.block_on(client::connect(address, &Access::default(), CONNECTIONS));
    let (samples, whole) = client.block_on(paced(
        address,
        connections,
        rate,
        Duration::from_secs(soak_secs),
        Duration::from_secs(sample_secs),
        || node.rss_kib(),
    ));
    let kind = node.kind();
    let (exit, clean) = node.stop();

    // A minute each, or a fifth of a shorter run, in whole samples.
    let per_window = ((soak_secs.min(60 * 5) / 5).max(sample_secs) / sample_secs).max(1) as usize;
    let per_window = per_window.min(samples.len());
    let (first_rate, first_p99, first_rss, first_backlog) = window(&samples[..per_window]);
    let (last_rate, last_p99, last_rss, last_backlog) = window(&samples[samples.len() - per_window..]);
    let answered: u64 = samples.iter().map(|s| s.answered).sum();
    let errors: u64 = samples.iter().map(|s| s.errors).sum();
    let ratio = last_rate / first_rate;
    let rss_max = samples.iter().filter_map(|s| s.rss_kib).max();
    let backlog_bounded = match (first_backlog, last_backlog) {
        (Some(first), Some(last)) => Some(last <= 2.0 * first + 1024.0),
        _ => None,
    };
    let met = ratio >= 0.95
        && last_p99 <= 2 * first_p99.max(1_000_000)
        && matches!((first_rss, last_rss), (Some(f), Some(l)) if l * 4 <= f * 5)
        && backlog_bounded != Some(false)
        && exit <= GRACE
        && clean
        && errors == 0;

    let op = format!(
        "{soak_secs} s of admissions at {rate:.0}/s ({:.0} % of the driver's peak of {:.0}/s) over {CONNECTIONS} paced connections, {SUBSCRIBERS} subscribers, whole examples/edge.toml (projector, process manager: timers, expiry), durable file store, {kind}; then SIGTERM",
        100.0 * rate / peak.ops_per_sec,
        peak.ops_per_sec,
    );
    let timing = measure::Timing { ops_per_sec: answered as f64 / soak_secs as f64, mean_ns: 0.0, latencies: whole };
    let mut report = Report::new("soak", &op, &timing)
        .with("rate", rate)
        .with("peak_ops_per_sec", peak.ops_per_sec)
        .with("peak_wrk_ops_per_sec", wrk_peak)
        .with("first_ops_per_sec", first_rate)
        .with("last_ops_per_sec", last_rate)
        .with("throughput_ratio", ratio)
        .with("p99_first_ns", first_p99)
        .with("p99_last_ns", last_p99)
        .with("rss_first_kib", first_rss)
        .with("rss_last_kib", last_rss)
        .with("rss_max_kib", rss_max)
        .with("backlog_max", max_backlog(&samples))
        .with("backlog_last_window_max", last_backlog)
        .with("errors", errors)
        .with("exit_secs", exit.as_secs_f64())
        .with("exit_clean", clean)
        .with("samples", samples.len() as u64)
        .with("load_average_1m", served::load_average())
        .target(
            "last window >= 95 % of the first, p99 last <= 2x first, RSS last <= 1.25x first, backlog bounded, SIGTERM exit within 10 s, no errors",
            met,
        );
    report.extra.insert("window_secs".into(), json!(per_window as u64 * sample_secs));
    report.write();

    // Every sample beside the results, for a closer look (one JSON object a line).
    let path = measure::results_path().with_file_name("soak-samples.jsonl");
    let lines: Vec<String> = samples.iter().map(|s| serde_json::to_string(s).unwrap()).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    println!("tollgate-bench soak samples written to {}", path.display());
}
