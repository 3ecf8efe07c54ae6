//! Timing loops, latency histograms and the JSON lines `cargo xtask bench` aggregates.

use criterion::Criterion;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Environment variable naming the JSON-lines file results are appended to.
pub const RESULTS_ENV: &str = "TOLLGATE_BENCH_RESULTS";

/// How long each timed phase of [`measure`] runs by default.
pub const PHASE: Duration = Duration::from_millis(1500);

/// Whether the binary runs as a benchmark (`cargo bench` passes `--bench`); under `cargo test
/// --benches` it does not, and the timed loops are skipped.
pub fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Criterion with short settings (3 s measurement, 1 s warm-up, 20 samples), overridable from
/// the command line.
pub fn criterion() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
        .configure_from_args()
}

/// A latency histogram from 1 ns to 100 s with 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Records one duration, in nanoseconds, saturating at the histogram's upper bound.
pub fn record(hist: &mut Histogram<u64>, elapsed: Duration) {
    hist.saturating_record(elapsed.as_nanos().min(u64::MAX as u128) as u64);
}

/// What a timed loop measured.
#[derive(Debug)]
pub struct Timing {
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Mean time of one operation, ns.
    pub mean_ns: f64,
    /// Per-operation latencies.
    pub latencies: Histogram<u64>,
}

impl Timing {
    /// The median latency, ns.
    pub fn p50(&self) -> u64 {
        self.latencies.value_at_quantile(0.50)
    }

    /// The 99th percentile latency, ns.
    pub fn p99(&self) -> u64 {
        self.latencies.value_at_quantile(0.99)
    }
}

/// Measures a cheap operation: first `phase` of back-to-back calls timed as a whole
/// (throughput, no per-call clock reads), then `phase` with every call timed (latencies).
pub fn measure(phase: Duration, mut op: impl FnMut()) -> Timing {
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < phase {
        for _ in 0..16 {
            op();
        }
        count += 16;
    }
    let elapsed = start.elapsed();
    let mut latencies = histogram();
    let start = Instant::now();
    while start.elapsed() < phase {
        let t = Instant::now();
        op();
        record(&mut latencies, t.elapsed());
    }
    let mean_ns = elapsed.as_nanos() as f64 / count as f64;
    Timing { ops_per_sec: 1e9 / mean_ns, mean_ns, latencies }
}

/// Runs [`measure`] on `threads` threads at once, each with its own operation (`make(i)` for
/// thread `i`, built on that thread): throughput is their sum, latencies are merged.
pub fn parallel<F: FnMut()>(threads: usize, phase: Duration, make: impl Fn(usize) -> F + Sync) -> Timing {
    let timings: Vec<Timing> = std::thread::scope(|scope| {
        let make = &make;
        let running: Vec<_> = (0..threads).map(|i| scope.spawn(move || measure(phase, make(i)))).collect();
        running.into_iter().map(|t| t.join().expect("a measuring thread panicked")).collect()
    });
    combine(timings)
}

/// Timings measured at once on several threads as one: throughput summed, latencies merged.
pub fn combine(timings: Vec<Timing>) -> Timing {
    let mut latencies = histogram();
    for t in &timings {
        latencies.add(&t.latencies).expect("histograms of one shape");
    }
    let ops_per_sec: f64 = timings.iter().map(|t| t.ops_per_sec).sum();
    Timing { ops_per_sec, mean_ns: 1e9 / ops_per_sec, latencies }
}

/// Measures an operation that needs untimed preparation: before every call `setup` runs off
/// the clock and its result is handed to `op`, which is timed. Runs for `phase` (at least
/// `min_ops` calls); throughput is calls divided by the summed time of the calls alone.
pub fn measure_with_setup<T>(
    phase: Duration,
    min_ops: u64,
    mut setup: impl FnMut(u64) -> T,
    mut op: impl FnMut(T),
) -> Timing {
    let mut latencies = histogram();
    let mut busy = Duration::ZERO;
    let mut count = 0u64;
    let start = Instant::now();
    while count < min_ops || start.elapsed() < phase {
        let input = setup(count);
        let t = Instant::now();
        op(input);
        let elapsed = t.elapsed();
        busy += elapsed;
        record(&mut latencies, elapsed);
        count += 1;
    }
    let mean_ns = busy.as_nanos() as f64 / count as f64;
    Timing { ops_per_sec: 1e9 / mean_ns, mean_ns, latencies }
}

/// One scenario's figures: one line of `target/bench-results.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name, e.g. `warm-wasm`.
    pub name: String,
    /// What one operation is, and what the latencies time.
    pub op: String,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Median latency, ns.
    pub p50_ns: u64,
    /// 99th percentile latency, ns.
    pub p99_ns: u64,
    /// Time of the wasm operation / time of the same code natively; `None` without a baseline.
    pub native_ratio: Option<f64>,
    /// The target this scenario is held against, in words.
    pub target: String,
    /// Whether the target is met; `None` when there is no target.
    pub meets_target: Option<bool>,
    /// Further figures of the scenario (its limits and the fractions of them, a soak's first
    /// and last intervals), flattened into its line: `cargo xtask bench` keeps every scalar.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    /// A report from a timing, with no native baseline and no target yet.
    pub fn new(name: &str, op: &str, timing: &Timing) -> Report {
        Report::figures(name, op, timing.ops_per_sec, timing.p50(), timing.p99())
    }

    /// A report from figures measured elsewhere (by an external load generator).
    pub fn figures(name: &str, op: &str, ops_per_sec: f64, p50_ns: u64, p99_ns: u64) -> Report {
        Report {
            name: name.into(),
            op: op.into(),
            ops_per_sec,
            p50_ns,
            p99_ns,
            native_ratio: None,
            target: String::new(),
            meets_target: None,
            extra: serde_json::Map::new(),
        }
    }

    /// Adds a further figure (`null` for one that could not be measured, e.g. `None`).
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Report {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// Sets the native ratio.
    pub fn ratio(mut self, ratio: f64) -> Report {
        self.native_ratio = Some(ratio);
        self
    }

    /// Sets the target and whether it is met.
    pub fn target(mut self, target: &str, met: bool) -> Report {
        self.target = target.into();
        self.meets_target = Some(met);
        self
    }

    /// Prints the figures and appends them as one JSON line to the results file.
    pub fn write(&self) {
        let ratio = self.native_ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}"));
        println!(
            "tollgate-bench {:<28} {:>14.0} ops/s  p50 {:>12} ns  p99 {:>12} ns  native x{ratio}  target {} ({})",
            self.name,
            self.ops_per_sec,
            self.p50_ns,
            self.p99_ns,
            if self.target.is_empty() { "-" } else { &self.target },
            match self.meets_target {
                Some(true) => "met",
                Some(false) => "SHORT",
                None => "-",
            },
        );
        for (key, value) in &self.extra {
            println!("tollgate-bench {:<28}   {key} = {value}", self.name);
        }
        let path = results_path();
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let line = serde_json::to_string(self).expect("a report serializes");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        writeln!(file, "{line}").unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// Where results go: `$TOLLGATE_BENCH_RESULTS`, else `bench-results.jsonl` in the target
/// directory this binary was built in (`<target>/release/deps/<bench>`).
pub fn results_path() -> PathBuf {
    if let Some(path) = std::env::var_os(RESULTS_ENV) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("path of the running bench");
    let target = exe.ancestors().nth(3).expect("bench binaries live in <target>/<profile>/deps");
    target.join("bench-results.jsonl")
}

/// What one client did in a phase.
struct Work {
    done: u64,
    latencies: Histogram<u64>,
}

/// Runs `op` on every client concurrently, each sending its next operation when the last is
/// answered, for `phase`; `op` gets the client's index, how many it has done and the client,
/// and gives the client back with the operation's latency. Returns operations per second over
/// the phase with every latency, and the clients.
pub async fn drive<C, F, Fut>(clients: Vec<C>, phase: Duration, op: F) -> (Timing, Vec<C>)
where
    C: Send + 'static,
    F: Fn(usize, u64, C) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = (C, Duration)> + Send,
{
    let start = Instant::now();
    let deadline = start + phase;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, mut client)| {
            tokio::spawn(async move {
                let mut work = Work { done: 0, latencies: histogram() };
                while Instant::now() < deadline {
                    let (back, took) = op(c, work.done, client).await;
                    client = back;
                    record(&mut work.latencies, took);
                    work.done += 1;
                }
                (work, client)
            })
        })
        .collect();
    let mut latencies = histogram();
    let mut done = 0;
    let mut clients = Vec::new();
    for task in tasks {
        let (work, client) = task.await.expect("a client task panicked");
        done += work.done;
        latencies.add(work.latencies).expect("histograms of one shape add");
        clients.push(client);
    }
    let ops_per_sec = done as f64 / start.elapsed().as_secs_f64();
    (Timing { ops_per_sec, mean_ns: 1e9 / ops_per_sec, latencies }, clients)
}
