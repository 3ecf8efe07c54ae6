//! {{name}}: an admission policy admitting only the offers listed in config key
//! `allowed-offers` (comma-separated); an allowed offer is rated and its units reserved
//! through the host's `rating` and `charging` imports.

use tollgate_sdk::policy::charging::ReserveRequest;
use tollgate_sdk::policy::rating::RatingRequest;
use tollgate_sdk::policy::{AdmissionRequest, Decision, Denied, Granted, Policy, PriceLine, ResultCode, Usage};

/// Whether `offer` is in the comma-separated `allowed` list: the logic, pure.
pub fn allowed(allowed: &str, offer: &str) -> bool {
    allowed.split(',').any(|o| o.trim() == offer)
}

fn denied(code: ResultCode, message: impl Into<String>) -> Decision {
    Decision::Denied(Denied { code, message: message.into() })
}

/// The policy.
pub struct AllowList;

impl Policy for AllowList {
    fn decide(request: AdmissionRequest) -> Decision {
        let list = tollgate_sdk::config::get("allowed-offers").ok().flatten().unwrap_or_default();
        if !allowed(&list, &request.offer) {
            return denied(ResultCode::EndUserServiceRejected, format!("offer `{}` is not allowed", request.offer));
        }
        let usage = Usage {
            offer: request.offer.clone(),
            rating_group: request.rating_group,
            units: request.requested_units,
            country: request.country.clone(),
        };
        let rated = match tollgate_sdk::policy::rating::rate(&RatingRequest { usage, counters: vec![] }) {
            Ok(rated) => rated,
            Err(e) => return denied(ResultCode::RatingFailed, format!("{e:?}")),
        };
        let reserve = ReserveRequest {
            request_id: request.request_id.clone(),
            account: request.subscriber.clone(),
            reservation_id: request.request_id.clone(),
            units: request.requested_units,
            plan: rated.plan,
            currency: rated.total.currency.clone(),
            validity_ms: 60_000,
            offer: request.offer.clone(),
        };
        match tollgate_sdk::policy::charging::reserve(&reserve) {
            // The grant may hold fewer units than asked for: answer its price, in one line.
            Ok(grant) => {
                let line = PriceLine {
                    offer: request.offer.clone(),
                    description: format!("{} units", grant.granted_units),
                    units: grant.granted_units,
                    amount: grant.price.clone(),
                };
                Decision::Granted(Granted { price: grant.price.clone(), grant, lines: vec![line] })
            }
            Err(e) => denied(e.code, e.message),
        }
    }
}

// Exports `tollgate:admission/admission` (only on wasm32).
tollgate_sdk::export_policy!(AllowList);
