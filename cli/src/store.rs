//! `tollgate store verify` and `tollgate store repair`: checking and, explicitly, cutting the
//! embedded file store's log.

use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::ExitCode;
use tollgate_store::{FileStore, LogReport};

/// Arguments of `store`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Read the whole log without writing and report records, segments, the last position and
    /// every problem (file and offset). Exits 1 when the log is corrupt.
    Verify(VerifyArgs),
    /// Cut the log at a record boundary, removing everything after it (later segments too).
    /// Prints what it removes and appends it to DIR/REPAIRS.log.
    Repair(RepairArgs),
}

/// Arguments of `store verify`.
#[derive(clap::Args)]
struct VerifyArgs {
    /// The store: `file:DIR`.
    #[arg(long)]
    store: String,
}

/// Arguments of `store repair`.
#[derive(clap::Args)]
struct RepairArgs {
    /// The store: `file:DIR`.
    #[arg(long)]
    store: String,
    /// Where to cut: segment number (or file name) and byte offset, e.g. `3:4096`. The offset
    /// must be a record boundary, as `store verify` reports them.
    #[arg(long, value_name = "SEGMENT:OFFSET")]
    truncate_at: String,
}

/// Runs `store verify` or `store repair`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Verify(a) => verify(a),
        Command::Repair(a) => repair(a),
    }
}

/// The directory of a `file:DIR` URL; the only store these commands work on.
fn file_dir(url: &str) -> anyhow::Result<PathBuf> {
    match url.strip_prefix("file:").map(|rest| rest.strip_prefix("//").unwrap_or(rest)) {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir)),
        _ => bail!(
            "--store {url:?}: `tollgate store` checks the embedded log (file:DIR); a JetStream store keeps \
             its own checksums (see `nats stream info`)"
        ),
    }
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let dir = file_dir(&args.store)?;
    let report = FileStore::verify(&dir).with_context(|| format!("verifying {}", args.store))?;
    print_report(&report);
    Ok(if report.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_report(r: &LogReport) {
    println!("store          {}", r.dir.display());
    println!("store id       {}", r.store_id.as_deref().unwrap_or("- (no segment yet)"));
    println!("format version {}", tollgate_store::FORMAT_VERSION);
    for s in &r.segments {
        println!(
            "segment {:>6}  {:>12} bytes  {:>9} records  {}",
            s.number,
            s.bytes,
            s.records,
            if s.sealed { "sealed" } else { "open" }
        );
    }
    println!("records        {} ({} events)", r.records, r.events);
    println!("last position  {}", r.last_position);
    if let Some(segment) = r.unfinished_roll {
        println!(
            "note: segment {segment} lacks its end-of-segment marker (a crash while starting the next segment); the next writable open writes it"
        );
    }
    if let Some(torn) = &r.torn_tail {
        println!(
            "incomplete final record (a torn last write, never acknowledged; the next writable open drops it): {torn}"
        );
    }
    for p in &r.problems {
        println!("PROBLEM {p}");
    }
    if r.problems.is_empty() {
        println!("ok: the log opens with every complete record");
    } else {
        println!(
            "corrupt: {} problem(s); the store refuses to open. After deciding what to give up, cut at a record \
             boundary with `tollgate store repair --store file:{} --truncate-at SEGMENT:OFFSET`",
            r.problems.len(),
            r.dir.display()
        );
    }
}

/// Parses `SEGMENT:OFFSET`, where SEGMENT is a number or a segment file name.
fn parse_cut(s: &str) -> anyhow::Result<(u64, u64)> {
    let (segment, offset) =
        s.rsplit_once(':').with_context(|| format!("--truncate-at {s:?}: expected SEGMENT:OFFSET, e.g. 2:4096"))?;
    let number = segment.strip_suffix(".seg").unwrap_or(segment);
    let number: u64 = number
        .parse()
        .with_context(|| format!("--truncate-at {s:?}: segment {segment:?} is not a segment number or file name"))?;
    let offset: u64 =
        offset.parse().with_context(|| format!("--truncate-at {s:?}: offset {offset:?} is not a byte offset"))?;
    Ok((number, offset))
}

fn repair(args: RepairArgs) -> anyhow::Result<ExitCode> {
    let dir = file_dir(&args.store)?;
    let (segment, offset) = parse_cut(&args.truncate_at)?;
    let report = FileStore::repair_truncate(&dir, segment, offset)
        .with_context(|| format!("repairing {} at {}", args.store, args.truncate_at))?;
    println!("{report}");
    println!("recorded in {}", dir.join("REPAIRS.log").display());
    if report.remaining.is_empty() {
        println!("ok: the log opens");
        return Ok(ExitCode::SUCCESS);
    }
    for p in &report.remaining {
        println!("PROBLEM (still) {p}");
    }
    Ok(ExitCode::FAILURE)
}
