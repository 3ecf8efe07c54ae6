//! A subset of Nchf_ConvergedCharging (3GPP TS 32.291) under `/nchf-convergedcharging/v3`:
//! a network function asks for quota per rating group and reports what was used.
//!
//! | route | does | answers |
//! |---|---|---|
//! | `POST /chargingdata` | one admission (reservation) per `multipleUnitUsage` entry with a `requestedUnit` | `201`, `Location` naming the charging data ref, a `ChargingDataResponse`; `404 USER_UNKNOWN` for an unknown subscriber |
//! | `POST /chargingdata/{ref}/update` | charges each rating group's `usedUnitContainer`s against its grant, then reserves its new `requestedUnit` | `200`, a `ChargingDataResponse` |
//! | `POST /chargingdata/{ref}/release` | charges the final usage, releases every other open grant | `204` |
//!
//! Money rules:
//! - **Usage is charged as used.** Units within a grant are debited from its hold; units beyond
//!   it, and usage reported after the grant lapsed (within the account's late-usage window), are
//!   charged from the money available; what that does not cover is recorded as unpaid (the
//!   account's `settle` command). A grant is never dropped without being settled.
//! - **A step is answered once.** Each step has an id made of the charging data ref, the
//!   `invocationSequenceNumber` and the rating group, and the session's record (stream
//!   [`SESSION_STREAM`], keyed by the ref) keeps each answer with a digest of the request: a
//!   retransmission (same content; `retransmissionIndicator` may differ) is answered with the
//!   original response and charges nothing twice, even when the first try was cut off half
//!   way; other content under the same sequence number is `409`.
//! - **One session, one worker.** Every step of a session runs where its subscriber's other
//!   requests do, one at a time; the subscriber is fixed at create.
//!
//! `subscriberIdentifier` names the account; the manifest's `[rating_groups]` names the offer,
//! the unit and the default quota of each rating group.
//!
//! ```text
//! POST /nchf-convergedcharging/v3/chargingdata
//! {"subscriberIdentifier": "imsi-001010000000001", "nfConsumerIdentification": {"nodeFunctionality": "SMF"},
//!  "invocationTimeStamp": "2026-12-01T10:00:00Z", "invocationSequenceNumber": 0,
//!  "multipleUnitUsage": [{"ratingGroup": 100, "requestedUnit": {"time": 60}}]}
//! ```

pub mod message;
pub mod session;

use crate::problem::Problem;
use axum::http::StatusCode;
use message::{
    ChargingDataRequest, ChargingDataResponse, FinalUnitIndication, MultipleUnitInformation, Units, UsageCharge,
    decode, incorrect, timestamp, used,
};
use serde_json::Value;
use session::{OpenGrant, Session, SessionEvent, content_digest, load, record};
use std::collections::BTreeMap;
use tollgate_billing_model::account::{AccountCommand, AccountEvent};
use tollgate_node::view::{DecisionView, EventView};
use tollgate_node::{Admission, Node, Reply, Request};
use tollgate_runtime::manifest::RatingGroup;

pub use session::SESSION_STREAM;

/// The stream of the account aggregate, keyed by subscriber.
const ACCOUNT_STREAM: &str = tollgate_billing_model::account::STREAM;

/// The rating groups a node charges, by number (the manifest's `[rating_groups]`).
pub type RatingGroups = BTreeMap<u32, RatingGroup>;

fn result_code(code: &str) -> String {
    code.replace('-', "_").to_ascii_uppercase()
}

/// Refuses a request naming one rating group twice: each entry would settle or replace the
/// other's grant.
fn one_entry_per_group(request: &ChargingDataRequest) -> Result<(), Problem> {
    for (i, usage) in request.multiple_unit_usage.iter().enumerate() {
        if let Some(first) = request.multiple_unit_usage[..i].iter().position(|u| u.rating_group == usage.rating_group)
        {
            return Err(incorrect(
                format!("multipleUnitUsage[{i}].ratingGroup"),
                &format!("repeats rating group {} of `multipleUnitUsage[{first}]`", usage.rating_group),
            ));
        }
    }
    Ok(())
}

/// Decodes and checks a request before it is routed: mandatory IEs, one entry per rating group.
pub fn checked(body: &Value) -> Result<ChargingDataRequest, Problem> {
    let request = decode(body)?;
    one_entry_per_group(&request)?;
    if let Some(subscriber) = &request.subscriber_identifier {
        tollgate_node::protocol::check_name("subscriberIdentifier", subscriber)
            .map_err(|e| incorrect(e.field, &e.problem))?;
    }
    Ok(request)
}

/// The subscriber a create names (it is the session's for good), or `400 MANDATORY_IE_MISSING`.
pub fn subscriber_of(request: &ChargingDataRequest) -> Result<&str, Problem> {
    request.subscriber_identifier.as_deref().ok_or_else(|| {
        Problem::new(StatusCode::BAD_REQUEST, "MANDATORY_IE_MISSING", "`subscriberIdentifier` is missing")
    })
}

/// The charging data ref a create names: the digest of its content, so a create sent again
/// names the same session.
pub fn reference_of(body: &Value) -> String {
    content_digest("create", body)
}

/// Whether the account exists and is open: read as this runtime knows it, then afresh from the
/// store before answering no (another runtime may have opened it).
fn account_open(node: &mut Node, subscriber: &str) -> Result<bool, Problem> {
    let open = |account: Option<tollgate_billing_model::account::Account>| account.is_some_and(|a| a.open);
    if open(node.runtime().account(subscriber).map_err(tollgate_node::NodeError::from)?) {
        return Ok(true);
    }
    Ok(open(node.runtime().reload_account(subscriber).map_err(tollgate_node::NodeError::from)?))
}

/// Reserves what `multipleUnitUsage[i]` asks for next (nothing when it asks for nothing): its
/// answer and the grant it opened, if any. The step's id is `<ref>/<sequence>/<rating group>`.
fn reserve_next(
    node: &mut Node,
    groups: &RatingGroups,
    subscriber: &str,
    (reference, request): (&str, &ChargingDataRequest),
    i: usize,
) -> Result<Option<(MultipleUnitInformation, Option<OpenGrant>)>, Problem> {
    let usage = &request.multiple_unit_usage[i];
    let Some(requested) = &usage.requested_unit else { return Ok(None) };
    let rating_group = usage.rating_group;
    let Some(group) = groups.get(&rating_group) else {
        return Ok(Some((MultipleUnitInformation::code(rating_group, "RATING_FAILED"), None)));
    };
    let (kind, units) = requested.requested(group, &format!("multipleUnitUsage[{i}].requestedUnit"))?;
    let id = format!("{reference}/{}/{rating_group}", request.invocation_sequence_number);
    let admission =
        Admission { id, subscriber: subscriber.into(), offer: group.offer.clone(), units, rating_group, country: None };
    match node.handle(Request::Admit(admission))? {
        Reply::Decision(DecisionView::Granted { grant, .. }) => {
            let now = node.now_ms();
            let final_unit_indication = grant.final_unit.map(FinalUnitIndication::from);
            let info = MultipleUnitInformation {
                result_code: "SUCCESS".into(),
                rating_group,
                granted_unit: Some(Units::granted(kind, grant.granted_units)),
                validity_time: Some(grant.expires_at.saturating_sub(now) / 1000),
                final_unit_indication,
                usage_charge: None,
            };
            let currency = grant.price.currency;
            Ok(Some((info, Some(OpenGrant { reservation_id: grant.reservation_id, unit: kind, currency }))))
        }
        Reply::Decision(DecisionView::Denied { code, .. }) => {
            Ok(Some((MultipleUnitInformation::code(rating_group, &result_code(&code)), None)))
        }
        other => Err(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SYSTEM_FAILURE",
            format!("an admission was answered {other:?}"),
        )),
    }
}

/// How a grant's usage was settled.
enum Settlement {
    /// Nothing was used; its hold is free.
    Released,
    /// The usage was charged.
    Charged(UsageCharge),
    /// The account could not take it (the code says why); the grant is gone.
    Refused,
}

/// Settles `grant` with `used` units: released when nothing was used, else charged with
/// `settle` (within the grant from its hold, beyond it or late from the money available, the
/// rest unpaid).
fn settle(node: &mut Node, subscriber: &str, id: String, grant: &OpenGrant, used: u64) -> Result<Settlement, Problem> {
    let reservation_id = grant.reservation_id.clone();
    let command = if used == 0 {
        AccountCommand::Release { reservation_id }
    } else {
        AccountCommand::Settle { reservation_id, used_units: used }
    };
    let command = tollgate_node::view::to_value(&command);
    let execute = Request::Execute { stream: ACCOUNT_STREAM.into(), key: subscriber.into(), id, command };
    let (code, message) = match node.handle(execute)? {
        Reply::Accepted(_) if used == 0 => return Ok(Settlement::Released),
        Reply::Accepted(events) => return Ok(Settlement::Charged(charge_of(&events, used, &grant.currency))),
        Reply::Rejected { code, message, .. } => (code, message),
        other => {
            return Err(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "SYSTEM_FAILURE",
                format!("settling `{}` was answered {other:?}", grant.reservation_id),
            ));
        }
    };
    match code.as_str() {
        // A grant that lapsed holds nothing any more: nothing used, nothing to free.
        "unknown-reservation" if used == 0 => Ok(Settlement::Released),
        "command-id-conflict" => Err(Problem::new(
            StatusCode::CONFLICT,
            "INVOCATION_SEQUENCE_NUMBER_CONFLICT",
            format!("this step was begun for a request with other content: {message}"),
        )),
        "amount-overflow" => Err(incorrect("usedUnitContainer".into(), &format!("cannot be priced: {message}"))),
        _ => {
            tracing::warn!(grant = %grant.reservation_id, used, code, "usage the account would not charge");
            Ok(Settlement::Refused)
        }
    }
}

/// What `settle`'s events charged for `used` units.
fn charge_of(events: &[EventView], used: u64, currency: &str) -> UsageCharge {
    let mut charge = UsageCharge {
        used_units: used,
        charged_minor_units: 0,
        unpaid_minor_units: 0,
        currency: currency.into(),
        late: true,
    };
    for event in events {
        let tagged = serde_json::json!({ event.event_type.clone(): event.payload });
        match serde_json::from_value::<AccountEvent>(tagged) {
            Ok(AccountEvent::Debited { charged, .. }) => {
                charge.late = false;
                charge.charged_minor_units = charge.charged_minor_units.saturating_add(charged);
            }
            Ok(AccountEvent::UsageCharged { charged, unpaid, .. }) => {
                charge.charged_minor_units = charge.charged_minor_units.saturating_add(charged);
                charge.unpaid_minor_units = charge.unpaid_minor_units.saturating_add(unpaid);
            }
            _ => {}
        }
    }
    charge
}

/// `POST /chargingdata` on the subscriber's runtime: the response of session `reference`.
pub fn create(
    node: &mut Node,
    groups: &RatingGroups,
    reference: &str,
    request: &ChargingDataRequest,
) -> Result<ChargingDataResponse, Problem> {
    let subscriber = subscriber_of(request)?;
    let sequence = request.invocation_sequence_number;
    if let Some(session) = load(node, reference)?
        && let Some(response) = session.answered(sequence, reference)?
    {
        return Ok(response.clone());
    }
    if !account_open(node, subscriber)? {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "USER_UNKNOWN",
            format!("no account `{subscriber}`: no charging data is created"),
        ));
    }
    let mut grants = BTreeMap::new();
    let mut infos = Vec::new();
    for (i, usage) in request.multiple_unit_usage.iter().enumerate() {
        if let Some((info, grant)) = reserve_next(node, groups, subscriber, (reference, request), i)? {
            infos.push(info);
            grants.extend(grant.map(|g| (usage.rating_group, g)));
        }
    }
    let response = ChargingDataResponse {
        invocation_time_stamp: timestamp(node.now_ms()),
        invocation_sequence_number: sequence,
        multiple_unit_information: infos,
    };
    let step = SessionEvent::Answered {
        subscriber: subscriber.into(),
        sequence,
        digest: reference.into(),
        grants,
        response: response.clone(),
    };
    record(node, reference, &format!("{reference}/{sequence}"), &step)?;
    Ok(response)
}

fn open_session(node: &Node, reference: &str) -> Result<Session, Problem> {
    load(node, reference)?.ok_or_else(|| {
        Problem::new(StatusCode::NOT_FOUND, "CONTEXT_NOT_FOUND", format!("no charging data `{reference}`"))
    })
}

/// Refuses a request naming another subscriber than the session's.
fn same_subscriber(session: &Session, request: &ChargingDataRequest) -> Result<(), Problem> {
    match &request.subscriber_identifier {
        Some(named) if *named != session.subscriber => Err(incorrect(
            "subscriberIdentifier".into(),
            "names another subscriber than the one this charging data was created for",
        )),
        _ => Ok(()),
    }
}

/// Settles what each rating group of `request` reports against the session's grants (removed
/// from `grants` as they are settled), answering each with `next` for what it asks next.
fn report(
    node: &mut Node,
    reference: &str,
    subscriber: &str,
    request: &ChargingDataRequest,
    grants: &mut BTreeMap<u32, OpenGrant>,
    mut next: impl FnMut(&mut Node, usize) -> Result<Option<(MultipleUnitInformation, Option<OpenGrant>)>, Problem>,
) -> Result<Vec<MultipleUnitInformation>, Problem> {
    let sequence = request.invocation_sequence_number;
    let mut infos = Vec::new();
    for (i, usage) in request.multiple_unit_usage.iter().enumerate() {
        let group = usage.rating_group;
        let field = format!("multipleUnitUsage[{i}].usedUnitContainer");
        let containers = usage.containers();
        let Some(grant) = grants.remove(&group) else {
            // Usage with nothing to charge it against is refused, never answered as charged.
            if containers.iter().any(Units::reports_usage) {
                return Err(incorrect(
                    field,
                    "reports usage, but its rating group has no open grant in this charging data",
                ));
            }
            if let Some((info, grant)) = next(node, i)? {
                infos.push(info);
                grants.extend(grant.map(|g| (group, g)));
            }
            continue;
        };
        let spent = used(&containers, grant.unit, &field)?;
        let settled = settle(node, subscriber, format!("{reference}/{sequence}/{group}/settle"), &grant, spent)?;
        let charge = match settled {
            Settlement::Refused => {
                infos.push(MultipleUnitInformation::code(group, "END_USER_SERVICE_REJECTED"));
                continue;
            }
            Settlement::Released => None,
            Settlement::Charged(charge) => Some(charge),
        };
        match next(node, i)? {
            Some((mut info, grant)) => {
                info.usage_charge = charge;
                infos.push(info);
                grants.extend(grant.map(|g| (group, g)));
            }
            None if charge.is_some() => infos.push(MultipleUnitInformation {
                usage_charge: charge,
                ..MultipleUnitInformation::code(group, "SUCCESS")
            }),
            None => {}
        }
    }
    Ok(infos)
}

/// `POST /chargingdata/{ref}/update`, on the session's subscriber's runtime.
pub fn update(
    node: &mut Node,
    groups: &RatingGroups,
    reference: &str,
    body: &Value,
    request: &ChargingDataRequest,
) -> Result<ChargingDataResponse, Problem> {
    let session = open_session(node, reference)?;
    let sequence = request.invocation_sequence_number;
    let digest = content_digest("update", body);
    if let Some(response) = session.answered(sequence, &digest)? {
        return Ok(response.clone());
    }
    if session.released(sequence, &digest)? {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "CONTEXT_NOT_FOUND",
            format!("charging data `{reference}` was released"),
        ));
    }
    same_subscriber(&session, request)?;
    let subscriber = session.subscriber.clone();
    let mut grants = session.grants.clone();
    let infos = report(node, reference, &subscriber, request, &mut grants, |node, i| {
        reserve_next(node, groups, &subscriber, (reference, request), i)
    })?;
    let response = ChargingDataResponse {
        invocation_time_stamp: timestamp(node.now_ms()),
        invocation_sequence_number: sequence,
        multiple_unit_information: infos,
    };
    let step = SessionEvent::Answered { subscriber, sequence, digest, grants, response: response.clone() };
    record(node, reference, &format!("{reference}/{sequence}"), &step)?;
    Ok(response)
}

/// `POST /chargingdata/{ref}/release`, on the session's subscriber's runtime.
pub fn release(node: &mut Node, reference: &str, body: &Value, request: &ChargingDataRequest) -> Result<(), Problem> {
    let session = open_session(node, reference)?;
    let sequence = request.invocation_sequence_number;
    let digest = content_digest("release", body);
    if session.released(sequence, &digest)? {
        return Ok(());
    }
    if session.answered(sequence, &digest)?.is_some() {
        return Ok(());
    }
    same_subscriber(&session, request)?;
    let mut grants = session.grants.clone();
    report(node, reference, &session.subscriber, request, &mut grants, |_, _| Ok(None))?;
    // What was granted and not reported is released without charge.
    for (group, grant) in &grants {
        settle(node, &session.subscriber, format!("{reference}/{sequence}/{group}/settle"), grant, 0)?;
    }
    record(node, reference, &format!("{reference}/{sequence}/released"), &SessionEvent::Released { sequence, digest })
}

/// The routes' prefix.
pub const PREFIX: &str = "/nchf-convergedcharging/v3";

pub(crate) mod routes {
    use super::{PREFIX, checked, create, reference_of, release, subscriber_of, update};
    use crate::problem::Problem;
    use crate::server::AppState;
    use axum::Json;
    use axum::body::Bytes;
    use axum::extract::rejection::BytesRejection;
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use serde_json::Value;
    use std::sync::Arc;

    /// The body as JSON, refusing any other content type (`415`, TS 29.500).
    fn json(headers: &HeaderMap, bytes: Result<Bytes, BytesRejection>) -> Result<Value, Problem> {
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                format!("the body must be `application/json`, not `{content_type}`"),
            ));
        }
        crate::api::body(bytes)
    }

    /// The subscriber of session `reference`: known since its create, or read from its record
    /// (after a restart); the ref itself for a session the node does not hold (answered `404`).
    async fn subscriber_of_session(state: &AppState, reference: &str) -> Result<String, Problem> {
        if let Some(subscriber) = state.sessions.get(reference) {
            return Ok(subscriber);
        }
        let pool = state.pool()?;
        let id = reference.to_string();
        let found = pool.for_key(reference).with(move |node| super::session::load(node, &id)).await??;
        Ok(match found {
            Some(session) => {
                state.sessions.insert(reference, &session.subscriber);
                session.subscriber
            }
            None => reference.to_string(),
        })
    }

    pub(crate) async fn create_route(
        State(state): State<Arc<AppState>>,
        headers: HeaderMap,
        bytes: Result<Bytes, BytesRejection>,
    ) -> Result<Response, Problem> {
        let body = json(&headers, bytes)?;
        let request = checked(&body)?;
        let subscriber = subscriber_of(&request)?.to_string();
        let reference = reference_of(&body);
        let pool = state.pool()?;
        let groups = pool.rating_groups();
        let id = reference.clone();
        let answer = pool.for_key(&subscriber).with(move |node| create(node, &groups, &id, &request)).await??;
        pool.wrote();
        state.sessions.insert(&reference, &subscriber);
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
        let location = HeaderValue::from_str(&format!("http://{host}{PREFIX}/chargingdata/{reference}"))
            .unwrap_or_else(|_| HeaderValue::from_static("/"));
        Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(answer)).into_response())
    }

    pub(crate) async fn update_route(
        State(state): State<Arc<AppState>>,
        Path(reference): Path<String>,
        headers: HeaderMap,
        bytes: Result<Bytes, BytesRejection>,
    ) -> Result<Response, Problem> {
        let body = json(&headers, bytes)?;
        let request = checked(&body)?;
        let subscriber = subscriber_of_session(&state, &reference).await?;
        let pool = state.pool()?;
        let groups = pool.rating_groups();
        let answer =
            pool.for_key(&subscriber).with(move |node| update(node, &groups, &reference, &body, &request)).await??;
        pool.wrote();
        Ok(Json(answer).into_response())
    }

    pub(crate) async fn release_route(
        State(state): State<Arc<AppState>>,
        Path(reference): Path<String>,
        headers: HeaderMap,
        bytes: Result<Bytes, BytesRejection>,
    ) -> Result<StatusCode, Problem> {
        let body = json(&headers, bytes)?;
        let request = checked(&body)?;
        let subscriber = subscriber_of_session(&state, &reference).await?;
        let pool = state.pool()?;
        let id = reference.clone();
        pool.for_key(&subscriber).with(move |node| release(node, &id, &body, &request)).await??;
        pool.wrote();
        state.sessions.remove(&reference);
        Ok(StatusCode::NO_CONTENT)
    }
}
