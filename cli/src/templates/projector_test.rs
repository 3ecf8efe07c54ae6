//! The projector's logic, natively.

use {{crate}}::{PointsEvent, fold};

#[test]
fn earning_adds_and_redeeming_subtracts() {
    let balance = fold(0, &PointsEvent::Earned { points: 10 });
    assert_eq!(fold(balance, &PointsEvent::Redeemed { points: 4 }), 6);
}
