//! A misbehaving actor gets its own clear error, appends nothing, and the next call runs on a
//! fresh instance.

use crate::fixture;
use serde::{Deserialize, Serialize};
use tollgate_host::HostError;
use tollgate_host_test::fixtures::MISBEHAVING;
use tollgate_host_test::testing::AggregateTest;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum Misbehave {
    Ok,
    Panic,
    Spin,
    Grow,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum Happened {
    Ok,
}

/// Runs `command`, checks its error, then proves a fresh instance serves the next call.
fn misbehave_then_recover(command: Misbehave, check: impl FnOnce(&HostError)) {
    let test = AggregateTest::from_actor(fixture(MISBEHAVING)).unwrap().given([Happened::Ok]);
    let (mut then, error) = test.when(command).then_expect_error();
    check(&error);
    assert!(error.is_trap(), "{error}");
    let created = then.host().actor().instances_created();
    let mut then = then.and_when(Misbehave::Ok).then_expect_events([Happened::Ok]);
    assert_eq!(then.host().actor().instances_created(), created + 1, "a fresh instance served the next call");
    assert_eq!(then.stream::<Happened>().len(), 2, "the failed command appended nothing");
}

#[test]
fn a_panic_is_a_trap_carrying_the_panic_message() {
    misbehave_then_recover(Misbehave::Panic, |e| match e {
        HostError::Trap { function, stderr, .. } => {
            assert_eq!(function, "execute");
            assert!(stderr.contains("misbehaving fixture was told to panic"), "stderr: {stderr}");
            assert!(e.to_string().contains("misbehaving fixture was told to panic"), "{e}");
        }
        other => panic!("expected a trap, got {other}"),
    });
}

#[test]
fn an_endless_loop_hits_the_cpu_cap() {
    misbehave_then_recover(Misbehave::Spin, |e| {
        assert!(matches!(e, HostError::CpuCap { limit_ms: 100, .. }), "{e}");
        assert!(e.to_string().contains("CPU cap of 100 ms"), "{e}");
    });
}

#[test]
fn endless_allocation_hits_the_memory_cap() {
    misbehave_then_recover(Misbehave::Grow, |e| {
        assert!(matches!(e, HostError::MemoryCap { .. }), "{e}");
        assert!(e.to_string().contains("memory cap of 67108864 bytes"), "{e}");
    });
}
