//! Starts a throw-away `nats-server -js` on a free loopback port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nats-server, killed on drop.
pub struct NatsServer {
    child: Child,
    /// `nats://127.0.0.1:PORT`
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
    /// Starts a server, or returns `None` (after printing why) when nats-server is not
    /// installed. Under `CI=true` a missing binary is a failure.
    pub fn start() -> Option<NatsServer> {
        let Some(bin) = find_binary() else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("nats-server is not installed (CI=true): install the Debian package nats-server");
            }
            println!("skipping: install the Debian package nats-server");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = dir.path().join("ports");
        let store = dir.path().join("js");
        std::fs::create_dir_all(&ports).expect("ports dir");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        let mut child = Command::new(&bin)
            .args(["-js", "-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
            .arg(&ports)
            .arg("-sd")
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = loop {
            if let Some(url) = read_ports_file(&ports) {
                break url;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
                panic!("nats-server exited with {status}: {log}");
            }
            assert!(Instant::now() < deadline, "nats-server wrote no ports file in 10 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(url.starts_with("nats://127.0.0.1:"), "unexpected listen URL {url}");
        Some(NatsServer { child, url, _dir: dir })
    }
}

fn read_ports_file(dir: &std::path::Path) -> Option<String> {
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
