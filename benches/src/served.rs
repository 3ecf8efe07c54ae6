//! A served node for the benches: `tollgate serve` in a process of its own when the release
//! CLI is named in [`external::BIN_ENV`], else the same server in this process (the fallback
//! a plain `cargo bench` without `cargo xtask` gets).

use crate::external::{self, Served};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tollgate_serve::{Config, NodeSpec, serve};

/// `examples/edge.toml` on the built actors, written to `dir/NAME`: whole (`full`: the
/// balance projector and the charging-session process manager, so timers and expiry run), or
/// without the projector and process manager (admissions alone, the peak scenarios).
pub fn manifest(dir: &Path, name: &str, full: bool) -> PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/edge.toml");
    let text = std::fs::read_to_string(&example).unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    let actors = format!("{}/", tollgate_host_test::fixtures::actors_dir().display());
    let text = if full { text.as_str() } else { text.split("[actors.balances]").next().expect("a first part") };
    let path = dir.join(name);
    std::fs::write(&path, text.replace("../target/wasm32-wasip2/release/", &actors))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

/// A node serving in this process, on a tokio runtime of its own, until stopped.
pub struct InProcess {
    runtime: tokio::runtime::Runtime,
    /// Where it listens for HTTP.
    pub address: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<tollgate_runtime::Stats, tollgate_serve::ServeError>>,
}

impl InProcess {
    /// Starts serving `spec` with `config` on a free loopback port.
    pub fn start(spec: NodeSpec, config: Config) -> InProcess {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("a loopback port");
        let address = listener.local_addr().expect("its address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = runtime.spawn(serve(listener, spec, config, async move {
            let _ = stopped.await;
        }));
        InProcess { runtime, address, stop, server }
    }

    /// Stops it (requests in flight finish) and waits: how long that took.
    pub fn stop(self) -> Duration {
        let start = Instant::now();
        let _ = self.stop.send(());
        self.runtime.block_on(self.server).expect("the server task").expect("the server stops cleanly");
        start.elapsed()
    }
}

/// A served node: a process of its own, or in this process.
pub enum Node {
    /// `tollgate serve` as a process of its own.
    Process(Served),
    /// The same server in this process.
    InProcess(InProcess),
}

impl Node {
    /// Serves `manifest` over the durable store `file:DIR/STORE`, answering NATS at `nats` too
    /// if given: in a process of its own when [`external::tollgate_bin`] names the CLI (the
    /// node's own defaults: workers, queue), else in this process with `workers` workers.
    pub fn start(dir: &Path, manifest: &Path, store: &str, nats: Option<&str>, workers: usize) -> Node {
        let store_url = format!("file:{}", dir.join(store).display());
        match external::tollgate_bin() {
            Some(bin) => {
                let mut args = Vec::new();
                if let Some(url) = nats {
                    args.extend(["--nats".to_string(), url.to_string()]);
                }
                let log = dir.join(format!("{store}.log"));
                Node::Process(Served::start(&bin, manifest, &store_url, &args, &log))
            }
            None => Node::InProcess(InProcess::start(
                NodeSpec {
                    manifest: manifest.to_path_buf(),
                    store: store_url,
                    name: "bench".into(),
                    workers,
                    nats: nats.map(str::to_string),
                    ..NodeSpec::default()
                },
                Config { queue: 1024, ..Config::default() },
            )),
        }
    }

    /// Where it listens for HTTP.
    pub fn address(&self) -> SocketAddr {
        match self {
            Node::Process(p) => p.address,
            Node::InProcess(n) => n.address,
        }
    }

    /// How it runs, for the reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Process(_) => "tollgate serve in a process of its own",
            Node::InProcess(_) => "the server in the bench's process (no TOLLGATE_BIN)",
        }
    }

    /// Its resident set size, KiB (in process: the whole bench process's, generator included).
    pub fn rss_kib(&self) -> Option<u64> {
        match self {
            Node::Process(p) => p.rss_kib(),
            Node::InProcess(_) => external::rss_kib(std::process::id()),
        }
    }

    /// Stops it (SIGTERM for a process): how long it took to exit, and whether it exited
    /// cleanly.
    pub fn stop(self) -> (Duration, bool) {
        match self {
            Node::Process(p) => {
                let (took, status) = p.terminate();
                (took, status.success())
            }
            Node::InProcess(n) => (n.stop(), true),
        }
    }
}

/// The one-minute load average (`/proc/loadavg`): how busy the machine was, for the reports.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}
