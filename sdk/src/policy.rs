//! Admission policies: decide from rating and charging, both served by the host.

use std::marker::PhantomData;

pub use crate::bindings::policy::tollgate::admission::types::{AdmissionRequest, Decision, Denied, Granted};
pub use crate::bindings::policy::tollgate::billing::charging;
pub use crate::bindings::policy::tollgate::billing::rating;
pub use crate::bindings::policy::tollgate::billing::types::{
    AccountStatus, BundleTerm, CompositeTerm, Counter, FinalUnitAction, Grant, Money, PerUnitTerm, PriceLine,
    PriceTerm, ResultCode, ThresholdTerm, Usage,
};

/// An admission policy.
///
/// ```
/// use tollgate_sdk::policy::{AdmissionRequest, Decision, Denied, Policy, ResultCode};
///
/// struct DenyAll;
/// impl Policy for DenyAll {
///     fn decide(request: AdmissionRequest) -> Decision {
///         Decision::Denied(Denied {
///             code: ResultCode::EndUserServiceDenied,
///             message: format!("{} may not use {}", request.subscriber, request.offer),
///         })
///     }
/// }
/// tollgate_sdk::export_policy!(DenyAll);
/// ```
pub trait Policy {
    /// Decides one admission request. Failures are decisions, never panics.
    fn decide(request: AdmissionRequest) -> Decision;
}

/// Adapts a [`Policy`] to the generated `admission` export.
pub struct Adapter<P>(PhantomData<P>);

impl<P: Policy> crate::bindings::policy::exports::tollgate::admission::admission::Guest for Adapter<P> {
    fn decide(request: AdmissionRequest) -> Decision {
        P::decide(request)
    }
}

/// Exports a [`Policy`] as the component's `tollgate:admission/admission`.
#[macro_export]
macro_rules! export_policy {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type TollgatePolicy = $crate::policy::Adapter<$ty>;
    $crate::bindings::policy::export!(TollgatePolicy with_types_in $crate::bindings::policy);
        };
    };
}
