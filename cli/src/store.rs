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
    /// Cut the log at a record boundary, removing everything after it (later segments too), or
    /// write the store marker anew for the log as it is. Prints what it did and appends it to
    /// DIR/REPAIRS.log.
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
#[command(group(clap::ArgGroup::new("repair").required(true).args(["truncate_at", "accept_end"])))]
struct RepairArgs {
    /// The store: `file:DIR`.
    #[arg(long)]
    store: String,
    /// Where to cut: segment number (or file name) and byte offset, e.g. `3:4096`. The offset
    /// must be a record boundary, as `store verify` reports them. The store marker then
    /// acknowledges the log up to the cut.
    #[arg(long, value_name = "SEGMENT:OFFSET")]
    truncate_at: Option<String>,
    /// Write the store marker (DIR/COMMITTED) anew, taking the end of the log as it is as
    /// acknowledged: for a log whose marker was lost or that was written before tollgate kept
    /// one. Whether records were cut from its end before can then no longer be told.
    #[arg(long)]
    accept_end: bool,
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
    match r.acknowledged {
        Some((segment, offset, position)) => {
            println!("acknowledged   up to segment {segment} offset {offset} (event position {position})")
        }
        None => println!("acknowledged   nothing (or no readable store marker)"),
    }
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
    let remaining = match &args.truncate_at {
        Some(cut) => {
            let (segment, offset) = parse_cut(cut)?;
            let report = FileStore::repair_truncate(&dir, segment, offset)
                .with_context(|| format!("repairing {} at {cut}", args.store))?;
            println!("{report}");
            report.remaining
        }
        None => {
            let remaining = FileStore::repair_accept_end(&dir)
                .with_context(|| format!("writing the store marker of {}", args.store))?;
            println!("wrote {}: the log's end as it is is acknowledged", dir.join("COMMITTED").display());
            remaining
        }
    };
    println!("recorded in {}", dir.join("REPAIRS.log").display());
    if remaining.is_empty() {
        println!("ok: the log opens");
        return Ok(ExitCode::SUCCESS);
    }
    for p in &remaining {
        println!("PROBLEM (still) {p}");
    }
    Ok(ExitCode::FAILURE)
}
