//! Rating properties over tariffs, counters and unit counts from the whole range: no panic;
//! the total is the sum of the lines and the plan's price (what the account will hold and
//! charge); per-use tariffs rate N units as N single uses one after another.

use proptest::prelude::*;
use rater::rate;
use tollgate_billing_model::pricing::{self, PriceTerm};
use tollgate_sdk::rater::{Counter, PriceTerm as WitTerm, Rated, RatingError, RatingRequest, Usage};

fn price() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), Just(1), 1i64..1_000, Just(i64::MAX - 1), Just(i64::MAX), 0i64..=i64::MAX]
}

fn count() -> impl Strategy<Value = u64> {
    prop_oneof![Just(1u64), Just(2), 1u64..20, Just(u64::MAX - 1), Just(u64::MAX), 1u64..=u64::MAX]
}

fn units() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(1), 1u64..30, Just(i64::MAX as u64), Just(u64::MAX), any::<u64>()]
}

/// A leaf tariff's JSON.
fn leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        price().prop_map(|p| format!(r#"{{"kind":"per-unit","currency":"EUR","unit_price":{p}}}"#)),
        (count(), price()).prop_map(|(size, refill)| format!(
            r#"{{"kind":"bundle","currency":"EUR","size":{size},"refill_price":{refill}}}"#
        )),
        (price(), count(), 0u32..=100).prop_map(|(p, every, pct)| format!(
            r#"{{"kind":"threshold","currency":"EUR","unit_price":{p},"every":{every},"discount_percent":{pct}}}"#
        )),
    ]
}

/// `(offer, config entries)`: a leaf, or a composite of two leaves with a markup.
fn offer() -> impl Strategy<Value = (String, Vec<(String, String)>)> {
    prop_oneof![
        leaf().prop_map(|t| ("x".to_string(), vec![("offer.x".to_string(), t)])),
        (leaf(), leaf(), prop_oneof![Just(0u32), Just(10), 0u32..300, Just(u32::MAX)]).prop_map(|(a, b, m)| {
            let top = format!(r#"{{"kind":"composite","currency":"EUR","children":["a","b"],"markup_percent":{m}}}"#);
            ("top".to_string(), vec![("offer.top".into(), top), ("offer.a".into(), a), ("offer.b".into(), b)])
        }),
    ]
}

fn counters() -> impl Strategy<Value = Vec<Counter>> {
    let value = prop_oneof![Just(0u64), Just(1), 0u64..20, Just(u64::MAX), any::<u64>()];
    let one = (
        prop_oneof![Just("x"), Just("a"), Just("b")],
        prop_oneof![Just("bundle-remaining"), Just("uses-since-discount")],
        value,
    )
        .prop_map(|(offer, name, value)| Counter { offer: offer.into(), name: name.into(), value });
    prop::collection::vec(one, 0..4)
}

fn model(term: &WitTerm) -> PriceTerm {
    match term.clone() {
        WitTerm::PerUnit(t) => PriceTerm::PerUnit { offer: t.offer, unit_price: t.unit_price },
        WitTerm::Bundle(t) => PriceTerm::Bundle { offer: t.offer, size: t.size, refill_price: t.refill_price },
        WitTerm::Threshold(t) => {
            PriceTerm::Threshold { offer: t.offer, unit_price: t.unit_price, every: t.every, discount: t.discount }
        }
        WitTerm::Composite(t) => {
            PriceTerm::Composite { offer: t.offer, markup_percent: t.markup_percent, children: t.children }
        }
    }
}

fn rate_with(
    config: &[(String, String)],
    offer: &str,
    units: u64,
    counters: Vec<Counter>,
) -> Result<Rated, RatingError> {
    let lookup = |key: &str| -> Result<Option<String>, String> {
        Ok(config.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
    };
    let usage = Usage { offer: offer.into(), rating_group: 1, units, country: None };
    rate(&RatingRequest { usage, counters }, &lookup)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// 256 generated tariffs, counters and unit counts.
    #[test]
    fn totals_are_the_lines_and_the_plans_price((offer, config) in offer(), units in units(), counters in counters()) {
        match rate_with(&config, &offer, units, counters.clone()) {
            Ok(rated) => {
                // Exact: a base line and its discount may sum past i64 on the way to a total
                // that fits.
                let lines: i128 = rated.lines.iter().map(|l| i128::from(l.amount.minor_units)).sum();
                prop_assert_eq!(lines, i128::from(rated.total.minor_units), "total = sum of lines");
                prop_assert!(rated.total.minor_units >= 0);
                let plan: Vec<PriceTerm> = rated.plan.iter().map(model).collect();
                let read = |o: &str, n: &str| counters.iter().find(|c| c.offer == o && c.name == n).map(|c| c.value);
                prop_assert_eq!(pricing::price(&plan, &read, units, &mut |_, _| {}), Ok(rated.total.minor_units));
                let worst = pricing::worst_price(&plan, units);
                prop_assert!(worst.is_err() || worst.unwrap() >= rated.total.minor_units, "the hold covers the price");
            }
            Err(RatingError::UsageOverflow(m)) => prop_assert!(m.contains("overflows"), "{}", m),
            Err(other) => prop_assert!(false, "{:?}", other),
        }
    }

    /// 256 generated per-use tariffs: N units cost what N single uses one after another cost.
    #[test]
    fn n_units_are_n_single_uses(tariff in leaf(), units in 0u64..25, counters in counters()) {
        let config = vec![("offer.x".to_string(), tariff)];
        let all = rate_with(&config, "x", units, counters.clone());
        let mut state = counters;
        let mut total = Some(0i64);
        for _ in 0..units {
            match rate_with(&config, "x", 1, state.clone()) {
                Ok(one) => {
                    total = total.and_then(|t| t.checked_add(one.total.minor_units));
                    for moved in one.counters {
                        state.retain(|c| !(c.offer == moved.offer && c.name == moved.name));
                        state.push(moved);
                    }
                }
                Err(_) => total = None,
            }
        }
        match (all, total) {
            (Ok(all), Some(total)) => prop_assert_eq!(all.total.minor_units, total),
            (Err(RatingError::UsageOverflow(_)), _) | (_, None) => {}
            (Err(e), _) => prop_assert!(false, "{:?}", e),
        }
    }
}
