//! Raters: pure pricing of usage, with tariffs read from configuration.

use std::marker::PhantomData;

pub use crate::bindings::rater::exports::tollgate::billing::rating::{Rated, RatingError, RatingRequest};
pub use crate::bindings::rater::tollgate::billing::types::{
    BundleTerm, CompositeTerm, Counter, Money, PerUnitTerm, PriceLine, PriceTerm, ThresholdTerm, Usage,
};

/// A rater: usage and counters in, price lines out.
///
/// ```
/// use tollgate_sdk::rater::{Money, PerUnitTerm, PriceTerm, Rated, Rater, RatingError, RatingRequest};
///
/// struct Flat;
/// impl Rater for Flat {
///     fn rate(request: RatingRequest) -> Result<Rated, RatingError> {
///         let units = i64::try_from(request.usage.units).ok().and_then(|u| u.checked_mul(2));
///         let units = units.ok_or_else(|| RatingError::UsageOverflow("2 x units overflows".into()))?;
///         let total = Money { minor_units: units, currency: "EUR".into() };
///         let plan = vec![PriceTerm::PerUnit(PerUnitTerm { offer: request.usage.offer, unit_price: 2 })];
///         Ok(Rated { lines: vec![], total, plan, counters: request.counters })
///     }
/// }
/// tollgate_sdk::export_rater!(Flat);
/// ```
pub trait Rater {
    /// Prices one usage.
    fn rate(request: RatingRequest) -> Result<Rated, RatingError>;
}

/// Adapts a [`Rater`] to the generated `rating` export.
pub struct Adapter<R>(PhantomData<R>);

impl<R: Rater> crate::bindings::rater::exports::tollgate::billing::rating::Guest for Adapter<R> {
    fn rate(request: RatingRequest) -> Result<Rated, RatingError> {
        R::rate(request)
    }
}

/// Exports a [`Rater`] as the component's `tollgate:billing/rating`.
#[macro_export]
macro_rules! export_rater {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type TollgateRater = $crate::rater::Adapter<$ty>;
    $crate::bindings::rater::export!(TollgateRater with_types_in $crate::bindings::rater);
        };
    };
}
