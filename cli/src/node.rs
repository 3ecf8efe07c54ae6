//! `tollgate run`: an edge node over a durable store, driven by JSON lines.
//!
//! Each input line is one request; each gets one output line:
//!
//! ```text
//! {"execute": {"stream": "account", "key": "alice", "id": "c1", "command": {"top-up": {"amount": {"minor_units": 500, "currency": "EUR"}}}}}
//! {"admit": {"id": "r1", "subscriber": "alice", "offer": "voice", "units": 60}}
//! {"report": {"stream": "session", "key": "call-1", "id": "call-1/started", "event": {"started": {...}}}}
//! {"advance_ms": 30000}
//! ```
//!
//! The clock follows the wall clock (never backwards); `advance_ms` moves it further. Due
//! timers fire before every line. At the end the node's counters are printed to stderr and
//! recorded in the store for `tollgate stats`.

use crate::scenario::run::{decision_json, event_json};
use anyhow::Context;
use serde::Deserialize;
use serde_json::{Value, json};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use tollgate_host::aggregate::Outcome;
use tollgate_runtime::{AdmissionRequest, Runtime};

/// Arguments of `run`.
#[derive(clap::Args)]
pub struct Args {
    /// The manifest wiring the actors.
    manifest: PathBuf,
    /// The event store: `file:DIR` (embedded, durable) or `nats://HOST:PORT` (JetStream).
    #[arg(long)]
    store: String,
    /// JSON-lines requests to run (default: standard input).
    #[arg(long)]
    input: Option<PathBuf>,
    /// This node's name, under which its counters are recorded.
    #[arg(long, default_value = "edge")]
    node: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Execute { stream: String, key: String, id: String, command: Value },
    Admit(Admission),
    Report { stream: String, key: String, id: String, event: Value, correlation_id: Option<String> },
    AdvanceMs(u64),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Admission {
    id: String,
    subscriber: String,
    offer: String,
    units: u64,
    #[serde(default = "one")]
    rating_group: u32,
    country: Option<String>,
}

fn one() -> u32 {
    1
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn handle(rt: &mut Runtime, request: Request) -> anyhow::Result<Value> {
    Ok(match request {
        Request::Execute { stream, key, id, command } => {
            let envelope = rt.command(&stream, &key, &id, &command);
            match rt.execute(&envelope)? {
                Outcome::Accepted(events) => {
                    json!({ "accepted": events.iter().map(event_json).collect::<Vec<_>>() })
                }
                Outcome::Rejected(r) => json!({ "rejected": { "code": r.code, "message": r.message } }),
            }
        }
        Request::Admit(a) => {
            let request = AdmissionRequest {
                request_id: a.id,
                subscriber: a.subscriber,
                offer: a.offer,
                rating_group: a.rating_group,
                requested_units: a.units,
                country: a.country,
            };
            decision_json(&rt.admit(&request)?)
        }
        Request::Report { stream, key, id, event, correlation_id } => {
            let correlation = correlation_id.unwrap_or_else(|| key.clone());
            json!({ "recorded": event_json(&rt.report(&stream, &key, &correlation, &id, &event)?) })
        }
        Request::AdvanceMs(ms) => json!({ "timers_fired": rt.advance_ms(ms)? }),
    })
}

/// Runs the node until its input ends.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut rt = Runtime::load_with_store(&args.manifest, Some(&args.store))?;
    // Never before the log's last event (the runtime's clock starts there).
    let started = wall_ms().max(rt.clock().now_ms());
    rt.clock().set_ms(started);
    rt.pump().context("catching up with the store")?;
    let input: Box<dyn BufRead> = match &args.input {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let source = args.input.as_ref().map_or("<stdin>".to_string(), |p| p.display().to_string());
    let mut out = std::io::stdout().lock();
    let mut failed = 0;
    for (n, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("{source}: reading line {}", n + 1))?;
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let now = rt.clock().now_ms().max(wall_ms());
        rt.clock().set_ms(now);
        rt.advance_ms(0)?;
        let result = serde_json::from_str::<Request>(&line)
            .map_err(|e| anyhow::anyhow!("{source}:{}: not a request: {e}", n + 1))
            .and_then(|request| handle(&mut rt, request));
        let reply = match result {
            Ok(v) => json!({ "line": n + 1, "ok": v }),
            Err(e) => {
                failed += 1;
                json!({ "line": n + 1, "error": format!("{e:#}") })
            }
        };
        writeln!(out, "{reply}")?;
    }
    let stats = rt.stats();
    rt.record_stats(&args.node, &format!("{}-{started}-{}", args.node, std::process::id()))?;
    eprintln!("{}", serde_json::to_string(&stats)?);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
