//! `tollgate serve`: a long-running node answering HTTP, and NATS with `--nats` (see
//! [`tollgate_serve`]); a core by default, an edge of a core with `--role edge`.
//!
//! Prints `listening on http://ADDR` on stdout once the port is bound (so `--listen
//! 127.0.0.1:0` can be used and the port read back), serves until SIGTERM or SIGINT, then
//! finishes the requests in flight, records the node's counters and prints them on stderr.

use anyhow::Context;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tollgate_serve::{Config, NodeSpec, Role, serve};

/// Arguments of `serve`.
#[derive(clap::Args)]
pub struct Args {
    /// The manifest wiring the actors.
    manifest: PathBuf,
    /// The event store: `file:DIR` (embedded, durable) or `nats://HOST:PORT` (JetStream).
    #[arg(long)]
    store: String,
    /// Where to listen; loopback unless you say otherwise (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// This node's name, under which its counters are recorded.
    #[arg(long, default_value = "edge")]
    node: String,
    /// Requests the node holds at once (waiting or running); one more is answered 503.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    queue: u32,
    /// Runtimes answering requests for different keys in parallel (default: 8 per core, as a
    /// worker mostly waits for its append's fsync; 0: the primary runtime answers everything).
    #[arg(long, value_parser = clap::value_parser!(u16).range(0..=1024))]
    workers: Option<u16>,
    /// Seconds shutdown waits for requests in flight.
    #[arg(long, default_value_t = 10)]
    grace_secs: u64,
    /// Also answer admissions and commands over NATS request/reply at this server
    /// (`tollgate.<node>.admit`, `tollgate.<node>.command.<stream>`).
    #[arg(long, value_name = "nats://HOST:PORT")]
    nats: Option<String>,
    /// `core` charges accounts itself; `edge` admits from grants it obtains from a core over
    /// NATS (`--core`), sized by the manifest's `[quota]`.
    #[arg(long, value_enum, default_value_t = RoleArg::Core)]
    role: RoleArg,
    /// The core's NATS server (with `--role edge`).
    #[arg(long, value_name = "nats://HOST:PORT", required_if_eq("role", "edge"))]
    core: Option<String>,
    /// The core's node name, as it was started with `--node` (with `--role edge`).
    #[arg(long, default_value = "core", value_name = "NAME")]
    core_node: String,
}

/// What the node does in the lattice.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RoleArg {
    /// Charges accounts itself.
    Core,
    /// Admits from grants held by a core.
    Edge,
}

/// Completes on the first SIGTERM or SIGINT.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers the process still stops on SIGTERM, just not gracefully.
        _ => std::future::pending().await,
    }
}

/// Runs `tollgate serve`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let stats = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
        let address = listener.local_addr()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{address}")?;
        out.flush()?;
        drop(out);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = args.workers.map_or((8 * cores).min(1024), usize::from);
        let role = match (args.role, args.core) {
            (RoleArg::Edge, Some(url)) => Role::Edge { url, core: args.core_node },
            (RoleArg::Edge, None) => anyhow::bail!("--role edge needs --core nats://HOST:PORT"),
            (RoleArg::Core, Some(_)) => anyhow::bail!("--core is for --role edge; a core charges accounts itself"),
            (RoleArg::Core, None) => Role::Core,
        };
        let spec =
            NodeSpec { manifest: args.manifest, store: args.store, name: args.node, workers, role, nats: args.nats };
        let config = Config { queue: args.queue as usize, grace: Duration::from_secs(args.grace_secs) };
        anyhow::Ok(serve(listener, spec, config, terminated()).await?)
    })?;
    eprintln!("{}", serde_json::to_string(&stats)?);
    Ok(ExitCode::SUCCESS)
}
