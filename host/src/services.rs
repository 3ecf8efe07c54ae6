//! What a policy's billing imports are served by: the runtime implements this as a facade
//! over the account aggregate (charging) and a rater component (rating).

use crate::bindings::policy::tollgate::billing::charging::{ChargingError, DebitOutcome, ReserveRequest};
use crate::bindings::policy::tollgate::billing::rating::{Rated, RatingError, RatingRequest};
use crate::bindings::rater::tollgate::billing::types::{AccountStatus, Grant, Money, Usage};

/// Serves `tollgate:billing/rating` and `tollgate:billing/charging` to policy actors.
pub trait PolicyServices: Send + Sync {
    /// Prices usage (`rating.rate`).
    fn rate(&self, request: RatingRequest) -> Result<Rated, RatingError>;
    /// Reserves and grants (`charging.reserve`).
    fn reserve(&self, request: ReserveRequest) -> Result<Grant, ChargingError>;
    /// Debits used units (`charging.debit`).
    fn debit(
        &self,
        request_id: &str,
        account: &str,
        reservation_id: &str,
        used_units: u64,
    ) -> Result<DebitOutcome, ChargingError>;
    /// Frees a hold (`charging.release`).
    fn release(&self, request_id: &str, account: &str, reservation_id: &str) -> Result<Money, ChargingError>;
    /// Charges without a reservation (`charging.direct-debit`).
    fn direct_debit(
        &self,
        request_id: &str,
        account: &str,
        amount: Money,
        description: &str,
    ) -> Result<AccountStatus, ChargingError>;
    /// Reads an account (`charging.balance-check`).
    fn balance_check(&self, account: &str) -> Result<AccountStatus, ChargingError>;
    /// Prices usage for an account (`charging.price-enquiry`).
    fn price_enquiry(&self, account: &str, usage: Usage) -> Result<Rated, ChargingError>;
}
