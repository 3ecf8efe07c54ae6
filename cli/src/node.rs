//! `tollgate run`: an edge node over a durable store, driven by JSON lines: the stdin
//! transport of [`tollgate_node`].
//!
//! Each input line is one [`Request`]; each gets one output line, `{"line": N, "ok": REPLY}`
//! or `{"line": N, "error": "..."}`:
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
//! not a request, or a request whose fields are out of range (see
//! [`tollgate_node::protocol`]) gets one error reply naming the problem, and the next line is
//! read.

use anyhow::Context;
use serde_json::json;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use tollgate_node::{Node, Request, view};

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

/// The longest request line read, in bytes (without its newline). A longer line is skipped
/// without being held in memory and gets an error reply.
pub const MAX_LINE_BYTES: usize = 1 << 20;

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

/// Runs the node until its input ends.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut node = Node::open(&args.manifest, &args.store, &args.node)?;
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
        // Timers due by now fire even when the line turns out not to be a request; a failure
        // there is the node's, not the line's, and ends the run.
        node.tick()?;
        let result = line.and_then(|line| {
            serde_json::from_str::<Request>(&line).map_err(|e| anyhow::anyhow!("{source}:{n}: not a request: {e}"))
        });
        let result = result.and_then(|request| Ok(node.answer(request)?));
        let reply = match result {
            Ok(reply) => json!({ "line": n, "ok": view::to_value(&reply) }),
            Err(e) => {
                failed += 1;
                json!({ "line": n, "error": format!("{e:#}") })
            }
        };
        writeln!(out, "{reply}")?;
    }
    let stats = node.close()?;
    eprintln!("{}", serde_json::to_string(&stats)?);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
