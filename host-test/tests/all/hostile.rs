//! Hostile guests cannot hold the host: a sleep returns at once, a clock-polling loop and
//! time in host imports are judged by fuel alone, and logs and stderr stay bounded per call.

use crate::fixture;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_host::bindings::policy::tollgate::admission::types::{AdmissionRequest, Decision};
use tollgate_host::bindings::policy::tollgate::billing::charging::{ChargingError, DebitOutcome, ReserveRequest};
use tollgate_host::bindings::policy::tollgate::billing::rating::{Rated, RatingError, RatingRequest};
use tollgate_host::bindings::rater::tollgate::billing::types::{AccountStatus, Grant, Money, ResultCode, Usage};
use tollgate_host::services::PolicyServices;
use tollgate_host::state::{LOG_BYTES_PER_CALL, LOG_LINE_CAP, LOG_LINES_PER_CALL};
use tollgate_host::{AggregateActor, HostError, HostState, PolicyActor};
use tollgate_host_test::Recorder;
use tollgate_host_test::fixtures::{ADMISSION_POLICY, LOG_FLOODER, SLEEPER};
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
fn polling_the_clock_for_an_hour_hits_the_cpu_cap_and_the_next_call_works() {
    let test = AggregateTest::from_actor(fixture(SLEEPER)).unwrap();
    let started = Instant::now();
    let (mut then, error) = test.when(SleeperCommand::WaitAnHour).then_expect_error();
    assert!(matches!(error, HostError::CpuCap { limit_ms: 100, .. }), "{error}");
    assert!(started.elapsed() < PATIENCE, "the poll loop held the host for {:?}", started.elapsed());
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
    let mut then = test.when(Flood::Log { mib: 32 }).then_expect_events([Flooded::Flooded { mib: 32 }]);
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
    let dropped = 32 * 16 - guest.len();
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
    let command = tollgate_host::aggregate::json_command("flood", "k", "c1", &Flood::Log { mib: 4 }, 0).unwrap();
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
    let (then, error) = test.when(Flood::ShoutThenPanic { kib: 4096 }).then_expect_error();
    let HostError::Trap { stderr, .. } = &error else { panic!("expected a trap, got {error}") };
    assert!(stderr.contains("log-flooder was told to panic"), "{}", &stderr[stderr.len().saturating_sub(300)..]);
    assert!(stderr.starts_with('[') && stderr.contains("earlier bytes of stderr dropped"), "{}", &stderr[..80]);
    assert!(stderr.len() <= (64 << 10) + 100, "{} bytes kept", stderr.len());
    then.and_when(Flood::Ok).then_expect_events([Flooded::Ok]);
}
