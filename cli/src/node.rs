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
//!
//! No line can stop the node: a line that is not valid UTF-8, longer than [`MAX_LINE_BYTES`],
//! not a request, or a request whose fields are out of range (a name longer than
//! [`MAX_NAME_BYTES`], a `command` that is not a command, a clock pushed past
//! [`MAX_CLOCK_MS`]) gets one error reply naming the problem, and the next line is read.

use crate::scenario::run::{decision_json, event_json};
use anyhow::Context;
use serde::Deserialize;
use serde_json::{Value, json};
use std::io::{BufRead, Read, Write};
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

/// The longest request line read, in bytes (without its newline). A longer line is skipped
/// without being held in memory and gets an error reply.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// The longest stream, key, id, subscriber, offer, country or correlation id, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// The latest time `advance_ms` may move the clock to: 9999-12-31T23:59:59.999Z, in ms.
pub const MAX_CLOCK_MS: u64 = 253_402_300_799_999;

/// Refuses an empty name, one over [`MAX_NAME_BYTES`], or one with control characters.
fn check_name(field: &str, value: &str) -> anyhow::Result<()> {
    if value.is_empty() {
        anyhow::bail!("`{field}` is empty");
    }
    if value.len() > MAX_NAME_BYTES {
        anyhow::bail!("`{field}` is {} bytes long, over the limit of {MAX_NAME_BYTES}", value.len());
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        anyhow::bail!("`{field}` contains the control character {c:?}");
    }
    Ok(())
}

/// Refuses a command or event that is not externally tagged: a bare type name (`"close"`) or
/// an object with exactly one key (`{"top-up": {...}}`).
fn check_tagged(field: &str, value: &Value) -> anyhow::Result<()> {
    let name = match value {
        Value::String(name) => name,
        Value::Object(map) if map.len() == 1 => map.keys().next().expect("one key"),
        Value::Object(map) => anyhow::bail!(
            "`{field}` is an object with {} keys; it must have exactly one, the {field} type (e.g. {{\"top-up\": {{...}}}})",
            map.len()
        ),
        other => anyhow::bail!(
            "`{field}` is {}; it must be a {field} type name (\"close\") or an object with one key, the {field} type ({{\"top-up\": {{...}}}})",
            kind_of(other)
        ),
    };
    check_name(&format!("{field} type"), name)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One line of input, as read.
enum Line {
    /// A whole line (its newline removed).
    Text(String),
    /// A line over [`MAX_LINE_BYTES`]: its length; the line was skipped.
    TooLong(u64),
    /// A line that is not UTF-8: where the first bad byte is.
    NotUtf8(std::str::Utf8Error),
}

/// Reads one line into `buf`, holding at most [`MAX_LINE_BYTES`] + 1 bytes of it; `None` at the
/// end of the input.
fn read_line(input: &mut dyn BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<Line>> {
    buf.clear();
    let read = Read::take(&mut *input, MAX_LINE_BYTES as u64 + 1).read_until(b'\n', buf)?;
    if read == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    } else if buf.len() > MAX_LINE_BYTES {
        let mut length = buf.len() as u64;
        loop {
            let chunk = input.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            match chunk.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    input.consume(end + 1);
                    length = length.saturating_add(end as u64);
                    break;
                }
                None => {
                    let n = chunk.len();
                    input.consume(n);
                    length = length.saturating_add(n as u64);
                }
            }
        }
        return Ok(Some(Line::TooLong(length)));
    }
    match std::str::from_utf8(buf) {
        Ok(text) => Ok(Some(Line::Text(text.to_string()))),
        Err(e) => Ok(Some(Line::NotUtf8(e))),
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Refuses a request whose fields are out of range, before anything runs.
fn check(rt: &Runtime, request: &Request) -> anyhow::Result<()> {
    match request {
        Request::Execute { stream, key, id, command } => {
            check_name("stream", stream)?;
            check_name("key", key)?;
            check_name("id", id)?;
            check_tagged("command", command)
        }
        Request::Admit(a) => {
            check_name("id", &a.id)?;
            check_name("subscriber", &a.subscriber)?;
            check_name("offer", &a.offer)?;
            a.country.as_deref().map_or(Ok(()), |c| check_name("country", c))
        }
        Request::Report { stream, key, id, event, correlation_id } => {
            check_name("stream", stream)?;
            check_name("key", key)?;
            check_name("id", id)?;
            correlation_id.as_deref().map_or(Ok(()), |c| check_name("correlation_id", c))?;
            check_tagged("event", event)
        }
        Request::AdvanceMs(ms) => {
            let now = rt.clock().now_ms();
            match now.checked_add(*ms) {
                Some(to) if to <= MAX_CLOCK_MS => Ok(()),
                _ => anyhow::bail!(
                    "`advance_ms` {ms} would move the clock from {now} past {MAX_CLOCK_MS} ms (the year 9999)"
                ),
            }
        }
    }
}

fn handle(rt: &mut Runtime, request: Request) -> anyhow::Result<Value> {
    check(rt, &request)?;
    Ok(match request {
        Request::Execute { stream, key, id, command } => {
            let envelope = tollgate_host::aggregate::json_command(&stream, &key, &id, &command, rt.clock().now_ms())
                .map_err(|e| anyhow::anyhow!("`command`: {e}"))?;
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
    let mut input: Box<dyn BufRead> = match &args.input {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let source = args.input.as_ref().map_or("<stdin>".to_string(), |p| p.display().to_string());
    let mut out = std::io::stdout().lock();
    let mut failed = 0;
    let mut buf = Vec::new();
    let mut n = 0;
    while let Some(line) =
        read_line(&mut input, &mut buf).with_context(|| format!("{source}: reading line {}", n + 1))?
    {
        n += 1;
        let line = match line {
            Line::Text(line) => Ok(line),
            Line::TooLong(length) => Err(anyhow::anyhow!(
                "{source}:{n}: the line is {length} bytes long, over the limit of {MAX_LINE_BYTES}"
            )),
            Line::NotUtf8(e) => {
                Err(anyhow::anyhow!("{source}:{n}: not UTF-8: invalid byte at offset {} of the line", e.valid_up_to()))
            }
        };
        if line.as_ref().is_ok_and(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            continue;
        }
        let now = rt.clock().now_ms().max(wall_ms());
        rt.clock().set_ms(now);
        rt.advance_ms(0)?;
        let result = line.and_then(|line| {
            serde_json::from_str::<Request>(&line).map_err(|e| anyhow::anyhow!("{source}:{n}: not a request: {e}"))
        });
        let result = result.and_then(|request| handle(&mut rt, request));
        let reply = match result {
            Ok(v) => json!({ "line": n, "ok": v }),
            Err(e) => {
                failed += 1;
                json!({ "line": n, "error": format!("{e:#}") })
            }
        };
        writeln!(out, "{reply}")?;
    }
    let stats = rt.stats();
    rt.record_stats(&args.node, &format!("{}-{started}-{}", args.node, std::process::id()))?;
    eprintln!("{}", serde_json::to_string(&stats)?);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
