//! The reference rater: prices usage with tariffs read from `wasi:config`.
//!
//! The tariff of offer `<id>` is the JSON value of config key `offer.<id>`
//! ([`tollgate_billing_model::tariff`] defines the format). Rating is pure: the subscriber's
//! counters come in with the request and go out as they will be once the usage is debited.
//!
//! The rater resolves the offer's tariff tree into a price plan
//! ([`tollgate_billing_model::pricing`]) and prices the units with it, the same function the
//! account charges with, so a reservation's price, its lines and its debit agree. Every kind
//! rates any number of units: `n` units cost what `n` single uses one after another would.
//!
//! Price lines, per tariff kind:
//! - `per-unit`: one line `per-unit usage` of `units x unit_price`.
//! - `bundle`: `bundle use (free)` of 0 for the uses the bundle still covers, then
//!   `bundle refill` (or `<k> bundle refills`) of `k x refill_price` for the uses paid by
//!   refills; each refill pays for its own use and leaves `size - 1` free.
//! - `threshold`: `threshold use` of `units x unit_price`; when discounted uses fall among
//!   them, a negative line `<p>% threshold discount` covering those uses.
//! - `composite`: the children's lines (each under its child offer), then `<p>% markup` on
//!   the children's sum (omitted at 0%).
//!
//! Percentages are rounded half-even to the minor unit, once per line: a threshold discount
//! once per discounted use, a markup once on the children's sum of the whole request. A price
//! that does not fit 64 bits is `usage-overflow`; a price of 0 never overflows.

use tollgate_billing_model::pricing::{self, Part, PlanError, PriceTerm};
use tollgate_billing_model::tariff::{BUNDLE_REMAINING, Pricing, Tariff, USES_SINCE_DISCOUNT, config_key};
use tollgate_sdk::rater::{
    BundleTerm, CompositeTerm, Counter, Money, PerUnitTerm, PriceLine, PriceTerm as WitTerm, Rated, Rater, RatingError,
    RatingRequest, ThresholdTerm, Usage,
};

pub use tollgate_billing_model::pricing::percent_of;

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
/// assert_eq!(rated.plan.len(), 1);
/// ```
pub fn rate<F>(request: &RatingRequest, config: &F) -> Result<Rated, RatingError>
where
    F: Fn(&str) -> Result<Option<String>, String>,
{
    let usage = &request.usage;
    let mut planning = Planning { config, usage, plan: Vec::new(), percents: Vec::new() };
    let currency = planning.offer(&usage.offer, 0)?;
    let plan = planning.plan;
    let percents = planning.percents;
    let read =
        |offer: &str, name: &str| request.counters.iter().find(|c| c.offer == offer && c.name == name).map(|c| c.value);
    let money = |minor_units| Money { minor_units, currency: currency.clone() };
    let mut lines = Vec::new();
    let mut moved: Vec<Counter> = Vec::new();
    let total = pricing::price(&plan, &read, usage.units, &mut |index, part| {
        let offer = plan[index].offer();
        let mut line = |description: String, units, amount| {
            lines.push(PriceLine { offer: offer.into(), description, units, amount: money(amount) })
        };
        let mut counter = |name: &str, value| moved.push(Counter { offer: offer.into(), name: name.into(), value });
        match part {
            Part::PerUnit { units, amount } => line("per-unit usage".into(), units, amount),
            Part::Bundle { free, paid, refills, amount, remaining } => {
                if free > 0 {
                    line("bundle use (free)".into(), free, 0);
                }
                if paid > 0 {
                    let description =
                        if refills == 1 { "bundle refill".to_string() } else { format!("{refills} bundle refills") };
                    line(description, paid, amount);
                }
                counter(BUNDLE_REMAINING, remaining);
            }
            Part::Threshold { units, gross, discounted, discount, uses } => {
                line("threshold use".into(), units, gross);
                if discounted > 0 {
                    line(format!("{}% threshold discount", percents[index]), discounted, discount);
                }
                counter(USES_SINCE_DISCOUNT, uses);
            }
            Part::Markup { units, amount } => {
                if percents[index] > 0 {
                    line(format!("{}% markup", percents[index]), units, amount);
                }
            }
        }
    })
    .map_err(|e| match e {
        PlanError::Overflow => RatingError::UsageOverflow(format!(
            "the price of {} units of offer `{}` overflows 64 bits",
            usage.units, usage.offer
        )),
        PlanError::Malformed(m) => {
            RatingError::InvalidTariff(format!("config key `{}`: {m}", config_key(&usage.offer)))
        }
    })?;
    Ok(Rated { lines, total: money(total), plan: plan.iter().map(wit_term).collect(), counters: moved })
}

/// A model price term as the `tollgate:billing` type.
pub fn wit_term(term: &PriceTerm) -> WitTerm {
    match term.clone() {
        PriceTerm::PerUnit { offer, unit_price } => WitTerm::PerUnit(PerUnitTerm { offer, unit_price }),
        PriceTerm::Bundle { offer, size, refill_price } => WitTerm::Bundle(BundleTerm { offer, size, refill_price }),
        PriceTerm::Threshold { offer, unit_price, every, discount } => {
            WitTerm::Threshold(ThresholdTerm { offer, unit_price, every, discount })
        }
        PriceTerm::Composite { offer, markup_percent, children } => {
            WitTerm::Composite(CompositeTerm { offer, markup_percent, children })
        }
    }
}

/// Resolves an offer's tariff tree into a price plan.
struct Planning<'a, F> {
    config: &'a F,
    usage: &'a Usage,
    plan: Vec<PriceTerm>,
    /// Per term: the percentage its lines name (threshold discount, composite markup).
    percents: Vec<u32>,
}

fn invalid(key: &str, message: impl std::fmt::Display) -> RatingError {
    RatingError::InvalidTariff(format!("config key `{key}`: {message}"))
}

impl<F> Planning<'_, F>
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

    fn push(&mut self, term: PriceTerm, percent: u32) {
        self.plan.push(term);
        self.percents.push(percent);
    }

    /// Appends the plan of `offer` and returns its currency.
    fn offer(&mut self, offer: &str, depth: usize) -> Result<String, RatingError> {
        let key = config_key(offer);
        if depth > MAX_DEPTH {
            return Err(invalid(&key, format!("composite offers nest deeper than {MAX_DEPTH}")));
        }
        // An offer met twice (a cycle or a shared child) would move its counters twice.
        if self.plan.iter().any(|t| t.offer() == offer) {
            return Err(invalid(
                &key,
                format!("offer `{offer}` is met twice while rating `{}` (a cycle or a shared child)", self.usage.offer),
            ));
        }
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
        let offer = offer.to_string();
        let currency = tariff.currency;
        match tariff.pricing {
            Pricing::PerUnit { unit_price } => self.push(PriceTerm::PerUnit { offer, unit_price }, 0),
            Pricing::Bundle { size, refill_price } => self.push(PriceTerm::Bundle { offer, size, refill_price }, 0),
            Pricing::Threshold { unit_price, every, discount_percent } => {
                let discount = percent_of(unit_price, discount_percent)
                    .ok_or_else(|| invalid(&key, "the discount of one use overflows"))?;
                self.push(PriceTerm::Threshold { offer, unit_price, every, discount }, discount_percent)
            }
            Pricing::Composite { children, markup_percent } => {
                let count = u32::try_from(children.len()).map_err(|_| invalid(&key, "too many children"))?;
                self.push(
                    PriceTerm::Composite { offer: offer.clone(), markup_percent, children: count },
                    markup_percent,
                );
                for child in &children {
                    let child_currency = self.offer(child, depth + 1)?;
                    if child_currency != currency {
                        return Err(invalid(
                            &key,
                            format!(
                                "composite offer `{offer}` is in {currency} but its child `{child}` is in {child_currency}"
                            ),
                        ));
                    }
                }
            }
        }
        if self.plan.len() > pricing::MAX_PLAN_TERMS {
            return Err(invalid(&key, format!("the offer's plan has more than {} terms", pricing::MAX_PLAN_TERMS)));
        }
        Ok(currency)
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
        assert!(matches!(rated.plan[..], [WitTerm::PerUnit(PerUnitTerm { unit_price: 2, .. })]));
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
    fn per_use_tariffs_rate_any_unit_count_as_that_many_single_uses() {
        let cfg = config(&[("b", BUNDLE), ("t", THRESHOLD)]);
        for offer in ["b", "t"] {
            for start in [vec![], vec![counter("b", BUNDLE_REMAINING, 1), counter("t", USES_SINCE_DISCOUNT, 9)]] {
                for units in [0u64, 1, 2, 3, 4, 11, 12, 23, 40] {
                    let (mut total, mut counters) = (0, start.clone());
                    for _ in 0..units {
                        let one = rate_with(&cfg, usage(offer, 1, None), counters.clone()).unwrap();
                        total += one.total.minor_units;
                        counters = one.counters;
                    }
                    let all = rate_with(&cfg, usage(offer, units, None), start.clone()).unwrap();
                    assert_eq!(all.total.minor_units, total, "{offer}: {units} units from {start:?}");
                    let lines: i64 = all.lines.iter().map(|l| l.amount.minor_units).sum();
                    assert_eq!(lines, total, "the lines add up to the total");
                    if units > 0 {
                        assert_eq!(plain(&all.counters), plain(&counters), "{offer}: {units} units");
                    }
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
        // 5 units x 3 = 15; markup 1.5 -> 2 (half-even), once on the sum of all units.
        let rated = rate_with(&cfg, usage("vendor", 5, None), vec![]).unwrap();
        assert_eq!(rated.total.minor_units, 17);
        assert_eq!(rated.plan.len(), 2);
        assert_eq!(rated.lines.last().unwrap().description, "10% markup");
        assert_eq!(rated.lines.last().unwrap().offer, "vendor");
        assert_eq!(rated.lines[0].offer, "voice");

        // Per-use child: the combo rates one use; counters stay under the child offer.
        let rated = rate_with(&cfg, usage("combo", 1, None), vec![counter("b", BUNDLE_REMAINING, 0)]).unwrap();
        assert_eq!(rated.total.minor_units, 503 + 50);
        assert_eq!(plain(&rated.counters), plain(&[counter("b", BUNDLE_REMAINING, 2)]));
        // Two uses: one refill (500) + 2 x 3, markup 50.6 -> 51.
        let rated = rate_with(&cfg, usage("combo", 2, None), vec![counter("b", BUNDLE_REMAINING, 0)]).unwrap();
        assert_eq!(rated.total.minor_units, 506 + 51);
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
    fn overflow_is_usage_overflow_and_a_price_of_0_never_overflows() {
        let cfg = config(&[
            ("voice", r#"{"kind":"per-unit","currency":"EUR","unit_price":9223372036854775807}"#),
            ("free", r#"{"kind":"per-unit","currency":"EUR","unit_price":0}"#),
            ("b", r#"{"kind":"bundle","currency":"EUR","size":1,"refill_price":0}"#),
        ]);
        for units in [2, u64::MAX] {
            match rate_with(&cfg, usage("voice", units, None), vec![]) {
                Err(RatingError::UsageOverflow(m)) => assert!(m.contains("overflows") && m.contains("voice"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
        for offer in ["free", "b"] {
            assert_eq!(rate_with(&cfg, usage(offer, u64::MAX, None), vec![]).unwrap().total.minor_units, 0);
        }
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
