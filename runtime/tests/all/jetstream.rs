//! The runtime over NATS JetStream: concurrent writers from two processes, and edge nodes
//! that keep admitting while cut off from NATS.

use crate::edge::loader;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tollgate_billing_model::account::{AccountCommand, Money};
use tollgate_billing_model::pricing::PriceTerm;
use tollgate_host::aggregate::Outcome;
use tollgate_host_test::fixtures::{self, PREPAID_ACCOUNT};
use tollgate_runtime::quota::{EdgeDecision, EdgeNode, QuotaPolicy, reap_expired_grants};
use tollgate_runtime::{Journal, Manifest, Runtime};
use tollgate_store::NatsOptions;
use tollgate_store::testing::{NatsServer, Partition};

/// The core: just the account aggregate.
pub(crate) fn core_manifest() -> Manifest {
    let text = format!(
        "[actors.account]\nkind = \"aggregate\"\nfile = {:?}\n",
        fixtures::actor_path(PREPAID_ACCOUNT).display().to_string()
    );
    Manifest::parse(std::path::Path::new("core.toml"), &text, std::path::Path::new(".")).unwrap()
}

fn connect_with(url: &str, options: NatsOptions) -> Runtime {
    Runtime::open(&core_manifest(), &mut loader(), Journal::connect_nats(url, options).unwrap()).unwrap()
}

fn connect(url: &str) -> Runtime {
    connect_with(url, NatsOptions::default())
}

/// For the node behind the partition: short requests, so it notices within a fraction of a
/// second that it is cut off (the others keep the default, patient under a loaded CI).
fn connect_edge(url: &str) -> Runtime {
    connect_with(url, NatsOptions { request_timeout: Duration::from_millis(500), ..NatsOptions::default() })
}

pub(crate) fn execute(rt: &mut Runtime, key: &str, id: &str, command: &AccountCommand) -> Outcome {
    let c = rt.command("account", key, id, command).unwrap();
    rt.execute(&c).unwrap()
}

pub(crate) fn open_account(rt: &mut Runtime, key: &str, balance: i64) {
    let open = AccountCommand::Open { currency: "EUR".into(), overdraft_limit: 0 };
    assert!(matches!(execute(rt, key, &format!("{key}/open"), &open), Outcome::Accepted(_)));
    let top_up = AccountCommand::TopUp { amount: Money::new(balance, "EUR") };
    assert!(matches!(execute(rt, key, &format!("{key}/top-up"), &top_up), Outcome::Accepted(_)));
}

const CHILD_ENV: &str = "TOLLGATE_RESERVER_CHILD";
const TASKS: usize = 4;
const RESERVES_PER_TASK: usize = 25;

/// Runs only as a child of [`two_processes_never_grant_more_than_the_balance`]: `TASKS`
/// threads, each with its own runtime and connection, reserve one unit at a time. The runtimes
/// connect first (a failure ends the child before it says `READY`); the threads start on the
/// parent's `GO`, so both processes' writers contend from the first reserve rather than one
/// process finishing before the other starts.
#[test]
fn reserver_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let (url, process) = spec.split_once(' ').unwrap();
    let runtimes: Vec<Runtime> = (0..TASKS).map(|_| connect(url)).collect();
    println!("READY");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "GO", "the parent starts the race");
    let threads: Vec<_> = runtimes
        .into_iter()
        .enumerate()
        .map(|(task, mut rt)| {
            let process = process.to_string();
            std::thread::spawn(move || {
                let mut granted = 0;
                for i in 0..RESERVES_PER_TASK {
                    let id = format!("p{process}-t{task}-{i}");
                    match execute(&mut rt, "hot", &id, &reserve_one(&id)) {
                        Outcome::Accepted(_) => granted += 1,
                        Outcome::Rejected(r) => assert_eq!(r.code, "insufficient-funds", "{}", r.message),
                    }
                }
                (granted, rt.stats().occ_conflicts)
            })
        })
        .collect();
    let (mut granted, mut conflicts) = (0u64, 0u64);
    for t in threads {
        let (g, c) = t.join().unwrap();
        granted += g;
        conflicts += c;
    }
    println!("RESULT {granted} {conflicts}");
}

/// Eight writers in two processes race on one account; whatever the interleaving (how many
/// appends lose a race depends on scheduling, so it is reported, not asserted), exactly the
/// affordable units are granted.
#[test]
fn two_processes_never_grant_more_than_the_balance() {
    let Some(server) = NatsServer::start_or_skip() else { return };
    let mut rt = connect(&server.url);
    open_account(&mut rt, "hot", 600);
    let mut children: Vec<_> = (0..2)
        .map(|p| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "jetstream::reserver_child", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, format!("{} {p}", server.url))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut outputs: Vec<_> = children.iter_mut().map(|c| BufReader::new(c.stdout.take().unwrap())).collect();
    for out in &mut outputs {
        // libtest may print the test's name on the same line.
        let mut line = String::new();
        while !line.contains("READY") {
            line.clear();
            assert_ne!(out.read_line(&mut line).unwrap(), 0, "child ended before it was ready");
        }
    }
    for child in &mut children {
        writeln!(child.stdin.as_mut().unwrap(), "GO").unwrap();
    }
    let (mut granted, mut conflicts) = (0u64, 0u64);
    for (mut child, mut out) in children.into_iter().zip(outputs) {
        let mut text = String::new();
        out.read_to_string(&mut text).unwrap();
        assert!(child.wait().unwrap().success(), "child failed: {text}");
        let line = text
            .lines()
            .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r.trim()))
            .unwrap_or_else(|| panic!("no result in {text}"));
        let nums: Vec<u64> = line.split(' ').map(|n| n.parse().unwrap()).collect();
        granted += nums[0];
        conflicts += nums[1];
    }
    let requested = (2 * TASKS * RESERVES_PER_TASK) as u64;
    println!(
        "2 processes x {TASKS} tasks: {requested} one-unit reserves, {granted} granted, {conflicts} OCC conflicts"
    );
    assert_eq!(granted, requested.min(60), "granted = min(balance / price, requested)");
    let account = rt.reload_account("hot").unwrap().unwrap();
    assert_eq!((account.held, account.available(), account.reservations.len()), (600, 0, 60));
}

fn reserve_one(id: &str) -> AccountCommand {
    AccountCommand::Reserve {
        reservation_id: id.into(),
        units: 1,
        plan: vec![PriceTerm::PerUnit { offer: String::new(), unit_price: 10 }],
        currency: "EUR".into(),
        validity_ms: 600_000,
        offer: String::new(),
    }
}

/// The race made certain: a runtime whose cached state is behind the log loses its append,
/// reloads and retries; a command another writer already committed is answered, not redone.
#[test]
fn a_writer_behind_the_log_reloads_and_never_applies_a_command_twice() {
    let Some(server) = NatsServer::start_or_skip() else { return };
    let mut behind = connect(&server.url);
    open_account(&mut behind, "hot", 100);
    let mut ahead = connect(&server.url);
    assert!(matches!(execute(&mut ahead, "hot", "r-1", &reserve_one("r-1")), Outcome::Accepted(_)));

    assert!(matches!(execute(&mut behind, "hot", "r-2", &reserve_one("r-2")), Outcome::Accepted(_)));
    assert_eq!(behind.stats().occ_conflicts, 1, "the stale append lost and was retried");
    // `ahead` has not seen r-2 either: the store knows the command id and answers the original.
    let Outcome::Accepted(again) = execute(&mut ahead, "hot", "r-2", &reserve_one("r-2")) else {
        panic!("a repeated command is answered from the log")
    };
    assert_eq!(again.len(), 1);
    assert_eq!(ahead.stats().duplicates, 1);

    let account = behind.reload_account("hot").unwrap().unwrap();
    assert_eq!((account.held, account.reservations.len()), (20, 2));
}

fn admit_n(edge: &mut EdgeNode, prefix: &str, n: usize, now: u64) -> (usize, usize) {
    let mut admitted = 0;
    for i in 0..n {
        match edge.admit("sub", &format!("{prefix}-{i}"), 1, now).unwrap() {
            EdgeDecision::Admitted { .. } => admitted += 1,
            EdgeDecision::Denied { .. } => {}
        }
    }
    (admitted, n - admitted)
}

fn used_value(edge: &EdgeNode) -> i64 {
    edge.grants().values().map(|g| g.used as i64 * g.unit_price).sum()
}

fn unpaid(edge: &EdgeNode) -> i64 {
    edge.grants().values().map(|g| g.settled.expect("settled").1).sum()
}

/// A nats-server, a path to it that can be cut, and the core with account `sub` at `balance`.
fn partitioned(balance: i64) -> Option<(NatsServer, Partition, Runtime)> {
    let server = NatsServer::start_or_skip()?;
    let partition = Partition::new(&server.url).unwrap();
    let mut core = connect(&server.url);
    open_account(&mut core, "sub", balance);
    Some((server, partition, core))
}

/// Settles every grant of `edge` once it reaches the core again (the client reconnects).
fn settle_after_heal(edge: &mut EdgeNode, now: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = edge.settle(now, true).unwrap();
        if report.pending == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the node never reached the core again: {report:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_partitioned_node_admits_within_its_grants_and_converges_on_reconnect() {
    let Some((server, partition, mut core)) = partitioned(1_000) else { return };
    let policy = QuotaPolicy {
        grant_units: 30,
        unit_price: 10,
        currency: "EUR".into(),
        validity_ms: 10_000,
        clock_skew_ms: 2_000,
    };
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let local = |d: &tempfile::TempDir| Journal::open(&format!("file:{}", d.path().display())).unwrap();
    let mut a = EdgeNode::open("a", connect_edge(&partition.url), local(&dirs.0), policy.clone()).unwrap();
    let mut b = EdgeNode::open("b", connect(&server.url), local(&dirs.1), policy.clone()).unwrap();
    let t0 = 1_000_000;
    // Node a's clock runs 500 ms behind the core's: within the 2 s margin.
    let a_clock = |core_ms: u64| core_ms - 500;

    assert_eq!(admit_n(&mut a, "a0", 10, a_clock(t0)), (10, 0));
    assert_eq!(admit_n(&mut b, "b0", 10, t0), (10, 0));
    let exposure_at_cut = a.exposure();
    assert_eq!(exposure_at_cut, 300, "one grant of 30 units at 10");

    partition.cut();
    // Cut off, a admits what its grant still covers, and no more.
    assert_eq!(admit_n(&mut a, "a1", 25, a_clock(t0 + 1_000)), (20, 5));
    let pending = a.settle(a_clock(t0 + 1_000), true).unwrap();
    assert!(pending.unreachable.is_some() && pending.pending == 1, "{pending:?}");

    // b settles; later the core reaps a's grant after validity + margin, and b spends the
    // money it freed.
    assert_eq!(b.settle(t0 + 5_000, true).unwrap().settled, 1);
    core.clock().set_ms(t0 + 9_600);
    assert!(
        reap_expired_grants(&mut core, &["sub"], policy.clock_skew_ms).unwrap().is_empty(),
        "not within the margin"
    );
    core.clock().set_ms(t0 + 11_600);
    assert_eq!(
        reap_expired_grants(&mut core, &["sub"], policy.clock_skew_ms).unwrap(),
        a.grants().keys().take(1).cloned().collect::<Vec<_>>()
    );
    let (b_admitted, b_denied) = admit_n(&mut b, "b1", 100, t0 + 12_000);
    assert_eq!((b_admitted, b_denied), (90, 10), "b gets the 900 left, in grants of 30");
    assert_eq!(b.settle(t0 + 12_000, true).unwrap().settled, 3);

    partition.heal();
    settle_after_heal(&mut a, a_clock(t0 + 13_000));

    // Converged: every grant settled, nothing held at the core, both sides agree on money.
    assert_eq!((a.exposure(), b.exposure()), (0, 0));
    let account = core.reload_account("sub").unwrap().unwrap();
    assert!(account.reservations.is_empty() && account.held == 0);
    assert!(account.available() >= 0, "the balance never went below zero");
    let delivered = used_value(&a) + used_value(&b);
    let charged = 1_000 - account.balance;
    let overspend = delivered - charged;
    println!(
        "partition: delivered {delivered}, charged {charged}, overspend {overspend}, grants outstanding at the cut {exposure_at_cut}"
    );
    assert_eq!(overspend, unpaid(&a) + unpaid(&b), "the nodes account for every unpaid unit");
    assert!(overspend <= exposure_at_cut, "overspend {overspend} > outstanding grants {exposure_at_cut}");
    assert_eq!(overspend, 300, "a's grant was released and spent by b before a came back");

    // A repeated request after all this is answered from a's log, using nothing.
    assert!(matches!(a.admit("sub", "a0-0", 1, a_clock(t0 + 13_000)).unwrap(), EdgeDecision::Admitted { .. }));
    let (used, grants) = (used_value(&a), a.grants().clone());
    drop(a);
    let reopened = EdgeNode::open("a", connect(&server.url), local(&dirs.0), policy).unwrap();
    assert_eq!((used_value(&reopened), reopened.grants()), (used, &grants), "a's log rebuilds the same grants");
}

#[test]
fn a_short_partition_costs_nothing() {
    let Some((_server, partition, core)) = partitioned(300) else { return };
    let policy = QuotaPolicy {
        grant_units: 50,
        unit_price: 3,
        currency: "EUR".into(),
        validity_ms: 60_000,
        clock_skew_ms: 5_000,
    };
    let dir = tempfile::tempdir().unwrap();
    let local = Journal::open(&format!("file:{}", dir.path().display())).unwrap();
    let mut a = EdgeNode::open("a", connect_edge(&partition.url), local, policy).unwrap();
    assert_eq!(admit_n(&mut a, "x", 5, 1_000), (5, 0));
    partition.cut();
    assert_eq!(admit_n(&mut a, "y", 50, 2_000), (45, 5), "the grant's 50 units, then nothing");
    partition.heal();
    settle_after_heal(&mut a, 3_000);
    let account = core.reload_account("sub").unwrap().unwrap();
    assert_eq!((account.balance, account.held), (150, 0), "50 units at 3 charged once");
    assert_eq!(unpaid(&a), 0);
}
