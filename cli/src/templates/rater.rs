//! {{name}}: a rater pricing usage per unit, with the price of offer `<id>` in config key
//! `price.<id>` (integer minor units) and the currency in config key `currency` (default EUR).

use tollgate_sdk::rater::{Money, PerUnitTerm, PriceLine, PriceTerm, Rated, Rater, RatingError, RatingRequest};

/// The price of `units` at `unit_price` (`None` when it overflows; a price of 0 never does):
/// the logic, pure.
pub fn price(units: u64, unit_price: i64) -> Option<i64> {
    if unit_price == 0 {
        return Some(0);
    }
    i64::try_from(units).ok()?.checked_mul(unit_price)
}

/// The rater.
pub struct PerUnit;

impl Rater for PerUnit {
    fn rate(request: RatingRequest) -> Result<Rated, RatingError> {
        let usage = request.usage;
        let key = format!("price.{}", usage.offer);
        let unit_price: i64 = match tollgate_sdk::config::get(&key).map_err(RatingError::InvalidTariff)? {
            None => return Err(RatingError::UnknownOffer(usage.offer)),
            Some(v) => v.trim().parse().map_err(|_| RatingError::InvalidTariff(format!("`{key}` = `{v}` is not an integer")))?,
        };
        let currency = tollgate_sdk::config::get("currency").map_err(RatingError::InvalidTariff)?.unwrap_or_else(|| "EUR".into());
        let total = price(usage.units, unit_price)
            .ok_or_else(|| RatingError::UsageOverflow(format!("{} units x {unit_price} overflows", usage.units)))?;
        let money = |minor_units| Money { minor_units, currency: currency.clone() };
        Ok(Rated {
            lines: vec![PriceLine {
                offer: usage.offer.clone(),
                description: format!("{} x {unit_price}", usage.units),
                units: usage.units,
                amount: money(total),
            }],
            total: money(total),
            // The plan the account prices reserved and debited units with: the same per unit.
            plan: vec![PriceTerm::PerUnit(PerUnitTerm { offer: usage.offer, unit_price })],
            counters: request.counters,
        })
    }
}

// Exports `tollgate:billing/rating` (only on wasm32).
tollgate_sdk::export_rater!(PerUnit);
