//! "admission": one full admission decision through `Runtime::admit` on warm instances: the
//! policy component calls `config`, `charging.balance-check` (the host's decoded account, kept
//! current from committed events), `rating.rate` (the rater component) and `charging.reserve`
//! (the account component's `execute`, on the state it holds), then the runtime dispatches the
//! new event: three calls into components. `admission-parallel`: both cores, a runtime and an
//! account per thread.
//!
//! Every 16 admissions the open reservations are released (off the clock) so the account's
//! state stays bounded. `admission` runs the admission path alone (account, rater, policy);
//! `admission-edge` runs the whole edge manifest (plus the balance projector and the
//! charging-session process manager, which every reserve and release also reaches).

#![allow(clippy::unwrap_used)] // a benchmark stops on the first unexpected error

use criterion::Criterion;
use std::hint::black_box;
use std::time::{Duration, Instant};
use tollgate_benches::fixtures::KEY;
use tollgate_benches::measure::{self, PHASE, Report};
use tollgate_billing_model::account::{AccountCommand, Money};
use tollgate_host::aggregate::Outcome;
use tollgate_host::{HostEngine, Limits};
use tollgate_runtime::{AdmissionRequest, Decision, Loader, Manifest, Runtime};

/// Reservations open at most before they are released.
const RELEASE_EVERY: usize = 16;

/// `examples/edge.toml` on the built actors; without the projector and the process manager
/// unless `edge`.
fn manifest(edge: bool) -> Manifest {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/edge.toml");
    let mut manifest =
        Manifest::load(&path).expect("examples/edge.toml").with_actors_dir(&tollgate_host_test::fixtures::actors_dir());
    if !edge {
        manifest.actors.retain(|name, _| !matches!(name.as_str(), "balances" | "sessions"));
    }
    manifest
}

/// A runtime with one open, well-funded account and the bookkeeping of outstanding grants.
struct Bench {
    rt: Runtime,
    next: u64,
    open: Vec<String>,
}

impl Bench {
    fn new(loader: &mut Loader, edge: bool) -> Bench {
        let mut rt = Runtime::new(&manifest(edge), loader).expect("runtime");
        let open = AccountCommand::Open { currency: "EUR".into(), overdraft_limit: 0 };
        let top_up = AccountCommand::TopUp { amount: Money::new(1_000_000_000_000, "EUR") };
        for (id, c) in [("open", open), ("top-up", top_up)] {
            let c = rt.command("account", KEY, id, &c).expect("encode");
            assert!(matches!(rt.execute(&c).expect("no host error"), Outcome::Accepted(_)));
        }
        Bench { rt, next: 0, open: Vec::new() }
    }

    /// Off the clock: releases the outstanding grants once there are `RELEASE_EVERY`.
    fn housekeeping(&mut self) {
        if self.open.len() < RELEASE_EVERY {
            return;
        }
        for id in std::mem::take(&mut self.open) {
            let c = self
                .rt
                .command("account", KEY, &format!("release/{id}"), &AccountCommand::Release { reservation_id: id })
                .expect("encode");
            assert!(matches!(self.rt.execute(&c).expect("no host error"), Outcome::Accepted(_)));
        }
    }

    /// Builds the next request (off the clock).
    fn request(&mut self) -> AdmissionRequest {
        self.next += 1;
        AdmissionRequest {
            request_id: format!("req-{}", self.next),
            subscriber: KEY.into(),
            offer: "voice".into(),
            rating_group: 1,
            requested_units: 60,
            country: None,
        }
    }

    /// On the clock: one admission decision.
    fn admit(&mut self, request: &AdmissionRequest) {
        match self.rt.admit(request).expect("no host error") {
            Decision::Granted(g) => {
                black_box(&g);
                self.open.push(request.request_id.clone());
            }
            Decision::Denied(d) => panic!("denied {:?}: {}", d.code, d.message),
        }
    }

    /// The timed loop: admissions for a phase, housekeeping and requests off the clock.
    fn measure(self) -> (measure::Timing, Bench) {
        let bench = std::cell::RefCell::new(self);
        let timing = measure::measure_with_setup(
            PHASE,
            1_000,
            |_| {
                let mut b = bench.borrow_mut();
                b.housekeeping();
                b.request()
            },
            |request| bench.borrow_mut().admit(&request),
        );
        (timing, bench.into_inner())
    }

    fn timed_admit(&mut self) -> Duration {
        self.housekeeping();
        let request = self.request();
        let t = Instant::now();
        self.admit(&request);
        t.elapsed()
    }
}

fn run(c: &mut Criterion, loader: &mut Loader, name: &str, edge: bool) {
    let mut bench = Bench::new(loader, edge);
    c.bench_function(name, |b| b.iter_custom(|iters| (0..iters).map(|_| bench.timed_admit()).sum()));
    if !measure::bench_mode() {
        return;
    }
    let before = bench.next;
    let (timing, bench) = bench.measure();
    let events = bench.rt.events().expect("read the log").len();
    println!(
        "{name}: {} admissions in the timed loop; {events} events held in memory by the runtime",
        bench.next - before
    );
    let op = "one Runtime::admit (policy -> rater -> account reserve), granted; releases off the clock";
    let mut report = Report::new(name, op, &timing);
    if !edge {
        let met = timing.ops_per_sec >= 200_000.0 && timing.p99() <= 20_000;
        report = report.target(">= 200k/s, p99 <= 20 us", met);
    }
    report.write();
    if !edge {
        let parallel = parallel(loader);
        Report::new(&format!("{name}-parallel"), &format!("{op}; two threads, a runtime each"), &parallel).write();
    }
}

/// Both cores: a runtime and an account per thread, measured at once; throughput summed.
fn parallel(loader: &Loader) -> measure::Timing {
    let timings = std::thread::scope(|scope| {
        let running: Vec<_> = (0..2)
            .map(|_| {
                let engine = loader.engine().clone();
                scope.spawn(move || Bench::new(&mut Loader::new(engine), false).measure().0)
            })
            .collect();
        running.into_iter().map(|t| t.join().expect("a measuring thread panicked")).collect()
    });
    measure::combine(timings)
}

fn main() {
    let mut loader = Loader::new(HostEngine::new(Limits::default()).expect("engine"));
    let mut c = measure::criterion();
    run(&mut c, &mut loader, "admission", false);
    run(&mut c, &mut loader, "admission-edge", true);
    c.final_summary();
}
