//! The adversarial suite: one hostile fixture actor per behaviour (under
//! `host-test/fixtures/`), each run in a child process of this test binary alone, so its peak
//! RSS (VmHWM) is the scenario's own. Each scenario proves the node survives (no hang, no
//! panic), that the bad delivery or request is dead-lettered or refused with a reason naming
//! the bound, and that the next request works.

use crate::edge::loader;
use std::path::Path;
use std::process::Command as Process;
use tollgate_billing_model::account::{AccountCommand, AccountEvent, Money, STREAM as ACCOUNT};
use tollgate_host::aggregate::{Event, Outcome};
use tollgate_host_test::fixtures;
use tollgate_runtime::{AdmissionRequest, Decision, Journal, Manifest, ResultCode, Runtime, RuntimeError};
use tollgate_store::{EventStore, ExpectedVersion, FileStore, NewEvent};

/// Peak resident memory a scenario's process may reach (README: "Bounds"). A node with its
/// engine, compiled actors and the scenario's whole log stays well under it; a runaway
/// cascade, a tail folded in one call or a hostile actor's growth would not.
const PEAK_RSS_BOUND_MIB: u64 = 512;

/// Set in a child process to the one scenario it runs.
const SCENARIO_ENV: &str = "TOLLGATE_HOSTILE_SCENARIO";

/// Runs `scenario` alone in a child process of this test binary (`name` is its test's path),
/// then asserts that it passed and that the child's peak RSS stayed under the bound, and says
/// the peak and the figures the scenario printed (`figure: ...`).
fn isolated(name: &str, scenario: fn()) {
    if std::env::var(SCENARIO_ENV).as_deref() == Ok(name) {
        scenario();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).expect("VmHWM in /proc/self/status");
        println!("VMHWM_KIB={}", kib.trim().trim_end_matches("kB").trim());
        return;
    }
    let output = Process::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(SCENARIO_ENV, name)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "scenario {name} failed:\n{stdout}\n{stderr}");
    let kib: u64 = stdout
        .lines()
        .find_map(|l| l.split("VMHWM_KIB=").nth(1))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("scenario {name} did not run:\n{stdout}\n{stderr}"));
    eprintln!("{name}: peak RSS {} MiB", kib >> 10);
    // Figures the scenario printed (`figure: ...`), for the record.
    for figure in stdout.lines().filter_map(|l| l.split_once("figure: ").map(|(_, f)| f)) {
        eprintln!("{name}: {figure}");
    }
    assert!(kib < PEAK_RSS_BOUND_MIB << 10, "{name}: peak RSS {kib} KiB is over {PEAK_RSS_BOUND_MIB} MiB");
}

/// A manifest of the account aggregate, `actors` (TOML) and `sections` (e.g. `[reactions]`),
/// with files resolved against the built actors.
fn manifest(sections: &str, actors: &str) -> Manifest {
    let text = format!("{sections}\n[actors.account]\nkind = \"aggregate\"\nfile = \"prepaid_account.wasm\"\n{actors}");
    Manifest::parse(Path::new("hostile.toml"), &text, &fixtures::actors_dir()).unwrap()
}

fn start(manifest: &Manifest, journal: &Journal) -> Runtime {
    Runtime::open(manifest, &mut loader(), journal.clone()).unwrap()
}

/// [`start`] on an engine with the manifest's own `[limits]` (the shared loader's engine has
/// the defaults), as `tollgate run` and `serve` start one.
fn start_with_limits(manifest: &Manifest, journal: &Journal) -> Runtime {
    let mut loader = tollgate_runtime::Loader::new(tollgate_runtime::engine_for(manifest).unwrap());
    Runtime::open(manifest, &mut loader, journal.clone()).unwrap()
}

fn send(rt: &mut Runtime, account: &str, id: &str, command: &AccountCommand) -> Outcome {
    let c = rt.command(ACCOUNT, account, id, command).unwrap();
    rt.execute(&c).unwrap()
}

fn open(rt: &mut Runtime, account: &str) {
    let opened = send(
        rt,
        account,
        &format!("{account}/open"),
        &AccountCommand::Open { currency: "EUR".into(), overdraft_limit: 0 },
    );
    assert!(matches!(opened, Outcome::Accepted(_)), "{opened:?}");
}

fn top_up(rt: &mut Runtime, account: &str, id: &str, amount: i64) {
    let outcome = send(rt, account, id, &AccountCommand::TopUp { amount: Money::new(amount, "EUR") });
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
}

fn balance(rt: &Runtime, account: &str) -> i64 {
    rt.account(account).unwrap().unwrap().balance
}

/// The reasons of `consumer`'s dead letters.
fn dead_letters(journal: &Journal, consumer: &str) -> Vec<String> {
    journal.run("dead letters", journal.store().dead_letters(consumer)).unwrap().into_iter().map(|d| d.reason).collect()
}

fn top_ups(events: &[Event], account: &str) -> usize {
    events.iter().filter(|e| e.stream == ACCOUNT && e.key == account && e.event_type == "topped-up").count()
}

#[test]
fn cascading_process_manager_is_cut_at_its_bounds() {
    isolated("hostile::cascading_process_manager_is_cut_at_its_bounds", || {
        let manifest = manifest(
            "[reactions]\nmax_cascade_depth = 8\nmax_cascade_effects = 100\n",
            "[actors.echo]\nkind = \"process-manager\"\nfile = \"cascading_manager.wasm\"\n",
        );
        let journal = Journal::ephemeral().unwrap();
        let mut rt = start(&manifest, &journal);
        open(&mut rt, "ada");
        // A chain: every echo is one reaction deeper; the 9th would be past the depth bound.
        top_up(&mut rt, "ada", "ada/1", 1);
        assert_eq!(balance(&rt, "ada"), 1 + 8, "the client's top-up and 8 echoes, one per depth");
        let reasons = dead_letters(&journal, "echo");
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].contains("cascade depth 9") && reasons[0].contains("`reactions.max_cascade_depth` = 8"),
            "{}",
            reasons[0]
        );
        // A tree: two echoes per echo; the root's budget of 100 effects ends it first.
        open(&mut rt, "bo");
        top_up(&mut rt, "bo", "bo/1", 2);
        let echoes = top_ups(&rt.events().unwrap(), "bo") - 1;
        assert!((50..=100).contains(&echoes), "{echoes} echoes");
        assert_eq!(balance(&rt, "bo"), 2 * (1 + echoes as i64));
        let reasons = dead_letters(&journal, "echo");
        assert!(
            reasons.len() > 1 && reasons[1..].iter().all(|r| r.contains("`reactions.max_cascade_effects` = 100")),
            "{reasons:?}"
        );
        let stats = rt.stats();
        assert_eq!(stats.dead_lettered, reasons.len() as u64);
        assert!(stats.reactions_over_bounds >= stats.dead_lettered);
        // After a restart nothing is left to catch up on, and the next request works.
        drop(rt);
        let mut rt = start(&manifest, &journal);
        let logged = rt.events().unwrap().len();
        open(&mut rt, "cy");
        top_up(&mut rt, "cy", "cy/1", 5);
        assert_eq!(balance(&rt, "cy"), 5);
        assert_eq!(rt.events().unwrap().len(), logged + 2, "only the new request's events");
        assert_eq!(balance(&rt, "bo"), 2 * (1 + echoes as i64), "the cut cascade did not resume");
    });
}

#[test]
fn timer_storm_is_cut_per_tick_and_per_input() {
    isolated("hostile::timer_storm_is_cut_per_tick_and_per_input", || {
        let manifest = manifest(
            "[reactions]\nmax_cascade_depth = 8\nmax_cascade_effects = 300\nmax_timers_per_tick = 50\ntimer_batch = 16\n",
            "[actors.storm]\nkind = \"process-manager\"\nfile = \"timer_storm.wasm\"\n",
        );
        let journal = Journal::ephemeral().unwrap();
        let mut rt = start(&manifest, &journal);
        open(&mut rt, "ada");
        // A chain of timers, each setting the next, due at once: cut at depth 8 in one tick.
        top_up(&mut rt, "ada", "ada/1", 1_001);
        assert_eq!(rt.advance_ms(0).unwrap(), 8);
        let reasons = dead_letters(&journal, "storm");
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].contains("on timer") && reasons[0].contains("`reactions.max_cascade_depth` = 8"),
            "{}",
            reasons[0]
        );
        assert_eq!(rt.advance_ms(0).unwrap(), 0, "nothing left due");
        // A breeding storm: 4 timers, each setting 4 more. Each tick fires at most 50; the
        // input's budget of 300 timers ends it.
        open(&mut rt, "bo");
        top_up(&mut rt, "bo", "bo/1", 4_004);
        let mut ticks = Vec::new();
        loop {
            let fired = rt.advance_ms(0).unwrap();
            if fired == 0 {
                break;
            }
            ticks.push(fired);
            assert!(ticks.len() < 100, "the storm did not end: {ticks:?}");
        }
        assert!(ticks.iter().all(|&n| n <= 50) && ticks.contains(&50), "{ticks:?}");
        let total: usize = ticks.iter().sum();
        assert!(total <= 300, "{total} timers fired for one input");
        let reasons = dead_letters(&journal, "storm");
        assert!(reasons.len() > 1, "{reasons:?}");
        assert!(reasons[1..].iter().all(|r| r.contains("`reactions.max_cascade_effects` = 300")), "{reasons:?}");
        assert!(rt.timers().is_empty(), "{:?}", rt.timers());
        // The next request works.
        open(&mut rt, "cy");
        top_up(&mut rt, "cy", "cy/1", 5);
        assert_eq!(balance(&rt, "cy"), 5);
    });
}

#[test]
fn due_timers_are_recorded_in_group_committed_batches() {
    isolated("hostile::due_timers_are_recorded_in_group_committed_batches", || {
        let manifest = manifest(
            "[reactions]\nmax_timers_per_reaction = 1000\nmax_cascade_effects = 1000\n",
            "[actors.storm]\nkind = \"process-manager\"\nfile = \"timer_storm.wasm\"\n",
        );
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let url = format!("file:{}", dir.path().display());
        let journal = Journal::with_store(&url, Box::new(store.clone())).unwrap();
        let mut rt = start(&manifest, &journal);
        open(&mut rt, "ada");
        // 1000 timers, none of which sets another.
        top_up(&mut rt, "ada", "ada/1", 1_000_000);
        assert_eq!(rt.timers().len(), 1000);
        let before = store.stats();
        assert_eq!(rt.advance_ms(1).unwrap(), 1000);
        let syncs = store.stats().syncs - before.syncs;
        // One at a time, each timer costs 4 synced writes: its record, its removal, and the
        // manager's commit and ack of its delivery. Recorded (16 at a time per key) and removed
        // in group-committed batches, only the commit and ack remain per timer.
        assert!(syncs <= 2 * 1000 + 400, "{syncs} syncs for 1000 timers");
        assert!(rt.timers().is_empty());
        assert_eq!(rt.stats().timers_fired, 1000);
    });
}

#[test]
fn a_huge_tail_reloads_in_bounded_batches() {
    isolated("hostile::a_huge_tail_reloads_in_bounded_batches", || {
        const EVENTS_PER_COMMAND: u32 = 100;
        const COMMANDS: u32 = 250;
        const WORK: u32 = 10_000;
        let grow = |rt: &Runtime, id: &str, events: u32, work: u32| {
            rt.command("huge-tail", "big", id, &huge_tail::Grow::Grow { events, work }).unwrap()
        };
        let manifest = manifest(
            "[store]\nsnapshot_every = 0\n",
            "[actors.tail]\nkind = \"aggregate\"\nfile = \"huge_tail.wasm\"\n",
        );
        let journal = Journal::ephemeral().unwrap();
        let mut rt = start(&manifest, &journal);
        for i in 0..COMMANDS {
            let c = grow(&rt, &format!("g{i}"), EVENTS_PER_COMMAND, WORK);
            assert!(matches!(rt.execute(&c).unwrap(), Outcome::Accepted(_)));
        }
        drop(rt);
        let tail: Vec<Event> = {
            let all = journal.run("read", journal.store().read("huge-tail", "big", 1)).unwrap();
            all.into_iter().map(tollgate_runtime::journal::from_stored).collect()
        };
        assert_eq!(tail.len(), (COMMANDS * EVENTS_PER_COMMAND) as usize);
        // The whole tail in one `load` is far over the CPU cap ...
        let actor = loader().load(&fixtures::actor_path("huge_tail"), tollgate_host::ActorKind::Aggregate).unwrap();
        let mut raw = tollgate_host::aggregate::AggregateActor::new(actor, tollgate_host::HostState::new()).unwrap();
        let err = raw
            .load("big", &tollgate_host::aggregate::Base::Initial, &tail)
            .expect_err("one call folding the whole tail");
        assert!(err.to_string().contains("cap"), "{err}");
        // ... yet a restarted node reloads the key and takes the next command ...
        let mut rt = start(&manifest, &journal);
        let c = grow(&rt, "next", 1, 0);
        assert!(matches!(rt.execute(&c).unwrap(), Outcome::Accepted(_)));
        // ... and `tollgate replay` folds it too.
        let report = tollgate_runtime::replay::replay(&manifest, &mut loader(), &journal, false).unwrap();
        let tail_replay = report.aggregates.iter().find(|a| a.actor == "tail").unwrap();
        assert_eq!(tail_replay.events, u64::from(COMMANDS * EVENTS_PER_COMMAND) + 1);
    });
}

fn admission(id: &str, account: &str, offer: &str, units: u64) -> AdmissionRequest {
    crate::edge::request(id, account, offer, units, None)
}

#[test]
fn what_a_failed_decision_held_or_charged_is_undone() {
    isolated("hostile::what_a_failed_decision_held_or_charged_is_undone", || {
        let manifest = manifest(
            "",
            "[actors.rater]\nkind = \"rater\"\nfile = \"rater.wasm\"\n\
             [actors.policy]\nkind = \"policy\"\nfile = \"reserve_then_trap.wasm\"\n\
             links = { charging = \"account\", rating = \"rater\" }\n",
        );
        let journal = Journal::ephemeral().unwrap();
        let mut rt = start(&manifest, &journal);
        open(&mut rt, "ada");
        top_up(&mut rt, "ada", "ada/1", 1_000);
        for (id, offer, why) in [("r1", "trap", "traps after reserving"), ("r2", "spin", "cap")] {
            let err = rt.admit(&admission(id, "ada", offer, 10)).expect_err("the policy failed");
            assert!(err.to_string().contains(why), "{err}");
            let account = rt.account("ada").unwrap().unwrap();
            assert_eq!((account.balance, account.held), (1_000, 0), "no hold without an answer ({offer})");
            let released = rt.events().unwrap().into_iter().rev().find(|e| e.event_type == "released").unwrap();
            assert_eq!(released.command_id, format!("{id}/released-after-failed-decide/{id}"));
            assert_eq!(released.correlation_id, id);
            let event: AccountEvent = tollgate_codec::decode(&released.event_type, &released.payload).unwrap();
            assert!(matches!(event, AccountEvent::Released { released: 10, .. }), "{event:?}");
        }
        assert_eq!(rt.stats().holds_released, 2);
        // A repeat of a failed request is not answered with its released grant...
        match rt.admit(&admission("r1", "ada", "trap", 10)).unwrap() {
            Decision::Denied(d) => {
                assert_eq!(d.code, ResultCode::EndUserServiceDenied);
                assert!(d.message.contains("its hold was released"), "{}", d.message);
            }
            Decision::Granted(g) => panic!("granted a released hold: {g:?}"),
        }
        // ...and its id used for another reservation (another offer) is a conflict.
        match rt.admit(&admission("r1", "ada", "ok", 10)).unwrap() {
            Decision::Denied(d) => {
                assert_eq!(d.code, ResultCode::EndUserServiceDenied);
                assert!(d.message.contains("already used for another command"), "{}", d.message);
            }
            Decision::Granted(g) => panic!("granted under a reused id: {g:?}"),
        }
        assert_eq!(rt.account("ada").unwrap().unwrap().held, 0);
        // The next request works and holds what it was granted.
        match rt.admit(&admission("r3", "ada", "ok", 10)).unwrap() {
            Decision::Granted(g) => assert_eq!(g.grant.granted_units, 10),
            Decision::Denied(d) => panic!("denied: {}", d.message),
        }
        assert_eq!(rt.account("ada").unwrap().unwrap().held, 10);

        // Debits and direct debits of a failed decision are refunded, newest first.
        let err = rt.admit(&admission("r4", "ada", "charge-then-trap", 10)).expect_err("the policy failed");
        assert!(err.to_string().contains("traps after charging"), "{err}");
        let account = rt.account("ada").unwrap().unwrap();
        assert_eq!((account.balance, account.held), (1_000, 10), "nothing of r4 is charged or held");
        let r4: Vec<_> = rt.events().unwrap().into_iter().filter(|e| e.correlation_id == "r4").collect();
        let seen: Vec<_> = r4.iter().map(|e| (e.event_type.as_str(), e.command_id.as_str())).collect();
        assert_eq!(
            seen,
            [
                ("reserved", "r4"),
                ("debited", "r4/debit"),
                ("direct-debited", "r4/sms"),
                ("refunded", "r4/refunded-after-failed-decide/r4/sms"),
                ("refunded", "r4/refunded-after-failed-decide/r4/debit"),
            ]
        );
        let refunds: Vec<AccountEvent> =
            r4[3..].iter().map(|e| tollgate_codec::decode(&e.event_type, &e.payload).unwrap()).collect();
        assert!(
            matches!(&refunds[..], [AccountEvent::Refunded { amount: 7, reason: a }, AccountEvent::Refunded { amount: 5, reason: b }]
                if a.contains("decision failed") && b.contains("traps after charging")),
            "{refunds:?}"
        );
        let stats = rt.stats();
        assert_eq!((stats.holds_released, stats.charges_refunded), (2, 2), "the debit closed r4's hold");
        // A repeat is refused: its debit was refunded (its hold was closed by the debit).
        match rt.admit(&admission("r4", "ada", "charge-then-trap", 10)).unwrap() {
            Decision::Denied(d) => assert!(d.message.contains("its charge was refunded"), "{}", d.message),
            Decision::Granted(g) => panic!("granted a refunded request: {g:?}"),
        }
        assert_eq!(rt.account("ada").unwrap().unwrap().balance, 1_000);

        // A policy cannot take the id of an undo, so an undo is never answered as done unsent.
        match rt.admit(&admission("r5", "ada", "forge-then-trap", 10)).unwrap() {
            Decision::Denied(d) => {
                assert_eq!(d.code, ResultCode::EndUserServiceDenied);
                assert!(d.message.contains("only the runtime's undos use"), "{}", d.message);
            }
            Decision::Granted(g) => panic!("granted: {g:?}"),
        }
        assert_eq!(rt.account("ada").unwrap().unwrap().balance, 1_000, "the forged direct debit took nothing");
    });
}

#[test]
fn a_policy_looping_over_charging_calls_is_stopped_by_its_budget_and_its_hold_released() {
    isolated("hostile::a_policy_looping_over_charging_calls_is_stopped_by_its_budget_and_its_hold_released", || {
        let manifest = manifest(
            "[limits]\ncharging_calls = 8\n",
            "[actors.rater]\nkind = \"rater\"\nfile = \"rater.wasm\"\n\
             [actors.policy]\nkind = \"policy\"\nfile = \"reserve_then_trap.wasm\"\n\
             links = { charging = \"account\", rating = \"rater\" }\n",
        );
        let journal = Journal::ephemeral().unwrap();
        let mut rt = start_with_limits(&manifest, &journal);
        open(&mut rt, "ada");
        top_up(&mut rt, "ada", "ada/1", 1_000);
        let started = std::time::Instant::now();
        let err = rt.admit(&admission("r1", "ada", "check-forever", 10)).expect_err("the policy was stopped");
        println!(
            "figure: a policy checking the balance in a loop held the node {:.3} s",
            started.elapsed().as_secs_f64()
        );
        assert!(err.to_string().contains("over its budget of 8 calls to `tollgate:billing/charging`"), "{err}");
        assert!(err.to_string().contains("`limits.charging_calls`"), "{err}");
        let account = rt.account("ada").unwrap().unwrap();
        assert_eq!((account.balance, account.held), (1_000, 0), "the reservation it made first was released");
        assert_eq!(rt.stats().holds_released, 1);
        match rt.admit(&admission("r2", "ada", "ok", 10)).unwrap() {
            Decision::Granted(g) => assert_eq!(g.grant.granted_units, 10),
            Decision::Denied(d) => panic!("denied: {}", d.message),
        }
    });
}

#[test]
fn the_runtimes_namespaces_are_out_of_reach() {
    isolated("hostile::the_runtimes_namespaces_are_out_of_reach", || {
        let manifest = manifest("", "[actors.intruder]\nkind = \"projector\"\nfile = \"namespace_intruder.wasm\"\n");
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file:{}", dir.path().display());
        let count = |rt: &Runtime, account: &str| -> u64 {
            let bytes = rt.host_state("intruder").unwrap().kv_get("top-ups", account).expect("projected");
            serde_json::from_slice(&bytes).unwrap()
        };
        {
            let journal = Journal::open(&url).unwrap();
            let mut rt = start(&manifest, &journal);
            open(&mut rt, "ada");
            top_up(&mut rt, "ada", "ada/1", 5);
            assert_eq!(count(&rt, "ada"), 1);
            // The projector writes `tollgate.meta`: refused, nothing of the delivery committed.
            top_up(&mut rt, "ada", "ada/2", 13);
            let reasons = dead_letters(&journal, "intruder");
            assert_eq!(reasons.len(), 1, "{reasons:?}");
            assert!(
                reasons[0].contains("may not write bucket `tollgate.meta`")
                    && reasons[0].contains("reserved for the runtime"),
                "{}",
                reasons[0]
            );
            assert_eq!(count(&rt, "ada"), 1, "the refused delivery's own writes are dropped too");
            let meta = rt.host_state("intruder").unwrap().kv_get("tollgate.meta", "buckets").unwrap();
            assert_eq!(meta, br#"["top-ups"]"#, "the runtime's bucket is put back");
            // Clients cannot forge timers or counters, nor command the runtime's streams.
            for stream in ["tollgate.timers", "tollgate.stats"] {
                let err =
                    rt.report(stream, "storm/x", "c", "forged", &AccountEvent::ToppedUp { amount: 1 }).unwrap_err();
                assert!(
                    matches!(err, RuntimeError::Report { .. }) && err.to_string().contains("runtime's own"),
                    "{err}"
                );
                let c =
                    rt.command(stream, "x", "forged", &AccountCommand::TopUp { amount: Money::new(1, "EUR") }).unwrap();
                let err = rt.execute(&c).unwrap_err();
                assert!(matches!(err, RuntimeError::Reserved { .. }), "{err}");
            }
        }
        // The node starts again over the same store, and the next request works.
        let journal = Journal::open(&url).unwrap();
        let mut rt = start(&manifest, &journal);
        top_up(&mut rt, "ada", "ada/3", 7);
        assert_eq!(count(&rt, "ada"), 2);
        assert_eq!(balance(&rt, "ada"), 25);
        let report = tollgate_runtime::replay::replay(&manifest, &mut loader(), &journal, false).unwrap();
        assert_eq!(report.projections.len(), 1);
    });
}

#[test]
fn an_upcast_that_moves_an_event_is_refused() {
    isolated("hostile::an_upcast_that_moves_an_event_is_refused", || {
        let manifest = manifest("", "[actors.lying]\nkind = \"aggregate\"\nfile = \"lying_upcaster.wasm\"\n");
        let journal = Journal::ephemeral().unwrap();
        let mut rt = start(&manifest, &journal);
        let old = |event_type: &str| NewEvent {
            event_type: event_type.into(),
            schema_version: 1,
            content_type: "application/json".into(),
            payload: b"null".to_vec(),
            command_id: format!("old-{event_type}"),
            command_digest: Vec::new(),
            correlation_id: "c".into(),
            causation_id: String::new(),
            time_ms: 1,
        };
        let note = |rt: &mut Runtime, key: &str| {
            let c = rt.command("lying", key, &format!("{key}/note"), &lying_upcaster::Note::Note).unwrap();
            rt.execute(&c)
        };
        let store: &dyn EventStore = journal.store();
        for field in ["stream", "key", "sequence", "time", "command-id", "correlation-id", "causation-id"] {
            let key = format!("k-{field}");
            journal.run("append", store.append("lying", &key, ExpectedVersion::Exact(0), vec![old(field)])).unwrap();
            let err = note(&mut rt, &key).expect_err("a falsified upcast");
            assert!(err.to_string().contains(&format!("changed the event's `{field}`")), "{field}: {err}");
        }
        // An honest upcast still loads, and the next request works.
        journal.run("append", store.append("lying", "honest", ExpectedVersion::Exact(0), vec![old("noted")])).unwrap();
        assert!(matches!(note(&mut rt, "honest").unwrap(), Outcome::Accepted(_)));
        assert!(matches!(note(&mut rt, "fresh").unwrap(), Outcome::Accepted(_)));
        // `tollgate replay` refuses the log with the same reason.
        let err = tollgate_runtime::replay::replay(&manifest, &mut loader(), &journal, false).unwrap_err();
        assert!(err.to_string().contains("changed the event's"), "{err}");
    });
}

#[test]
fn a_projector_writing_hundreds_of_mib_in_one_delivery_is_dead_lettered_and_the_node_stays_small() {
    isolated(
        "hostile::a_projector_writing_hundreds_of_mib_in_one_delivery_is_dead_lettered_and_the_node_stays_small",
        || {
            use bucket_hog::{HOG_BUCKET, HOG_UNIT, LOG_FOREVER};
            let count = |rt: &Runtime, account: &str| -> Option<u64> {
                let bytes = rt.host_state("hog").unwrap().kv_get(bucket_hog::BUCKET, account)?;
                Some(serde_json::from_slice(&bytes).unwrap())
            };
            let hog = "[actors.hog]\nkind = \"projector\"\nfile = \"bucket_hog.wasm\"\n";
            let defaults = manifest("", hog);
            let journal = Journal::ephemeral().unwrap();
            let mut rt = start(&defaults, &journal);
            open(&mut rt, "ada");
            top_up(&mut rt, "ada", "ada/1", 1);
            assert_eq!(count(&rt, "ada"), Some(1));
            // 400 entries of 1 MiB in one delivery (unbounded, they grew a node by 2 GiB): each of
            // the delivery's attempts is stopped at 16 MiB, then it is dead-lettered.
            let started = std::time::Instant::now();
            top_up(&mut rt, "ada", "ada/2", 400 * HOG_UNIT);
            println!(
                "figure: 400 MiB in one delivery: its 5 attempts stopped in {:.3} s",
                started.elapsed().as_secs_f64()
            );
            let reasons = dead_letters(&journal, "hog");
            assert_eq!(reasons.len(), 1, "{reasons:?}");
            assert!(
                reasons[0].contains("over its budget of 16777216 bytes of key-value writes")
                    && reasons[0].contains("`limits.kv_write_bytes`"),
                "{}",
                reasons[0]
            );
            // A delivery looping over logging: each attempt stopped by its log budget.
            let started = std::time::Instant::now();
            top_up(&mut rt, "ada", "ada/3", LOG_FOREVER);
            let held = started.elapsed();
            println!("figure: logging in a loop: its 5 attempts held the node {:.3} s", held.as_secs_f64());
            assert!(held < std::time::Duration::from_secs(10), "{held:?}");
            let reasons = dead_letters(&journal, "hog");
            assert!(reasons.len() == 2 && reasons[1].contains("`limits.log_bytes`"), "{reasons:?}");
            // Nothing of the refused deliveries was kept, in memory or in the store, and the next
            // delivery works.
            assert_eq!(count(&rt, "ada"), Some(1));
            assert!(!rt.host_state("hog").unwrap().kv_snapshot().contains_key(HOG_BUCKET));
            let stored = journal.run("read projection", journal.store().kv_list("hog", HOG_BUCKET)).unwrap();
            assert!(stored.is_empty(), "{} hog entries stored", stored.len());
            top_up(&mut rt, "ada", "ada/4", 5);
            assert_eq!(count(&rt, "ada"), Some(2));
            assert_eq!(balance(&rt, "ada"), 1 + 400 * HOG_UNIT + LOG_FOREVER + 5, "the account is not the projector's");
            drop(rt);

            // The bounds are the manifest's: 3 writes per delivery.
            let bounded = manifest("[limits]\nkv_writes = 3\n", hog);
            let journal = Journal::ephemeral().unwrap();
            let mut rt = start_with_limits(&bounded, &journal);
            open(&mut rt, "bo");
            top_up(&mut rt, "bo", "bo/1", 2 * HOG_UNIT);
            top_up(&mut rt, "bo", "bo/2", 3 * HOG_UNIT);
            let reasons = dead_letters(&journal, "hog");
            assert!(reasons.len() == 1 && reasons[0].contains("over its budget of 3 key-value writes"), "{reasons:?}");
            assert_eq!(count(&rt, "bo"), Some(1), "the count and two entries fit; the count and three do not");
        },
    );
}
