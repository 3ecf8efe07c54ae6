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

#[test]
fn commands_and_events_decode_from_a_type_and_a_payload() {
    // Plain serde enums; `#[serde(untagged)]` wrappers or `tag`/`content` fail here, not at the edge.
    tollgate_sdk::codec::check_enum::<PointsCommand>().unwrap();
    tollgate_sdk::codec::check_enum::<{{crate}}::PointsEvent>().unwrap();
}
