//! `tollgate serve` under cheap abuse, as a separate process attacked by real clients:
//! connections that never send a byte (under the child's own `ulimit -n`), heads sent a line
//! a second, idle keep-alive connections, floods of large bodies over HTTP/1.1 and HTTP/2
//! (`h2load`), an oversized NATS payload, workers stuck on hostile requests, and SIGTERM while
//! they are. Each test prints the figure it bounds; bounds are generous (a loaded 2-core
//! machine), far from what the attack did before it was bounded.

use crate::node::manifest;
use crate::serve::{Server, command};
use crate::{actor, run};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};
use tollgate_host_test::fixtures::MISBEHAVING;

/// Raises this process's soft descriptor limit to what the attack needs (up to the hard
/// limit); `false` (after saying so) when the hard limit is too low, unless `CI=true`.
fn descriptors_for(needed: u64) -> bool {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|soft| soft >= needed) {
        return true;
    }
    if limit.maximum.is_none_or(|hard| hard >= needed) {
        setrlimit(Resource::Nofile, Rlimit { current: Some(needed), maximum: limit.maximum }).unwrap();
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true: `ulimit -Hn` is below {needed}");
    eprintln!("skipped: needs {needed} descriptors (raise `ulimit -Hn`)");
    false
}

/// `VmRSS` or `VmHWM` (peak) of process `pid`, in MiB.
fn memory_mib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kib >> 10
}

/// The value of the first sample of `metric` (a name with its labels) in `/metrics`.
fn metric(server: &Server, metric: &str) -> Option<f64> {
    let text = server.get("/metrics").body.as_str().unwrap().to_string();
    text.lines().find_map(|l| l.strip_prefix(metric)?.strip_prefix(' ')?.parse().ok())
}

/// A client with no pooled connection (each request on a fresh one), giving up after 60 s.
fn fresh_client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .max_idle_connections(0)
        .build()
        .into()
}

/// `GET` or `POST` (with `body`) on a fresh connection: the status (0: no answer) and how
/// long the answer took.
fn timed(base: &str, path: &str, body: Option<&str>) -> (u16, Duration) {
    let agent = fresh_client();
    let start = Instant::now();
    let answer = match body {
        None => agent.get(format!("{base}{path}")).call(),
        Some(body) => agent.post(format!("{base}{path}")).header("content-type", "application/json").send(body),
    };
    (answer.map_or(0, |r| r.status().as_u16()), start.elapsed())
}

/// Opens and funds account `alice`, for admissions.
fn fund_alice(server: &Server) {
    let open = server.post("/v1/commands/account/alice", &command("o1", json!({"open": {"currency": "EUR"}})));
    assert_eq!(open.status, 200, "{}", open.body);
    let top_up = command("t1", json!({"top-up": {"amount": {"minor_units": 1_000_000, "currency": "EUR"}}}));
    assert_eq!(server.post("/v1/commands/account/alice", &top_up).status, 200);
}

fn admission(id: &str) -> String {
    json!({"id": id, "subscriber": "alice", "offer": "voice", "units": 1}).to_string()
}

/// Whether the server has closed `stream` (end of stream or reset), without waiting.
fn closed_by_server(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    match (&*stream).read(&mut byte) {
        Ok(0) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        _ => true,
    }
}

#[test]
fn silent_connections_past_the_descriptor_limit_starve_neither_health_nor_admissions() {
    const SILENT: usize = 1_100;
    if !descriptors_for(SILENT as u64 + 512) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let store = format!("file:{}", dir.path().join("log").display());
    // Timeouts far out: what lets the fresh clients in is the cap, not a timer.
    let extra = ["--workers", "4", "--header-timeout-secs", "600", "--idle-timeout-secs", "600"];
    let server = Server::start_limited(&manifest, &store, &extra, Some(1024));
    fund_alice(&server);
    // 1,024 descriptors, 5 runtimes: 1,024 - (64 + 8 x 5) connections.
    let cap = 1024 - 64 - 8 * 5;
    assert_eq!(metric(&server, "tollgate_http_connections_limit"), Some(cap as f64));

    let silent: Vec<TcpStream> = (0..SILENT).map(|_| TcpStream::connect(server.address()).unwrap()).collect();
    let (health, health_took) = timed(&server.base, "/healthz", None);
    let (admitted, admission_took) = timed(&server.base, "/v1/admissions", Some(&admission("r1")));
    eprintln!(
        "{SILENT} silent connections at ulimit -n 1024 (cap {cap}): /healthz {health} in {health_took:?}, admission {admitted} in {admission_took:?}"
    );
    assert_eq!((health, admitted), (200, 200));
    // Acceptance is 1 s on an idle machine; a starved node never answers.
    assert!(health_took < Duration::from_secs(10) && admission_took < Duration::from_secs(10));

    // The oldest silent connections were closed to let the newer ones and the clients in
    // (each as soon as its task runs: counted until they all have).
    let mut closed = 0;
    while closed < SILENT - cap {
        std::thread::sleep(Duration::from_millis(20));
        closed = silent.iter().filter(|s| closed_by_server(s)).count();
    }
    eprintln!("silent connections closed by the server: {closed}");
    // As many as the cap demands (the two clients' connections each took one's place), not
    // more: closing one must not cascade into closing others.
    assert!((SILENT - cap..=SILENT - cap + 8).contains(&closed), "{closed} closed of {SILENT}, cap {cap}");
    assert!(closed_by_server(&silent[0]), "the oldest went first");
    assert!(!closed_by_server(&silent[SILENT - 1]), "the newest stays");
    let evicted = metric(&server, r#"tollgate_http_connections_closed_total{reason="evicted"}"#).unwrap();
    assert!(evicted >= (SILENT - cap) as f64, "{evicted}");
    assert!(metric(&server, "tollgate_http_connections").unwrap() <= cap as f64);
    drop(silent);
    let (code, err) = server.terminate();
    assert_eq!(code, 0, "{err}");
}

/// Sends a request head one line a second until the server closes the connection: how long
/// that took and how many header lines it had sent.
fn slow_head(address: &str) -> (Duration, usize) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let start = Instant::now();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n").unwrap();
    let mut buffer = [0u8; 512];
    for line in 0..120 {
        match stream.read(&mut buffer) {
            Ok(0) => return (start.elapsed(), line),
            Ok(n) => panic!("an answer to an unfinished head: {}", String::from_utf8_lossy(&buffer[..n])),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (start.elapsed(), line),
        }
        if stream.write_all(format!("x-line-{line}: {line}\r\n").as_bytes()).is_err() {
            return (start.elapsed(), line);
        }
    }
    panic!("a head sent a line a second was still being read after 120 s");
}

/// Reads from `stream` until the server closes it: how long after the call that took.
fn until_closed(mut stream: TcpStream) -> Duration {
    let start = Instant::now();
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("an idle connection still open after 120 s")
            }
            Err(_) => return start.elapsed(),
        }
    }
}

/// An HTTP/1.1 connection kept alive after one answered request.
fn idle_http1(address: &str) -> TcpStream {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 512];
    while !answer.ends_with(b"ok\n") {
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "closed before answering: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buffer[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    stream
}

/// One HTTP/2 frame: (type, flags, stream, payload).
fn h2_frame(stream: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).ok()?;
    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).ok()?;
    Some((head[3], head[4], u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff, payload))
}

/// An HTTP/2 connection (prior knowledge) after one answered `GET /healthz`, spoken frame by
/// frame: the preface, SETTINGS, and one HEADERS frame (HPACK: `:method GET`, `:scheme
/// http`, `:path`, `:authority` as literals without indexing).
fn idle_http2(address: &str) -> TcpStream {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut block = vec![0x82, 0x86, 0x04, 8];
    block.extend_from_slice(b"/healthz");
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"localhost");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    hello.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0x5, 0, 0, 0, 1]);
    hello.extend_from_slice(&block);
    stream.write_all(&hello).unwrap();
    loop {
        let (kind, flags, id, payload) = h2_frame(&mut stream).expect("the server closed before answering");
        match kind {
            // SETTINGS: acknowledged, as a client must.
            0x4 if flags & 0x1 == 0 => stream.write_all(&[0, 0, 0, 0x4, 0x1, 0, 0, 0, 0]).unwrap(),
            // HEADERS of the answer: `:status 200` is static index 8.
            0x1 if id == 1 => assert_eq!(payload.first(), Some(&0x88), "{payload:?}"),
            // DATA ending the answer's stream.
            0x0 if id == 1 && flags & 0x1 != 0 => return stream,
            _ => {}
        }
    }
}

#[test]
fn a_head_sent_a_line_a_second_is_cut_and_idle_connections_close() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let store = format!("file:{}", dir.path().join("log").display());
    let extra = ["--workers", "1", "--header-timeout-secs", "3", "--idle-timeout-secs", "2"];
    let server = Server::start(&manifest, &store, &extra);
    let address = server.address().to_string();
    let (slow, h1, h2) = std::thread::scope(|scope| {
        let slow = scope.spawn(|| slow_head(&address));
        let h1 = scope.spawn(|| until_closed(idle_http1(&address)));
        let h2 = scope.spawn(|| until_closed(idle_http2(&address)));
        (slow.join().unwrap(), h1.join().unwrap(), h2.join().unwrap())
    });
    let ((cut_after, lines), h1_idle, h2_idle) = (slow, h1, h2);
    eprintln!(
        "a head sent a line a second: cut after {cut_after:?} ({lines} lines); idle keep-alive closed after {h1_idle:?} (HTTP/1.1), {h2_idle:?} (HTTP/2)"
    );
    assert!(lines >= 1, "the head was still arriving when it was cut");
    // Cut by the 3 s header timeout and the 2 s idle one: not at once, not after minutes.
    for took in [cut_after, h1_idle, h2_idle] {
        assert!(took > Duration::from_secs(1) && took < Duration::from_secs(30), "{took:?}");
    }
    let header = metric(&server, r#"tollgate_http_connections_closed_total{reason="header-timeout"}"#);
    let idle = metric(&server, r#"tollgate_http_connections_closed_total{reason="idle-timeout"}"#);
    assert!(header >= Some(1.0) && idle >= Some(2.0), "header {header:?}, idle {idle:?}");
    // A head over 16 KiB is refused, not buffered.
    let mut big = TcpStream::connect(server.address()).unwrap();
    big.write_all(
        format!("GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-big: {}\r\n\r\n", "x".repeat(20 << 10)).as_bytes(),
    )
    .unwrap();
    let mut answer = String::new();
    big.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = big.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // The node still answers.
    assert_eq!(server.get("/healthz").status, 200);
    let (code, err) = server.terminate();
    assert_eq!(code, 0, "{err}");
}

/// An HTTP/2 frame's bytes.
fn h2_bytes(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

#[test]
fn sigterm_lets_requests_in_flight_finish_over_http1_and_http2() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let store = format!("file:{}", dir.path().join("log").display());
    let server = Server::start(&manifest, &store, &["--workers", "2"]);
    let body = command("o1", json!({"open": {"currency": "EUR"}}));
    let (head, tail) = body.as_bytes().split_at(body.len() / 2);

    // HTTP/1.1: the head and half the body.
    let mut h1 = TcpStream::connect(server.address()).unwrap();
    let request =
        format!("POST /v1/commands/account/one HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\r\n", body.len());
    h1.write_all(request.as_bytes()).unwrap();
    h1.write_all(head).unwrap();
    // HTTP/2: HEADERS (`:method POST` is static index 3) and half the body in a DATA frame.
    let mut h2 = TcpStream::connect(server.address()).unwrap();
    h2.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let path = b"/v1/commands/account/two";
    let mut block = vec![0x83, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path);
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"localhost");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_bytes(0x4, 0, 0, &[]));
    hello.extend(h2_bytes(0x1, 0x4, 1, &block));
    hello.extend(h2_bytes(0x0, 0, 1, head));
    h2.write_all(&hello).unwrap();
    while metric(&server, "tollgate_http_in_flight") < Some(3.0) {
        // Both bodies being read, and this scrape.
        std::thread::sleep(Duration::from_millis(20));
    }

    // SIGTERM: no new connection is taken (the listener is closed)...
    let pid = server.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    while TcpStream::connect(server.address()).is_ok() {
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...and the requests in flight finish.
    h1.write_all(tail).unwrap();
    h2.write_all(&h2_bytes(0x0, 0x1, 1, tail)).unwrap();
    let (status, text) = answer_on(&mut h1, Duration::from_secs(60));
    assert_eq!(status, 200, "{text}");
    let mut answered = false;
    while let Some((kind, flags, id, payload)) = h2_frame(&mut h2) {
        match kind {
            0x4 if flags & 0x1 == 0 => h2.write_all(&h2_bytes(0x4, 0x1, 0, &[])).unwrap(),
            // PING (the server's graceful shutdown sends one): answered, as a client must.
            0x6 if flags & 0x1 == 0 => h2.write_all(&h2_bytes(0x6, 0x1, 0, &payload)).unwrap(),
            0x1 if id == 1 => {
                assert_eq!(payload.first(), Some(&0x88), "`:status 200`: {payload:?}");
                answered = true;
            }
            _ => {}
        }
    }
    assert!(answered, "the HTTP/2 request was answered before the connection closed");
    let (code, err) = server.terminate_sent();
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["stats", &manifest, "--store", &store]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("commands accepted      2\n"), "{out}");
}

/// The status of the answer waiting on `stream` (0: none within `wait`), and its text.
fn answer_on(stream: &mut TcpStream, wait: Duration) -> (u16, String) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut text = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buffer) {
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buffer[..n]);
        if text.windows(4).any(|w| w == b"\r\n\r\n") && text.ends_with(b"}") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&text).into_owned();
    let status = text.strip_prefix("HTTP/1.1 ").and_then(|t| t.get(..3)).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

#[test]
fn a_flood_of_large_bodies_is_refused_beyond_the_budget_and_its_memory_returned() {
    const FLOODERS: usize = 1_000;
    const THREADS: usize = 8;
    if !descriptors_for(FLOODERS as u64 + 512) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let store = format!("file:{}", dir.path().join("log").display());
    // A cap far above the flood: what bounds memory here is the body budget (64 MiB).
    let server = Server::start_limited(&manifest, &store, &["--workers", "2"], Some(4096));
    fund_alice(&server);
    let pid = server.pid();
    let before = memory_mib(pid, "VmRSS");

    // Each flooder declares 1 MiB and sends all but its last byte.
    let head = format!(
        "POST /v1/admissions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        1 << 20
    );
    let body = vec![b' '; (1 << 20) - 1];
    let flood: Vec<TcpStream> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (head, body, address) = (&head, &body, server.address());
                scope.spawn(move || {
                    (0..FLOODERS / THREADS)
                        .map(|_| {
                            let mut stream = TcpStream::connect(address).unwrap();
                            stream.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
                            // A refused flooder may be closed before it is done: fine.
                            let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
                            stream
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
    });
    let during = memory_mib(pid, "VmRSS");
    let held = metric(&server, "tollgate_http_body_bytes").unwrap();
    assert!(held <= (64 << 20) as f64, "{held} bytes of bodies held");
    // Whoever went past the budget was answered 503 at once; those within it wait for their
    // last byte until the body timeout (408).
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for mut stream in flood {
        let (status, text) = answer_on(&mut stream, Duration::from_secs(30));
        if status == 503 {
            assert!(text.contains("retry-after: 1"), "{text}");
            assert!(text.contains("NF_CONGESTION") && text.contains("bytes of request bodies"), "{text}");
        }
        *statuses.entry(status).or_default() += 1;
    }
    // Let go: nothing of the flood is held any more, and the memory it took is handed back
    // (by the allocator, within a second or two; waited for at most a minute).
    while metric(&server, "tollgate_http_body_bytes") != Some(0.0) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let given_back = Instant::now();
    while memory_mib(pid, "VmRSS") >= before + 64 && given_back.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (after, peak) = (memory_mib(pid, "VmRSS"), memory_mib(pid, "VmHWM"));
    eprintln!(
        "{FLOODERS} connections x 1 MiB - 1 of body: RSS {before} MiB before, {during} MiB during (peak {peak} MiB), {after} MiB after; answers {statuses:?}"
    );
    assert!(statuses.get(&503).copied().unwrap_or(0) >= FLOODERS / 2, "{statuses:?}");
    assert!(statuses.keys().all(|s| [503, 408].contains(s)), "{statuses:?}");
    // Unbounded, the flood added ~1 GiB and kept it.
    assert!(peak < before + 384, "peak {peak} MiB, from {before} MiB");
    assert!(after < before + 64, "{after} MiB after, from {before} MiB");
    // The node answers as before.
    let (status, _) = timed(&server.base, "/v1/admissions", Some(&admission("after-flood")));
    assert_eq!(status, 200);
    let (code, err) = server.terminate();
    assert_eq!(code, 0, "{err}");
}

/// Whether h2load is here; under `CI=true` it must be (`.ci/run` installs it).
fn h2load_available() -> bool {
    if std::process::Command::new("h2load").arg("--version").output().is_ok() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "h2load is missing and CI=true");
    eprintln!("skipped: needs h2load (apt-get install nghttp2-client)");
    false
}

#[test]
fn http2_streams_of_one_connection_share_the_body_budget() {
    if !h2load_available() {
        return;
    }
    const REQUESTS: usize = 256;
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let store = format!("file:{}", dir.path().join("log").display());
    let server = Server::start(&manifest, &store, &["--workers", "2", "--body-budget-mib", "16"]);
    let pid = server.pid();
    let before = memory_mib(pid, "VmRSS");
    let body = dir.path().join("body");
    std::fs::write(&body, vec![b' '; (1 << 20) - 1]).unwrap();
    // Two connections, 128 streams each at once, every stream sending 1 MiB - 1.
    let out = std::process::Command::new("h2load")
        .args(["-n", &REQUESTS.to_string(), "-c", "2", "-m", "128", "-d"])
        .arg(&body)
        .args(["-H", "content-type: application/json", &format!("{}/v1/admissions", server.base)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let counts: Vec<usize> = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("status codes: "))
        .unwrap_or_else(|| panic!("{text}"))
        .split(", ")
        .map(|c| c.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    let (client_errors, server_errors) = (counts[2], counts[3]);
    while metric(&server, "tollgate_http_body_bytes") != Some(0.0) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (after, peak) = (memory_mib(pid, "VmRSS"), memory_mib(pid, "VmHWM"));
    eprintln!(
        "HTTP/2, {REQUESTS} streams x 1 MiB - 1 over 2 connections, 16 MiB budget: {server_errors} answered 503, {client_errors} read (400: not an admission); RSS {before} MiB before, peak {peak} MiB, {after} MiB after"
    );
    assert_eq!(client_errors + server_errors, REQUESTS, "every stream answered: {text}");
    assert!(server_errors > 0, "the budget refused some: {text}");
    let refused = metric(&server, r#"tollgate_http_requests_total{route="/v1/admissions",method="POST",status="503"}"#);
    assert_eq!(refused, Some(server_errors as f64));
    // Unbounded, 256 MiB of bodies would have been held at once.
    assert!(peak < before + 192, "peak {peak} MiB, from {before} MiB");
    let (code, err) = server.terminate();
    assert_eq!(code, 0, "{err}");
}

/// A nats-server on a free loopback port whose `max_payload` lets through payloads larger
/// than the node takes; killed on drop.
struct BigPayloadNats {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl BigPayloadNats {
    fn start_or_skip() -> Option<BigPayloadNats> {
        if std::process::Command::new("nats-server").arg("--version").output().is_err() {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "nats-server is missing and CI=true");
            eprintln!("skipped: needs nats-server (apt-get install nats-server)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = tollgate_store::testing::free_port().unwrap();
        let config = dir.path().join("nats.conf");
        std::fs::write(&config, format!("listen: 127.0.0.1:{port}\nmax_payload: 4MB\n")).unwrap();
        let child = std::process::Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("nats://127.0.0.1:{port}");
        // Up once it accepts a connection (the test harness's timeout bounds the wait).
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(BigPayloadNats { child, url, _dir: dir })
    }
}

impl Drop for BigPayloadNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_nats_payload_over_the_http_limit_is_refused_as_an_http_body_is() {
    let Some(nats) = BigPayloadNats::start_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let store = format!("file:{}", dir.path().join("log").display());
    let server = Server::start(&manifest, &store, &["--nats", &nats.url, "--workers", "1"]);
    fund_alice(&server);
    let peer = crate::lattice::Peer::connect(&nats.url);
    let padded =
        admission("big").replace('}', &format!(r#", "pad": "{}"}}"#, "x".repeat(tollgate_serve::MAX_BODY_BYTES)));
    let (refused, code) = peer.request("tollgate.served.admit", &padded);
    assert_eq!(
        (code.as_deref(), refused["cause"].as_str()),
        (Some("413"), Some("REQUEST_BODY_TOO_LARGE")),
        "{refused}"
    );
    let over_http = server.post("/v1/admissions", &padded);
    assert_eq!((over_http.status, &over_http.body), (413, &refused), "answered as the HTTP API answers it");
    let (granted, code) = peer.request("tollgate.served.admit", &admission("small"));
    assert_eq!(code, None, "{granted}");
    assert!(granted["granted"].is_object(), "{granted}");
    let (code, err) = server.terminate();
    assert_eq!(code, 0, "{err}");
}

/// A manifest with the log-flooder fixture: a `{"log": {"mib": N}}` command passes the same
/// 64 KiB line to `wasi:logging` N x 16 times, holding its worker until the wall-clock
/// backstop ends the call.
/// A guest that spins when told to, with the largest CPU cap a manifest may give: since host
/// imports have budgets of their own, spinning on its own fuel is what holds a worker longest.
fn spinner_manifest(dir: &Path) -> String {
    let path = dir.join("spin.toml");
    let text = format!(
        "[limits]\ncpu_ms = {}\n\n[actors.misbehaving]\nkind = \"aggregate\"\nfile = \"{}\"\n",
        tollgate_host::engine::MAX_CPU_MS,
        actor(MISBEHAVING)
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Sends one spinning request per key, each on its own thread (answered whenever its call
/// ends, or never if the server stops first), and waits until all are in flight.
fn stick(server: &Server, keys: &[&str]) -> Vec<std::thread::JoinHandle<u16>> {
    let held: Vec<_> = keys
        .iter()
        .map(|key| {
            let url = format!("{}/v1/commands/misbehaving/{key}", server.base);
            std::thread::spawn(move || {
                let hostile = command("stick", json!("spin"));
                fresh_client().post(url).send(hostile).map_or(0, |r| r.status().as_u16())
            })
        })
        .collect();
    while metric(server, "tollgate_http_in_flight") < Some(keys.len() as f64) {
        std::thread::sleep(Duration::from_millis(20));
    }
    held
}

fn ok_on(base: &str, key: &str, id: &str) -> (u16, Duration) {
    timed(base, &format!("/v1/commands/misbehaving/{key}"), Some(&command(id, json!("ok"))))
}

#[test]
fn workers_stuck_on_hostile_requests_hold_no_other_keys() {
    const GOOD_KEYS: usize = 32;
    let dir = tempfile::tempdir().unwrap();
    let manifest = spinner_manifest(dir.path());
    let store = format!("file:{}", dir.path().join("log").display());
    let server = Server::start(&manifest, &store, &["--workers", "4"]);
    let stuck = stick(&server, &["bad-0", "bad-1", "bad-2"]);
    let started = Instant::now();
    let base = server.base.clone();
    // Four clients, each its share of the other keys, one request after another.
    let answers: Vec<(u16, Duration)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let base = &base;
                scope.spawn(move || {
                    (c..GOOD_KEYS).step_by(4).map(|k| ok_on(base, &format!("good-{k}"), "ok")).collect::<Vec<_>>()
                })
            })
            .collect();
        clients.into_iter().flat_map(|c| c.join().unwrap()).collect()
    });
    let longest = answers.iter().map(|(_, took)| *took).max().unwrap();
    let all_answered = started.elapsed();
    let still_stuck = metric(&server, "tollgate_workers_stuck").unwrap_or(0.0);
    let rerouted = metric(&server, "tollgate_worker_reroutes_total").unwrap_or(0.0);
    eprintln!(
        "3 of 4 workers stuck on hostile requests: {GOOD_KEYS} other keys answered in {all_answered:?}, the longest held {longest:?}; {rerouted} keys rerouted, {still_stuck} workers still stuck"
    );
    assert!(answers.iter().all(|(status, _)| *status == 200), "{answers:?}");
    // A spinning worker holds its call up to its CPU cap (60 s of fuel): the keys queued
    // behind it are not held that long.
    assert!(longest < Duration::from_secs(10), "a key was held {longest:?}");
    // Killed: the hostile calls are not waited for.
    drop(server);
    for thread in stuck {
        thread.join().unwrap();
    }
}

#[test]
fn sigterm_with_stuck_workers_exits_after_the_grace_period_and_records_the_work_done() {
    const DONE: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let manifest = spinner_manifest(dir.path());
    let store = format!("file:{}", dir.path().join("log").display());
    let server = Server::start(&manifest, &store, &["--workers", "4", "--grace-secs", "2"]);
    for k in 0..DONE {
        assert_eq!(ok_on(&server.base, &format!("done-{k}"), "ok").0, 200);
    }
    let stuck = stick(&server, &["bad-0", "bad-1"]);
    let start = Instant::now();
    let (code, err) = server.terminate();
    let took = start.elapsed();
    eprintln!("SIGTERM with 2 workers stuck: exited {code} after {took:?}");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("2 requests were still in flight"), "{err}");
    // The spinning calls would have held it for their 60 s CPU cap.
    assert!(took < Duration::from_secs(20), "{took:?}");
    for thread in stuck {
        assert_ne!(thread.join().unwrap(), 200, "a stuck request was not answered as done");
    }
    let (code, out, err) = run(&["stats", &manifest, "--store", &store]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("counters of 1 recorded runs"), "{out}");
    assert!(out.contains(&format!("commands accepted      {DONE}\n")), "{out}");
}

#[test]
fn the_connection_flags_are_checked_against_the_descriptor_limit() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let store = format!("file:{}", dir.path().join("log").display());
    let script = format!(
        "ulimit -n 1024 && exec \"$0\" serve {manifest} --store {store} --listen 127.0.0.1:0 --workers 4 --max-connections 5000"
    );
    let out = std::process::Command::new("sh").args(["-c", &script, env!("CARGO_BIN_EXE_tollgate")]).output().unwrap();
    let (code, _, err) = crate::output(out);
    assert_eq!(code, 1);
    assert!(err.contains("--max-connections 5000 is over") && err.contains("920"), "{err}");
    let script = format!("ulimit -n 100 && exec \"$0\" serve {manifest} --store {store} --listen 127.0.0.1:0");
    let out = std::process::Command::new("sh").args(["-c", &script, env!("CARGO_BIN_EXE_tollgate")]).output().unwrap();
    let (code, _, err) = crate::output(out);
    assert_eq!(code, 1);
    assert!(err.contains("the descriptor limit (`ulimit -n`) is 100"), "{err}");
}
