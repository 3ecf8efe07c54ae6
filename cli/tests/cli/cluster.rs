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
