//! The projector's logic, natively.

use {{crate}}::{PointsEvent, fold};

#[test]
fn earning_adds_and_redeeming_subtracts() {
    let balance = fold(0, &PointsEvent::Earned { points: 10 });
    assert_eq!(fold(balance, &PointsEvent::Redeemed { points: 4 }), 6);
}

#[test]
fn every_event_decodes_from_a_type_and_a_payload() {
    // A plain serde enum; `#[serde(untagged)]` wrappers or `tag`/`content` fail here, not at the edge.
    tollgate_sdk::codec::check_enum::<PointsEvent>().unwrap();
}
