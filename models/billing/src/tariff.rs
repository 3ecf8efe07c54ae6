//! Tariffs: how a rater prices the usage of one offer.
//!
//! A rater reads the tariff of offer `<id>` from the `wasi:config` key `offer.<id>`
//! ([`config_key`]); the value is the tariff's JSON. Amounts are integer minor units of the
//! tariff's `currency`; percentages are whole numbers. The common fields sit next to a `kind`
//! tag that selects the pricing:
//!
//! ```json
//! {"kind":"per-unit","currency":"EUR","unit_price":2}
//! {"kind":"bundle","currency":"EUR","size":10,"refill_price":500,"countries":["DE","AT"]}
//! {"kind":"threshold","currency":"EUR","unit_price":100,"every":11,"discount_percent":10}
//! {"kind":"composite","currency":"EUR","children":["voice"],"markup_percent":10,"rating_groups":[1]}
//! ```
//!
//! Build configurations with [`Tariff`] and encode it with `serde_json`; the `rater` crate's
//! tests decode every kind from the JSON above.

use serde::{Deserialize, Serialize};

/// The `wasi:config` key prefix of tariffs: offer `voice` is priced by key `offer.voice`.
pub const CONFIG_PREFIX: &str = "offer.";

pub use crate::pricing::{BUNDLE_REMAINING, USES_SINCE_DISCOUNT};

/// The `wasi:config` key holding the tariff of `offer`.
///
/// ```
/// assert_eq!(tollgate_billing_model::tariff::config_key("voice"), "offer.voice");
/// ```
pub fn config_key(offer: &str) -> String {
    format!("{CONFIG_PREFIX}{offer}")
}

/// The tariff of one offer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Tariff {
    /// ISO 4217 code of every amount of this tariff.
    pub currency: String,
    /// The geo-fence: countries (ISO 3166-1 alpha-2) where the offer may be used. Absent = no
    /// geo-fence. Present: usage with no country or another country is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countries: Option<Vec<String>>,
    /// The rating groups this offer rates. Absent = every rating group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating_groups: Option<Vec<u32>>,
    /// How usage is priced, tagged by `kind`.
    #[serde(flatten)]
    pub pricing: Pricing,
}

/// How a tariff prices usage. The JSON tag is `kind`, in kebab-case.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Pricing {
    /// `units x unit_price`; keeps no counter.
    PerUnit {
        /// Price of one unit, >= 0.
        unit_price: i64,
    },
    /// Per use: `size` free uses, then one paid refill of `size` uses that includes the paying
    /// use; any number of uses per request. Keeps [`BUNDLE_REMAINING`].
    Bundle {
        /// Uses per bundle, > 0.
        size: u64,
        /// Price of a refill, >= 0.
        refill_price: i64,
    },
    /// Per use: every `every`-th use is `discount_percent` off (rounded half-even to the minor
    /// unit, once per discounted use), then the count restarts; any number of uses per
    /// request. Keeps [`USES_SINCE_DISCOUNT`].
    Threshold {
        /// Price of one use, >= 0.
        unit_price: i64,
        /// Which use is discounted, > 0 (default 11).
        #[serde(default = "default_every")]
        every: u64,
        /// The discount, 0..=100 (default 10).
        #[serde(default = "default_discount_percent")]
        discount_percent: u32,
    },
    /// The sum of the children's ratings plus a markup: e.g. a vendor's offer built on its
    /// provider's. Children's counters are kept under the child offers.
    Composite {
        /// Offer ids of the children, at least one, none twice.
        children: Vec<String>,
        /// Markup on the children's sum, in percent (default 0).
        #[serde(default)]
        markup_percent: u32,
    },
}

fn default_every() -> u64 {
    11
}

fn default_discount_percent() -> u32 {
    10
}

impl Tariff {
    /// A tariff with no geo-fence and every rating group.
    pub fn new(currency: &str, pricing: Pricing) -> Self {
        Tariff { currency: currency.into(), countries: None, rating_groups: None, pricing }
    }

    /// Limits the offer to these countries.
    pub fn in_countries(mut self, countries: &[&str]) -> Self {
        self.countries = Some(countries.iter().map(|c| c.to_string()).collect());
        self
    }

    /// Limits the offer to these rating groups.
    pub fn for_rating_groups(mut self, groups: &[u32]) -> Self {
        self.rating_groups = Some(groups.to_vec());
        self
    }

    /// The kind tag, e.g. `per-unit`.
    pub fn kind(&self) -> &'static str {
        match self.pricing {
            Pricing::PerUnit { .. } => "per-unit",
            Pricing::Bundle { .. } => "bundle",
            Pricing::Threshold { .. } => "threshold",
            Pricing::Composite { .. } => "composite",
        }
    }

    /// Checks the values serde cannot: currency shape, signs, ranges, non-empty lists.
    ///
    /// ```
    /// use tollgate_billing_model::tariff::{Pricing, Tariff};
    /// let t = Tariff::new("EUR", Pricing::Bundle { size: 0, refill_price: 5 });
    /// assert!(t.validate().unwrap_err().contains("size"));
    /// ```
    pub fn validate(&self) -> Result<(), String> {
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!("`currency` must be an ISO 4217 code like EUR, not `{}`", self.currency));
        }
        if let Some(countries) = &self.countries {
            if countries.is_empty() {
                return Err("`countries` must list at least one country (omit it for no geo-fence)".into());
            }
            if let Some(bad) = countries.iter().find(|c| c.len() != 2 || !c.bytes().all(|b| b.is_ascii_alphabetic())) {
                return Err(format!("`countries` must hold ISO 3166-1 alpha-2 codes, not `{bad}`"));
            }
        }
        if self.rating_groups.as_ref().is_some_and(Vec::is_empty) {
            return Err("`rating_groups` must list at least one group (omit it for every group)".into());
        }
        let non_negative = |field: &str, v: i64| {
            if v < 0 { Err(format!("`{field}` must be >= 0, got {v}")) } else { Ok(()) }
        };
        match &self.pricing {
            Pricing::PerUnit { unit_price } => non_negative("unit_price", *unit_price),
            Pricing::Bundle { size, refill_price } => {
                if *size == 0 {
                    return Err("`size` must be > 0".into());
                }
                non_negative("refill_price", *refill_price)
            }
            Pricing::Threshold { unit_price, every, discount_percent } => {
                if *every == 0 {
                    return Err("`every` must be > 0".into());
                }
                if *discount_percent > 100 {
                    return Err(format!("`discount_percent` must be 0..=100, got {discount_percent}"));
                }
                non_negative("unit_price", *unit_price)
            }
            Pricing::Composite { children, .. } => {
                if children.is_empty() {
                    return Err("`children` must name at least one offer".into());
                }
                for (i, child) in children.iter().enumerate() {
                    if children[..i].contains(child) {
                        return Err(format!("`children` names offer `{child}` twice"));
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_ranges_and_lists() {
        assert!(Tariff::new("EUR", Pricing::PerUnit { unit_price: 2 }).validate().is_ok());
        let bad = [
            (Tariff::new("eur", Pricing::PerUnit { unit_price: 2 }), "currency"),
            (Tariff::new("EUR", Pricing::PerUnit { unit_price: -1 }), "unit_price"),
            (Tariff::new("EUR", Pricing::PerUnit { unit_price: 1 }).in_countries(&[]), "countries"),
            (Tariff::new("EUR", Pricing::PerUnit { unit_price: 1 }).in_countries(&["DEU"]), "DEU"),
            (Tariff::new("EUR", Pricing::PerUnit { unit_price: 1 }).for_rating_groups(&[]), "rating_groups"),
            (Tariff::new("EUR", Pricing::Threshold { unit_price: 1, every: 0, discount_percent: 10 }), "every"),
            (Tariff::new("EUR", Pricing::Threshold { unit_price: 1, every: 11, discount_percent: 101 }), "discount"),
            (Tariff::new("EUR", Pricing::Composite { children: vec![], markup_percent: 0 }), "children"),
            (
                Tariff::new("EUR", Pricing::Composite { children: vec!["a".into(), "a".into()], markup_percent: 0 }),
                "twice",
            ),
        ];
        for (tariff, needle) in bad {
            let err = tariff.validate().unwrap_err();
            assert!(err.contains(needle), "{tariff:?}: {err}");
        }
    }
}
