//! The 0.2 aggregate contract as the runtime drives it: the instance holds each key's state,
//! named by its sequence. These tests try to make the runtime decide on a state that is not
//! the committed one: an instance that lost its states in a trap, keys evicted past the
//! instance's bound, an append lost to another writer, a restart from a snapshot.

use crate::edge::loader;
use std::path::Path;
use tollgate_billing_model::account::{AccountCommand, Money, STREAM as ACCOUNT};
use tollgate_host::aggregate::Outcome;
use tollgate_host_test::fixtures;
use tollgate_runtime::{Journal, Manifest, Runtime};

/// How many keys' states an instance built with the SDK holds
/// (`tollgate_sdk::aggregate::RESIDENT_KEYS`; the runtime does not depend on the guest SDK).
const RESIDENT_KEYS: usize = 4096;

fn manifest(store: &str, actors: &str) -> Manifest {
    let text = format!("{store}\n[actors.account]\nkind = \"aggregate\"\nfile = \"prepaid_account.wasm\"\n{actors}");
    Manifest::parse(Path::new("resident.toml"), &text, &fixtures::actors_dir()).unwrap()
}

fn start(manifest: &Manifest, journal: &Journal) -> Runtime {
    Runtime::open(manifest, &mut loader(), journal.clone()).unwrap()
}

fn send(rt: &mut Runtime, account: &str, id: &str, command: &AccountCommand) -> Outcome {
    let c = rt.command(ACCOUNT, account, id, command).unwrap();
    rt.execute(&c).unwrap()
}

fn accepted(outcome: Outcome) -> Vec<tollgate_host::aggregate::Event> {
    match outcome {
        Outcome::Accepted(events) => events,
        Outcome::Rejected(r) => panic!("rejected: {} {}", r.code, r.message),
    }
}

fn open(rt: &mut Runtime, account: &str) {
    let command = AccountCommand::Open { currency: "EUR".into(), overdraft_limit: 0 };
    accepted(send(rt, account, &format!("{account}/open"), &command));
}

fn top_up(rt: &mut Runtime, account: &str, id: &str, amount: i64) -> u64 {
    let events = accepted(send(rt, account, id, &AccountCommand::TopUp { amount: Money::new(amount, "EUR") }));
    events[0].sequence
}

fn debit(rt: &mut Runtime, account: &str, id: &str, amount: i64) -> Outcome {
    let command = AccountCommand::DirectDebit { amount: Money::new(amount, "EUR"), description: "test".into() };
    send(rt, account, id, &command)
}

#[test]
fn keys_evicted_from_the_instance_are_loaded_again() {
    let journal = Journal::ephemeral().unwrap();
    let mut rt = start(&manifest("", ""), &journal);
    let accounts = RESIDENT_KEYS + 50;
    for i in 0..accounts {
        open(&mut rt, &format!("a{i}"));
    }
    // The instance holds at most RESIDENT_KEYS states: going round again misses on evicted
    // keys, whose states the runtime loads again from the log before deciding.
    for round in 1..=2u64 {
        for i in 0..accounts {
            let sequence = top_up(&mut rt, &format!("a{i}"), &format!("a{i}/top-up-{round}"), i as i64 + 1);
            assert_eq!(sequence, round + 1, "a{i}: the event follows the committed ones");
        }
    }
    for i in [0, 1, accounts / 2, accounts - 1] {
        let account = rt.account(&format!("a{i}")).unwrap().unwrap();
        assert_eq!(account.balance, 2 * (i as i64 + 1), "a{i}");
    }
}

#[test]
fn an_append_lost_to_another_writer_is_never_decided_on() {
    let journal = Journal::ephemeral().unwrap();
    let manifest = manifest("[store]\nsnapshot_every = 3\n", "");
    let (mut a, mut b) = (start(&manifest, &journal), start(&manifest, &journal));
    open(&mut a, "alice");
    top_up(&mut a, "alice", "a-1", 100);
    // B moves the account on; A's instance still holds it at #2.
    assert_eq!(top_up(&mut b, "alice", "b-1", 50), 3);
    // A decides at #2 and evolves its copy to #3 (balance 101), the append loses to B's #3,
    // so A loads the account again (150) and decides once more.
    assert_eq!(top_up(&mut a, "alice", "a-2", 1), 4);
    assert_eq!(a.account("alice").unwrap().unwrap().balance, 151);
    // Had A kept the state it evolved at #3, it would refuse 151 (it would see 102).
    accepted(debit(&mut a, "alice", "a-3", 151));
    let Outcome::Rejected(r) = debit(&mut a, "alice", "a-4", 1) else { panic!("the account is empty") };
    assert_eq!(r.code, "insufficient-funds");
    // B, behind by three events, is told the same.
    let Outcome::Rejected(r) = debit(&mut b, "alice", "b-2", 1) else { panic!("the account is empty") };
    assert_eq!(r.code, "insufficient-funds");
    // A restarted node starts from the snapshot taken at #3 or later and folds the rest.
    drop((a, b));
    let mut c = start(&manifest, &journal);
    assert_eq!(c.account("alice").unwrap().unwrap().balance, 0);
    assert_eq!(top_up(&mut c, "alice", "c-1", 7), 6);
    assert_eq!(c.account("alice").unwrap().unwrap().balance, 7);
}

#[test]
fn a_refusal_is_decided_on_the_committed_state_not_on_a_stale_copy() {
    let journal = Journal::ephemeral().unwrap();
    let manifest = manifest("", "");
    let (mut a, mut b) = (start(&manifest, &journal), start(&manifest, &journal));
    open(&mut a, "alice");
    // B tops the account up; A's copy still says it is empty. A refusal appends nothing, so no
    // append race would ever tell A: it decides again on the account as committed.
    top_up(&mut b, "alice", "b-1", 50);
    let events = accepted(debit(&mut a, "alice", "a-1", 30));
    assert_eq!(events[0].sequence, 3);
    // Likewise a reservation opened elsewhere is known when A is asked to settle it.
    let reserve = AccountCommand::Reserve {
        reservation_id: "r1".into(),
        units: 5,
        plan: vec![tollgate_billing_model::pricing::PriceTerm::PerUnit { offer: "voice".into(), unit_price: 2 }],
        currency: "EUR".into(),
        validity_ms: 60_000,
        offer: "voice".into(),
    };
    accepted(send(&mut b, "alice", "b-2", &reserve));
    let settled =
        accepted(send(&mut a, "alice", "a-2", &AccountCommand::Settle { reservation_id: "r1".into(), used_units: 5 }));
    assert_eq!(settled[0].event_type, "debited");
    // A refusal on the latest state stands, and is counted once.
    let Outcome::Rejected(r) = debit(&mut b, "alice", "b-3", 11) else { panic!("10 are left") };
    assert_eq!(r.code, "insufficient-funds");
    assert_eq!(b.stats().rejected["insufficient-funds"], 1);
}

#[test]
fn a_trap_loses_the_instances_states_and_the_next_command_loads_its_key() {
    let journal = Journal::ephemeral().unwrap();
    let manifest = manifest("", "[actors.misbehaving]\nkind = \"aggregate\"\nfile = \"misbehaving.wasm\"\n");
    let mut rt = start(&manifest, &journal);
    open(&mut rt, "alice");
    top_up(&mut rt, "alice", "t-1", 10);
    let ok = |rt: &mut Runtime, id: &str| {
        let c = rt.command("misbehaving", "m", id, &serde_json::json!({"ok": null})).unwrap();
        accepted(rt.execute(&c).unwrap())[0].sequence
    };
    assert_eq!(ok(&mut rt, "m-1"), 1);
    assert_eq!(ok(&mut rt, "m-2"), 2);
    let panic = rt.command("misbehaving", "m", "m-3", &serde_json::json!({"panic": null})).unwrap();
    let err = rt.execute(&panic).unwrap_err();
    assert!(err.to_string().contains("told to panic"), "{err}");
    // The fresh instance holds nothing: the runtime loads `m` before deciding, and numbers on.
    assert_eq!(ok(&mut rt, "m-4"), 3);
    // The account actor's instance was not touched.
    assert_eq!(top_up(&mut rt, "alice", "t-2", 5), 3);
    assert_eq!(rt.account("alice").unwrap().unwrap().balance, 15);
}

#[test]
fn an_actor_that_never_holds_what_it_was_given_is_refused_after_one_load() {
    let journal = Journal::ephemeral().unwrap();
    let manifest = manifest("", "[actors.forgetful]\nkind = \"aggregate\"\nfile = \"forgetful.wasm\"\n");
    let mut rt = start(&manifest, &journal);
    let note = |rt: &mut Runtime, id: &str| {
        let c = rt.command("forgetful", "k", id, &serde_json::json!({"note": null})).unwrap();
        rt.execute(&c)
    };
    assert!(matches!(note(&mut rt, "f-1").unwrap(), Outcome::Accepted(_)));
    // It claims the load worked, then says not-resident again: one load, then an error naming
    // the key, not a loop.
    let err = note(&mut rt, "f-2").unwrap_err();
    assert!(err.to_string().contains("does not hold forgetful/k at #1"), "{err}");
    let stored = journal.run("read", journal.store().read("forgetful", "k", 1)).unwrap();
    assert_eq!(stored.len(), 1, "nothing was appended for the refused command");
    // The node goes on.
    open(&mut rt, "alice");
    assert_eq!(top_up(&mut rt, "alice", "t-1", 3), 2);
}
