//! What runs outside the bench's process: `tollgate serve` as a process of its own (the
//! release CLI that `cargo xtask bench` builds and names in [`BIN_ENV`]), the `wrk` load
//! generator, and what is read off a running node (`/metrics`, its resident memory).
//!
//! A node in a process of its own is measured the way it is deployed: the load generator's
//! allocations, threads and tokio runtime are not the node's, and its RSS is its own.

use serde::Deserialize;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Environment variable naming the `tollgate` binary the served benches start.
pub const BIN_ENV: &str = "TOLLGATE_BIN";

/// The `tollgate` binary named by [`BIN_ENV`], if it names a file.
pub fn tollgate_bin() -> Option<PathBuf> {
    std::env::var_os(BIN_ENV).map(PathBuf::from).filter(|p| p.is_file())
}

/// The first `name` on `PATH`, if any.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// A `tollgate serve` process on a loopback port; killed on drop if still running.
pub struct Served {
    child: Option<Child>,
    /// Where it listens for HTTP.
    pub address: SocketAddr,
    /// Its process id.
    pub pid: u32,
    /// Where its stderr goes (its counters at shutdown, its complaints).
    pub log: PathBuf,
}

impl Served {
    /// Starts `bin serve MANIFEST --store STORE --listen 127.0.0.1:0 --node bench ARGS...`
    /// and waits for the line saying where it listens.
    pub fn start(bin: &Path, manifest: &Path, store: &str, args: &[String], log: &Path) -> Served {
        let stderr = std::fs::File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let mut child = Command::new(bin)
            .arg("serve")
            .arg(manifest)
            .args(["--store", store, "--listen", "127.0.0.1:0", "--node", "bench"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let address = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(address) = line.strip_prefix("listening on http://") {
                        break address.trim().parse().expect("a socket address");
                    }
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let said = std::fs::read_to_string(log).unwrap_or_default();
                    panic!("tollgate serve exited before listening: {said}");
                }
            }
        };
        // Keep draining stdout so the node never blocks on (or dies of) a full or closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let pid = child.id();
        Served { child: Some(child), address, pid, log: log.to_path_buf() }
    }

    /// Its resident set size, KiB (`VmRSS` in `/proc/PID/status`).
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid)
    }

    /// Sends SIGTERM and waits for the exit: how long it took and how it exited.
    pub fn terminate(mut self) -> (Duration, ExitStatus) {
        let mut child = self.child.take().expect("a running node");
        let start = Instant::now();
        // `kill` rather than a libc binding: the bench depends on no FFI crate for one signal.
        let sent = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {} failed", self.pid);
        let status = child.wait().expect("wait for tollgate serve");
        (start.elapsed(), status)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The resident set size of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `GET path` on a fresh connection (`Connection: close`): the body when the status is 200.
pub async fn get(address: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    let answer = String::from_utf8_lossy(&answer);
    if !answer.starts_with("HTTP/1.1 200") {
        return None;
    }
    let (head, body) = answer.split_once("\r\n\r\n")?;
    // A chunked body (no Content-Length) is unwrapped: its size lines are dropped.
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            if size == 0 || tail.len() < size {
                break;
            }
            out.push_str(&tail[..size]);
            rest = tail[size..].trim_start_matches("\r\n");
        }
        return Some(out);
    }
    Some(body.to_string())
}

/// Waits until the node at `address` answers `/readyz` with 200.
pub async fn ready(address: SocketAddr) {
    while get(address, "/readyz").await.is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The sum of the samples named exactly `name` (any labels) in a Prometheus or OpenMetrics
/// text; `None` when there is none (a node from before the metric was added).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let value = if rest.starts_with('{') {
            rest.rsplit_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None // a longer name with this one as its prefix
        };
        if let Some(v) = value.and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse::<f64>().ok()) {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// Records appended per fsync by the node's embedded log between two `/metrics` readings
/// (`tollgate_store_records_total` / `tollgate_store_syncs_total`); `None` when the node
/// does not expose them or did not sync in between.
pub fn records_per_fsync(before: &str, after: &str) -> Option<f64> {
    let delta = |name| Some(metric(after, name)? - metric(before, name)?);
    let (records, syncs) = (delta("tollgate_store_records_total")?, delta("tollgate_store_syncs_total")?);
    (syncs > 0.0).then(|| records / syncs)
}

/// What code every wrk script shares: counting answers outside 2xx per thread, and at the
/// end one line `tollgate-wrk {json}` with the totals and the latency percentiles (µs).
const WRK_COMMON: &str = r#"
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

non2xx = 0

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do
    bad = bad + t:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    'tollgate-wrk {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"non2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration, math.floor(latency:percentile(50)), math.floor(latency:percentile(99)),
    math.floor(latency.max), bad, e.connect + e.read + e.write + e.timeout))
end
"#;

/// A wrk script admitting over `POST /v1/admissions`: arguments `PREFIX SUBSCRIBERS`. Each
/// request has an id of its own (`PREFIX-THREAD-COUNTER`), so none is answered as a repeat,
/// and goes to subscriber `sub-(COUNTER mod SUBSCRIBERS)`.
const WRK_ADMISSIONS: &str = r#"
counter = 0

function init(args)
  prefix = args[1] or "w"
  subscribers = tonumber(args[2] or "1000")
end

function request()
  counter = counter + 1
  local body = string.format('{"id":"%s-%d-%d","subscriber":"sub-%d","offer":"voice","units":1}',
    prefix, tid, counter, counter % subscribers)
  return wrk.format("POST", "/v1/admissions", {["Content-Type"] = "application/json"}, body)
end
"#;

/// What wrk measured in one run.
#[derive(Debug, Clone, Deserialize)]
pub struct WrkRun {
    /// Responses received.
    pub requests: u64,
    /// Length of the run, µs.
    pub duration_us: u64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 99th percentile latency, µs.
    pub p99_us: u64,
    /// Largest latency, µs.
    pub max_us: u64,
    /// Responses with a status outside 2xx.
    pub non2xx: u64,
    /// Connect, read and write errors and timeouts.
    pub socket_errors: u64,
}

impl WrkRun {
    /// Responses per second.
    pub fn per_sec(&self) -> f64 {
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }

    /// Answers that were not 2xx plus socket errors.
    pub fn errors(&self) -> u64 {
        self.non2xx + self.socket_errors
    }
}

/// What a wrk run asks.
pub enum Load<'a> {
    /// `GET path`, the same request every time.
    Get(&'a str),
    /// Admissions with ids of their own over funded subscribers.
    Admissions {
        /// Keeps the ids of runs against one store apart.
        prefix: &'a str,
        /// How many subscribers (`sub-0` ..) were funded.
        subscribers: usize,
    },
}

/// Runs `wrk -t1 -cCONNECTIONS -dSECS --latency` against `address` with `load`; `dir` holds
/// the script. One thread, pinned to nothing: the issue measured with one.
pub fn wrk(bin: &Path, dir: &Path, address: SocketAddr, connections: usize, secs: u64, load: Load) -> WrkRun {
    let (script, path, args) = match load {
        Load::Get(path) => (WRK_COMMON.to_string(), path.to_string(), vec![]),
        Load::Admissions { prefix, subscribers } => {
            (format!("{WRK_COMMON}{WRK_ADMISSIONS}"), "/".into(), vec![prefix.to_string(), subscribers.to_string()])
        }
    };
    let script_path = dir.join("load.lua");
    std::fs::write(&script_path, script).expect("write the wrk script");
    let output = Command::new(bin)
        .args(["-t1", &format!("-c{connections}"), &format!("-d{secs}s"), "--latency", "--timeout", "10s", "-s"])
        .arg(&script_path)
        .arg(format!("http://{address}{path}"))
        .arg("--")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix("tollgate-wrk ")).unwrap_or_else(|| {
        panic!("wrk printed no summary ({}): {stdout}{}", output.status, String::from_utf8_lossy(&output.stderr))
    });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("wrk summary `{line}`: {e}"))
}
