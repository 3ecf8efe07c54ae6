//! The runtime over a three-server JetStream cluster with every stream at three replicas: the
//! stream leader killed under load, a server restarted and caught up, writers on different
//! servers, and a majority lost.

use crate::edge::loader;
use crate::jetstream::{core_manifest, execute, open_account};
use std::time::{Duration, Instant};
use tollgate_billing_model::account::{AccountCommand, Money};
use tollgate_host::aggregate::Outcome;
use tollgate_runtime::{Journal, Runtime};
use tollgate_store::testing::NatsCluster;
use tollgate_store::{NatsOptions, Replication};

/// Generous fail-over budget: an election on a loaded 2-core machine can take seconds; the
/// duplicate window (120 s) outlasts it, so a retried publish never lands twice.
fn patient() -> NatsOptions {
    NatsOptions { replicas: 3, failover_timeout: Duration::from_secs(60), ..NatsOptions::default() }
}

/// A runtime over `url`, once the cluster has elected the JetStream meta leader that creating
/// streams needs (the servers are up before they have met): retried, for at most a minute.
fn connect_when_ready(url: &str, options: NatsOptions) -> Runtime {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Journal::connect_nats(url, options.clone()) {
            Ok(journal) => return Runtime::open(&core_manifest(), &mut loader(), journal).unwrap(),
            Err(e) if Instant::now() < deadline => {
                eprintln!("cluster not ready yet: {e}");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => panic!("the cluster never became ready: {e}"),
        }
    }
}

fn replication(rt: &Runtime) -> Option<Replication> {
    let journal = rt.journal();
    journal.run("read replication", journal.store().replication()).ok().flatten()
}

/// Polls until `done` holds of the log's replication (at most a minute).
fn until(rt: &Runtime, what: &str, done: impl Fn(&Replication) -> bool) -> Replication {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = replication(rt).filter(|r| done(r)) {
            return r;
        }
        assert!(Instant::now() < deadline, "no {what} within a minute: {:?}", replication(rt));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn top_up(rt: &mut Runtime, id: &str) -> Result<Outcome, tollgate_runtime::RuntimeError> {
    let command = AccountCommand::TopUp { amount: Money::new(1, "EUR") };
    let c = rt.command("account", "alice", id, &command)?;
    rt.execute(&c)
}

#[test]
fn a_cluster_losing_its_stream_leader_under_load_loses_no_acknowledged_command() {
    const COMMANDS: usize = 300;
    const KILL_AT: usize = 100;
    let Some(mut cluster) = NatsCluster::start_or_skip(3) else { return };
    let mut rt = connect_when_ready(&cluster.url(), patient());
    open_account(&mut rt, "alice", 1_000);
    let before = until(&rt, "stream leader", |r| r.leader.is_some());
    assert_eq!((before.replicas, before.followers.len()), (3, 2), "{before:?}");

    // The leader is SIGKILLed once KILL_AT commands are acknowledged; the node goes on.
    let (mut acked, mut failed, mut stall) = (Vec::new(), Vec::new(), Duration::ZERO);
    let mut killed = String::new();
    let mut last = Instant::now();
    for i in 0..COMMANDS {
        if i == KILL_AT {
            killed = until(&rt, "stream leader", |r| r.leader.is_some()).leader.unwrap();
            cluster.kill(&killed);
        }
        let id = format!("t{i}");
        match top_up(&mut rt, &id) {
            Ok(Outcome::Accepted(_)) => {
                stall = stall.max(last.elapsed());
                last = Instant::now();
                acked.push(id);
            }
            Ok(Outcome::Rejected(r)) => panic!("{id} rejected: {}", r.message),
            Err(e) => failed.push(format!("{id}: {e}")),
        }
    }
    eprintln!(
        "fail-over after SIGKILL of leader {killed}: longest wait for an acknowledgement {stall:?}, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "within the fail-over budget no command fails: {failed:?}");
    let after = until(&rt, "new leader", |r| r.leader.as_ref().is_some_and(|l| *l != killed));
    eprintln!("new leader {:?}", after.leader);

    // The killed server comes back on its own store and catches up.
    cluster.restart(&killed).unwrap();
    until(&rt, "caught-up replicas", |r| {
        r.followers.len() == 2 && r.followers.iter().all(|f| f.current && !f.offline && f.lag == 0)
    });

    // Every acknowledged command is in the log exactly once, read through the restarted server.
    let reader = connect_when_ready(&cluster.server_url(&killed), patient());
    let journal = reader.journal();
    let events = journal.run("read alice", journal.store().read("account", "alice", 1)).unwrap();
    for id in &acked {
        assert_eq!(events.iter().filter(|e| e.command_id == *id).count(), 1, "{id}");
    }
    let account = reader.account("alice").unwrap().unwrap();
    assert_eq!(account.balance, 1_000 + COMMANDS as i64, "each top-up counted once");

    // Writers on two different servers race for one account: OCC still holds across the
    // cluster, so the money taken never exceeds the balance.
    let names = cluster.names();
    open_account(&mut rt, "bob", 100);
    let debits: Vec<usize> = std::thread::scope(|scope| {
        let writers: Vec<_> = names[..2]
            .iter()
            .map(|name| {
                let url = cluster.server_url(name);
                scope.spawn(move || {
                    let mut writer = connect_when_ready(&url, patient());
                    (0..80)
                        .filter(|i| {
                            let debit = AccountCommand::DirectDebit {
                                amount: Money::new(1, "EUR"),
                                description: "race".into(),
                            };
                            matches!(execute(&mut writer, "bob", &format!("{url}/{i}"), &debit), Outcome::Accepted(_))
                        })
                        .count()
                })
            })
            .collect();
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let bob = rt.reload_account("bob").unwrap().unwrap();
    assert_eq!((debits.iter().sum::<usize>(), bob.balance), (100, 0), "{debits:?}");
}

#[test]
fn a_cluster_without_a_majority_refuses_appends_with_an_error_and_recovers() {
    let Some(mut cluster) = NatsCluster::start_or_skip(3) else { return };
    let names = cluster.names();
    // Connected to the server that stays; short budgets, so the refusal comes soon.
    let quick = NatsOptions {
        replicas: 3,
        request_timeout: Duration::from_secs(1),
        failover_timeout: Duration::from_secs(3),
        ..NatsOptions::default()
    };
    let mut rt = connect_when_ready(&cluster.server_url(&names[0]), quick);
    open_account(&mut rt, "alice", 10);
    until(&rt, "stream leader", |r| r.leader.is_some());

    // One server lost: the other two are a majority and accept (once they have a leader,
    // if the lost server led).
    cluster.kill(&names[2]);
    commits_again(&mut rt, "minority-lost");

    // Two lost: no majority, so no append can commit. It fails, naming the store, within the
    // budget, rather than hanging.
    cluster.kill(&names[1]);
    let start = Instant::now();
    let refused = top_up(&mut rt, "no-majority").unwrap_err().to_string();
    eprintln!("without a majority an append failed after {:?}: {refused}", start.elapsed());
    assert!(refused.contains("nats://"), "{refused}");

    // A server back: a majority again, appends commit again.
    cluster.restart(&names[1]).unwrap();
    commits_again(&mut rt, "majority-back");
}

/// Top-ups until one commits (at most a minute): `prefix-1`, `prefix-2`, ...
fn commits_again(rt: &mut Runtime, prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 1.. {
        match top_up(rt, &format!("{prefix}-{n}")) {
            Ok(Outcome::Accepted(_)) => return,
            other => assert!(Instant::now() < deadline, "{prefix}: no append commits: {other:?}"),
        }
    }
}
