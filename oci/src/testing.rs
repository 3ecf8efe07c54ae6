//! Test support (cargo feature `testing`): a real OCI registry (Debian's `docker-registry`,
//! i.e. CNCF distribution) on a free loopback port, plus small fixtures. Used by this crate's
//! tests and by other crates' tests that need a registry (e.g. `tollgate-runtime`).
//!
//! Missing tools fail the test under `CI=true` and skip it elsewhere, with one `skipping:` line
//! naming the Debian package to install.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{PushOptions, Pushed, RegistryOptions};

/// Where Debian installs the registry binary.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Whether a missing tool must fail the test (`CI=true`) rather than skip it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Finds `tool` (an absolute path or a name on `PATH`). When it is missing, fails under
/// `CI=true`, else prints one `skipping:` line and returns `None`.
pub fn require_tool(tool: &str, package: &str) -> Option<PathBuf> {
    let found = if tool.contains('/') {
        Some(PathBuf::from(tool)).filter(|p| p.is_file())
    } else {
        std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(tool)).find(|p| p.is_file()))
    };
    if found.is_none() {
        assert!(!in_ci(), "`{tool}` is missing and CI=true: install the Debian package {package}");
        record_skip(&format!("`{tool}` is missing: install the Debian package {package}"));
    }
    found
}

/// A running registry on 127.0.0.1, killed on drop. Its storage is a temporary directory.
pub struct Registry {
    child: Child,
    port: u16,
    storage: tempfile::TempDir,
    _config_dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry, or returns `None` (after printing why) when the binary is missing
    /// outside CI.
    pub fn start() -> Option<Registry> {
        let bin = require_tool(REGISTRY_BIN, "docker-registry")?;
        let mut last_error = String::new();
        // A free port can be taken between probing and binding; try a few.
        for _ in 0..5 {
            match Self::try_start(&bin) {
                Ok(registry) => return Some(registry),
                Err(e) => last_error = e,
            }
        }
        panic!("could not start {}: {last_error}", bin.display());
    }

    fn try_start(bin: &Path) -> Result<Registry, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let storage = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = config_dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                storage.path().display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let log_path = config_dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning: {e}"))?;
        let mut registry = Registry { child, port, storage, _config_dir: config_dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = registry.child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("exited with {status}: {log}"));
            }
            if registry.ready() {
                return Ok(registry);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("not ready within 20 s".to_string())
    }

    /// Whether `GET /v2/` answers 200.
    fn ready(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!("GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n", self.port);
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200")
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's storage root.
    pub fn storage(&self) -> &Path {
        self.storage.path()
    }

    /// The file holding blob `digest` (`sha256:<hex>`) in the registry's storage.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage().join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Options for the local plain-HTTP registry, without credentials or progress reporting.
pub fn local() -> RegistryOptions {
    RegistryOptions {
        plain_http: true,
        allow_latest: false,
        progress: None,
        credentials: crate::Credentials::Anonymous,
    }
}

/// Push options for the local registry.
pub fn local_push() -> PushOptions {
    PushOptions { registry: local(), ..PushOptions::default() }
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the crate lives in the workspace").to_path_buf()
}

/// Where the compiled actors are: `$TOLLGATE_ACTORS_DIR`, else
/// `<workspace>/target/wasm32-wasip2/release`.
pub fn actors_dir() -> PathBuf {
    std::env::var_os("TOLLGATE_ACTORS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/wasm32-wasip2/release"))
}

/// The paths of the actors `stems` (file stems, `<stem>.wasm`, built by `cargo xtask
/// build-actors`; the reference actors are `tollgate_host_test::fixtures::REFERENCE_ACTORS`), or
/// `None` (after printing one `skipping:` line) when one is missing outside CI; under `CI=true`
/// a missing actor fails.
pub fn require_actors(stems: &[&'static str]) -> Option<Vec<(&'static str, PathBuf)>> {
    let dir = actors_dir();
    let paths: Vec<_> = stems.iter().map(|stem| (*stem, dir.join(format!("{stem}.wasm")))).collect();
    if let Some((_, missing)) = paths.iter().find(|(_, p)| !p.is_file()) {
        assert!(
            !in_ci(),
            "{} is missing and CI=true: build the actors first (cargo xtask build-actors)",
            missing.display()
        );
        record_skip(&format!("{} is missing (build the actors with cargo xtask build-actors)", missing.display()));
        return None;
    }
    Some(paths)
}

/// The reference to push actor `stem` to: `REGISTRY/tollgate/<stem with dashes>:0.1.0`.
pub fn actor_reference(registry: &str, stem: &str) -> String {
    format!("{registry}/tollgate/{}:0.1.0", stem.replace('_', "-"))
}

/// Pushes every actor of `actors` (from [`require_actors`]) to `registry` (`127.0.0.1:PORT`)
/// at [`actor_reference`], with [`local_push`] options; returns `(stem, file, what was
/// pushed)` per actor.
pub async fn push_actors(registry: &str, actors: &[(&'static str, PathBuf)]) -> Vec<(&'static str, PathBuf, Pushed)> {
    let mut pushed = Vec::new();
    for (stem, path) in actors {
        let reference = actor_reference(registry, stem);
        let result = crate::push_file(&reference, path, &local_push())
            .await
            .unwrap_or_else(|e| panic!("pushing {}: {e}", path.display()));
        pushed.push((*stem, path.clone(), result));
    }
    pushed
}

/// A tiny but real component: world `test:tiny/actor` importing `test:tiny/host` and
/// exporting `run`.
pub fn tiny_component() -> Vec<u8> {
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve
        .push_str(
            "tiny.wit",
            "package test:tiny@0.1.0;\n\
             interface host { log: func(level: u32); }\n\
             world actor { import host; export run: func(x: u32) -> u32; }\n",
        )
        .expect("valid WIT");
    let world = resolve.select_world(&[package], Some("actor")).expect("world exists");
    let mut module = wat::parse_str(
        r#"(module
             (import "test:tiny/host@0.1.0" "log" (func $log (param i32)))
             (func (export "run") (param i32) (result i32)
               local.get 0
               call $log
               local.get 0))"#,
    )
    .expect("valid WAT");
    wit_component::embed_component_metadata(&mut module, &resolve, world, wit_component::StringEncoding::UTF8)
        .expect("metadata embeds");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("module is accepted")
        .validate(true)
        .encode()
        .expect("component encodes")
}

/// (As `tollgate_store::testing::record_skip`; this crate does not depend on the store.)
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
