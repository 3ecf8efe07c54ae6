//! Commands that read (and repair) a store: `events`, `kv`, `replay`, `dead-letters`, `stats`. Those
//! that only read open the store read-only, so they never change a byte of it.

use crate::nats_flags::NatsFlags;
use anyhow::Context;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use tollgate_host::ActorKind;
use tollgate_node::view::{self, EventView};
use tollgate_runtime::journal::from_stored;
use tollgate_runtime::quota::{EdgeLog, QUOTA_STREAM};
use tollgate_runtime::stats::STATS_STREAM;
use tollgate_runtime::{Journal, Loader, Manifest, Runtime, Stats, engine_for, read_model, replay};

/// Arguments of `events`.
#[derive(clap::Args)]
pub struct EventsArgs {
    /// The stream (aggregate type), e.g. `account`.
    stream: String,
    /// The key (aggregate id), e.g. `alice`.
    key: String,
    /// The event store: `file:DIR` or `nats://HOST:PORT`.
    #[arg(long)]
    store: String,
    #[command(flatten)]
    nats: NatsFlags,
    /// First sequence to show.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

/// Shows one stream.
pub fn events(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let journal = Journal::open_read_only(&args.store, &args.nats.access(None)?)?;
    let events = journal.run("read events", journal.store().read(&args.stream, &args.key, args.from))?;
    if events.is_empty() {
        eprintln!("{}/{}: no events at or after sequence {}", args.stream, args.key, args.from);
    }
    let mut out = std::io::stdout().lock();
    for e in events {
        let e = from_stored(e);
        let written = if args.json {
            writeln!(out, "{}", view::to_value(&EventView::from(&e)))
        } else {
            writeln!(
                out,
                "{:>5}  {:>13}  {:<16} v{}  {:<24} {}",
                e.sequence,
                e.time,
                e.event_type,
                e.schema_version,
                e.command_id,
                String::from_utf8_lossy(&e.payload)
            )
        };
        if written.is_err() {
            break; // e.g. piped into `head`
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `replay`.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The manifest naming the aggregates and projectors.
    manifest: PathBuf,
    /// The event store.
    #[arg(long)]
    store: String,
    #[command(flatten)]
    nats: NatsFlags,
    /// Only compare; do not write rebuilt projections.
    #[arg(long)]
    check: bool,
}

fn per_second(n: u64, d: std::time::Duration) -> String {
    if d.is_zero() { "-".into() } else { format!("{:.0}/s", n as f64 / d.as_secs_f64()) }
}

/// Rebuilds aggregates and projections from the log.
pub fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::load(&args.manifest)?;
    let access = args.nats.access(Some(&manifest.nats_access))?;
    let mut loader = Loader::new(engine_for(&manifest)?);
    // Only a repairing replay writes; a check must leave the store as it found it.
    let journal = if args.check {
        Journal::open_read_only(&args.store, &access)?
    } else {
        Journal::open_for(&args.store, &manifest.store, &access)?
    };
    let report = replay::replay(&manifest, &mut loader, &journal, !args.check)?;
    println!("read {} events in {:.1?} ({})", report.events, report.read, per_second(report.events, report.read));
    for a in &report.aggregates {
        println!(
            "aggregate {:<12} stream {:<10} {:>6} keys {:>9} events in {:>9.1?} ({})",
            a.actor,
            a.stream,
            a.keys,
            a.events,
            a.elapsed,
            per_second(a.events, a.elapsed)
        );
    }
    let mut stale = false;
    for p in &report.projections {
        let state = match (p.differing, p.repaired) {
            (0, _) => "matches the store".to_string(),
            (n, true) => format!("{n} entries differed: rewritten"),
            (n, false) => {
                stale = true;
                format!("{n} entries differ (not written: --check)")
            }
        };
        println!(
            "projector {:<12} {:>9} events in {:>9.1?} ({}), {} entries: {state}",
            p.projector,
            p.events,
            p.elapsed,
            per_second(p.events, p.elapsed),
            p.entries
        );
    }
    Ok(if stale { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Arguments of `dead-letters`.
#[derive(clap::Args)]
pub struct DeadLettersArgs {
    /// The consumer (projector or process manager name).
    consumer: String,
    /// The event store.
    #[arg(long)]
    store: String,
    #[command(flatten)]
    nats: NatsFlags,
    /// Redrive the dead letter at this position (repeatable).
    #[arg(long, value_name = "POSITION")]
    redrive: Vec<u64>,
    /// Redrive every dead letter of the consumer.
    #[arg(long, conflicts_with = "redrive")]
    redrive_all: bool,
}

/// Lists a consumer's dead letters, or moves them back.
pub fn dead_letters(args: DeadLettersArgs) -> anyhow::Result<ExitCode> {
    let redriving = args.redrive_all || !args.redrive.is_empty();
    let access = args.nats.access(None)?;
    let journal = if redriving {
        Journal::open_for(&args.store, &Default::default(), &access)?
    } else {
        Journal::open_read_only(&args.store, &access)?
    };
    let dead = journal.run("read dead letters", journal.store().dead_letters(&args.consumer))?;
    let positions: Vec<u64> = if args.redrive_all { dead.iter().map(|d| d.position).collect() } else { args.redrive };
    if positions.is_empty() {
        println!("{}: {} dead letters", args.consumer, dead.len());
        for d in &dead {
            let what: Vec<String> =
                d.events.iter().map(|e| format!("{}/{} #{} {}", e.stream, e.key, e.sequence, e.event_type)).collect();
            println!(
                "  position {:>8}  {} attempts  {}  reason: {}",
                d.position,
                d.attempts,
                what.join(", "),
                d.reason
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    for position in positions {
        journal
            .run("redrive", journal.store().redrive(&args.consumer, position))
            .with_context(|| format!("{}: redrive position {position}", args.consumer))?;
        println!("{}: position {position} redriven; it is delivered again when the node runs", args.consumer);
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `stats`.
#[derive(clap::Args)]
pub struct StatsArgs {
    /// The manifest (its projectors and process managers are the consumers to inspect).
    manifest: PathBuf,
    /// The event store.
    #[arg(long)]
    store: String,
    #[command(flatten)]
    nats: NatsFlags,
}

/// Prints counters recorded by runs, dead-letter depth and outstanding grant exposure.
pub fn stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::load(&args.manifest)?;
    let journal = Journal::open_read_only(&args.store, &args.nats.access(Some(&manifest.nats_access))?)?;
    let mut total = Stats::default();
    let mut runs = 0;
    let mut accounts = BTreeSet::new();
    let mut edges = BTreeMap::new();
    // Usage the accounts' money did not cover; summed over accounts it can pass i64.
    let (mut unpaid, mut unpaid_charges) = (0i128, 0u64);
    let mut from = 1;
    loop {
        let page = journal.run("read log", journal.store().read_all(from, 4096))?;
        let Some(last) = page.last() else { break };
        from = last.position + 1;
        for e in page {
            if e.stream == STATS_STREAM {
                let run: Stats = serde_json::from_slice(&e.payload)
                    .with_context(|| format!("{STATS_STREAM}/{} #{} does not decode", e.key, e.sequence))?;
                total.add(&run);
                runs += 1;
            } else if e.stream == tollgate_billing_model::account::STREAM {
                if e.event_type == "usage-charged" {
                    /// The field of `usage-charged` counted here.
                    #[derive(serde::Deserialize)]
                    struct Unpaid {
                        unpaid: i64,
                    }
                    let charge: Unpaid = serde_json::from_slice(&e.payload)
                        .with_context(|| format!("account/{} #{} does not decode", e.key, e.sequence))?;
                    unpaid += i128::from(charge.unpaid);
                    unpaid_charges += u64::from(charge.unpaid > 0);
                }
                accounts.insert(e.key);
            } else if e.stream == QUOTA_STREAM {
                let log: &mut EdgeLog = edges.entry(e.key.clone()).or_default();
                log.fold_stored(&e)?;
            }
        }
    }
    println!("counters of {runs} recorded runs:");
    println!("  commands accepted      {}", total.accepted);
    for (code, n) in &total.rejected {
        println!("  rejected {code:<22} {n}");
    }
    for (code, n) in &total.reaction_refusals {
        println!("  refused to a process manager: {code} {n}");
    }
    println!("  duplicates answered    {}", total.duplicates);
    println!("  OCC conflicts          {}", total.occ_conflicts);
    for (code, n) in &total.result_codes {
        println!("  admission {code:<21} {n}");
    }
    println!("  snapshots written      {}", total.snapshots);
    println!("  delivery failures      {}", total.delivery_failures);
    println!("  timers fired           {}", total.timers_fired);
    println!("  reactions over bounds  {}", total.reactions_over_bounds);
    println!("  holds released         {}", total.holds_released);
    println!("  charges refunded       {}", total.charges_refunded);
    println!("dead letters:");
    for name in manifest.actors.keys() {
        if matches!(manifest.kind(name), ActorKind::Projector | ActorKind::ProcessManager) {
            let depth = journal.run("read dead letters", journal.store().dead_letters(name))?.len();
            println!("  {name:<22} {depth}");
        }
    }
    match journal.run("read the log's replication", journal.store().replication())? {
        None => println!("replication: one copy"),
        Some(r) => {
            let leader = r.leader.as_deref().unwrap_or("none (an election is under way)");
            println!("replication: {} copies, leader {leader}", r.replicas);
            for f in &r.followers {
                let state = if f.offline {
                    "offline"
                } else if f.current {
                    "current"
                } else {
                    "catching up"
                };
                println!("  {:<22} {state}, {} operations behind", f.server, f.lag);
            }
        }
    }
    let mut loader = Loader::new(engine_for(&manifest)?);
    let rt = Runtime::open(&manifest, &mut loader, journal)?;
    // Summed over accounts, held money can pass i64; i128 does not wrap.
    let (mut held, mut grants) = (0i128, 0usize);
    let mut currencies = BTreeSet::new();
    let mut unreadable = 0;
    for key in &accounts {
        // A damaged account is said, not fatal: the rest of the exposure is still worth showing.
        match rt.account(key) {
            Ok(Some(account)) => {
                held += i128::from(account.held);
                grants += account.reservations.len();
                currencies.insert(account.currency);
            }
            Ok(None) => {}
            Err(e) => {
                unreadable += 1;
                eprintln!("account `{key}` cannot be read, its grants are not counted: {e}");
            }
        }
    }
    let currency = currencies.into_iter().collect::<Vec<_>>().join("/");
    println!("outstanding grants: {grants} over {} accounts, exposure {held} minor units {currency}", accounts.len());
    println!("unpaid usage: {unpaid} minor units {currency} over {unpaid_charges} charges");
    if unreadable > 0 {
        println!("unreadable accounts: {unreadable} (not counted above)");
    }
    print_edges(&edges, manifest.quota.as_ref().map_or("", |q| q.currency.as_str()));
    Ok(ExitCode::SUCCESS)
}

/// What each edge node whose log is in the store holds and owes.
fn print_edges(edges: &BTreeMap<String, EdgeLog>, currency: &str) {
    if edges.is_empty() {
        return;
    }
    println!("edge nodes:");
    let now = tollgate_node::wall_ms();
    for (node, log) in edges {
        let r = log.report(node);
        let contact = match r.last_contact {
            Some(at) => format!("{at} ms ({} s ago)", now.saturating_sub(at) / 1000),
            None => "never".into(),
        };
        println!(
            "  {node:<22} grants held {}, exposure {} {currency}, unsettled usage {} units ({} {currency}), unpaid {} {currency}, last contact with the core {contact}",
            r.grants_held, r.exposure, r.unsettled_units, r.unsettled_usage, r.unpaid
        );
    }
}

/// Arguments of `kv`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("whose").required(true).args(["manifest", "projector"])))]
pub struct KvArgs {
    /// The bucket, as the projector names it (e.g. `balances`).
    bucket: String,
    /// One key of the bucket (default: every entry).
    key: Option<String>,
    /// The event store: `file:DIR` or `nats://HOST:PORT`.
    #[arg(long)]
    store: String,
    #[command(flatten)]
    nats: NatsFlags,
    /// The manifest: the bucket is looked up among its projectors.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// The projector that writes the bucket.
    #[arg(long)]
    projector: Option<String>,
    /// One JSON object per line (`{"key": ..., "value": ...}`) instead of a table.
    #[arg(long)]
    json: bool,
}

/// Shows a projector's read model: one entry, or every entry of a bucket.
pub fn kv(args: KvArgs) -> anyhow::Result<ExitCode> {
    let journal = Journal::open_read_only(&args.store, &args.nats.access(None)?)?;
    let projector = match (&args.projector, &args.manifest) {
        (Some(name), _) => name.clone(),
        (None, Some(path)) => writer_of(&journal, &Manifest::load(path)?, &args.bucket, path)?,
        (None, None) => anyhow::bail!("name the projector: --projector NAME, or --manifest FILE to look it up"),
    };
    if args.manifest.is_none() {
        // Named by hand: an unknown projector or bucket is said as such, not as a missing entry.
        let buckets = read_model::buckets(&journal, &projector)?;
        if buckets.is_empty() {
            eprintln!("unknown projector `{projector}`: it has written no bucket in this store");
            return Ok(ExitCode::FAILURE);
        }
        if !buckets.contains(&args.bucket) {
            let names: Vec<String> = buckets.iter().map(|b| format!("`{b}`")).collect();
            eprintln!(
                "projector `{projector}` has written no bucket `{}` (its buckets: {})",
                args.bucket,
                names.join(", ")
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    let entries = match &args.key {
        Some(key) => match read_model::get(&journal, &projector, &args.bucket, key)? {
            Some(value) => vec![(key.clone(), value)],
            None => {
                eprintln!("{}/{key}: no entry (projector `{projector}`)", args.bucket);
                return Ok(ExitCode::FAILURE);
            }
        },
        None => read_model::list(&journal, &projector, &args.bucket)?,
    };
    let mut out = std::io::stdout().lock();
    if entries.is_empty() {
        eprintln!("{}: no entries (projector `{projector}`)", args.bucket);
    }
    let width = entries.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in entries {
        let value = view::json_or_text(&value);
        if args.json {
            writeln!(out, "{}", serde_json::json!({ "key": key, "value": value }))?;
        } else if args.key.is_some() {
            writeln!(out, "{value}")?;
        } else {
            writeln!(out, "{key:<width$}  {value}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The one projector of `manifest` that has written `bucket`.
fn writer_of(journal: &Journal, manifest: &Manifest, bucket: &str, path: &std::path::Path) -> anyhow::Result<String> {
    let projectors: Vec<&String> =
        manifest.actors.keys().filter(|name| manifest.kind(name) == ActorKind::Projector).collect();
    match read_model::writers(journal, projectors.iter().map(|p| p.as_str()), bucket)?.as_slice() {
        [one] => Ok(one.to_string()),
        [] => {
            let names: Vec<String> = projectors.iter().map(|p| format!("`{p}`")).collect();
            anyhow::bail!(
                "bucket `{bucket}`: no projector of {} has written it (projectors: {})",
                path.display(),
                if names.is_empty() { "none".into() } else { names.join(", ") }
            )
        }
        many => anyhow::bail!(
            "bucket `{bucket}` is written by {} projectors ({}); name one with --projector",
            many.len(),
            many.join(", ")
        ),
    }
}
