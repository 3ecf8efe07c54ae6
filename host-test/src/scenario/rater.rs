//! The rater runner: one rating request, no `given` but config.

use super::{Act, Actors, Outcome, Prepared, finish, host_error, host_for, wrong_act};
use serde_json::{Value, json};
use tollgate_host::bindings::rater::tollgate::billing::types::{Counter, Money, PriceLine, PriceTerm, Usage};
use tollgate_host::typed::{RatingError, RatingRequest};
use tollgate_host::{ActorKind, RaterActor};
use tollgate_node::view::{self, CounterView, MoneyView, PriceLineView};

fn money_json(m: &Money) -> Value {
    view::to_value(&MoneyView::from(m))
}

fn counters_json(counters: &[Counter]) -> Value {
    view::to_value(&counters.iter().map(CounterView::from).collect::<Vec<_>>())
}

fn lines_json(lines: &[PriceLine]) -> Value {
    view::to_value(&lines.iter().map(PriceLineView::from).collect::<Vec<_>>())
}

/// A price plan in the JSON of the model's `PriceTerm` (what the account's events carry).
fn plan_json(plan: &[PriceTerm]) -> Value {
    let terms: Vec<_> = plan.iter().cloned().map(tollgate_runtime::facade::model_term).collect();
    serde_json::to_value(terms).unwrap_or(Value::Null)
}

/// Runs a rater case.
pub(super) fn run(actors: &Actors, case: &Prepared) -> Result<Outcome, String> {
    let Act::Rate(spec) = &case.act else { return Err(wrong_act(case, ActorKind::Rater)) };
    let (host_state, recorder) = host_for(case);
    let mut actor = RaterActor::new(actors.actor.clone(), host_state.clone()).map_err(|e| e.to_string())?;
    let request = RatingRequest {
        usage: Usage {
            offer: spec.offer.clone(),
            rating_group: spec.rating_group,
            units: spec.units,
            country: spec.country.clone(),
        },
        counters: spec
            .counters
            .iter()
            .map(|c| Counter { offer: c.offer.clone(), name: c.name.clone(), value: c.value })
            .collect(),
    };
    let mut outcome = Outcome::default();
    match actor.rate(&request) {
        Ok(Ok(r)) => outcome.insert(
            "rated",
            json!({
                "lines": lines_json(&r.lines),
                "total": money_json(&r.total),
                "plan": plan_json(&r.plan),
                "counters": counters_json(&r.counters),
            }),
        ),
        Ok(Err(e)) => {
            let (kind, detail) = match e {
                RatingError::UnknownOffer(s) => ("unknown-offer", json!(s)),
                RatingError::UnknownRatingGroup(g) => ("unknown-rating-group", json!(g)),
                RatingError::OutsideGeoFence(s) => ("outside-geo-fence", json!(s)),
                RatingError::InvalidTariff(s) => ("invalid-tariff", json!(s)),
                RatingError::UsageOverflow(s) => ("usage-overflow", json!(s)),
            };
            outcome.insert("rating_error", json!({ kind: detail }));
        }
        Err(e) => host_error(&mut outcome, &e),
    }
    finish(&mut outcome, &host_state, &recorder);
    Ok(outcome)
}
