//! The aggregate's logic, natively (no component, no host).

use {{crate}}::{Loyalty, PointsCommand};
use tollgate_sdk::Command;

#[test]
fn earning_emits_earned_and_overspending_is_refused() {
    let earn = Command::new("loyalty", "alice", "c1", &PointsCommand::Earn { points: 5 }).unwrap();
    let drafts = tollgate_sdk::aggregate::handle::<Loyalty>(None, &earn).unwrap();
    assert_eq!(drafts[0].event_type, "earned");
    let redeem = Command::new("loyalty", "alice", "c2", &PointsCommand::Redeem { points: 9 }).unwrap();
    let rejection = tollgate_sdk::aggregate::handle::<Loyalty>(None, &redeem).unwrap_err();
    assert_eq!(rejection.code, "insufficient-points");
}
