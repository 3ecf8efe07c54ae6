//! Benchmarks for tollgate: shared fixtures and measurement helpers.
//!
//! Every bench in `benches/` is its own binary (`harness = false`). It first lets criterion
//! measure (short settings, see [`measure::criterion`]), then runs a fixed timed loop of its own
//! that records per-operation latencies into an HdrHistogram and appends one JSON line per
//! scenario to `target/bench-results.jsonl` ([`measure::Report::write`]). `cargo xtask bench`
//! builds the actors, truncates that file, runs `cargo bench -p tollgate-benches`, and turns
//! the lines into `target/bench-report.json` plus a table.
//!
//! The served benches (`serve`, `soak`) run `tollgate serve` as a process of its own when
//! `TOLLGATE_BIN` names the CLI (`cargo xtask bench` builds it), loaded by `wrk` when it is
//! installed ([`served`], [`external`]); a served figure is reported beside the limits measured
//! in the same run, as a fraction of each.
//!
//! Under `cargo test --benches` (no `--bench` argument) criterion runs each routine once and
//! the timed loops are skipped, so nothing is written.

pub mod client;
pub mod external;
pub mod fixtures;
pub mod measure;
pub mod served;
