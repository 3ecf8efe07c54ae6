//! The reference admission policy: may this subscriber use this service now?
//!
//! 1. `charging.balance-check(subscriber)`: an error is a denial with its code (e.g.
//!    `user-unknown`).
//! 2. `rating.rate` of the requested units with the account's counters: outside the offer's
//!    geo-fence is `end-user-service-rejected`, any other rating error `rating-failed`.
//! 3. `charging.reserve` under reservation id = request id, with the rating's price plan,
//!    valid for config `validity-ms` (default 60000): an error is a denial with its code
//!    (e.g. `quota-limit-reached`).
//! 4. Granted: the grant, its price (the grant's, rated by the account with the same plan from
//!    the counters it names) and the price lines: the first rating's when the grant matches it,
//!    otherwise the rating of the granted units from the grant's counters. The price is the sum
//!    of the lines, always.
//!
//! The host de-duplicates `reserve` by request id and answers a repeat with the original
//! grant, price and counters, so a repeated request answers the original decision even after
//! other uses moved the counters on.
//! The decision logic is [`decide`], generic over [`Services`] so it runs natively against
//! fakes; the component passes the real imports ([`Host`]). It never panics.

use tollgate_sdk::policy::charging::{ChargingError, ReserveRequest};
use tollgate_sdk::policy::rating::{Rated, RatingError, RatingRequest};
use tollgate_sdk::policy::{
    AccountStatus, AdmissionRequest, Counter, Decision, Denied, Grant, Granted, Policy, PriceLine, ResultCode, Usage,
};

/// Config key: how long a grant is valid, in milliseconds.
pub const VALIDITY_MS_KEY: &str = "validity-ms";

/// Grant validity when [`VALIDITY_MS_KEY`] is not set.
pub const DEFAULT_VALIDITY_MS: u64 = 60_000;

/// The admission policy component.
pub struct AdmissionPolicy;

tollgate_sdk::export_policy!(AdmissionPolicy);

impl Policy for AdmissionPolicy {
    fn decide(request: AdmissionRequest) -> Decision {
        decide(&request, &Host)
    }
}

/// What the policy needs from its host: charging, rating and configuration.
pub trait Services {
    /// `tollgate:billing/charging.balance-check`.
    fn balance_check(&self, account: &str) -> Result<AccountStatus, ChargingError>;
    /// `tollgate:billing/rating.rate`.
    fn rate(&self, request: &RatingRequest) -> Result<Rated, RatingError>;
    /// `tollgate:billing/charging.reserve`.
    fn reserve(&self, request: &ReserveRequest) -> Result<Grant, ChargingError>;
    /// `wasi:config/store.get`.
    fn config(&self, key: &str) -> Result<Option<String>, String>;
}

/// The component's imports. Natively the imports are unreachable: test with a fake
/// [`Services`] instead.
pub struct Host;

impl Services for Host {
    fn balance_check(&self, account: &str) -> Result<AccountStatus, ChargingError> {
        tollgate_sdk::policy::charging::balance_check(account)
    }

    fn rate(&self, request: &RatingRequest) -> Result<Rated, RatingError> {
        tollgate_sdk::policy::rating::rate(request)
    }

    fn reserve(&self, request: &ReserveRequest) -> Result<Grant, ChargingError> {
        tollgate_sdk::policy::charging::reserve(request)
    }

    fn config(&self, key: &str) -> Result<Option<String>, String> {
        tollgate_sdk::config::get(key)
    }
}

fn denied(code: ResultCode, message: impl Into<String>) -> Decision {
    // A charging error never says `success`; if one did, it is still a refusal.
    let code = if matches!(code, ResultCode::Success) { ResultCode::EndUserServiceDenied } else { code };
    Decision::Denied(Denied { code, message: message.into() })
}

/// The result code and message a rating error is denied with.
pub fn rating_denial(offer: &str, error: RatingError) -> (ResultCode, String) {
    match error {
        RatingError::OutsideGeoFence(m) => (ResultCode::EndUserServiceRejected, m),
        RatingError::UnknownOffer(m) => (ResultCode::RatingFailed, m),
        RatingError::UnknownRatingGroup(g) => {
            (ResultCode::RatingFailed, format!("offer `{offer}` does not rate rating group {g}"))
        }
        RatingError::InvalidTariff(m) => (ResultCode::RatingFailed, format!("invalid tariff: {m}")),
        RatingError::UsageOverflow(m) => (ResultCode::RatingFailed, format!("usage overflow: {m}")),
    }
}

fn validity_ms(services: &impl Services) -> Result<u64, String> {
    match services.config(VALIDITY_MS_KEY) {
        Ok(None) => Ok(DEFAULT_VALIDITY_MS),
        Ok(Some(v)) => match v.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(ms),
            _ => Err(format!("policy config `{VALIDITY_MS_KEY}` = `{v}` is not a positive number of milliseconds")),
        },
        Err(e) => Err(format!("policy config `{VALIDITY_MS_KEY}`: {e}")),
    }
}

/// Decides one admission request with `services`.
pub fn decide(request: &AdmissionRequest, services: &impl Services) -> Decision {
    if request.requested_units == 0 {
        return denied(ResultCode::EndUserServiceDenied, "`requested-units` must be > 0");
    }
    let validity_ms = match validity_ms(services) {
        Ok(ms) => ms,
        Err(m) => return denied(ResultCode::EndUserServiceDenied, m),
    };
    let status = match services.balance_check(&request.subscriber) {
        Ok(status) => status,
        Err(e) => return denied(e.code, e.message),
    };
    let rating_request = |units, counters: &[Counter]| RatingRequest {
        usage: Usage {
            offer: request.offer.clone(),
            rating_group: request.rating_group,
            units,
            country: request.country.clone(),
        },
        counters: counters.to_vec(),
    };
    let rated = match services.rate(&rating_request(request.requested_units, &status.counters)) {
        Ok(rated) => rated,
        Err(e) => {
            let (code, message) = rating_denial(&request.offer, e);
            return denied(code, message);
        }
    };
    if rated.total.currency != status.balance.currency {
        return denied(
            ResultCode::RatingFailed,
            format!(
                "offer `{}` is priced in {} but account `{}` is in {}",
                request.offer, rated.total.currency, request.subscriber, status.balance.currency
            ),
        );
    }
    let reserve = ReserveRequest {
        request_id: request.request_id.clone(),
        account: request.subscriber.clone(),
        reservation_id: request.request_id.clone(),
        units: request.requested_units,
        plan: rated.plan,
        currency: rated.total.currency.clone(),
        validity_ms,
        offer: request.offer.clone(),
    };
    let grant = match services.reserve(&reserve) {
        Ok(grant) => grant,
        Err(e) => return denied(e.code, e.message),
    };
    // A repeat's grant was rated from earlier counters: an equal price is no proof of equal lines.
    let same = grant.granted_units == request.requested_units
        && grant.price.minor_units == rated.total.minor_units
        && grant.counters.len() == status.counters.len()
        && grant
            .counters
            .iter()
            .zip(&status.counters)
            .all(|(a, b)| (&a.offer, &a.name, a.value) == (&b.offer, &b.name, b.value));
    let lines = if same {
        rated.lines
    } else {
        // Fewer units granted, or a repeat answered with the original grant: describe the
        // grant's units from the counters its price was rated from. Rating is pure, so this is
        // the original description unless the tariff changed since; then one line states the
        // grant's price, which stays what was held and will be charged.
        match services.rate(&rating_request(grant.granted_units, &grant.counters)) {
            Ok(r) if r.total.minor_units == grant.price.minor_units => r.lines,
            _ => vec![PriceLine {
                offer: request.offer.clone(),
                description: "price of the granted units".into(),
                units: grant.granted_units,
                amount: grant.price.clone(),
            }],
        }
    };
    let price = grant.price.clone();
    Decision::Granted(Granted { grant, price, lines })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;
    use tollgate_sdk::policy::{Money, PerUnitTerm, PriceTerm};

    fn eur(minor_units: i64) -> Money {
        Money { minor_units, currency: "EUR".into() }
    }

    /// A fake host: one account, a per-unit rater, and a reserve that de-duplicates by
    /// request id like the real one.
    struct Fake {
        accounts: BTreeMap<String, i64>,
        unit_price: Cell<i64>,
        rating_error: Option<fn() -> RatingError>,
        config: BTreeMap<String, String>,
        reserves: RefCell<Vec<ReserveRequest>>,
        granted: RefCell<BTreeMap<String, Grant>>,
        rated_units: RefCell<Vec<u64>>,
    }

    impl Fake {
        fn new() -> Self {
            Fake {
                accounts: BTreeMap::from([("alice".to_string(), 100)]),
                unit_price: Cell::new(2),
                rating_error: None,
                config: BTreeMap::new(),
                reserves: RefCell::default(),
                granted: RefCell::default(),
                rated_units: RefCell::default(),
            }
        }
    }

    impl Services for Fake {
        fn balance_check(&self, account: &str) -> Result<AccountStatus, ChargingError> {
            let balance = *self.accounts.get(account).ok_or_else(|| ChargingError {
                code: ResultCode::UserUnknown,
                message: format!("no account `{account}`"),
            })?;
            let held: i64 = self.granted.borrow().values().map(|g| g.held.minor_units).sum();
            Ok(AccountStatus {
                account: account.into(),
                balance: eur(balance),
                held: eur(held),
                available: eur(balance - held),
                counters: vec![Counter { offer: "voice".into(), name: "seen".into(), value: 4 }],
            })
        }

        fn rate(&self, request: &RatingRequest) -> Result<Rated, RatingError> {
            if let Some(error) = self.rating_error {
                return Err(error());
            }
            assert_eq!(request.counters.len(), 1, "the account's counters are passed on");
            self.rated_units.borrow_mut().push(request.usage.units);
            let unit_price = self.unit_price.get();
            let total = request.usage.units as i64 * unit_price;
            Ok(Rated {
                lines: vec![PriceLine {
                    offer: request.usage.offer.clone(),
                    description: "per-unit usage".into(),
                    units: request.usage.units,
                    amount: eur(total),
                }],
                total: eur(total),
                plan: vec![PriceTerm::PerUnit(PerUnitTerm { offer: request.usage.offer.clone(), unit_price })],
                counters: vec![Counter { offer: "voice".into(), name: "seen".into(), value: 5 }],
            })
        }

        fn reserve(&self, request: &ReserveRequest) -> Result<Grant, ChargingError> {
            self.reserves.borrow_mut().push(request.clone());
            if let Some(grant) = self.granted.borrow().get(&request.request_id) {
                return Ok(grant.clone());
            }
            let status = self.balance_check(&request.account)?;
            let [PriceTerm::PerUnit(PerUnitTerm { unit_price: price, .. })] = request.plan[..] else {
                panic!("the fake account prices per unit only");
            };
            let affordable = if price == 0 { request.units } else { (status.available.minor_units / price) as u64 };
            let granted_units = request.units.min(affordable);
            if granted_units == 0 {
                return Err(ChargingError {
                    code: ResultCode::QuotaLimitReached,
                    message: "available does not cover one unit".into(),
                });
            }
            let grant = Grant {
                reservation_id: request.reservation_id.clone(),
                granted_units,
                price: eur(granted_units as i64 * price),
                counters: status.counters,
                held: eur(granted_units as i64 * price),
                expires_at: request.validity_ms,
                final_unit: None,
            };
            self.granted.borrow_mut().insert(request.request_id.clone(), grant.clone());
            Ok(grant)
        }

        fn config(&self, key: &str) -> Result<Option<String>, String> {
            Ok(self.config.get(key).cloned())
        }
    }

    fn request(id: &str, subscriber: &str, units: u64) -> AdmissionRequest {
        AdmissionRequest {
            request_id: id.into(),
            subscriber: subscriber.into(),
            offer: "voice".into(),
            rating_group: 1,
            requested_units: units,
            country: Some("DE".into()),
        }
    }

    fn granted(decision: Decision) -> Granted {
        match decision {
            Decision::Granted(g) => g,
            Decision::Denied(d) => panic!("denied: {:?} {}", d.code, d.message),
        }
    }

    fn denial(decision: Decision) -> Denied {
        match decision {
            Decision::Denied(d) => d,
            Decision::Granted(g) => panic!("granted {} units", g.grant.granted_units),
        }
    }

    #[test]
    fn grants_and_reserves_at_the_rated_unit_price() {
        let fake = Fake::new();
        let g = granted(decide(&request("r1", "alice", 10), &fake));
        assert_eq!((g.grant.granted_units, g.price.minor_units, g.price.currency.as_str()), (10, 20, "EUR"));
        assert_eq!(g.lines.len(), 1);
        let reserves = fake.reserves.borrow();
        let r = &reserves[0];
        assert_eq!((r.request_id.as_str(), r.reservation_id.as_str(), r.account.as_str()), ("r1", "r1", "alice"));
        assert_eq!((r.units, r.currency.as_str(), r.validity_ms), (10, "EUR", DEFAULT_VALIDITY_MS));
        assert!(matches!(r.plan[..], [PriceTerm::PerUnit(PerUnitTerm { unit_price: 2, .. })]));
        assert_eq!(r.offer, "voice");
    }

    #[test]
    fn a_repeat_answers_the_original_price_and_lines_after_the_tariff_moved() {
        let fake = Fake::new();
        let first = granted(decide(&request("r1", "alice", 10), &fake));
        // The rating now differs (as after other uses moved the counters on): the repeat still
        // answers the grant's price, and lines that add up to it.
        fake.unit_price.set(3);
        let again = granted(decide(&request("r1", "alice", 10), &fake));
        assert_eq!((again.price.minor_units, again.grant.granted_units), (first.price.minor_units, 10));
        let sum: i64 = again.lines.iter().map(|l| l.amount.minor_units).sum();
        assert_eq!(sum, again.price.minor_units);
    }

    #[test]
    fn a_repeated_request_answers_the_same_grant() {
        let fake = Fake::new();
        let first = granted(decide(&request("r1", "alice", 30), &fake));
        let again = granted(decide(&request("r1", "alice", 30), &fake));
        assert_eq!(first.grant.reservation_id, again.grant.reservation_id);
        assert_eq!(
            (first.grant.granted_units, first.price.minor_units),
            (again.grant.granted_units, again.price.minor_units)
        );
        assert_eq!(fake.granted.borrow().len(), 1);
    }

    #[test]
    fn partial_grants_are_priced_and_described_for_the_granted_units() {
        let fake = Fake::new();
        let g = granted(decide(&request("r1", "alice", 80), &fake));
        assert_eq!((g.grant.granted_units, g.price.minor_units), (50, 100));
        assert_eq!((g.lines[0].units, g.lines[0].amount.minor_units), (50, 100));
        assert_eq!(*fake.rated_units.borrow(), [80, 50]);
        // Nothing left: the next request is refused by reserve with its code.
        let d = denial(decide(&request("r2", "alice", 1), &fake));
        assert!(matches!(d.code, ResultCode::QuotaLimitReached), "{:?}", d.code);
    }

    #[test]
    fn unknown_subscribers_are_denied_with_the_charging_code() {
        let d = denial(decide(&request("r1", "bob", 1), &Fake::new()));
        assert!(matches!(d.code, ResultCode::UserUnknown));
        assert!(d.message.contains("bob"));
    }

    #[test]
    fn rating_errors_map_to_result_codes_and_reserve_nothing() {
        type Case = (fn() -> RatingError, ResultCode, &'static str);
        let cases: [Case; 5] = [
            (|| RatingError::OutsideGeoFence("only in AT".into()), ResultCode::EndUserServiceRejected, "only in AT"),
            (|| RatingError::UnknownOffer("no tariff".into()), ResultCode::RatingFailed, "no tariff"),
            (|| RatingError::UnknownRatingGroup(9), ResultCode::RatingFailed, "rating group 9"),
            (|| RatingError::InvalidTariff("bad".into()), ResultCode::RatingFailed, "invalid tariff: bad"),
            (|| RatingError::UsageOverflow("9 units".into()), ResultCode::RatingFailed, "usage overflow: 9 units"),
        ];
        for (error, code, needle) in cases {
            let fake = Fake { rating_error: Some(error), ..Fake::new() };
            let d = denial(decide(&request("r1", "alice", 1), &fake));
            assert_eq!(std::mem::discriminant(&d.code), std::mem::discriminant(&code));
            assert!(d.message.contains(needle), "{}", d.message);
            assert!(fake.reserves.borrow().is_empty());
        }
    }

    #[test]
    fn validity_comes_from_config() {
        let mut fake = Fake::new();
        fake.config.insert(VALIDITY_MS_KEY.into(), "5000".into());
        granted(decide(&request("r1", "alice", 1), &fake));
        assert_eq!(fake.reserves.borrow()[0].validity_ms, 5000);
        for bad in ["0", "soon", "-1"] {
            let mut fake = Fake::new();
            fake.config.insert(VALIDITY_MS_KEY.into(), bad.into());
            let d = denial(decide(&request("r1", "alice", 1), &fake));
            assert!(d.message.contains(VALIDITY_MS_KEY), "{}", d.message);
        }
    }

    #[test]
    fn zero_units_and_foreign_currencies_are_denied() {
        let d = denial(decide(&request("r1", "alice", 0), &Fake::new()));
        assert!(matches!(d.code, ResultCode::EndUserServiceDenied));
        struct Usd(Fake);
        impl Services for Usd {
            fn balance_check(&self, account: &str) -> Result<AccountStatus, ChargingError> {
                self.0.balance_check(account)
            }
            fn rate(&self, request: &RatingRequest) -> Result<Rated, RatingError> {
                let mut rated = self.0.rate(request)?;
                rated.total.currency = "USD".into();
                Ok(rated)
            }
            fn reserve(&self, request: &ReserveRequest) -> Result<Grant, ChargingError> {
                self.0.reserve(request)
            }
            fn config(&self, key: &str) -> Result<Option<String>, String> {
                self.0.config(key)
            }
        }
        let usd = Usd(Fake::new());
        let d = denial(decide(&request("r1", "alice", 1), &usd));
        assert!(matches!(d.code, ResultCode::RatingFailed) && d.message.contains("USD"), "{}", d.message);
        assert!(usd.0.reserves.borrow().is_empty());
    }
}
