//! A subset of Nchf_ConvergedCharging (3GPP TS 32.291) under `/nchf-convergedcharging/v3`:
//! a network function asks for quota per rating group and reports what was used.
//!
//! | route | does | answers |
//! |---|---|---|
//! | `POST /chargingdata` | one admission (reservation) per `multipleUnitUsage` entry with a `requestedUnit` | `201`, `Location` naming the charging data ref, a `ChargingDataResponse` |
//! | `POST /chargingdata/{ref}/update` | debits each rating group's `usedUnitContainer`s against its grant, then reserves its new `requestedUnit` | `200`, a `ChargingDataResponse` |
//! | `POST /chargingdata/{ref}/release` | debits the final usage, releases every other open grant | `204` |
//!
//! `subscriberIdentifier` names the account; the manifest's `[rating_groups]` names the offer
//! each rating group is charged under. Every step has an id made of the charging data ref,
//! the `invocationSequenceNumber` and the rating group, and the session's own record (stream
//! [`SESSION_STREAM`], keyed by the ref) keeps each answer: a retried create or update
//! (same sequence number) is answered with the original response and charges nothing twice,
//! even when the first try was cut off half way (each step it had done answers as a
//! duplicate).
//!
//! ```text
//! POST /nchf-convergedcharging/v3/chargingdata
//! {"subscriberIdentifier": "imsi-001010000000001", "nfConsumerIdentification": {"nodeFunctionality": "SMF"},
//!  "invocationTimeStamp": "2026-12-01T10:00:00Z", "invocationSequenceNumber": 0,
//!  "multipleUnitUsage": [{"ratingGroup": 100, "requestedUnit": {"time": 60}}]}
//! ```

use crate::problem::Problem;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use tollgate_node::view::{DecisionView, FinalUnitView};
use tollgate_node::{Admission, Node, Reply, Request};

/// The stream on which each charging data session's steps are recorded, keyed by its ref.
pub const SESSION_STREAM: &str = "nchf-session";

/// The stream of the account aggregate, keyed by subscriber.
const ACCOUNT_STREAM: &str = "account";

/// Amounts of units (`RequestedUnit`, `UsedUnitContainer`, `GrantedUnit`): one of time
/// (seconds), total volume (octets) or service-specific units.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Units {
    /// Seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
    /// Octets, both directions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_volume: Option<u64>,
    /// Octets up (read only when `totalVolume` is absent).
    #[serde(skip_serializing)]
    pub uplink_volume: Option<u64>,
    /// Octets down (read only when `totalVolume` is absent).
    #[serde(skip_serializing)]
    pub downlink_volume: Option<u64>,
    /// Units of the service's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_specific_units: Option<u64>,
}

/// Which kind of unit an amount is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitKind {
    /// Seconds.
    Time,
    /// Octets.
    Volume,
    /// Service-specific units.
    Service,
}

impl Units {
    /// The one amount these units state, or why they do not state exactly one.
    pub fn amount(&self) -> Result<(UnitKind, u64), String> {
        let volume = match (self.total_volume, self.uplink_volume, self.downlink_volume) {
            (Some(total), _, _) => Some(total),
            (None, None, None) => None,
            (None, up, down) => Some(
                up.unwrap_or(0)
                    .checked_add(down.unwrap_or(0))
                    .ok_or("uplinkVolume + downlinkVolume is over 2^64 - 1")?,
            ),
        };
        let stated: Vec<(UnitKind, u64)> = [
            self.time.map(|t| (UnitKind::Time, t)),
            volume.map(|v| (UnitKind::Volume, v)),
            self.service_specific_units.map(|s| (UnitKind::Service, s)),
        ]
        .into_iter()
        .flatten()
        .collect();
        match stated.as_slice() {
            [one] => Ok(*one),
            [] => Err("states no amount (time, totalVolume or serviceSpecificUnits)".into()),
            _ => {
                Err("states more than one kind of amount; state one of time, totalVolume, serviceSpecificUnits".into())
            }
        }
    }

    /// `amount` units of `kind`.
    pub fn of(kind: UnitKind, amount: u64) -> Units {
        match kind {
            UnitKind::Time => Units { time: Some(amount), ..Units::default() },
            UnitKind::Volume => Units { total_volume: Some(amount), ..Units::default() },
            UnitKind::Service => Units { service_specific_units: Some(amount), ..Units::default() },
        }
    }
}

/// One rating group's usage and request (`MultipleUnitUsage`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MultipleUnitUsage {
    /// The rating group.
    pub rating_group: u32,
    /// Units wanted next.
    pub requested_unit: Option<Units>,
    /// Units used since the last report.
    #[serde(default)]
    pub used_unit_container: Vec<Units>,
}

/// A `ChargingDataRequest` (the fields this node reads; others are accepted and ignored).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargingDataRequest {
    /// The subscriber, e.g. `imsi-001010000000001`: the account's key.
    pub subscriber_identifier: Option<String>,
    /// Who asks (required by the spec; not read).
    pub nf_consumer_identification: Value,
    /// When the request was made, as the client says.
    pub invocation_time_stamp: String,
    /// The request's number within the session: its idempotency key.
    pub invocation_sequence_number: u32,
    /// Usage and requests, per rating group.
    #[serde(default)]
    pub multiple_unit_usage: Vec<MultipleUnitUsage>,
}

/// What the network does when the granted units are the last (`FinalUnitIndication`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FinalUnitIndication {
    /// `TERMINATE`, `REDIRECT` or `RESTRICT_ACCESS`.
    pub final_unit_action: String,
    /// Where to redirect, for `REDIRECT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_server: Option<RedirectServer>,
    /// The traffic still allowed, for `RESTRICT_ACCESS`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restriction_filter_rule: Option<Vec<String>>,
}

/// A redirect target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedirectServer {
    /// Always `URL` here.
    pub redirect_address_type: String,
    /// The address.
    pub redirect_server_address: String,
}

/// One rating group's answer (`MultipleUnitInformation`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MultipleUnitInformation {
    /// `SUCCESS`, `END_USER_SERVICE_DENIED`, `QUOTA_LIMIT_REACHED`, `USER_UNKNOWN`,
    /// `RATING_FAILED` or `END_USER_SERVICE_REJECTED`.
    pub result_code: String,
    /// The rating group.
    pub rating_group: u32,
    /// Units granted, in the kind requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granted_unit: Option<Units>,
    /// Seconds the grant is valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validity_time: Option<u64>,
    /// Set when these are the last units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_unit_indication: Option<FinalUnitIndication>,
}

/// A `ChargingDataResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargingDataResponse {
    /// When it was answered (the request's own timestamp, echoed).
    pub invocation_time_stamp: String,
    /// The request's sequence number, echoed.
    pub invocation_sequence_number: u32,
    /// Per rating group.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub multiple_unit_information: Vec<MultipleUnitInformation>,
}

/// An open grant of a session: the reservation holding its money.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenGrant {
    /// The reservation on the account.
    pub reservation_id: String,
    /// The kind of units granted.
    pub unit: UnitKind,
}

/// One recorded step of a session, on [`SESSION_STREAM`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionEvent {
    /// The session was created (or updated): its subscriber, the grants open after the
    /// step, and the answer given.
    Answered {
        /// The account.
        subscriber: String,
        /// The step's sequence number.
        sequence: u32,
        /// The grants open afterwards, by rating group.
        grants: BTreeMap<u32, OpenGrant>,
        /// The response given (answered again to a retry).
        response: ChargingDataResponse,
    },
    /// The session was released.
    Released {
        /// The step's sequence number.
        sequence: u32,
    },
}

/// A session as its recorded steps leave it.
#[derive(Debug, Default)]
struct Session {
    subscriber: String,
    grants: BTreeMap<u32, OpenGrant>,
    answered: BTreeMap<u32, ChargingDataResponse>,
    released: bool,
}

fn load(node: &Node, reference: &str) -> Result<Option<Session>, Problem> {
    let events = node.stream(SESSION_STREAM, reference)?;
    if events.is_empty() {
        return Ok(None);
    }
    let mut session = Session::default();
    for event in events {
        let tagged = Value::Object(serde_json::Map::from_iter([(event.event_type.clone(), event.payload.clone())]));
        let step: SessionEvent = serde_json::from_value(tagged).map_err(|e| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "SYSTEM_FAILURE",
                format!("session `{reference}` event {}: {e}", event.sequence),
            )
        })?;
        match step {
            SessionEvent::Answered { subscriber, sequence, grants, response } => {
                session.subscriber = subscriber;
                session.grants = grants;
                session.answered.insert(sequence, response);
            }
            SessionEvent::Released { .. } => session.released = true,
        }
    }
    Ok(Some(session))
}

fn record(node: &mut Node, reference: &str, id: &str, step: &SessionEvent) -> Result<(), Problem> {
    let event = serde_json::to_value(step)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "SYSTEM_FAILURE", e.to_string()))?;
    node.handle(Request::Report {
        stream: SESSION_STREAM.into(),
        key: reference.into(),
        id: id.into(),
        event,
        correlation_id: Some(reference.into()),
    })?;
    Ok(())
}

/// The charging data ref of a create: a digest of its body, so a retried create names the
/// same session.
fn reference_of(body: &Value) -> String {
    let digest = Sha256::digest(body.to_string().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn incorrect(field: String, problem: &str) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "MANDATORY_IE_INCORRECT", format!("`{field}` {problem}"))
}

fn result_code(code: &str) -> String {
    code.replace('-', "_").to_ascii_uppercase()
}

/// Reserves `units` for the rating group; its answer and the grant it opened, if any.
fn reserve(
    node: &mut Node,
    offers: &BTreeMap<u32, String>,
    subscriber: &str,
    id: String,
    rating_group: u32,
    (unit, units): (UnitKind, u64),
) -> Result<(MultipleUnitInformation, Option<OpenGrant>), Problem> {
    let denied = |code: &str| MultipleUnitInformation {
        result_code: code.into(),
        rating_group,
        granted_unit: None,
        validity_time: None,
        final_unit_indication: None,
    };
    let Some(offer) = offers.get(&rating_group) else {
        return Ok((denied("RATING_FAILED"), None));
    };
    let admission =
        Admission { id, subscriber: subscriber.into(), offer: offer.clone(), units, rating_group, country: None };
    match node.handle(Request::Admit(admission))? {
        Reply::Decision(DecisionView::Granted { grant, .. }) => {
            let now = node.now_ms();
            let final_unit_indication = grant.final_unit.map(|f| match f {
                FinalUnitView::Terminate => FinalUnitIndication {
                    final_unit_action: "TERMINATE".into(),
                    redirect_server: None,
                    restriction_filter_rule: None,
                },
                FinalUnitView::Redirect(to) => FinalUnitIndication {
                    final_unit_action: "REDIRECT".into(),
                    redirect_server: Some(RedirectServer {
                        redirect_address_type: "URL".into(),
                        redirect_server_address: to,
                    }),
                    restriction_filter_rule: None,
                },
                FinalUnitView::RestrictAccess(rules) => FinalUnitIndication {
                    final_unit_action: "RESTRICT_ACCESS".into(),
                    redirect_server: None,
                    restriction_filter_rule: Some(rules),
                },
            });
            let info = MultipleUnitInformation {
                result_code: "SUCCESS".into(),
                rating_group,
                granted_unit: Some(Units::of(unit, grant.granted_units)),
                validity_time: Some(grant.expires_at.saturating_sub(now) / 1000),
                final_unit_indication,
            };
            Ok((info, Some(OpenGrant { reservation_id: grant.reservation_id, unit })))
        }
        Reply::Decision(DecisionView::Denied { code, .. }) => Ok((denied(&result_code(&code)), None)),
        other => Err(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SYSTEM_FAILURE",
            format!("an admission was answered {other:?}"),
        )),
    }
}

/// Debits `used` units against `grant` (or releases it when nothing was used); `None` when
/// the account took it, else the result code saying why not.
fn settle(
    node: &mut Node,
    subscriber: &str,
    id: String,
    grant: &OpenGrant,
    used: u64,
) -> Result<Option<String>, Problem> {
    let command = if used == 0 {
        serde_json::json!({ "release": { "reservation_id": grant.reservation_id } })
    } else {
        serde_json::json!({ "debit": { "reservation_id": grant.reservation_id, "used_units": used } })
    };
    let execute = Request::Execute { stream: ACCOUNT_STREAM.into(), key: subscriber.into(), id, command };
    Ok(match node.handle(execute)? {
        Reply::Rejected { .. } => Some("END_USER_SERVICE_REJECTED".into()),
        _ => None,
    })
}

/// The units used in `containers`, all of the grant's kind (`None`: the rating group has no
/// open grant, so any usage is refused).
fn used(containers: &[Units], kind: Option<UnitKind>, field: &str) -> Result<u64, Problem> {
    let mut total = 0u64;
    for (i, container) in containers.iter().enumerate() {
        let (unit, amount) = container.amount().map_err(|e| incorrect(format!("{field}[{i}]"), &e))?;
        if kind.is_some_and(|k| k != unit) {
            return Err(incorrect(
                format!("{field}[{i}]"),
                &format!("reports {unit:?} units; the grant is of {kind:?}"),
            ));
        }
        total = total
            .checked_add(amount)
            .ok_or_else(|| incorrect(field.to_string(), "adds up to more than 2^64 - 1 units"))?;
    }
    // Usage with nothing to charge it against is refused, never answered as if charged.
    if kind.is_none() && total > 0 {
        return Err(incorrect(
            field.to_string(),
            &format!("reports {total} units, but its rating group has no open grant in this charging data"),
        ));
    }
    Ok(total)
}

/// `POST /chargingdata`: the new charging data ref and the response.
pub fn create(
    node: &mut Node,
    offers: &BTreeMap<u32, String>,
    body: &Value,
) -> Result<(String, ChargingDataResponse), Problem> {
    let request: ChargingDataRequest = decode(body)?;
    let subscriber = request.subscriber_identifier.clone().ok_or_else(|| {
        Problem::new(StatusCode::BAD_REQUEST, "MANDATORY_IE_MISSING", "`subscriberIdentifier` is missing")
    })?;
    tollgate_node::protocol::check_name("subscriberIdentifier", &subscriber).map_err(tollgate_node::NodeError::from)?;
    let reference = reference_of(body);
    if let Some(session) = load(node, &reference)?
        && let Some(response) = session.answered.get(&request.invocation_sequence_number)
    {
        return Ok((reference, response.clone()));
    }
    let sequence = request.invocation_sequence_number;
    let mut grants = BTreeMap::new();
    let mut infos = Vec::new();
    for (i, usage) in request.multiple_unit_usage.iter().enumerate() {
        let Some(requested) = &usage.requested_unit else { continue };
        let amount = requested.amount().map_err(|e| incorrect(format!("multipleUnitUsage[{i}].requestedUnit"), &e))?;
        let id = format!("{reference}/{sequence}/{}", usage.rating_group);
        let (info, grant) = reserve(node, offers, &subscriber, id, usage.rating_group, amount)?;
        infos.push(info);
        grants.extend(grant.map(|g| (usage.rating_group, g)));
    }
    let response = ChargingDataResponse {
        invocation_time_stamp: request.invocation_time_stamp,
        invocation_sequence_number: sequence,
        multiple_unit_information: infos,
    };
    let step = SessionEvent::Answered { subscriber, sequence, grants, response: response.clone() };
    record(node, &reference, &format!("{reference}/{sequence}"), &step)?;
    Ok((reference, response))
}

fn open_session(node: &Node, reference: &str) -> Result<Session, Problem> {
    let not_found = |detail: String| Problem::new(StatusCode::NOT_FOUND, "CONTEXT_NOT_FOUND", detail);
    match load(node, reference)? {
        None => Err(not_found(format!("no charging data `{reference}`"))),
        Some(session) => Ok(session),
    }
}

/// `POST /chargingdata/{ref}/update`.
pub fn update(
    node: &mut Node,
    offers: &BTreeMap<u32, String>,
    reference: &str,
    body: &Value,
) -> Result<ChargingDataResponse, Problem> {
    let request: ChargingDataRequest = decode(body)?;
    let session = open_session(node, reference)?;
    let sequence = request.invocation_sequence_number;
    if let Some(response) = session.answered.get(&sequence) {
        return Ok(response.clone());
    }
    if session.released {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "CONTEXT_NOT_FOUND",
            format!("charging data `{reference}` was released"),
        ));
    }
    let subscriber = session.subscriber.clone();
    let mut grants = session.grants.clone();
    let mut infos = Vec::new();
    for (i, usage) in request.multiple_unit_usage.iter().enumerate() {
        let group = usage.rating_group;
        let field = format!("multipleUnitUsage[{i}].usedUnitContainer");
        let spent = used(&usage.used_unit_container, grants.get(&group).map(|g| g.unit), &field)?;
        let mut refused = None;
        if let Some(grant) = grants.remove(&group) {
            refused = settle(node, &subscriber, format!("{reference}/{sequence}/{group}/settle"), &grant, spent)?;
        }
        match (&usage.requested_unit, refused) {
            (_, Some(code)) => infos.push(MultipleUnitInformation {
                result_code: code,
                rating_group: group,
                granted_unit: None,
                validity_time: None,
                final_unit_indication: None,
            }),
            (Some(requested), None) => {
                let amount =
                    requested.amount().map_err(|e| incorrect(format!("multipleUnitUsage[{i}].requestedUnit"), &e))?;
                let id = format!("{reference}/{sequence}/{group}");
                let (info, grant) = reserve(node, offers, &subscriber, id, group, amount)?;
                infos.push(info);
                grants.extend(grant.map(|g| (group, g)));
            }
            (None, None) => {}
        }
    }
    let response = ChargingDataResponse {
        invocation_time_stamp: request.invocation_time_stamp,
        invocation_sequence_number: sequence,
        multiple_unit_information: infos,
    };
    let step = SessionEvent::Answered { subscriber, sequence, grants, response: response.clone() };
    record(node, reference, &format!("{reference}/{sequence}"), &step)?;
    Ok(response)
}

/// `POST /chargingdata/{ref}/release`.
pub fn release(node: &mut Node, reference: &str, body: &Value) -> Result<(), Problem> {
    let request: ChargingDataRequest = decode(body)?;
    let session = open_session(node, reference)?;
    if session.released {
        return Ok(());
    }
    let sequence = request.invocation_sequence_number;
    let mut grants = session.grants.clone();
    for (i, usage) in request.multiple_unit_usage.iter().enumerate() {
        let group = usage.rating_group;
        let field = format!("multipleUnitUsage[{i}].usedUnitContainer");
        let spent = used(&usage.used_unit_container, grants.get(&group).map(|g| g.unit), &field)?;
        if let Some(grant) = grants.remove(&group) {
            settle(node, &session.subscriber, format!("{reference}/{sequence}/{group}/settle"), &grant, spent)?;
        }
    }
    // What was granted and not reported is released without charge.
    for (group, grant) in &grants {
        settle(node, &session.subscriber, format!("{reference}/{sequence}/{group}/settle"), grant, 0)?;
    }
    record(node, reference, &format!("{reference}/{sequence}/released"), &SessionEvent::Released { sequence })
}

fn decode(body: &Value) -> Result<ChargingDataRequest, Problem> {
    serde_json::from_value(body.clone())
        .map_err(|e| Problem::malformed(format!("the body is not a ChargingDataRequest: {e}")))
}

/// The routes' prefix.
pub const PREFIX: &str = "/nchf-convergedcharging/v3";

pub(crate) mod routes {
    use super::{PREFIX, create, release, update};
    use crate::api::body;
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

    /// The key a request is served under: its subscriber (so a session's steps and the
    /// account's other requests go to one runtime), else the charging data ref.
    fn route(request: &Value, reference: Option<&str>) -> String {
        match (request.get("subscriberIdentifier").and_then(Value::as_str), reference) {
            (Some(subscriber), _) => subscriber.to_string(),
            (None, Some(reference)) => reference.to_string(),
            (None, None) => String::new(),
        }
    }

    pub(crate) async fn create_route(
        State(state): State<Arc<AppState>>,
        headers: HeaderMap,
        bytes: Result<Bytes, BytesRejection>,
    ) -> Result<Response, Problem> {
        let request: Value = body(bytes)?;
        let pool = state.pool()?;
        let offers = pool.offers();
        let node = pool.for_key(&route(&request, None));
        let (reference, answer) = node.with(move |node| create(node, &offers, &request)).await??;
        pool.wrote();
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
        let location = HeaderValue::from_str(&format!("http://{host}{PREFIX}/chargingdata/{reference}"))
            .unwrap_or_else(|_| HeaderValue::from_static("/"));
        Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(answer)).into_response())
    }

    pub(crate) async fn update_route(
        State(state): State<Arc<AppState>>,
        Path(reference): Path<String>,
        bytes: Result<Bytes, BytesRejection>,
    ) -> Result<Response, Problem> {
        let request: Value = body(bytes)?;
        let pool = state.pool()?;
        let offers = pool.offers();
        let node = pool.for_key(&route(&request, Some(&reference)));
        let answer = node.with(move |node| update(node, &offers, &reference, &request)).await??;
        pool.wrote();
        Ok(Json(answer).into_response())
    }

    pub(crate) async fn release_route(
        State(state): State<Arc<AppState>>,
        Path(reference): Path<String>,
        bytes: Result<Bytes, BytesRejection>,
    ) -> Result<StatusCode, Problem> {
        let request: Value = body(bytes)?;
        let pool = state.pool()?;
        let node = pool.for_key(&route(&request, Some(&reference)));
        node.with(move |node| release(node, &reference, &request)).await??;
        pool.wrote();
        Ok(StatusCode::NO_CONTENT)
    }
}
