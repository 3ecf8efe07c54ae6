//! The process manager's logic, natively.

#[test]
fn only_big_earnings_get_a_tenth_as_bonus() {
    assert_eq!({{crate}}::bonus(99), None);
    assert_eq!({{crate}}::bonus(150), Some(15));
}

#[test]
fn every_event_decodes_from_a_type_and_a_payload() {
    // A plain serde enum; `#[serde(untagged)]` wrappers or `tag`/`content` fail here, not at the edge.
    tollgate_sdk::codec::check_enum::<{{crate}}::PointsEvent>().unwrap();
}
