//! `examples/cluster/`: its three server configs, moved to free ports and temporary store
//! directories, form a cluster that the README's walk-through runs a node against.

use crate::{output, root, tollgate};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tollgate_store::testing::{cluster_binary, free_port};

/// The example's servers, killed on drop.
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The fenced block of `examples/cluster/README.md` that starts with `starts`.
fn readme_block(starts: &str) -> String {
    let text = std::fs::read_to_string(root().join("examples/cluster/README.md")).unwrap();
    text.split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.starts_with(starts))
        .unwrap()
        .into()
}

/// Runs the walk-through's `tollgate run` (its requests, the heredoc) against `store`.
fn run_requests(store: &str) -> (i32, String, String) {
    let block = readme_block("for n in 1 2 3");
    let requests = block.split("<<'REQUESTS'\n").nth(1).unwrap().split("REQUESTS\n").next().unwrap();
    let mut child = tollgate()
        .args(["run", "examples/cluster/edge.toml", "--store", store])
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(requests.as_bytes()).unwrap();
    output(child.wait_with_output().unwrap())
}

/// [`run_requests`] until it succeeds, for at most a minute (elections after a start or a
/// lost server take seconds); says how long it took.
fn run_when_ready(store: &str) -> (i32, String, String) {
    let start = Instant::now();
    loop {
        let (code, out, err) = run_requests(store);
        if code == 0 || start.elapsed() > Duration::from_secs(60) {
            println!("the walk-through ran after {:?}", start.elapsed());
            return (code, out, err);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_example_cluster_keeps_a_node_running_when_a_server_is_lost() {
    let bin = match cluster_binary() {
        Ok(bin) => bin,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("CI=true: {why}"),
        Err(why) => return tollgate_store::testing::record_skip(&why),
    };
    let dir = tempfile::tempdir().unwrap();
    let (clients, routes): (Vec<u16>, Vec<u16>) = (0..3).map(|_| (free_port().unwrap(), free_port().unwrap())).unzip();
    let mut servers = Servers(Vec::new());
    for n in 1..=3 {
        let mut conf = std::fs::read_to_string(root().join(format!("examples/cluster/s{n}.conf"))).unwrap();
        // Through placeholders, so that a free port never matches an example port's text.
        for i in 0..3 {
            conf = conf.replace(&format!("127.0.0.1:{}", 4222 + i), &format!("@client{i}@"));
            conf = conf.replace(&format!("127.0.0.1:{}", 6222 + i), &format!("@route{i}@"));
        }
        assert_eq!(conf.matches('@').count(), 2 * 4, "the example's ports moved: {conf}");
        for i in 0..3 {
            conf = conf.replace(&format!("@client{i}@"), &format!("127.0.0.1:{}", clients[i]));
            conf = conf.replace(&format!("@route{i}@"), &format!("127.0.0.1:{}", routes[i]));
        }
        let conf = conf.replace("/tmp/tollgate-cluster", &dir.path().display().to_string());
        let path = dir.path().join(format!("s{n}.conf"));
        std::fs::write(&path, conf).unwrap();
        let log = std::fs::File::create(dir.path().join(format!("s{n}.log"))).unwrap();
        servers.0.push(Command::new(&bin).arg("-c").arg(&path).stdout(Stdio::null()).stderr(log).spawn().unwrap());
    }
    let store = format!("nats://{}", clients.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(","));

    // The servers listen at once but create streams only once they have elected a JetStream
    // leader among themselves: the first run is retried until then.
    let (code, out, err) = run_when_ready(&store);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[2].contains("\"granted\""), "{out}");

    let stats = |store: &str| {
        let manifest = root().join("examples/cluster/edge.toml").display().to_string();
        let (code, out, err) = crate::run(&["stats", &manifest, "--store", store]);
        assert_eq!(code, 0, "{err}");
        out
    };
    let before = stats(&store);
    assert!(before.contains("replication: 3 copies, leader s"), "{before}");
    assert_eq!(before.matches(" operations behind").count(), 2, "{before}");

    // One server lost: the node still runs (a repeat of the walk-through is answered from
    // the log, a new admission is granted), and the lost server shows in the stats.
    let _ = servers.0[0].kill();
    let _ = servers.0[0].wait();
    let (code, out, err) = run_when_ready(&store);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().nth(2).is_some_and(|l| l.contains("\"granted\"")), "{out}");
    let after = stats(&store);
    assert!(after.contains("replication: 3 copies"), "{after}");
}

/// The server leading the log's events stream, from `tollgate stats` (`leader sN`).
fn events_leader(store: &str) -> String {
    let manifest = root().join("examples/cluster/edge.toml").display().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, out, err) = crate::run(&["stats", &manifest, "--store", store]);
        let leader = out.lines().find_map(|l| l.strip_prefix("replication: 3 copies, leader ")).map(str::trim);
        match leader {
            Some(l) if code == 0 && l.starts_with('s') => return l.to_string(),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(250)),
            _ => panic!("no stream leader within a minute:\n{out}{err}"),
        }
    }
}

/// Streams and consumers the JetStream account of `store` holds.
fn jetstream_contents(rt: &tokio::runtime::Runtime, store: &str) -> (usize, usize) {
    rt.block_on(async {
        let servers: Vec<String> =
            store.trim_start_matches("nats://").split(',').map(|s| format!("nats://{s}")).collect();
        let client = async_nats::connect(servers).await.unwrap();
        let account = async_nats::jetstream::new(client).query_account().await.unwrap();
        (account.streams, account.consumers)
    })
}

#[test]
fn a_read_right_after_the_stream_leader_is_lost_waits_out_the_election_and_readers_create_nothing() {
    use tollgate_store::testing::NatsCluster;
    use tollgate_store::{NatsOptions, NatsStore, StoreError};
    let Some(mut cluster) = NatsCluster::start_or_skip(3) else { return };
    let store = cluster.url();
    let manifest = root().join("examples/cluster/edge.toml").display().to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let read_only = || rt.block_on(NatsStore::connect_read_only(&store, NatsOptions::default())).map(drop);

    // A cluster that has elected its JetStream meta leader answers that it holds no log.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match read_only() {
            Err(StoreError::Empty(_)) => break,
            Err(e) if Instant::now() < deadline => eprintln!("cluster not ready yet: {e}"),
            other => panic!("expected nothing to read: {other:?}"),
        }
    }
    // Every read-only command says so, and creates no stream, bucket or consumer.
    for args in [
        vec!["events", "account", "bob", "--store", &store],
        vec!["stats", &manifest, "--store", &store],
        vec!["kv", "balances", "bob", "--store", &store, "--manifest", &manifest],
        vec!["dead-letters", "balances", "--store", &store],
    ] {
        let (code, out, err) = crate::run(&args);
        assert!(
            code != 0 && err.contains("nothing to read") && err.contains("no tollgate log with prefix"),
            "{args:?}: {out}{err}"
        );
    }
    assert_eq!(jetstream_contents(&rt, &store), (0, 0), "a read-only command created streams or consumers");

    // A node writes the walk-through's requests with every stream on all three servers.
    let (code, out, err) = run_when_ready(&store);
    assert_eq!(code, 0, "{out}{err}");
    let (code, before, err) = crate::run(&["events", "account", "bob", "--store", &store]);
    assert_eq!(code, 0, "{err}");
    assert!(before.lines().count() >= 3, "{before}");

    // The events stream's leader is killed. At once, tried once each: a reader (a read-only
    // open and a read) and a node (a writable open, reads, appends) wait for the new leader.
    let leader = events_leader(&store);
    cluster.kill(&leader);
    let started = Instant::now();
    let ((events, events_took), (node, node_took)) = std::thread::scope(|s| {
        let events = s.spawn(|| (crate::run(&["events", "account", "bob", "--store", &store]), started.elapsed()));
        let node = s.spawn(|| (run_requests(&store), started.elapsed()));
        (events.join().unwrap(), node.join().unwrap())
    });
    println!(
        "right after the stream leader {leader} was killed: `tollgate events` answered in {:.1} s, `tollgate run` (open, repeat, a new admission) in {:.1} s",
        events_took.as_secs_f64(),
        node_took.as_secs_f64()
    );
    let (code, out, err) = events;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, before, "the same events");
    let (code, out, err) = node;
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().nth(2).is_some_and(|l| l.contains("\"granted\"")), "{out}");
    // Within the failover timeout (30 s), with room for the processes to start.
    for took in [events_took, node_took] {
        assert!(took < Duration::from_secs(45), "{took:?}");
    }
}
