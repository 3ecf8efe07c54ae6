//! Hostile guests cannot hold the host: a sleep returns at once, time the host spends in an
//! import is not charged to the guest's CPU cap, logs and stderr stay bounded per call, and a
//! guest looping over an import (the clock, logging, stderr, key-value storage) is stopped by
//! the import's budget within about the CPU cap, with nothing of what the call wrote kept.

use crate::fixture;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_billing_model::account::AccountEvent;
use tollgate_host::bindings::policy::tollgate::admission::types::{AdmissionRequest, Decision};
use tollgate_host::bindings::policy::tollgate::billing::charging::{ChargingError, DebitOutcome, ReserveRequest};
use tollgate_host::bindings::policy::tollgate::billing::rating::{Rated, RatingError, RatingRequest};
use tollgate_host::bindings::rater::tollgate::billing::types::{AccountStatus, Grant, Money, ResultCode, Usage};
use tollgate_host::services::PolicyServices;
use tollgate_host::state::{LOG_BYTES_PER_CALL, LOG_LINE_CAP, LOG_LINES_PER_CALL, MAX_RESOURCES};
use tollgate_host::{
    Actor, AggregateActor, HostEngine, HostError, HostState, ImportBudgets, Limits, PolicyActor, ProjectorActor,
};
use tollgate_host_test::Recorder;
use tollgate_host_test::fixtures::{self, ADMISSION_POLICY, BUCKET_HOG, LOG_FLOODER, SLEEPER};
use tollgate_host_test::testing::AggregateTest;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum SleeperCommand {
    Ok,
    Sleep,
    WaitAnHour,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum Slept {
    Ok,
    Slept,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum Flood {
    Ok,
    Log { mib: u32 },
    ShoutThenPanic { kib: u32 },
    LogForever { kib: u32 },
    ShoutForever { kib: u32 },
    PrintForever { kib: u32 },
    RandomForever { kib: u32 },
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum Flooded {
    Ok,
    Flooded { mib: u32 },
}

/// Far below the hour the guest asks for, far above any honest call on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

#[test]
fn an_hour_of_sleep_returns_at_once_and_the_clock_stays_the_hosts() {
    let test = AggregateTest::from_actor(fixture(SLEEPER)).unwrap();
    test.host_state().clock().set_ms(1_000);
    let started = Instant::now();
    let mut then = test.when(SleeperCommand::Sleep).then_expect_events([Slept::Slept]);
    assert!(started.elapsed() < PATIENCE, "the sleep held the host for {:?}", started.elapsed());
    assert_eq!(then.test().host_state().clock().now_ms(), 1_000, "a guest's sleep does not move the host's clock");
    then.and_when(SleeperCommand::Ok).then_expect_events([Slept::Ok]);
}

#[test]
fn polling_the_clock_for_an_hour_is_stopped_by_the_clock_budget_and_the_next_call_works() {
    let test = AggregateTest::from_actor(fixture(SLEEPER)).unwrap();
    let started = Instant::now();
    let (mut then, error) = test.when(SleeperCommand::WaitAnHour).then_expect_error();
    let held = started.elapsed();
    println!("polling the clock: held its instance {:.3} s", held.as_secs_f64());
    assert!(matches!(error, HostError::ImportBudget { field: "clock_calls", .. }), "{error}");
    assert!(held < CUT_WITHIN, "the poll loop held the host for {held:?}");
    let created = then.host().actor().instances_created();
    let mut then = then.and_when(SleeperCommand::Ok).then_expect_events([Slept::Ok]);
    assert_eq!(then.host().actor().instances_created(), created + 1, "a fresh instance served the next call");
}

/// Serves a policy's imports slowly: each `balance-check` takes three CPU caps of host time,
/// then answers that the account is unknown.
struct SlowHost;

const SLOW: Duration = Duration::from_millis(300);

fn not_served() -> ChargingError {
    ChargingError { code: ResultCode::EndUserServiceDenied, message: "not served by this test host".into() }
}

impl PolicyServices for SlowHost {
    fn rate(&self, _: RatingRequest) -> Result<Rated, RatingError> {
        Err(RatingError::InvalidTariff("not served by this test host".into()))
    }
    fn reserve(&self, _: ReserveRequest) -> Result<Grant, ChargingError> {
        Err(not_served())
    }
    fn debit(&self, _: &str, _: &str, _: &str, _: u64) -> Result<DebitOutcome, ChargingError> {
        Err(not_served())
    }
    fn release(&self, _: &str, _: &str, _: &str) -> Result<Money, ChargingError> {
        Err(not_served())
    }
    fn direct_debit(&self, _: &str, _: &str, _: Money, _: &str) -> Result<AccountStatus, ChargingError> {
        Err(not_served())
    }
    fn balance_check(&self, account: &str) -> Result<AccountStatus, ChargingError> {
        std::thread::sleep(SLOW);
        Err(ChargingError { code: ResultCode::UserUnknown, message: format!("no account `{account}`") })
    }
    fn price_enquiry(&self, _: &str, _: Usage) -> Result<Rated, ChargingError> {
        Err(not_served())
    }
}

#[test]
fn time_spent_in_host_imports_does_not_count_against_the_cpu_cap() {
    let policy = fixture(ADMISSION_POLICY);
    assert!(SLOW.as_millis() as u64 > policy.engine().limits().cpu_ms, "the host must be slower than the cap");
    let mut actor = PolicyActor::new(policy, HostState::new(), Arc::new(SlowHost)).unwrap();
    let request = AdmissionRequest {
        request_id: "r1".into(),
        subscriber: "alice".into(),
        offer: "voice".into(),
        rating_group: 1,
        requested_units: 1,
        country: None,
    };
    for _ in 0..2 {
        match actor.decide(&request) {
            Ok(Decision::Denied(d)) => assert_eq!(d.code, ResultCode::UserUnknown),
            Ok(Decision::Granted(_)) => panic!("granted by a host that knows no account"),
            Err(e) => panic!("the host's own time was charged to the guest: {e}"),
        }
    }
}

#[test]
fn a_flood_of_logs_is_cut_to_the_per_call_budget_and_the_cut_is_marked() {
    let test = AggregateTest::from_actor(fixture(LOG_FLOODER)).unwrap();
    let mut then = test.when(Flood::Log { mib: 3 }).then_expect_events([Flooded::Flooded { mib: 3 }]);
    let logs = then.test().recorder().logs();
    let (guest, marker): (Vec<_>, Vec<_>) = logs.iter().partition(|l| l.context == "log-flooder");
    assert!(!guest.is_empty() && guest.len() <= LOG_LINES_PER_CALL as usize, "{} lines kept", guest.len());
    let kept: usize = guest.iter().map(|l| l.context.len() + l.message.len()).sum();
    assert!(kept <= LOG_BYTES_PER_CALL + LOG_LINE_CAP + 64, "{kept} bytes kept");
    for line in &guest {
        assert!(
            line.message.ends_with(&format!(" [{} bytes cut]", (64 << 10) - LOG_LINE_CAP)),
            "{}",
            &line.message[..64]
        );
    }
    assert_eq!(marker.len(), 1, "one marker line per call: {marker:?}");
    assert_eq!(marker[0].level, "warn");
    let dropped = 3 * 16 - guest.len();
    assert!(marker[0].message.contains(&format!("{dropped} lines")), "{}", marker[0].message);

    // The budget is per call: the next call logs again.
    then.test().recorder().reset();
    let mut then = then.and_when(Flood::Log { mib: 1 }).then_expect_events([Flooded::Flooded { mib: 1 }]);
    let logs = then.test().recorder().logs();
    assert_eq!(logs.len(), 16, "the 16 lines of 1 MiB fit a fresh call's budget: {}", logs.len());
}

#[test]
fn a_runtime_keeps_no_calls_and_no_log_lines() {
    // A runtime's host state has no observer: what the actor logged before one is attached is
    // gone, not kept somewhere for later.
    let state = HostState::new();
    let mut actor = AggregateActor::new(fixture(LOG_FLOODER), state.clone()).unwrap();
    actor.describe().unwrap();
    let command = tollgate_host::aggregate::json_command("flood", "k", "c1", &Flood::Log { mib: 2 }, 0).unwrap();
    assert!(actor.execute(0, &command).unwrap().is_ok(), "accepted");
    let recorder = Recorder::attach(&state);
    assert_eq!(recorder.calls(), vec![]);
    assert_eq!(recorder.logs(), vec![], "nothing was kept before the recorder was attached");
    assert!(!state.observe(Arc::new(Recorder::default())), "a second observer is refused");
    assert!(actor.execute(0, &command).unwrap().is_ok(), "accepted");
    assert!(!recorder.logs().is_empty(), "the attached recorder sees the next call's lines");
}

#[test]
fn stderr_over_its_cap_keeps_the_tail_with_the_panic_message() {
    let test = AggregateTest::from_actor(fixture(LOG_FLOODER)).unwrap();
    let (then, error) = test.when(Flood::ShoutThenPanic { kib: 512 }).then_expect_error();
    let HostError::Trap { stderr, .. } = &error else { panic!("expected a trap, got {error}") };
    assert!(stderr.contains("log-flooder was told to panic"), "{}", &stderr[stderr.len().saturating_sub(300)..]);
    assert!(stderr.starts_with('[') && stderr.contains("earlier bytes of stderr dropped"), "{}", &stderr[..80]);
    assert!(stderr.len() <= (64 << 10) + 100, "{} bytes kept", stderr.len());
    then.and_when(Flood::Ok).then_expect_events([Flooded::Ok]);
}

/// How long a call over an import budget may hold its instance: 25 times the CPU cap of
/// 100 ms, for a loaded 2-core machine (it takes a few ms of host work), and half the
/// wall-clock backstop, so that a pass means the budget stopped it, not the backstop.
const CUT_WITHIN: Duration = Duration::from_millis(2_500);

/// Runs `command` on a fresh log-flooder, expects it stopped by `field`'s budget (naming
/// `import`) within [`CUT_WITHIN`], prints how long it held the instance, and checks that the
/// next call runs on a fresh instance.
fn stopped_by_budget(command: Flood, import: &str, field: &str) {
    let test = AggregateTest::from_actor(fixture(LOG_FLOODER)).unwrap();
    let started = Instant::now();
    let described = format!("{command:?}");
    let (mut then, error) = test.when(command).then_expect_error();
    let held = started.elapsed();
    println!("{described}: held its instance {:.3} s, stopped by `limits.{field}`", held.as_secs_f64());
    match &error {
        HostError::ImportBudget { import: i, field: f, .. } => assert_eq!((*i, *f), (import, field), "{error}"),
        other => panic!("{described}: expected the `{field}` budget to stop it, got: {other}"),
    }
    let message = error.to_string();
    let package = import.split('/').next().unwrap();
    assert!(message.contains(&format!("`limits.{field}`")) && message.contains(package), "{message}");
    assert!(error.is_trap(), "the instance is discarded");
    assert!(held < CUT_WITHIN, "{described} held its instance {held:?}");
    let created = then.host().actor().instances_created();
    let mut then = then.and_when(Flood::Ok).then_expect_events([Flooded::Ok]);
    assert_eq!(then.host().actor().instances_created(), created + 1, "a fresh instance served the next call");
}

#[test]
fn logging_the_same_mib_in_a_loop_is_stopped_by_the_log_budget_within_about_the_cpu_cap() {
    stopped_by_budget(Flood::LogForever { kib: 1024 }, "wasi:logging/logging", "log_bytes");
}

#[test]
fn logging_empty_lines_in_a_loop_is_stopped_by_the_log_call_budget() {
    stopped_by_budget(Flood::LogForever { kib: 0 }, "wasi:logging/logging", "log_calls");
}

#[test]
fn writing_stderr_or_stdout_in_a_loop_is_stopped_by_the_output_budget() {
    let import = "wasi:cli/stdout and wasi:cli/stderr";
    stopped_by_budget(Flood::ShoutForever { kib: 1024 }, import, "output_bytes");
    stopped_by_budget(Flood::PrintForever { kib: 64 }, import, "output_bytes");
}

#[test]
fn asking_for_random_bytes_in_a_loop_is_stopped_by_the_random_budget() {
    stopped_by_budget(Flood::RandomForever { kib: 64 }, "wasi:random", "random_bytes");
}

/// A `topped-up` event of `amount` for account `key`, as the projector reads it.
fn topped_up(key: &str, amount: i64) -> tollgate_host::aggregate::Event {
    tollgate_host_test::testing::event("account", key, &AccountEvent::ToppedUp { amount })
}

/// The bucket-hog's honest count for `key`.
fn count(state: &HostState, key: &str) -> Option<u64> {
    state.kv_get(bucket_hog::BUCKET, key).map(|v| serde_json::from_slice(&v).unwrap())
}

#[test]
fn a_projector_stopped_by_any_budget_keeps_none_of_the_calls_writes() {
    let state = HostState::new();
    let mut projector = ProjectorActor::new(fixture(BUCKET_HOG), state.clone()).unwrap();
    projector.project(&[topped_up("ada", 1)]).unwrap().expect("projected");
    assert_eq!(count(&state, "ada"), Some(1));
    for (amount, field) in [
        (400 * bucket_hog::HOG_UNIT, "kv_write_bytes"),
        (bucket_hog::LOG_FOREVER, "log_bytes"),
        (bucket_hog::SHOUT_FOREVER, "output_bytes"),
    ] {
        let started = Instant::now();
        let error = projector.project(&[topped_up("ada", amount)]).unwrap_err();
        let held = started.elapsed();
        println!("bucket-hog top-up {amount}: held its instance {:.3} s", held.as_secs_f64());
        assert!(matches!(&error, HostError::ImportBudget { field: f, .. } if *f == field), "{amount}: {error}");
        assert!(held < CUT_WITHIN, "{amount}: held its instance {held:?}");
        assert_eq!(count(&state, "ada"), Some(1), "{amount}: the trapped call's count is not kept");
        assert!(!state.kv_snapshot().contains_key(bucket_hog::HOG_BUCKET), "{amount}: nothing of the hog is kept");
    }
    projector.project(&[topped_up("ada", 1)]).unwrap().expect("projected");
    assert_eq!(count(&state, "ada"), Some(2), "the next delivery works");
}

#[test]
fn an_instance_holds_a_bounded_number_of_host_resources() {
    let state = HostState::new();
    let mut projector = ProjectorActor::new(fixture(BUCKET_HOG), state.clone()).unwrap();
    let refused = projector.project(&[topped_up("ada", bucket_hog::HOARD)]).unwrap().unwrap_err();
    assert!(
        refused.message.contains(&format!("at most {MAX_RESOURCES} host resources")),
        "the handle past the cap is refused: {}",
        refused.message
    );
    assert_eq!(count(&state, "ada"), None, "a refused delivery keeps none of its writes");
}

#[test]
fn key_value_writes_are_bounded_per_delivery_and_a_batch_of_deliveries_gets_their_sum() {
    let imports = ImportBudgets { kv_writes: 6, ..ImportBudgets::default() };
    let engine = HostEngine::new(Limits { imports, ..Limits::default() }).unwrap();
    let actor = Actor::load(&engine, fixtures::actor_path(BUCKET_HOG)).unwrap();
    let state = HostState::new();
    let mut projector = ProjectorActor::new(actor, state.clone()).unwrap();
    // The count and 5 entries: 6 writes.
    projector.project(&[topped_up("ada", 5 * bucket_hog::HOG_UNIT)]).unwrap().expect("projected");
    let error = projector.project(&[topped_up("bo", 6 * bucket_hog::HOG_UNIT)]).unwrap_err();
    assert!(error.to_string().contains("over its budget of 6 key-value writes"), "{error}");
    assert!(error.to_string().contains("`limits.kv_writes`"), "{error}");
    assert_eq!(count(&state, "bo"), None);
    // Two deliveries at once (`tollgate replay`) may write what two deliveries may.
    let events = [topped_up("bo", 6 * bucket_hog::HOG_UNIT), topped_up("cy", 1)];
    projector.project_deliveries(&events, 2).unwrap().expect("projected");
    assert_eq!((count(&state, "bo"), count(&state, "cy")), (Some(1), Some(1)));
}
