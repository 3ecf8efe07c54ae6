//! The process manager's logic, natively.

#[test]
fn only_big_earnings_get_a_tenth_as_bonus() {
    assert_eq!({{crate}}::bonus(99), None);
    assert_eq!({{crate}}::bonus(150), Some(15));
}
