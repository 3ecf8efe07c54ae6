//! A process manager learns that its command was refused: the refusal is counted apart from
//! clients' rejections, recorded on `tollgate.refusals`, delivered to the instance that sent
//! the command, and dead-lettered when the manager cannot take it.

use crate::edge::loader;
use std::path::Path;
use tollgate_billing_model::account::{AccountCommand, Money, STREAM as ACCOUNT};
use tollgate_billing_model::pricing::PriceTerm;
use tollgate_billing_model::session::{STREAM as SESSION, SessionEvent};
use tollgate_host::aggregate::Outcome;
use tollgate_host_test::fixtures;
use tollgate_runtime::{Journal, Manifest, REFUSALS_STREAM, Runtime};

fn start(actors: &str, journal: &Journal) -> Runtime {
    let text = format!("[actors.account]\nkind = \"aggregate\"\nfile = \"prepaid_account.wasm\"\n{actors}");
    let manifest = Manifest::parse(Path::new("refusals.toml"), &text, &fixtures::actors_dir()).unwrap();
    Runtime::open(&manifest, &mut loader(), journal.clone()).unwrap()
}

fn send(rt: &mut Runtime, account: &str, id: &str, command: &AccountCommand) -> Outcome {
    let c = rt.command(ACCOUNT, account, id, command).unwrap();
    rt.execute(&c).unwrap()
}

fn accepted(outcome: Outcome) {
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
}

fn open(rt: &mut Runtime, account: &str) {
    accepted(send(
        rt,
        account,
        &format!("{account}/open"),
        &AccountCommand::Open { currency: "EUR".into(), overdraft_limit: 0 },
    ));
}

fn top_up(amount: i64) -> AccountCommand {
    AccountCommand::TopUp { amount: Money::new(amount, "EUR") }
}

fn dead_letters(journal: &Journal, consumer: &str) -> Vec<String> {
    journal.run("dead letters", journal.store().dead_letters(consumer)).unwrap().into_iter().map(|d| d.reason).collect()
}

#[test]
fn a_refusal_the_manager_cannot_take_is_counted_apart_and_dead_lettered() {
    // The cascading fixture echoes a top-up of 1 as a top-up of 1 with id `<command id>>0` and
    // says nothing about refusals (the SDK's default refuses them).
    let journal = Journal::ephemeral().unwrap();
    let mut rt = start("[actors.echo]\nkind = \"process-manager\"\nfile = \"cascading_manager.wasm\"\n", &journal);
    open(&mut rt, "dee");
    // The id the echo will use is taken by another command: the echo is a `command-id-conflict`.
    accepted(send(&mut rt, "dee", "dee/1>0", &top_up(5)));
    accepted(send(&mut rt, "dee", "dee/1", &top_up(1)));
    assert_eq!(rt.account("dee").unwrap().unwrap().balance, 6, "the echo changed nothing");

    let stats = rt.stats();
    assert_eq!(stats.reaction_refusals.get("command-id-conflict"), Some(&1), "{stats:?}");
    assert!(!stats.rejected.contains_key("command-id-conflict"), "not a client's rejection: {stats:?}");
    let refusals: Vec<_> = rt.events().unwrap().into_iter().filter(|e| e.stream == REFUSALS_STREAM).collect();
    assert_eq!(refusals.len(), 1);
    assert_eq!((refusals[0].key.as_str(), refusals[0].event_type.as_str()), ("echo/dee", "command-refused"));
    assert_eq!(refusals[0].causation_id, "dee/1>0");

    let reasons = dead_letters(&journal, "echo");
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("refusal-not-handled") && reasons[0].contains("command-id-conflict"), "{}", reasons[0]);
    assert_eq!(stats.dead_lettered, 1);

    // A restart tells nothing twice and the next request works.
    drop(rt);
    let mut rt = start("[actors.echo]\nkind = \"process-manager\"\nfile = \"cascading_manager.wasm\"\n", &journal);
    accepted(send(&mut rt, "dee", "dee/2", &top_up(7)));
    assert_eq!(dead_letters(&journal, "echo").len(), 1);
    assert_eq!(rt.events().unwrap().iter().filter(|e| e.stream == REFUSALS_STREAM).count(), 1);
}

#[test]
fn the_charging_session_is_told_its_re_reservation_was_refused_and_stops_waiting_for_it() {
    let journal = Journal::ephemeral().unwrap();
    let mut rt = start("[actors.sessions]\nkind = \"process-manager\"\nfile = \"charging_session.wasm\"\n", &journal);
    open(&mut rt, "ivy");
    accepted(send(&mut rt, "ivy", "ivy/top-up", &top_up(1_000)));
    // The first reservation of session `call`, correlated with it.
    let reserve = AccountCommand::Reserve {
        reservation_id: "call".into(),
        units: 10,
        plan: vec![PriceTerm::PerUnit { offer: "voice".into(), unit_price: 2 }],
        currency: "EUR".into(),
        validity_ms: 30_000,
        offer: "voice".into(),
    };
    let mut command = rt.command(ACCOUNT, "ivy", "call/reserve", &reserve).unwrap();
    command.correlation_id = "call".into();
    accepted(rt.execute(&command).unwrap());
    let started = SessionEvent::Started { account: "ivy".into(), offer: "voice".into(), currency: "EUR".into() };
    rt.report(SESSION, "call", "call", "call/started", &started).unwrap();
    let instance = |journal: &Journal| {
        journal.run("read instance", journal.store().kv_get("sessions", "tollgate.instances", "call")).unwrap()
    };
    assert!(instance(&journal).is_some(), "the session is under way");

    // The re-reservation the usage report causes will use id `call/reserve/2` (the report is
    // the session stream's second event): take it first with another command.
    accepted(send(&mut rt, "ivy", "call/reserve/2", &top_up(1)));
    let usage = SessionEvent::UsageReported {
        account: "ivy".into(),
        reservation_id: "call".into(),
        used_units: 5,
        requested_units: 10,
        currency: None,
    };
    rt.report(SESSION, "call", "call", "call/usage-1", &usage).unwrap();

    let stats = rt.stats();
    assert_eq!(stats.reaction_refusals.get("command-id-conflict"), Some(&1), "{stats:?}");
    assert_eq!(rt.refused().len(), 1);
    // Told, the session stopped waiting for the grant that will not come: with its debit done
    // and nothing open or pending, it finished, instead of waiting forever.
    assert!(dead_letters(&journal, "sessions").is_empty());
    assert_eq!(stats.dead_lettered, 0);
    assert!(instance(&journal).is_none(), "the session finished once told");
    let account = rt.account("ivy").unwrap().unwrap();
    assert_eq!((account.balance, account.held), (1_000 + 1 - 10, 0), "5 units at 2 debited, nothing held");
}
