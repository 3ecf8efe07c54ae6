//! The rater's logic, natively.

#[test]
fn price_is_units_times_unit_price_and_overflow_is_none() {
    assert_eq!({{crate}}::price(30, 2), Some(60));
    assert_eq!({{crate}}::price(u64::MAX, 2), None);
    assert_eq!({{crate}}::price(u64::MAX, 0), Some(0));
}
