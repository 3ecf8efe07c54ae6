//! The policy's logic, natively.

#[test]
fn only_listed_offers_are_allowed() {
    assert!({{crate}}::allowed("voice, sms", "sms"));
    assert!(!{{crate}}::allowed("voice,sms", "video"));
}
