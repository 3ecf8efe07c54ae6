//! Deciding in batches, as a served node's worker does: the appends of several requests held
//! and written with one store call, decided in order on the states held, and nothing answered
//! as accepted whose events did not commit; and the primary's deliveries, a page at a time.

use crate::durable::top_up;
use crate::edge::{granted, loader, manifest, open, request};
use tollgate_billing_model::account::AccountCommand;
use tollgate_billing_model::balance::{BUCKET, BalanceView};
use tollgate_host::ActorKind;
use tollgate_host::aggregate::{Command, Outcome};
use tollgate_runtime::{Decision, Journal, Runtime};
use tollgate_store::{FileOptions, FileStore};

/// A runtime with the manifest's aggregates, rater and policy only, like a served node's
/// worker (projectors and process managers would not see held events).
fn worker(journal: Journal) -> Runtime {
    let full = manifest();
    let mut commands = full.clone();
    commands.actors.retain(|name, _| !matches!(full.kind(name), ActorKind::Projector | ActorKind::ProcessManager));
    Runtime::open(&commands, &mut loader(), journal).unwrap()
}

/// A runtime with every actor of the manifest, like a served node's primary (its projectors
/// and process managers deliver what workers wrote).
fn open_primary(journal: Journal) -> Runtime {
    Runtime::open(&manifest(), &mut loader(), journal).unwrap()
}

/// A durable embedded log and a clone of it whose writer counters the test reads.
fn durable(dir: &std::path::Path) -> (FileStore, Journal) {
    let store = FileStore::open_with(dir, FileOptions::default()).unwrap();
    let journal = Journal::with_store(&format!("file:{}", dir.display()), Box::new(store.clone())).unwrap();
    (store, journal)
}

fn account_events(journal: &Journal, account: &str) -> usize {
    journal.block_on(journal.store().read("account", account, 1)).unwrap().len()
}

#[test]
fn a_batch_is_decided_in_order_on_held_states_and_written_with_one_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let (store, journal) = durable(dir.path());
    let mut rt = worker(journal.clone());
    // 20 EUR cents: one 10-unit voice use (20) fits, nothing of a second one does.
    open(&mut rt, "ada", 20);
    open(&mut rt, "bob", 100);
    let (ada_before, bob_before) = (account_events(&journal, "ada"), account_events(&journal, "bob"));
    let before = store.stats();

    rt.begin_batch();
    let mut decisions = Vec::new();
    for (id, who) in [("r1", "ada"), ("r2", "bob"), ("r3", "ada")] {
        rt.begin_job();
        decisions.push(rt.admit(&request(id, who, "voice", 10, None)).unwrap());
    }
    assert_eq!(
        (account_events(&journal, "ada"), account_events(&journal, "bob")),
        (ada_before, bob_before),
        "nothing is in the log before the batch is written"
    );
    assert_eq!(store.stats(), before, "nothing was written either");
    let failed = rt.commit_batch();
    assert!(failed.is_empty(), "{failed:?}");

    let written = store.stats();
    assert_eq!(written.syncs - before.syncs, 1, "one fsync for the whole batch");
    assert_eq!(written.records - before.records, 2, "two reservations: r1 and r2");
    granted(&decisions[0]);
    granted(&decisions[1]);
    assert!(
        matches!(&decisions[2], Decision::Denied(_)),
        "r3 was decided after r1's hold, as one request at a time would be: {:?}",
        decisions[2]
    );
    assert_eq!(rt.account("ada").unwrap().unwrap().held, 20);
    assert_eq!(rt.stats().accepted, 6, "two opens, two top-ups, two reservations");

    // A repeat in a later batch is answered from the log: the same grant, nothing appended.
    rt.begin_batch();
    rt.begin_job();
    let again = rt.admit(&request("r1", "ada", "voice", 10, None)).unwrap();
    assert!(rt.commit_batch().is_empty());
    assert_eq!(format!("{again:?}"), format!("{:?}", decisions[0]));
    assert_eq!(account_events(&journal, "ada"), ada_before + 1);

    // The log as written reads back the same after a restart.
    drop(rt);
    drop(journal);
    drop(store);
    let (_, journal) = durable(dir.path());
    let rt = worker(journal);
    assert_eq!(rt.account("ada").unwrap().unwrap().held, 20);
    assert_eq!(rt.account("bob").unwrap().unwrap().held, 20);
}

#[test]
fn a_job_whose_append_loses_a_race_is_answered_again_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, journal) = durable(dir.path());
    let mut rt = worker(journal.clone());
    let mut other = worker(journal.clone());
    open(&mut rt, "ada", 20);
    open(&mut rt, "bob", 100);
    let accepted = rt.stats().accepted;

    rt.begin_batch();
    rt.begin_job();
    granted(&rt.admit(&request("r1", "bob", "voice", 10, None)).unwrap());
    rt.begin_job();
    // ada can afford one use: granted on the state held...
    granted(&rt.admit(&request("r2", "ada", "voice", 10, None)).unwrap());
    // ...while another runtime over the store spends ada's money first.
    granted(&other.admit(&request("elsewhere", "ada", "voice", 10, None)).unwrap());
    let failed = rt.commit_batch();
    assert_eq!(failed.into_iter().collect::<Vec<_>>(), [1], "only ada's job lost its append");
    assert_eq!(rt.stats().accepted, accepted + 1, "the lost job's counters were taken back");
    assert_eq!(rt.stats().occ_conflicts, 1);

    // Nothing of r2 is in the log; answered again, from the store, it is denied.
    let ada = rt.account("ada").unwrap().unwrap();
    assert_eq!(ada.held, 20, "only the other runtime's hold");
    let again = rt.admit(&request("r2", "ada", "voice", 10, None)).unwrap();
    assert!(matches!(again, Decision::Denied(_)), "{again:?}");
    assert_eq!(rt.account("bob").unwrap().unwrap().held, 20, "bob's job committed");
    assert_eq!(*rt.stats().result_codes.get("success").unwrap(), 1, "r2's first grant is not counted");
}

#[test]
fn a_batch_the_store_refuses_commits_nothing_and_fails_every_job() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_store, journal) = durable(dir.path());
        let mut rt = worker(journal);
        open(&mut rt, "ada", 100);
    }
    let url = format!("file:{}", dir.path().display());
    let journal = Journal::open_read_only(&url, &Default::default()).unwrap();
    let mut rt = worker(journal.clone());
    let before = account_events(&journal, "ada");
    rt.begin_batch();
    rt.begin_job();
    assert!(matches!(top_up(&mut rt, "ada", "t2", 5), Outcome::Accepted(_)), "decided on the state held");
    rt.begin_job();
    granted(&rt.admit(&request("r1", "ada", "voice", 10, None)).unwrap());
    let failed = rt.commit_batch();
    assert_eq!(failed.into_iter().collect::<Vec<_>>(), [0, 1], "no job's append committed");
    assert_eq!(account_events(&journal, "ada"), before);
    let ada = rt.account("ada").unwrap().unwrap();
    assert_eq!((ada.balance, ada.held), (100, 0), "the held events are forgotten with the key");
    assert_eq!(rt.stats().accepted, 0);
}

#[test]
fn a_page_of_deliveries_is_committed_and_acknowledged_with_a_sync_each() {
    let dir = tempfile::tempdir().unwrap();
    let (store, journal) = durable(dir.path());
    // The primary: the balance projector and the session manager read what a worker wrote.
    let mut primary = open_primary(journal.clone());
    let mut rt = worker(journal.clone());
    let accounts: Vec<String> = (0..100).map(|i| format!("acct-{i:03}")).collect();
    for (i, account) in accounts.iter().enumerate() {
        open(&mut rt, account, 100 + i as i64);
    }
    let before = store.stats();

    primary.pump().unwrap();

    let after = store.stats();
    // 200 commits (an open and a top-up each) to two consumers: the projector commits its
    // page's writes once and acknowledges the page once; the manager, which reacts to none
    // of them, acknowledges its page once. One at a time it was 600 writes and 600 syncs.
    assert_eq!(after.records - before.records, 1 + 200 + 200, "one projection commit and 400 acks");
    assert!(after.syncs - before.syncs <= 3, "three syncs for the page, not one per delivery: {after:?}");
    let balance = |rt: &Runtime, account: &str| -> BalanceView {
        serde_json::from_slice(&rt.host_state("balances").unwrap().kv_get(BUCKET, account).expect("projected")).unwrap()
    };
    for (i, account) in accounts.iter().enumerate() {
        assert_eq!(balance(&primary, account).balance, 100 + i as i64, "{account}");
    }

    // A restart resumes after the page: nothing is delivered twice, the view reads the same.
    drop((primary, rt, journal, store));
    let (store, journal) = durable(dir.path());
    let mut primary = open_primary(journal);
    let before = store.stats();
    primary.pump().unwrap();
    assert_eq!(store.stats().records, before.records, "nothing was left to deliver");
    for (i, account) in accounts.iter().enumerate() {
        assert_eq!(balance(&primary, account).balance, 100 + i as i64, "{account}");
    }
}

#[test]
fn a_page_of_reactions_writes_its_timers_at_once_and_timers_fire_a_batch_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (store, journal) = durable(dir.path());
    let mut primary = open_primary(journal.clone());
    let mut rt = worker(journal.clone());
    open(&mut rt, "ada", 1_000_000);
    primary.pump().unwrap();
    // Each admission's reservation is a charging session with an expiry timer.
    for i in 0..40 {
        granted(&rt.admit(&request(&format!("r{i}"), "ada", "voice", 1, None)).unwrap());
    }
    let before = store.stats();

    primary.pump().unwrap();

    let after = store.stats();
    assert_eq!(primary.timers().len(), 40, "one expiry timer per session");
    // The projector's commit and acks, the manager's 40 timers, its states and its acks.
    assert!(after.syncs - before.syncs <= 5, "a sync per kind of write, not per reaction: {before:?} -> {after:?}");
    assert!(after.records - before.records >= 40 + 40 + 40, "every timer, every ack of both consumers");

    // Past validity: the timers fire a batch at a time, their reactions left to delivery. More
    // than a page of timers due earlier belong to no manager here (another manager's, and
    // another user's of the store): they are passed over, never fired, never in the way.
    let foreign: Vec<(String, Option<tollgate_store::Timer>)> = (0..600)
        .map(|n| {
            let id = if n % 2 == 0 {
                format!(r#"{{"manager":"elsewhere","instance":"x","id":"t{n}"}}"#)
            } else {
                format!("raw-{n}")
            };
            (id.clone(), Some(tollgate_store::Timer { id, fire_at_ms: 1, payload: Vec::new() }))
        })
        .collect();
    journal.run("set foreign timers", journal.store().write_timers(foreign)).unwrap();
    let mut manifest = manifest();
    manifest.reactions.timer_batch = 16;
    drop(primary);
    let mut primary = Runtime::open(&manifest, &mut loader(), journal.clone()).unwrap();
    primary.clock().set_ms(rt.clock().now_ms() + 60_000);
    let delivered = primary.delivered_through();
    assert_eq!(primary.fire_due_batch(0).unwrap(), 16);
    assert_eq!(primary.delivered_through(), delivered, "nothing delivered yet");
    assert_eq!(primary.account("ada").unwrap().unwrap().held, 80, "no reservation expired yet (40 x 2 cents)");
    assert_eq!(primary.fire_due_batch(16).unwrap(), 16);
    assert_eq!(primary.fire_due_batch(32).unwrap(), 8);
    assert_eq!(primary.fire_due_batch(40).unwrap(), 0, "none left");
    primary.pump().unwrap();
    assert!(primary.timers().is_empty(), "every session expired and finished: {:?}", primary.timers());
    assert_eq!(primary.account("ada").unwrap().unwrap().held, 0, "every hold was expired");
    let due = journal.run("count due timers", journal.store().due_timer_count(u64::MAX)).unwrap();
    assert_eq!(due, 600, "the foreign timers are left as they were");
}

/// Runs commands on a worker runtime over the same store, counting the calls.
struct OnWorker {
    worker: std::sync::Mutex<Runtime>,
    calls: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
}

impl tollgate_runtime::CommandRunner for OnWorker {
    fn run(&self, commands: &[Command]) -> Option<Vec<Result<Outcome, String>>> {
        self.calls.lock().unwrap().push(commands.len());
        let mut worker = self.worker.lock().unwrap();
        let outcomes = commands
            .iter()
            .map(|command| {
                let outcome = worker.execute(command).map_err(|e| e.to_string())?;
                if let Outcome::Rejected(r) = &outcome {
                    worker.recount_as_reaction_refusal(&r.code);
                }
                Ok(outcome)
            })
            .collect();
        Some(outcomes)
    }
}

#[test]
fn a_page_of_reactions_hands_its_commands_to_the_runner_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, journal) = durable(dir.path());
    let mut primary = open_primary(journal.clone());
    let mut rt = worker(journal.clone());
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let runner = OnWorker { worker: std::sync::Mutex::new(worker(journal.clone())), calls: calls.clone() };
    primary.run_commands_with(Box::new(runner));
    open(&mut rt, "ada", 1_000_000);
    for i in 0..40 {
        granted(&rt.admit(&request(&format!("r{i}"), "ada", "voice", 1, None)).unwrap());
    }
    // One reservation is released before its session's timer fires: its expiry is refused.
    let release = rt.command("account", "ada", "free-r7", &AccountCommand::Release { reservation_id: "r7".into() });
    assert!(matches!(rt.execute(&release.unwrap()).unwrap(), Outcome::Accepted(_)));
    primary.pump().unwrap();
    let accepted = primary.stats().accepted;

    primary.clock().set_ms(rt.clock().now_ms() + 60_000);
    primary.advance_ms(0).unwrap();

    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.iter().sum::<usize>(), 40, "every session's expiry went to the runner: {calls:?}");
    assert!(calls.len() <= 2, "handed over a page at a time, not one by one: {calls:?}");
    assert_eq!(primary.stats().accepted, accepted, "no command ran on the primary");
    assert_eq!(primary.account("ada").unwrap().unwrap().held, 0, "every hold expired or was released");
    let refused = primary.refused();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].command.command_id, "r7/expire/r7", "{refused:?}");
    assert!(primary.timers().is_empty(), "every session finished, the refused one too: {:?}", primary.timers());
}
