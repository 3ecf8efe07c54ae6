//! The reference rater: prices usage with tariffs read from `wasi:config`.
//!
//! The tariff of offer `<id>` is the JSON value of config key `offer.<id>`
//! ([`tollgate_billing_model::tariff`] defines the format). Rating is pure: the subscriber's
//! counters come in with the request and go out as they will be once the usage is debited.
//!
//! Price lines, per tariff kind:
//! - `per-unit`: one line `per-unit usage` of `units x unit_price`.
//! - `bundle` (one use): `bundle use (free)` of 0 while the bundle lasts, otherwise
//!   `bundle refill` of `refill_price`, which pays for this use and leaves `size - 1` free.
//! - `threshold` (one use): `threshold use` at `unit_price`; on the discounted use a second,
//!   negative line `<p>% threshold discount`.
//! - `composite`: the children's lines (each under its child offer), then `<p>% markup` on
//!   the children's sum (omitted at 0%).
//!
//! Percentages are rounded half-even to the minor unit, once per line. `unit-price` is the
//! price of one unit: the tariff's unit price for `per-unit`, the total for per-use tariffs,
//! and for a `composite` of per-unit children the children's unit prices plus the markup on
//! their sum (so `units x unit-price` may differ from `total` by the markup's rounding).

use tollgate_billing_model::tariff::{BUNDLE_REMAINING, Pricing, Tariff, USES_SINCE_DISCOUNT, config_key};
use tollgate_sdk::rater::{Counter, Money, PriceLine, Rated, Rater, RatingError, RatingRequest, Usage};

/// The rater component: tariffs from `wasi:config`.
pub struct TariffRater;

tollgate_sdk::export_rater!(TariffRater);

impl Rater for TariffRater {
    fn rate(request: RatingRequest) -> Result<Rated, RatingError> {
        rate(&request, &tollgate_sdk::config::get)
    }
}

/// Composite offers may nest at most this deep.
pub const MAX_DEPTH: usize = 8;

/// Rates `request` with tariffs looked up by config key through `config`
/// (`Ok(None)` = key not set). [`TariffRater`] passes `tollgate_sdk::config::get`.
///
/// ```
/// use tollgate_sdk::rater::{RatingRequest, Usage};
/// let config = |key: &str| -> Result<Option<String>, String> {
///     Ok((key == "offer.voice").then(|| r#"{"kind":"per-unit","currency":"EUR","unit_price":2}"#.to_string()))
/// };
/// let usage = Usage { offer: "voice".into(), rating_group: 1, units: 30, country: None };
/// let rated = rater::rate(&RatingRequest { usage, counters: vec![] }, &config).unwrap();
/// assert_eq!(rated.total.minor_units, 60);
/// assert_eq!(rated.unit_price.minor_units, 2);
/// ```
pub fn rate<F>(request: &RatingRequest, config: &F) -> Result<Rated, RatingError>
where
    F: Fn(&str) -> Result<Option<String>, String>,
{
    let mut rating = Rating { config, usage: &request.usage, counters: &request.counters, seen: Vec::new() };
    let priced = rating.offer(&request.usage.offer, 0)?;
    let money = |minor_units| Money { minor_units, currency: priced.currency.clone() };
    Ok(Rated {
        total: money(priced.total),
        unit_price: money(priced.unit_price),
        lines: priced.lines,
        counters: priced.counters,
    })
}

/// Rounds `amount x percent / 100` half-even to the minor unit.
///
/// ```
/// assert_eq!(rater::percent_of(105, 10), Some(10)); // 10.5 -> 10
/// assert_eq!(rater::percent_of(115, 10), Some(12)); // 11.5 -> 12
/// assert_eq!(rater::percent_of(-115, 10), Some(-12));
/// ```
pub fn percent_of(amount: i64, percent: u32) -> Option<i64> {
    let n = i128::from(amount) * i128::from(percent);
    let (q, r) = (n.div_euclid(100), n.rem_euclid(100));
    let q = if r > 50 || (r == 50 && q % 2 != 0) { q + 1 } else { q };
    i64::try_from(q).ok()
}

/// One offer's price, in the offer's currency.
struct Priced {
    currency: String,
    lines: Vec<PriceLine>,
    total: i64,
    unit_price: i64,
    counters: Vec<Counter>,
    per_use: bool,
}

struct Rating<'a, F> {
    config: &'a F,
    usage: &'a Usage,
    counters: &'a [Counter],
    /// Offers rated so far: an offer met twice (a cycle or a shared child) would advance its
    /// counters twice.
    seen: Vec<String>,
}

fn invalid(key: &str, message: impl std::fmt::Display) -> RatingError {
    RatingError::InvalidTariff(format!("config key `{key}`: {message}"))
}

impl<F> Rating<'_, F>
where
    F: Fn(&str) -> Result<Option<String>, String>,
{
    fn tariff(&self, offer: &str) -> Result<Tariff, RatingError> {
        let key = config_key(offer);
        let json = (self.config)(&key).map_err(|e| invalid(&key, e))?;
        let json = json.ok_or_else(|| RatingError::UnknownOffer(format!("no tariff for offer `{offer}`")))?;
        let tariff: Tariff = serde_json::from_str(&json).map_err(|e| invalid(&key, e))?;
        tariff.validate().map_err(|e| invalid(&key, e))?;
        Ok(tariff)
    }

    fn counter(&self, offer: &str, name: &str) -> Option<u64> {
        self.counters.iter().find(|c| c.offer == offer && c.name == name).map(|c| c.value)
    }

    fn line(&self, offer: &str, currency: &str, description: String, units: u64, amount: i64) -> PriceLine {
        PriceLine {
            offer: offer.into(),
            description,
            units,
            amount: Money { minor_units: amount, currency: currency.into() },
        }
    }

    fn offer(&mut self, offer: &str, depth: usize) -> Result<Priced, RatingError> {
        let key = config_key(offer);
        if depth > MAX_DEPTH {
            return Err(invalid(&key, format!("composite offers nest deeper than {MAX_DEPTH}")));
        }
        if self.seen.iter().any(|o| o == offer) {
            return Err(invalid(
                &key,
                format!("offer `{offer}` is met twice while rating `{}` (a cycle or a shared child)", self.usage.offer),
            ));
        }
        self.seen.push(offer.into());
        let tariff = self.tariff(offer)?;
        let usage = self.usage;
        if let Some(groups) = &tariff.rating_groups
            && !groups.contains(&usage.rating_group)
        {
            return Err(RatingError::UnknownRatingGroup(usage.rating_group));
        }
        if let Some(countries) = &tariff.countries {
            let allowed = countries.join(", ");
            match &usage.country {
                None => {
                    return Err(RatingError::OutsideGeoFence(format!(
                        "offer `{offer}` may only be used in {allowed}; the subscriber's country is unknown"
                    )));
                }
                Some(c) if !countries.iter().any(|a| a.eq_ignore_ascii_case(c)) => {
                    return Err(RatingError::OutsideGeoFence(format!(
                        "offer `{offer}` may only be used in {allowed}, not in {c}"
                    )));
                }
                Some(_) => {}
            }
        }
        if tariff.is_per_use() && usage.units != 1 {
            return Err(invalid(
                &key,
                format!(
                    "offer `{offer}` is rated per use ({}): rate exactly 1 unit, not {}",
                    tariff.kind(),
                    usage.units
                ),
            ));
        }
        let overflow = || invalid(&key, format!("the price of {} units overflows", usage.units));
        let currency = tariff.currency.as_str();
        match &tariff.pricing {
            Pricing::PerUnit { unit_price } => {
                let total =
                    i64::try_from(usage.units).ok().and_then(|u| u.checked_mul(*unit_price)).ok_or_else(overflow)?;
                Ok(Priced {
                    currency: currency.into(),
                    lines: vec![self.line(offer, currency, "per-unit usage".into(), usage.units, total)],
                    total,
                    unit_price: *unit_price,
                    counters: Vec::new(),
                    per_use: false,
                })
            }
            Pricing::Bundle { size, refill_price } => {
                let remaining = self.counter(offer, BUNDLE_REMAINING).unwrap_or(*size).min(*size);
                let (line, after) = if remaining > 0 {
                    (self.line(offer, currency, "bundle use (free)".into(), 1, 0), remaining - 1)
                } else {
                    (self.line(offer, currency, "bundle refill".into(), 1, *refill_price), size - 1)
                };
                let total = line.amount.minor_units;
                Ok(Priced {
                    currency: currency.into(),
                    lines: vec![line],
                    total,
                    unit_price: total,
                    counters: vec![Counter { offer: offer.into(), name: BUNDLE_REMAINING.into(), value: after }],
                    per_use: true,
                })
            }
            Pricing::Threshold { unit_price, every, discount_percent } => {
                let uses = self.counter(offer, USES_SINCE_DISCOUNT).unwrap_or(0).saturating_add(1);
                let mut lines = vec![self.line(offer, currency, "threshold use".into(), 1, *unit_price)];
                let (total, after) = if uses >= *every {
                    let discount = percent_of(*unit_price, *discount_percent).ok_or_else(overflow)?;
                    let description = format!("{discount_percent}% threshold discount");
                    lines.push(self.line(offer, currency, description, 1, -discount));
                    (unit_price - discount, 0)
                } else {
                    (*unit_price, uses)
                };
                Ok(Priced {
                    currency: currency.into(),
                    lines,
                    total,
                    unit_price: total,
                    counters: vec![Counter { offer: offer.into(), name: USES_SINCE_DISCOUNT.into(), value: after }],
                    per_use: true,
                })
            }
            Pricing::Composite { children, markup_percent } => {
                let (mut lines, mut counters) = (Vec::new(), Vec::new());
                let (mut sum, mut unit_sum, mut per_use) = (0i64, 0i64, false);
                for child in children {
                    let priced = self.offer(child, depth + 1)?;
                    if priced.currency != currency {
                        return Err(invalid(
                            &key,
                            format!(
                                "composite offer `{offer}` is in {currency} but its child `{child}` is in {}",
                                priced.currency
                            ),
                        ));
                    }
                    sum = sum.checked_add(priced.total).ok_or_else(overflow)?;
                    unit_sum = unit_sum.checked_add(priced.unit_price).ok_or_else(overflow)?;
                    per_use |= priced.per_use;
                    lines.extend(priced.lines);
                    counters.extend(priced.counters);
                }
                let markup = percent_of(sum, *markup_percent).ok_or_else(overflow)?;
                if *markup_percent > 0 {
                    lines.push(self.line(offer, currency, format!("{markup_percent}% markup"), usage.units, markup));
                }
                let total = sum.checked_add(markup).ok_or_else(overflow)?;
                let unit_price = if per_use {
                    total
                } else {
                    let unit_markup = percent_of(unit_sum, *markup_percent).ok_or_else(overflow)?;
                    unit_sum.checked_add(unit_markup).ok_or_else(overflow)?
                };
                Ok(Priced { currency: currency.into(), lines, total, unit_price, counters, per_use })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn config(entries: &[(&str, &str)]) -> impl Fn(&str) -> Result<Option<String>, String> + use<> {
        let map: BTreeMap<String, String> =
            entries.iter().map(|(k, v)| (format!("offer.{k}"), v.to_string())).collect();
        move |key: &str| Ok(map.get(key).cloned())
    }

    fn usage(offer: &str, units: u64, country: Option<&str>) -> Usage {
        Usage { offer: offer.into(), rating_group: 1, units, country: country.map(Into::into) }
    }

    fn counter(offer: &str, name: &str, value: u64) -> Counter {
        Counter { offer: offer.into(), name: name.into(), value }
    }

    fn plain(counters: &[Counter]) -> Vec<(String, String, u64)> {
        counters.iter().map(|c| (c.offer.clone(), c.name.clone(), c.value)).collect()
    }

    fn rate_with(
        cfg: &impl Fn(&str) -> Result<Option<String>, String>,
        usage: Usage,
        counters: Vec<Counter>,
    ) -> Result<Rated, RatingError> {
        rate(&RatingRequest { usage, counters }, cfg)
    }

    const VOICE: &str = r#"{"kind":"per-unit","currency":"EUR","unit_price":2}"#;
    const BUNDLE: &str = r#"{"kind":"bundle","currency":"EUR","size":3,"refill_price":500}"#;
    const THRESHOLD: &str =
        r#"{"kind":"threshold","currency":"EUR","unit_price":105,"every":11,"discount_percent":10}"#;

    #[test]
    fn per_unit_multiplies_and_keeps_no_counters() {
        let cfg = config(&[("voice", VOICE)]);
        let rated = rate_with(&cfg, usage("voice", 30, None), vec![counter("other", "x", 1)]).unwrap();
        assert_eq!((rated.total.minor_units, rated.total.currency.as_str()), (60, "EUR"));
        assert_eq!(rated.unit_price.minor_units, 2);
        assert_eq!(rated.lines.len(), 1);
        assert_eq!(rated.lines[0].units, 30);
        assert!(rated.counters.is_empty());
    }

    #[test]
    fn bundle_gives_n_free_uses_then_a_paid_refill() {
        let cfg = config(&[("b", BUNDLE)]);
        let mut counters = vec![];
        let mut paid = vec![];
        for _ in 0..7 {
            let rated = rate_with(&cfg, usage("b", 1, None), counters.clone()).unwrap();
            assert_eq!(rated.unit_price.minor_units, rated.total.minor_units);
            paid.push((rated.total.minor_units, rated.lines[0].description.clone()));
            counters = rated.counters;
        }
        let totals: Vec<i64> = paid.iter().map(|p| p.0).collect();
        assert_eq!(totals, [0, 0, 0, 500, 0, 0, 500]);
        assert_eq!(paid[0].1, "bundle use (free)");
        assert_eq!(paid[3].1, "bundle refill");
        assert_eq!(plain(&counters), plain(&[counter("b", BUNDLE_REMAINING, 2)]));
    }

    #[test]
    fn bundle_counter_after_refill_leaves_n_minus_1() {
        let cfg = config(&[("b", BUNDLE)]);
        let rated = rate_with(&cfg, usage("b", 1, None), vec![counter("b", BUNDLE_REMAINING, 0)]).unwrap();
        assert_eq!(rated.total.minor_units, 500);
        assert_eq!(plain(&rated.counters), plain(&[counter("b", BUNDLE_REMAINING, 2)]));
    }

    #[test]
    fn threshold_discounts_every_11th_use_half_even() {
        let cfg = config(&[("t", THRESHOLD)]);
        let mut counters = vec![];
        let mut totals = vec![];
        for _ in 0..23 {
            let rated = rate_with(&cfg, usage("t", 1, None), counters.clone()).unwrap();
            totals.push(rated.total.minor_units);
            if rated.total.minor_units != 105 {
                // 10% of 105 = 10.5 -> 10 (half-even); one full line and one negative line.
                assert_eq!(rated.lines.len(), 2);
                assert_eq!(rated.lines[1].description, "10% threshold discount");
                assert_eq!(rated.lines[1].amount.minor_units, -10);
            }
            counters = rated.counters;
        }
        let discounted: Vec<usize> = totals.iter().enumerate().filter(|(_, t)| **t == 95).map(|(i, _)| i + 1).collect();
        assert_eq!(discounted, [11, 22]);
        assert_eq!(plain(&counters), plain(&[counter("t", USES_SINCE_DISCOUNT, 1)]));
    }

    #[test]
    fn per_use_tariffs_rate_exactly_one_unit() {
        let cfg = config(&[("b", BUNDLE), ("t", THRESHOLD)]);
        for offer in ["b", "t"] {
            for units in [0, 2] {
                match rate_with(&cfg, usage(offer, units, None), vec![]) {
                    Err(RatingError::InvalidTariff(m)) => {
                        assert!(m.contains("exactly 1 unit") && m.contains(&format!("offer.{offer}")), "{m}")
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn composite_adds_a_rounded_markup_to_its_children() {
        let cfg = config(&[
            ("voice", r#"{"kind":"per-unit","currency":"EUR","unit_price":3}"#),
            ("b", BUNDLE),
            ("vendor", r#"{"kind":"composite","currency":"EUR","children":["voice"],"markup_percent":10}"#),
            ("combo", r#"{"kind":"composite","currency":"EUR","children":["b","voice"],"markup_percent":10}"#),
        ]);
        // 5 units x 3 = 15; markup 1.5 -> 2 (half-even); unit price 3 + 0.3 -> 3.
        let rated = rate_with(&cfg, usage("vendor", 5, None), vec![]).unwrap();
        assert_eq!(rated.total.minor_units, 17);
        assert_eq!(rated.unit_price.minor_units, 3);
        assert_eq!(rated.lines.last().unwrap().description, "10% markup");
        assert_eq!(rated.lines.last().unwrap().offer, "vendor");
        assert_eq!(rated.lines[0].offer, "voice");

        // Per-use child: the combo rates one use; counters stay under the child offer.
        let rated = rate_with(&cfg, usage("combo", 1, None), vec![counter("b", BUNDLE_REMAINING, 0)]).unwrap();
        assert_eq!(rated.total.minor_units, 503 + 50);
        assert_eq!(rated.unit_price.minor_units, rated.total.minor_units);
        assert_eq!(plain(&rated.counters), plain(&[counter("b", BUNDLE_REMAINING, 2)]));
        assert!(matches!(rate_with(&cfg, usage("combo", 2, None), vec![]), Err(RatingError::InvalidTariff(_))));
    }

    #[test]
    fn composite_refuses_cycles_shared_children_and_mixed_currencies() {
        let cfg = config(&[
            ("a", r#"{"kind":"composite","currency":"EUR","children":["b"]}"#),
            ("b", r#"{"kind":"composite","currency":"EUR","children":["a"]}"#),
            ("usd", r#"{"kind":"per-unit","currency":"USD","unit_price":1}"#),
            ("mixed", r#"{"kind":"composite","currency":"EUR","children":["usd"]}"#),
            ("voice", VOICE),
            ("x", r#"{"kind":"composite","currency":"EUR","children":["voice"]}"#),
            ("diamond", r#"{"kind":"composite","currency":"EUR","children":["voice","x"]}"#),
        ]);
        for (offer, needle) in [("a", "twice"), ("mixed", "USD"), ("diamond", "twice")] {
            match rate_with(&cfg, usage(offer, 1, None), vec![]) {
                Err(RatingError::InvalidTariff(m)) => assert!(m.contains(needle), "{m}"),
                other => panic!("{offer}: {other:?}"),
            }
        }
    }

    #[test]
    fn geo_fence_denies_unknown_and_unlisted_countries() {
        let fenced = r#"{"kind":"per-unit","currency":"EUR","unit_price":2,"countries":["DE","AT"]}"#;
        let cfg = config(&[
            ("voice", fenced),
            ("vendor", r#"{"kind":"composite","currency":"EUR","children":["voice"],"markup_percent":10}"#),
        ]);
        assert!(rate_with(&cfg, usage("voice", 1, Some("DE")), vec![]).is_ok());
        assert!(rate_with(&cfg, usage("voice", 1, Some("at")), vec![]).is_ok());
        for (offer, country) in [("voice", None), ("voice", Some("FR")), ("vendor", Some("FR"))] {
            match rate_with(&cfg, usage(offer, 1, country), vec![]) {
                Err(RatingError::OutsideGeoFence(m)) => assert!(m.contains("DE, AT"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn rating_groups_unknown_offers_and_bad_json() {
        let cfg = config(&[
            ("voice", r#"{"kind":"per-unit","currency":"EUR","unit_price":2,"rating_groups":[7]}"#),
            ("broken", r#"{"kind":"per-unit","currency":"EUR","unit_price":2.5}"#),
            ("negative", r#"{"kind":"per-unit","currency":"EUR","unit_price":-1}"#),
        ]);
        assert!(matches!(rate_with(&cfg, usage("voice", 1, None), vec![]), Err(RatingError::UnknownRatingGroup(1))));
        assert!(
            matches!(rate_with(&cfg, usage("nope", 1, None), vec![]), Err(RatingError::UnknownOffer(m)) if m.contains("nope"))
        );
        for offer in ["broken", "negative"] {
            match rate_with(&cfg, usage(offer, 1, None), vec![]) {
                Err(RatingError::InvalidTariff(m)) => assert!(m.contains(&format!("`offer.{offer}`")), "{m}"),
                other => panic!("{other:?}"),
            }
        }
        let failing = |_: &str| -> Result<Option<String>, String> { Err("store down".into()) };
        assert!(
            matches!(rate_with(&failing, usage("voice", 1, None), vec![]), Err(RatingError::InvalidTariff(m)) if m.contains("store down"))
        );
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        let cfg = config(&[("voice", r#"{"kind":"per-unit","currency":"EUR","unit_price":9223372036854775807}"#)]);
        assert!(matches!(rate_with(&cfg, usage("voice", 2, None), vec![]), Err(RatingError::InvalidTariff(_))));
        assert!(matches!(rate_with(&cfg, usage("voice", u64::MAX, None), vec![]), Err(RatingError::InvalidTariff(_))));
    }

    #[test]
    fn half_even_rounding() {
        assert_eq!(percent_of(25, 10), Some(2)); // 2.5 -> 2
        assert_eq!(percent_of(35, 10), Some(4)); // 3.5 -> 4
        assert_eq!(percent_of(36, 10), Some(4)); // 3.6 -> 4
        assert_eq!(percent_of(-25, 10), Some(-2));
        assert_eq!(percent_of(-35, 10), Some(-4));
        assert_eq!(percent_of(i64::MAX, 1000), None);
    }

    #[test]
    fn model_tariffs_encode_to_the_documented_json() {
        use tollgate_billing_model::tariff::{Pricing, Tariff};
        for json in [
            r#"{"kind":"per-unit","currency":"EUR","unit_price":2}"#,
            r#"{"kind":"bundle","currency":"EUR","size":10,"refill_price":500,"countries":["DE","AT"]}"#,
            r#"{"kind":"threshold","currency":"EUR","unit_price":100,"every":11,"discount_percent":10}"#,
            r#"{"kind":"composite","currency":"EUR","children":["voice"],"markup_percent":10,"rating_groups":[1]}"#,
        ] {
            let t: Tariff = serde_json::from_str(json).unwrap();
            t.validate().unwrap();
            assert_eq!(serde_json::from_str::<Tariff>(&serde_json::to_string(&t).unwrap()).unwrap(), t);
        }
        let t = Tariff::new("EUR", Pricing::PerUnit { unit_price: 2 });
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"currency":"EUR","kind":"per-unit","unit_price":2}"#);
        let t: Tariff = serde_json::from_str(r#"{"kind":"threshold","currency":"EUR","unit_price":1}"#).unwrap();
        assert_eq!(t.pricing, Pricing::Threshold { unit_price: 1, every: 11, discount_percent: 10 });
    }
}
