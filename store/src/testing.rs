//! Test support (feature `testing`): the [`conformance`] suite every store must pass, an
//! [`event`] to append, and a throw-away `nats-server -js` on a free loopback port.
//!
//! ```no_run
//! let Some(server) = tollgate_store::testing::NatsServer::start_or_skip() else { return };
//! assert!(server.url.starts_with("nats://127.0.0.1:"));
//! ```

pub mod conformance;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
        let bin = find_binary().ok_or("nats-server is not installed (Debian package nats-server)")?;
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let ports = dir.path().join("ports");
        std::fs::create_dir_all(&ports).map_err(|e| format!("ports dir: {e}"))?;
        let log = std::fs::File::create(dir.path().join("server.log")).map_err(|e| format!("log file: {e}"))?;
        let mut child = Command::new(&bin)
            .args(["-js", "-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
            .arg(&ports)
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
        match NatsServer::start() {
            Ok(server) => Some(server),
            Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("nats-server (CI=true): {why}"),
            Err(why) => {
                println!("skipping: {why}; install the Debian package nats-server");
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
        .find(|u| u.starts_with("nats://127.0.0.1:"))
        .map(str::to_owned)
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
