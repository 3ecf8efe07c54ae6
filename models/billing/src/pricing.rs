//! Price plans: an offer's tariffs in the form a reservation keeps, so that the account charges
//! exactly what the rater rated, for any number of units and from any counters.
//!
//! A plan is the offer's tariff tree in prefix order: a [`PriceTerm::Composite`] is followed by
//! its `children` sub-plans. The rater builds it from the tariffs in its configuration and
//! prices usage with [`price`]; the account prices grants and debits with the same function,
//! so a grant's price, its lines and a debit of all its units agree by construction.
//!
//! Per term, `n` units from the counters `c` cost (all arithmetic checked):
//! - per-unit: `n x unit_price`.
//! - bundle: with `r = min(c.bundle-remaining or size, size)` free uses left, `min(n, r)` uses
//!   are free; the `p = n - min(n, r)` others pay `ceil(p / size)` refills, each of which pays
//!   for its own use and leaves `size - 1` free.
//! - threshold: with `u = min(c.uses-since-discount or 0, every - 1)`, the uses numbered
//!   `every - u`, `2 x every - u`, ... of the `n` are `discount` cheaper (the discount
//!   percentage of the unit price, rounded half-even to the minor unit once per use).
//! - composite: `s + round_half_even(s x markup_percent / 100)` where `s` is the sum of the
//!   children's prices for the same `n` units.
//!
//! Every price is monotone in `n`, and the price of `n` units from counters that are all 0 is
//! the most `n` units can cost from any counters ([`worst_price`]): what a reservation holds,
//! so that its debit is covered whichever uses of the offer are settled before it.

use serde::{Deserialize, Serialize};

/// Counter of a `bundle` tariff: free uses left in the current bundle (absent = the full size).
pub const BUNDLE_REMAINING: &str = "bundle-remaining";

/// Counter of a `threshold` tariff: uses since the last discounted one (absent = 0).
pub const USES_SINCE_DISCOUNT: &str = "uses-since-discount";

/// Most terms a plan may have: more than composite nesting of real offers needs, few enough
/// that pricing one reservation stays cheap.
pub const MAX_PLAN_TERMS: usize = 64;

/// One tariff of a price plan. JSON: a string of the kind, the offer and the numbers, in
/// declaration order, separated by single spaces: `"per-unit voice 2"`, `"bundle sms 3 500"`,
/// `"threshold coffee 105 11 10"`, `"composite vendor 10 1"`. (A string decodes with code the
/// account component has anyway, where a derived enum decoder would push it over its size
/// limit; offers in plans therefore contain no spaces.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PriceTerm {
    /// Every unit costs `unit_price`.
    PerUnit {
        /// The offer whose tariff this is.
        offer: String,
        /// Price of one unit, >= 0.
        unit_price: i64,
    },
    /// `size` free uses, then a paid refill of `size` uses that includes the paying use;
    /// counter [`BUNDLE_REMAINING`] of `offer`.
    Bundle {
        /// The offer whose tariff and counter this is.
        offer: String,
        /// Uses per bundle, > 0.
        size: u64,
        /// Price of a refill, >= 0.
        refill_price: i64,
    },
    /// Every `every`-th use is `discount` cheaper; counter [`USES_SINCE_DISCOUNT`] of `offer`.
    Threshold {
        /// The offer whose tariff and counter this is.
        offer: String,
        /// Price of one use, >= 0.
        unit_price: i64,
        /// Which use is discounted, > 0.
        every: u64,
        /// Minor units off a discounted use, `0..=unit_price`.
        discount: i64,
    },
    /// The sum of the next `children` sub-plans plus `markup_percent` of it.
    Composite {
        /// The composite offer.
        offer: String,
        /// Markup on the children's sum, in percent.
        markup_percent: u32,
        /// How many sub-plans follow, >= 1.
        children: u32,
    },
}

impl PriceTerm {
    /// The offer the term belongs to.
    pub fn offer(&self) -> &str {
        match self {
            PriceTerm::PerUnit { offer, .. }
            | PriceTerm::Bundle { offer, .. }
            | PriceTerm::Threshold { offer, .. }
            | PriceTerm::Composite { offer, .. } => offer,
        }
    }

    /// Whether pricing a use with this term moves one of the account's counters (a bundle's
    /// remaining uses, a threshold's uses since the discount).
    pub fn moves_counter(&self) -> bool {
        matches!(self, PriceTerm::Bundle { .. } | PriceTerm::Threshold { .. })
    }
}

impl std::fmt::Display for PriceTerm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PriceTerm::PerUnit { offer, unit_price } => write!(f, "per-unit {offer} {unit_price}"),
            PriceTerm::Bundle { offer, size, refill_price } => write!(f, "bundle {offer} {size} {refill_price}"),
            PriceTerm::Threshold { offer, unit_price, every, discount } => {
                write!(f, "threshold {offer} {unit_price} {every} {discount}")
            }
            PriceTerm::Composite { offer, markup_percent, children } => {
                write!(f, "composite {offer} {markup_percent} {children}")
            }
        }
    }
}

impl std::str::FromStr for PriceTerm {
    type Err = String;

    /// Parses the form `Display` writes; the error names the text.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a price term (e.g. `per-unit voice 2`)");
        let words: Vec<&str> = text.split(' ').collect();
        fn number<T: std::str::FromStr>(word: &str) -> Option<T> {
            word.parse().ok()
        }
        let term =
            match words.as_slice() {
                ["per-unit", offer, p] => {
                    Some(PriceTerm::PerUnit { offer: offer.to_string(), unit_price: number(p).ok_or_else(bad)? })
                }
                ["bundle", offer, size, p] => number(size)
                    .zip(number(p))
                    .map(|(size, refill_price)| PriceTerm::Bundle { offer: offer.to_string(), size, refill_price }),
                ["threshold", offer, p, every, d] => {
                    number(p).zip(number(every)).zip(number(d)).map(|((unit_price, every), discount)| {
                        PriceTerm::Threshold { offer: offer.to_string(), unit_price, every, discount }
                    })
                }
                ["composite", offer, m, c] => number(m).zip(number(c)).map(|(markup_percent, children)| {
                    PriceTerm::Composite { offer: offer.to_string(), markup_percent, children }
                }),
                _ => None,
            };
        term.ok_or_else(bad)
    }
}

impl Serialize for PriceTerm {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PriceTerm {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a plan could not price units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// The price cannot be represented in 64 bits.
    Overflow,
    /// The plan is not well formed; the message says how.
    Malformed(&'static str),
}

/// What one term charged, reported to the visitor of [`price`] (the rater turns it into price
/// lines and counters; the account settles counters with it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// A per-unit term: `units` cost `amount`.
    PerUnit {
        /// Units priced.
        units: u64,
        /// Their price.
        amount: i64,
    },
    /// A bundle term: `free` uses cost nothing, `paid` uses cost `refills` refills.
    Bundle {
        /// Uses within the bundle.
        free: u64,
        /// Uses paid by refills.
        paid: u64,
        /// Refills bought.
        refills: u64,
        /// Their price.
        amount: i64,
        /// [`BUNDLE_REMAINING`] afterwards.
        remaining: u64,
    },
    /// A threshold term: `units` at the unit price, `discounted` of them `discount` cheaper.
    Threshold {
        /// Uses priced.
        units: u64,
        /// `units x unit_price`.
        gross: i64,
        /// Uses discounted.
        discounted: u64,
        /// Total discount, <= 0.
        discount: i64,
        /// [`USES_SINCE_DISCOUNT`] afterwards.
        uses: u64,
    },
    /// A composite term's markup on its children's sum (after the children's parts).
    Markup {
        /// Units priced.
        units: u64,
        /// The markup.
        amount: i64,
    },
}

/// Rounds `amount x percent / 100` half-even to the minor unit; `None` when it does not fit.
///
/// ```
/// use tollgate_billing_model::pricing::percent_of;
/// assert_eq!(percent_of(105, 10), Some(10)); // 10.5 -> 10
/// assert_eq!(percent_of(115, 10), Some(12)); // 11.5 -> 12
/// assert_eq!(percent_of(-115, 10), Some(-12));
/// ```
pub fn percent_of(amount: i64, percent: u32) -> Option<i64> {
    let n = i128::from(amount) * i128::from(percent);
    let (q, r) = (n.div_euclid(100), n.rem_euclid(100));
    let q = if r > 50 || (r == 50 && q % 2 != 0) { q + 1 } else { q };
    i64::try_from(q).ok()
}

/// `units x price`, where a price of 0 never overflows.
fn times(units: u64, price: i64) -> Result<i64, PlanError> {
    if price == 0 || units == 0 {
        return Ok(0);
    }
    i64::try_from(units).ok().and_then(|u| u.checked_mul(price)).ok_or(PlanError::Overflow)
}

/// Prices `units` with `plan` from the counters read by `counter(offer, name)`, reporting each
/// term's [`Part`] (with the term's index in the plan) to `visit` in plan order.
///
/// ```
/// use tollgate_billing_model::pricing::{PriceTerm, price};
/// let plan = [
///     PriceTerm::Composite { offer: "vendor".into(), markup_percent: 10, children: 1 },
///     PriceTerm::PerUnit { offer: "voice".into(), unit_price: 3 },
/// ];
/// // 5 x 3 = 15, markup 1.5 -> 2 (half-even).
/// assert_eq!(price(&plan, &|_, _| None, 5, &mut |_, _| {}), Ok(17));
/// ```
pub fn price(
    plan: &[PriceTerm],
    counter: &dyn Fn(&str, &str) -> Option<u64>,
    units: u64,
    visit: &mut dyn FnMut(usize, Part),
) -> Result<i64, PlanError> {
    if plan.len() > MAX_PLAN_TERMS {
        return Err(PlanError::Malformed("the plan has more than 64 terms"));
    }
    let mut walk = Walk { plan, counter, units, visit, next: 0 };
    let total = walk.term()?;
    if walk.next != plan.len() {
        return Err(PlanError::Malformed("terms follow the plan's root term"));
    }
    Ok(total)
}

/// The most `units` can cost with `plan` from any counters: its price from counters that are
/// all 0 (no free bundle use left, no discount due soon).
pub fn worst_price(plan: &[PriceTerm], units: u64) -> Result<i64, PlanError> {
    price(plan, &|_, _| Some(0), units, &mut |_, _| {})
}

/// Checks that `plan` is well formed (any price of 0 units is then 0).
pub fn check(plan: &[PriceTerm]) -> Result<(), PlanError> {
    worst_price(plan, 0).map(|_| ())
}

struct Walk<'a, 'v> {
    plan: &'a [PriceTerm],
    counter: &'a dyn Fn(&str, &str) -> Option<u64>,
    units: u64,
    visit: &'v mut dyn FnMut(usize, Part),
    next: usize,
}

impl Walk<'_, '_> {
    fn term(&mut self) -> Result<i64, PlanError> {
        let index = self.next;
        let plan = self.plan;
        let term = plan.get(index).ok_or(PlanError::Malformed("a composite has fewer children than it says"))?;
        self.next += 1;
        let n = self.units;
        let (total, part) = match term {
            PriceTerm::PerUnit { unit_price, .. } => {
                if *unit_price < 0 {
                    return Err(PlanError::Malformed("a unit price is negative"));
                }
                let amount = times(n, *unit_price)?;
                (amount, Part::PerUnit { units: n, amount })
            }
            PriceTerm::Bundle { offer, size, refill_price } => {
                if *size == 0 || *refill_price < 0 {
                    return Err(PlanError::Malformed("a bundle's size is 0 or its refill price negative"));
                }
                let left = (self.counter)(offer, BUNDLE_REMAINING).unwrap_or(*size).min(*size);
                let free = n.min(left);
                let paid = n - free;
                let (refills, remaining) =
                    if paid == 0 { (0, left - free) } else { ((paid - 1) / size + 1, size - 1 - (paid - 1) % size) };
                let amount = times(refills, *refill_price)?;
                (amount, Part::Bundle { free, paid, refills, amount, remaining })
            }
            PriceTerm::Threshold { offer, unit_price, every, discount } => {
                if *every == 0 || *unit_price < 0 || *discount < 0 || discount > unit_price {
                    return Err(PlanError::Malformed("a threshold's `every` is 0 or its prices are out of range"));
                }
                let since = (self.counter)(offer, USES_SINCE_DISCOUNT).unwrap_or(0).min(every - 1);
                // The first discounted use is number `every - since` (1-based) of these `n`.
                let first = every - since;
                let (discounted, uses) =
                    if n < first { (0, since + n) } else { ((n - first) / every + 1, (n - first) % every) };
                let gross = times(n, *unit_price)?;
                let off = times(discounted, *discount)?;
                let total = gross.checked_sub(off).ok_or(PlanError::Overflow)?;
                (total, Part::Threshold { units: n, gross, discounted, discount: -off, uses })
            }
            PriceTerm::Composite { markup_percent, children, .. } => {
                if *children == 0 {
                    return Err(PlanError::Malformed("a composite has no children"));
                }
                let mut sum = 0i64;
                for _ in 0..*children {
                    // Recursion depth is bounded by the plan's length.
                    sum = sum.checked_add(self.term()?).ok_or(PlanError::Overflow)?;
                }
                let markup = percent_of(sum, *markup_percent).ok_or(PlanError::Overflow)?;
                let total = sum.checked_add(markup).ok_or(PlanError::Overflow)?;
                (total, Part::Markup { units: n, amount: markup })
            }
        };
        (self.visit)(index, part);
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(size: u64, refill_price: i64) -> Vec<PriceTerm> {
        vec![PriceTerm::Bundle { offer: "b".into(), size, refill_price }]
    }

    fn threshold(unit_price: i64, every: u64, discount: i64) -> Vec<PriceTerm> {
        vec![PriceTerm::Threshold { offer: "t".into(), unit_price, every, discount }]
    }

    /// Prices `n` units from counter value `c` (None = absent) and returns (price, counter after).
    fn run(plan: &[PriceTerm], c: Option<u64>, n: u64) -> (i64, u64) {
        let mut after = 0;
        let total = price(plan, &|_, _| c, n, &mut |_, part| match part {
            Part::Bundle { remaining, .. } => after = remaining,
            Part::Threshold { uses, .. } => after = uses,
            _ => {}
        })
        .unwrap();
        (total, after)
    }

    #[test]
    fn n_uses_cost_what_n_single_uses_cost() {
        for plan in [bundle(3, 500), bundle(1, 7), threshold(105, 11, 10), threshold(9, 1, 9)] {
            for start in [None, Some(0), Some(1), Some(2), Some(10)] {
                for n in 0..40 {
                    let (mut total, mut c) = (0, start);
                    for _ in 0..n {
                        let (p, after) = run(&plan, c, 1);
                        total += p;
                        c = Some(after);
                    }
                    let (p, after) = run(&plan, start, n);
                    assert_eq!(p, total, "{plan:?} from {start:?}, {n} units");
                    if n > 0 {
                        assert_eq!(Some(after), c, "{plan:?} from {start:?}, {n} units");
                    }
                    assert!(p <= worst_price(&plan, n).unwrap());
                }
            }
        }
    }

    #[test]
    fn zero_prices_never_overflow_and_large_ones_are_overflow() {
        let free = vec![PriceTerm::PerUnit { offer: "v".into(), unit_price: 0 }];
        assert_eq!(worst_price(&free, u64::MAX), Ok(0));
        assert_eq!(worst_price(&bundle(1, 0), u64::MAX), Ok(0));
        let dear = vec![PriceTerm::PerUnit { offer: "v".into(), unit_price: i64::MAX }];
        assert_eq!(worst_price(&dear, 1), Ok(i64::MAX));
        assert_eq!(worst_price(&dear, 2), Err(PlanError::Overflow));
        assert_eq!(worst_price(&threshold(i64::MAX, 2, i64::MAX), u64::MAX), Err(PlanError::Overflow));
    }

    #[test]
    fn terms_encode_as_text_and_back() {
        let terms = [
            PriceTerm::PerUnit { offer: "voice".into(), unit_price: i64::MAX },
            PriceTerm::Bundle { offer: "sms".into(), size: u64::MAX, refill_price: 0 },
            PriceTerm::Threshold { offer: "coffee".into(), unit_price: 105, every: 11, discount: 10 },
            PriceTerm::Composite { offer: "vendor".into(), markup_percent: u32::MAX, children: 1 },
        ];
        for term in terms {
            assert_eq!(term.to_string().parse::<PriceTerm>(), Ok(term.clone()));
        }
        assert_eq!(PriceTerm::PerUnit { offer: "v".into(), unit_price: 2 }.to_string(), "per-unit v 2");
        for bad in
            ["", "per-unit v", "per-unit v 2 3", "bundle s -1 5", "kilo v 1", "composite c 1 -1", "per-unit  v 2"]
        {
            assert!(bad.parse::<PriceTerm>().unwrap_err().contains("is not a price term"), "{bad}");
        }
    }

    #[test]
    fn malformed_plans_are_refused() {
        let composite = |children| PriceTerm::Composite { offer: "c".into(), markup_percent: 0, children };
        let leaf = PriceTerm::PerUnit { offer: "v".into(), unit_price: 1 };
        assert!(check(&[composite(1), leaf.clone()]).is_ok());
        for plan in [
            vec![],
            vec![composite(2), leaf.clone()],
            vec![leaf.clone(), leaf.clone()],
            vec![composite(0)],
            bundle(0, 1),
            threshold(5, 0, 1),
            threshold(5, 2, 6),
            vec![PriceTerm::PerUnit { offer: "v".into(), unit_price: -1 }],
            vec![composite(1); MAX_PLAN_TERMS + 1],
        ] {
            assert!(matches!(check(&plan), Err(PlanError::Malformed(_))), "{plan:?}");
        }
    }
}
