//! The policy runner: alone, every charging and rating call is refused ([`Unlinked`]); with
//! links, the policy and its account and rater run wired together in a
//! [`tollgate_runtime::Runtime`], given commands going to the account.

use super::{Act, Actors, Outcome, Prepared, event_json, finish, host_error, host_for, seed_kv, wrong_act};
use crate::Recorder;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tollgate_host::aggregate::Outcome as AggregateOutcome;
use tollgate_host::bindings::policy::tollgate::admission::types::{AdmissionRequest, Decision};
use tollgate_host::bindings::policy::tollgate::billing::charging::{ChargingError, DebitOutcome, ReserveRequest};
use tollgate_host::bindings::policy::tollgate::billing::rating as imported;
use tollgate_host::bindings::rater::tollgate::billing::types::{AccountStatus, Grant, Money, ResultCode, Usage};
use tollgate_host::services::PolicyServices;
use tollgate_host::{ActorKind, PolicyActor};
use tollgate_node::view::{self, DecisionView};

fn decision_json(d: &Decision) -> Value {
    view::to_value(&DecisionView::from(d))
}

fn admission_request(case: &Prepared) -> Result<AdmissionRequest, String> {
    let Act::Admission(spec) = &case.act else { return Err(wrong_act(case, ActorKind::Policy)) };
    Ok(AdmissionRequest {
        request_id: spec.request_id.clone().unwrap_or_else(|| "req-1".into()),
        subscriber: spec.subscriber.clone().unwrap_or_else(|| case.key.clone()),
        offer: spec.offer.clone(),
        rating_group: spec.rating_group,
        requested_units: spec.requested_units,
        country: spec.country.clone(),
    })
}

/// Serves a policy with no linked actors: every charging and rating call is refused.
pub struct Unlinked;

fn unlinked() -> ChargingError {
    ChargingError {
        code: ResultCode::EndUserServiceDenied,
        message: "no charging actor is linked (scenario `links.charging`)".into(),
    }
}

impl PolicyServices for Unlinked {
    fn rate(&self, _: imported::RatingRequest) -> Result<imported::Rated, imported::RatingError> {
        Err(imported::RatingError::InvalidTariff("no rater is linked (scenario `links.rating`)".into()))
    }
    fn reserve(&self, _: ReserveRequest) -> Result<Grant, ChargingError> {
        Err(unlinked())
    }
    fn debit(&self, _: &str, _: &str, _: &str, _: u64) -> Result<DebitOutcome, ChargingError> {
        Err(unlinked())
    }
    fn release(&self, _: &str, _: &str, _: &str) -> Result<Money, ChargingError> {
        Err(unlinked())
    }
    fn direct_debit(&self, _: &str, _: &str, _: Money, _: &str) -> Result<AccountStatus, ChargingError> {
        Err(unlinked())
    }
    fn balance_check(&self, _: &str) -> Result<AccountStatus, ChargingError> {
        Err(unlinked())
    }
    fn price_enquiry(&self, _: &str, _: Usage) -> Result<imported::Rated, ChargingError> {
        Err(unlinked())
    }
}

/// Runs a policy case with no links.
pub(super) fn run_alone(actors: &Actors, case: &Prepared) -> Result<Outcome, String> {
    let request = admission_request(case)?;
    let (host_state, recorder) = host_for(case);
    let mut actor =
        PolicyActor::new(actors.actor.clone(), host_state.clone(), Arc::new(Unlinked)).map_err(|e| e.to_string())?;
    let mut outcome = Outcome::default();
    match actor.decide(&request) {
        Ok(d) => outcome.insert("decision", decision_json(&d)),
        Err(e) => host_error(&mut outcome, &e),
    }
    outcome.insert("events", Value::Array(vec![]));
    finish(&mut outcome, &host_state, &recorder);
    Ok(outcome)
}

/// Runs a policy case with its account and rater linked, in a runtime.
pub(super) fn run_linked(
    actors: &Actors,
    case: &Prepared,
    loader: &mut tollgate_runtime::Loader,
) -> Result<Outcome, String> {
    let request = admission_request(case)?;
    let config = |c: &BTreeMap<String, String>| serde_json::to_value(c).expect("a map of strings always encodes");
    let link = |name: &str| actors.links.get(name).map(|(f, _)| f.display().to_string()).unwrap_or_default();
    let empty = BTreeMap::new();
    let manifest = json!({ "actors": {
        "policy": {
            "kind": "policy",
            "file": actors.file.display().to_string(),
            "config": config(&case.config),
            "links": { "charging": "account", "rating": "rater" },
        },
        "account": {
            "kind": "aggregate",
            "file": link("charging"),
            "config": config(case.link_config.get("charging").unwrap_or(&empty)),
        },
        "rater": {
            "kind": "rater",
            "file": link("rating"),
            "config": config(case.link_config.get("rating").unwrap_or(&empty)),
        },
    }});
    let text = toml::to_string(&manifest).map_err(|e| format!("build the runtime manifest: {e}"))?;
    let manifest =
        tollgate_runtime::Manifest::parse(Path::new("scenario"), &text, Path::new(".")).map_err(|e| e.to_string())?;
    let mut rt = tollgate_runtime::Runtime::new(&manifest, loader).map_err(|e| e.to_string())?;
    rt.clock().set_ms(case.clock_ms);
    let host_state = rt.host_state("policy").cloned().ok_or("the runtime has no actor `policy`")?;
    // A node records nothing; a scenario may name the policy's host calls (`then.calls`).
    let recorder = Recorder::attach(&host_state);
    seed_kv(&host_state, case);
    for (i, m) in case.commands.iter().enumerate() {
        let stream = tollgate_billing_model::account::STREAM;
        let c = super::command(case, stream, m, format!("given-{}", i + 1), case.clock_ms)?;
        match rt.execute(&c).map_err(|e| format!("given command #{} `{}`: {e}", i + 1, m.ty))? {
            AggregateOutcome::Accepted(_) => {}
            AggregateOutcome::Rejected(r) => {
                return Err(format!("given command #{} `{}` was rejected: {}: {}", i + 1, m.ty, r.code, r.message));
            }
        }
    }
    recorder.reset();
    let before = rt.events().map_err(|e| e.to_string())?.len();
    let mut outcome = Outcome::default();
    match rt.admit_with("policy", &request) {
        Ok(d) => outcome.insert("decision", decision_json(&d)),
        Err(e) => outcome.insert("error", Value::String(e.to_string())),
    }
    let events = rt.events().map_err(|e| e.to_string())?;
    outcome.insert("events", events.get(before..).unwrap_or_default().iter().map(event_json).collect());
    finish(&mut outcome, &host_state, &recorder);
    Ok(outcome)
}
