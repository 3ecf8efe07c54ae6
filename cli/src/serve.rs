//! `tollgate serve`: a long-running node answering HTTP, and NATS with `--nats` (see
//! [`tollgate_serve`]); a core by default, an edge of a core with `--role edge`.
//!
//! Prints `listening on http://ADDR` on stdout once the port is bound (so `--listen
//! 127.0.0.1:0` can be used and the port read back), serves until SIGTERM or SIGINT, then
//! finishes the requests in flight, records the node's counters and prints them on stderr.

use crate::nats_flags::NatsFlags;
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
    /// Runtimes answering requests for different keys in parallel (default: 2 per core: a
    /// worker decides a batch of requests while another waits for its batch's one fsync; 0:
    /// the primary runtime answers everything).
    #[arg(long, value_parser = clap::value_parser!(u16).range(0..=1024))]
    workers: Option<u16>,
    /// Seconds shutdown waits for requests in flight. Past it, those still in flight are
    /// dropped (the process exits 1 saying how many) and the counters of the work finished
    /// are recorded all the same.
    #[arg(long, default_value_t = 10)]
    grace_secs: u64,
    /// HTTP connections open at once (default: the descriptor limit, `ulimit -n`, minus
    /// 64 + 8 per runtime kept for the node's own files and sockets). At the cap the
    /// connection idle the longest is closed to admit a new one.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
    /// Seconds a request's head may take to arrive (a new connection's first one, and on
    /// HTTP/1.1 also the wait for the next one on a kept-alive connection).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    header_timeout_secs: u64,
    /// Seconds a connection that has served a request may wait for the next one.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    idle_timeout_secs: u64,
    /// MiB of request bodies the node holds at once (HTTP and NATS); a request whose body
    /// would go past it is answered 503 with Retry-After at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    body_budget_mib: u64,
    /// Milliseconds a worker may be busy with one request before requests for other keys
    /// waiting for it move to other workers.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    reroute_after_ms: u64,
    /// Events the projectors and process managers may have left to deliver before new
    /// writes wait for them (at most 2 s, then 503 with Retry-After): bounds how far read
    /// models, expiries and timers fall behind the log under a load they cannot follow.
    /// Embedded log only (cores over one JetStream store share the reactions' consumers).
    #[arg(long, default_value_t = tollgate_serve::DEFAULT_MAX_BACKLOG_EVENTS, value_parser = clap::value_parser!(u64).range(1..))]
    max_backlog_events: u64,
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
    /// Serve beyond loopback without TLS or access tokens (refused otherwise): anyone who
    /// reaches the port may then charge or credit any account.
    #[arg(long)]
    insecure: bool,
    /// Serve HTTPS with this certificate chain (PEM, the node's own first); re-read on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM); re-read on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Ask clients for a certificate from this CA (PEM): mutual TLS; a client without one
    /// fails the handshake.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    #[command(flatten)]
    nats_flags: NatsFlags,
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

/// Reads the TLS files again on every SIGHUP: new connections get the new certificate, open
/// ones keep theirs; a file that does not read keeps the old one, said on stderr.
async fn reload_on_hangup(tls: std::sync::Arc<tollgate_serve::tls::Tls>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else { return };
    while hangups.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => eprintln!("SIGHUP: TLS certificate and key read again"),
            Err(e) => eprintln!("SIGHUP: TLS files not read, the ones in use stay: {e}"),
        }
    }
}

/// Runs `tollgate serve`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let manifest = tollgate_runtime::Manifest::load(&args.manifest)?;
    let access = args.nats_flags.access(Some(&manifest.nats_access))?;
    let auth = match manifest.auth {
        Some(spec) => Some(std::sync::Arc::new(
            tollgate_serve::auth::Verifier::load(&spec).map_err(|e| anyhow::anyhow!("[auth] keys: {e}"))?,
        )),
        None => None,
    };
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => {
            let files = tollgate_serve::tls::TlsFiles { cert, key, client_ca: args.tls_client_ca };
            Some(std::sync::Arc::new(tollgate_serve::tls::Tls::load(files).map_err(|e| anyhow::anyhow!("--tls: {e}"))?))
        }
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let config = Config {
        queue: args.queue as usize,
        grace: Duration::from_secs(args.grace_secs),
        max_connections: args.max_connections.map(|n| n as usize),
        header_timeout: Duration::from_secs(args.header_timeout_secs),
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
        body_budget: usize::try_from(args.body_budget_mib << 20).unwrap_or(usize::MAX),
        auth,
        insecure: args.insecure,
        tls: tls.clone(),
    };
    config.refuse_exposure(args.listen)?;
    if args.insecure && !args.listen.ip().is_loopback() {
        eprintln!(
            "warning: --insecure: serving on {} without TLS or access tokens; anyone who reaches it may charge or credit any account",
            args.listen
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let stats = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
        let address = listener.local_addr()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {scheme}://{address}")?;
        out.flush()?;
        drop(out);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = args.workers.map_or((2 * cores).min(1024), usize::from);
        let role = match (args.role, args.core) {
            (RoleArg::Edge, Some(url)) => Role::Edge { url, core: args.core_node },
            (RoleArg::Edge, None) => anyhow::bail!("--role edge needs --core nats://HOST:PORT (or tls://)"),
            (RoleArg::Core, Some(_)) => anyhow::bail!("--core is for --role edge; a core charges accounts itself"),
            (RoleArg::Core, None) => Role::Core,
        };
        let spec = NodeSpec {
            manifest: args.manifest,
            store: args.store,
            name: args.node,
            workers,
            role,
            nats: args.nats,
            access,
            reroute_after: Some(Duration::from_millis(args.reroute_after_ms)),
            max_backlog_events: Some(args.max_backlog_events),
        };
        if let Some(tls) = tls {
            tokio::spawn(reload_on_hangup(tls));
        }
        anyhow::Ok(serve(listener, spec, config, terminated()).await?)
    })?;
    eprintln!("{}", serde_json::to_string(&stats)?);
    Ok(ExitCode::SUCCESS)
}
