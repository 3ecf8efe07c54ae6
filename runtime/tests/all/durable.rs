//! The runtime over the embedded log: what survives a restart, snapshots, schema upcasting,
//! dead letters.

use crate::edge::{granted, loader, manifest, open, request};
use std::path::Path;
use tollgate_billing_model::account::{Account, AccountCommand, Money};
use tollgate_billing_model::balance::{BUCKET, BalanceView};
use tollgate_host::aggregate::Outcome;
use tollgate_runtime::{Journal, Runtime};
use tollgate_store::{ExpectedVersion, NewEvent, Snapshot};

fn durable(dir: &Path, snapshot_every: u64) -> Runtime {
    let mut manifest = manifest();
    manifest.store.snapshot_every = snapshot_every;
    let journal = Journal::open(&format!("file:{}", dir.display())).unwrap();
    Runtime::open(&manifest, &mut loader(), journal).unwrap()
}

fn view(rt: &Runtime, account: &str) -> BalanceView {
    let bytes = rt.host_state("balances").unwrap().kv_get(BUCKET, account).expect("projected");
    serde_json::from_slice(&bytes).unwrap()
}

pub fn top_up(rt: &mut Runtime, account: &str, id: &str, amount: i64) -> Outcome {
    let c = rt.command("account", account, id, &AccountCommand::TopUp { amount: Money::new(amount, "EUR") }).unwrap();
    rt.execute(&c).unwrap()
}

#[test]
fn a_restart_keeps_accounts_projections_and_answers_repeats_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (account, projected, first) = {
        let mut rt = durable(dir.path(), 100);
        open(&mut rt, "ada", 1_000);
        let first = rt.admit(&request("r1", "ada", "voice", 10, None)).unwrap();
        (rt.account("ada").unwrap().unwrap(), view(&rt, "ada"), first)
    };
    let mut rt = durable(dir.path(), 100);
    assert_eq!(rt.account("ada").unwrap().unwrap(), account, "state rebuilt from the log");
    assert_eq!(view(&rt, "ada"), projected, "projection restored from the store");
    // Another use first, then the repeat: answered with the original decision, whole.
    granted(&rt.admit(&request("r2", "ada", "voice", 10, None)).unwrap());
    let logged = rt.events().unwrap().len();
    let again = rt.admit(&request("r1", "ada", "voice", 10, None)).unwrap();
    assert_eq!(format!("{again:?}"), format!("{first:?}"), "the repeat gets the original price, lines and grant");
    assert_eq!(rt.events().unwrap().len(), logged, "a repeated request appends nothing");
    assert_eq!(rt.account("ada").unwrap().unwrap().held, 40, "r1 held once, not twice");
    assert_eq!(top_up(&mut rt, "ada", "ada/top-up", 1_000).clone_events().len(), 1, "answered with the original event");
    assert_eq!(rt.account("ada").unwrap().unwrap().balance, 1_000, "the repeated top-up changed nothing");
    assert!(rt.stats().duplicates >= 2);
    // Events after the restart are projected once, on top of the restored view.
    assert!(matches!(top_up(&mut rt, "ada", "ada/top-up-2", 5), Outcome::Accepted(_)));
    let after = view(&rt, "ada");
    assert_eq!((after.balance, after.ledger.len()), (1_005, projected.ledger.len() + 2), "r2 and the top-up");
}

#[test]
fn event_times_never_go_backwards_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let mut rt = durable(dir.path(), 100);
        rt.clock().set_ms(5_000_000);
        open(&mut rt, "ada", 1_000);
        rt.events().unwrap().iter().map(|e| e.time).max().unwrap()
    };
    assert_eq!(before, 5_000_000);
    // The host's clock went back (a new node process, a clock step): the runtime's does not.
    let mut rt = durable(dir.path(), 100);
    assert_eq!(rt.clock().now_ms(), before, "the clock starts at the log's last event");
    assert!(matches!(top_up(&mut rt, "ada", "ada/top-up-2", 5), Outcome::Accepted(_)));
    let times: Vec<u64> = rt.events().unwrap().iter().map(|e| e.time).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "event times in log order: {times:?}");
    // An empty log starts at 0.
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(durable(empty.path(), 100).clock().now_ms(), 0);
}

trait Events {
    fn clone_events(&self) -> Vec<tollgate_host::aggregate::Event>;
}

impl Events for Outcome {
    fn clone_events(&self) -> Vec<tollgate_host::aggregate::Event> {
        match self {
            Outcome::Accepted(e) => e.clone(),
            Outcome::Rejected(r) => panic!("rejected: {}: {}", r.code, r.message),
        }
    }
}

#[test]
fn snapshots_are_read_back_and_another_actor_build_ignores_them() {
    let dir = tempfile::tempdir().unwrap();
    let tag = {
        let mut rt = durable(dir.path(), 5);
        open(&mut rt, "bo", 0);
        for i in 0..11 {
            top_up(&mut rt, "bo", &format!("t{i}"), 10);
        }
        assert_eq!(rt.stats().snapshots, 2, "12 events, a snapshot every 5");
        rt.snapshot_tag("account").unwrap()
    };
    let journal = Journal::open(&format!("file:{}", dir.path().display())).unwrap();
    let stored = journal.block_on(journal.store().get_snapshot("account", "bo", &tag)).unwrap().expect("snapshot");
    assert_eq!(stored.sequence, 10);
    // Doctor the snapshot: if the runtime reads it, the doctored balance shows through.
    let mut doctored: Account = serde_json::from_slice(&stored.state).unwrap();
    doctored.balance += 1;
    let doctored = Snapshot { state: serde_json::to_vec(&doctored).unwrap(), ..stored.clone() };
    let other_build = Snapshot { actor_digest: "sha256:another-build#state-v1".into(), ..doctored.clone() };
    journal.block_on(journal.store().put_snapshot("account", "bo", other_build)).unwrap();
    drop(journal);
    assert_eq!(
        durable(dir.path(), 5).account("bo").unwrap().unwrap().balance,
        110,
        "another build's snapshot is ignored"
    );
    let journal = Journal::open(&format!("file:{}", dir.path().display())).unwrap();
    journal.block_on(journal.store().put_snapshot("account", "bo", doctored)).unwrap();
    drop(journal);
    assert_eq!(
        durable(dir.path(), 5).account("bo").unwrap().unwrap().balance,
        111,
        "snapshot + tail, not a full replay"
    );
}

#[test]
fn process_manager_timers_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut rt = durable(dir.path(), 100);
        open(&mut rt, "cy", 1_000);
        granted(&rt.admit(&request("x1", "cy", "voice", 100, None)).unwrap());
        assert_eq!(rt.timers().len(), 1);
    }
    let mut rt = durable(dir.path(), 100);
    assert_eq!(rt.timers().len(), 1, "the expiry timer was reloaded");
    assert_eq!(rt.account("cy").unwrap().unwrap().held, 200);
    assert!(rt.advance_ms(30_000).unwrap() >= 1, "it fires after the restart");
    assert_eq!(rt.account("cy").unwrap().unwrap().held, 0);
    assert!(rt.timers().is_empty());
    drop(rt);
    let mut rt = durable(dir.path(), 100);
    assert_eq!(rt.advance_ms(60_000).unwrap(), 0, "a fired timer does not come back");
    assert_eq!(rt.events().unwrap().iter().filter(|e| e.event_type == "expired").count(), 1);
}

fn v1(event_type: &str, payload: &str, command_id: &str) -> NewEvent {
    NewEvent {
        event_type: event_type.into(),
        schema_version: 1,
        content_type: "application/json".into(),
        payload: payload.as_bytes().to_vec(),
        command_id: command_id.into(),
        // Written before digests were kept.
        command_digest: Vec::new(),
        correlation_id: command_id.into(),
        causation_id: String::new(),
        time_ms: 0,
    }
}

#[test]
fn a_log_written_at_schema_version_1_replays_through_the_version_2_account() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&format!("file:{}", dir.path().display())).unwrap();
    let old = [
        v1("opened", r#"{"currency":"EUR","overdraft_limit":0}"#, "o"),
        v1("topped-up", r#"{"amount":{"minor_units":500,"currency":"EUR"}}"#, "t"),
        v1("direct-debited", r#"{"amount":{"minor_units":120,"currency":"EUR"},"description":"sms"}"#, "d"),
    ];
    for (i, e) in old.into_iter().enumerate() {
        journal.block_on(journal.store().append("account", "dee", ExpectedVersion::Exact(i as u64), vec![e])).unwrap();
    }
    drop(journal);
    let mut rt = durable(dir.path(), 100);
    rt.pump().unwrap();
    let account = rt.account("dee").unwrap().unwrap();
    assert_eq!((account.balance, account.available()), (380, 380));
    let projected = view(&rt, "dee");
    assert_eq!((projected.balance, projected.ledger.len()), (380, 3), "the projector saw upcast events");
    // New events are written at version 2 next to the old ones.
    let events = top_up(&mut rt, "dee", "t2", 20).clone_events();
    assert_eq!(events[0].schema_version, 2);
    assert_eq!(rt.account("dee").unwrap().unwrap().balance, 400);
}

#[test]
fn a_delivery_that_keeps_failing_is_dead_lettered_then_redriven() {
    let dir = tempfile::tempdir().unwrap();
    let mut rt = durable(dir.path(), 100);
    open(&mut rt, "eve", 100);
    let journal = rt.journal();
    let poison = v1("topped-up", "not json", "poison");
    journal.block_on(journal.store().append("account", "mallory", ExpectedVersion::Any, vec![poison])).unwrap();
    rt.pump().unwrap();
    let dead = journal.block_on(journal.store().dead_letters("balances")).unwrap();
    assert_eq!(dead.len(), 1, "after max_deliver attempts");
    assert_eq!(dead[0].attempts, 5);
    assert!(dead[0].reason.contains("malformed-event"), "{}", dead[0].reason);
    assert_eq!(rt.stats().dead_lettered, 2, "the projector and the session manager both gave up");
    // The rest of the log still flows.
    top_up(&mut rt, "eve", "more", 5);
    assert_eq!(view(&rt, "eve").balance, 105);
    journal.block_on(journal.store().redrive("balances", dead[0].position)).unwrap();
    rt.pump().unwrap();
    let dead = journal.block_on(journal.store().dead_letters("balances")).unwrap();
    assert_eq!((dead.len(), dead[0].attempts), (1, 5), "redriven, failed again, back with fresh attempts");
}

#[test]
fn a_redriven_delivery_older_than_the_checkpoint_is_projected_without_moving_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut rt = durable(dir.path(), 100);
    let journal = rt.journal();
    let store = journal.store();
    // Zoe's account is opened while the projector is failing: its delivery is dead-lettered.
    let opened =
        NewEvent { schema_version: 2, ..v1("opened", r#"{"currency":"EUR","overdraft_limit":0}"#, "zoe/open") };
    journal.block_on(store.append("account", "zoe", ExpectedVersion::NoStream, vec![opened])).unwrap();
    let options = tollgate_store::ConsumerOptions { max_deliver: 1, ..Default::default() };
    let mut outage = journal.block_on(store.consumer("balances", options)).unwrap();
    let delivery = journal.block_on(outage.next(1, std::time::Duration::ZERO)).unwrap().remove(0);
    journal.block_on(outage.nack(delivery.position, "projector was down")).unwrap();
    drop(outage);
    // Later events move the projection's checkpoint past it.
    open(&mut rt, "amy", 10);
    assert!(rt.host_state("balances").unwrap().kv_get(BUCKET, "zoe").is_none());
    let checkpoint = journal.block_on(store.checkpoint("balances")).unwrap();
    assert!(checkpoint > delivery.position);
    journal.block_on(store.redrive("balances", delivery.position)).unwrap();
    rt.pump().unwrap();
    assert_eq!(view(&rt, "zoe").currency, "EUR", "the redriven event was projected");
    assert_eq!(journal.block_on(store.checkpoint("balances")).unwrap(), checkpoint, "the checkpoint stayed");
    assert!(journal.block_on(store.dead_letters("balances")).unwrap().is_empty());
    drop(rt);
    drop(journal);
    assert_eq!(view(&durable(dir.path(), 100), "zoe").currency, "EUR", "and it was committed");
}

#[test]
fn a_command_id_reused_for_another_command_is_refused_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut rt = durable(dir.path(), 100);
        open(&mut rt, "ada", 1_000);
        assert!(matches!(top_up(&mut rt, "ada", "t1", 5), Outcome::Accepted(_)));
        // At once, from the runtime's memory of the key...
        match top_up(&mut rt, "ada", "t1", 6) {
            Outcome::Rejected(r) => assert_eq!(r.code, "command-id-conflict", "{}", r.message),
            Outcome::Accepted(events) => panic!("answered {events:?}"),
        }
    }
    // ...and after a restart, from the digest kept with the events in the log.
    let mut rt = durable(dir.path(), 100);
    let logged = rt.events().unwrap().len();
    match top_up(&mut rt, "ada", "t1", 6) {
        Outcome::Rejected(r) => assert!(r.code == "command-id-conflict" && r.message.contains("`t1`"), "{}", r.message),
        Outcome::Accepted(events) => panic!("answered {events:?}"),
    }
    // The same command again is still a duplicate, answered with its original event.
    assert_eq!(top_up(&mut rt, "ada", "t1", 5).clone_events().len(), 1);
    assert_eq!(rt.events().unwrap().len(), logged, "neither appended anything");
    assert_eq!(rt.account("ada").unwrap().unwrap().balance, 1_005);
    assert_eq!(rt.stats().rejected.get("command-id-conflict"), Some(&1));
}

#[test]
fn a_log_written_before_digests_still_answers_its_repeats() {
    let dir = tempfile::tempdir().unwrap();
    {
        let journal = Journal::open(&format!("file:{}", dir.path().display())).unwrap();
        let opened = NewEvent { schema_version: 2, ..v1("opened", r#"{"currency":"EUR","overdraft_limit":0}"#, "o1") };
        let topped_up = NewEvent { schema_version: 2, ..v1("topped-up", r#"{"amount":5}"#, "t1") };
        for event in [opened, topped_up] {
            journal.run("append", journal.store().append("account", "old", ExpectedVersion::Any, vec![event])).unwrap();
        }
    }
    let mut rt = durable(dir.path(), 100);
    // No digest to compare: the id alone answers, as before digests were kept.
    assert_eq!(top_up(&mut rt, "old", "t1", 6).clone_events().len(), 1);
    assert_eq!(rt.account("old").unwrap().unwrap().balance, 5);
}
