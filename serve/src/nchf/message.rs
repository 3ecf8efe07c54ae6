//! The Nchf_ConvergedCharging messages this node reads and writes (TS 32.291 `ChargingDataRequest`
//! and `ChargingDataResponse`, the parts it uses), and how a body is checked before anything
//! runs: a missing mandatory IE is `400 MANDATORY_IE_MISSING`, a wrong one
//! `400 MANDATORY_IE_INCORRECT`, both naming the field; fields this node does not read are
//! accepted and ignored, as TS 29.501 asks of a receiver.

use crate::problem::Problem;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_node::view::FinalUnitView;
use tollgate_runtime::manifest::{RatingGroup, RatingUnit};

/// The largest `time` the protocol carries (its `Uint32`).
const MAX_TIME: u64 = u32::MAX as u64;

/// Amounts of units as a request states them (`RequestedUnit`, `UsedUnitContainer`): any of
/// time (seconds), volumes (octets) and service-specific units, together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Units {
    /// Seconds.
    pub time: Option<u64>,
    /// Octets, both directions.
    pub total_volume: Option<u64>,
    /// Octets up (counted when `totalVolume` is absent).
    pub uplink_volume: Option<u64>,
    /// Octets down (counted when `totalVolume` is absent).
    pub downlink_volume: Option<u64>,
    /// Units of the service's own.
    pub service_specific_units: Option<u64>,
}

/// Which kind of unit a grant is in (the JSON names of [`RatingUnit`]).
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

impl From<RatingUnit> for UnitKind {
    fn from(unit: RatingUnit) -> UnitKind {
        match unit {
            RatingUnit::Time => UnitKind::Time,
            RatingUnit::Volume => UnitKind::Volume,
            RatingUnit::Service => UnitKind::Service,
        }
    }
}

impl UnitKind {
    /// The IE that carries this kind, as error messages name it.
    fn ie(self) -> &'static str {
        match self {
            UnitKind::Time => "time",
            UnitKind::Volume => "totalVolume",
            UnitKind::Service => "serviceSpecificUnits",
        }
    }
}

impl Units {
    /// The amount of `kind` these units state, if they state it (a volume as `totalVolume`, or
    /// as up- plus downlink when it is absent); `field` names them in the error.
    pub fn of(&self, kind: UnitKind, field: &str) -> Result<Option<u64>, Problem> {
        Ok(match kind {
            UnitKind::Time => {
                if let Some(t) = self.time.filter(|t| *t > MAX_TIME) {
                    return Err(incorrect(format!("{field}.time"), &format!("is {t}, over {MAX_TIME} (Uint32)")));
                }
                self.time
            }
            UnitKind::Service => self.service_specific_units,
            UnitKind::Volume => match (self.total_volume, self.uplink_volume, self.downlink_volume) {
                (Some(total), _, _) => Some(total),
                (None, None, None) => None,
                (None, up, down) => Some(
                    up.unwrap_or(0)
                        .checked_add(down.unwrap_or(0))
                        .ok_or_else(|| incorrect(field.into(), "uplinkVolume + downlinkVolume is over 2^64 - 1"))?,
                ),
            },
        })
    }

    /// Whether any amount stated is above 0.
    pub fn reports_usage(&self) -> bool {
        [self.time, self.total_volume, self.uplink_volume, self.downlink_volume, self.service_specific_units]
            .into_iter()
            .flatten()
            .any(|n| n > 0)
    }

    /// The kinds these units state, in the order time, volume, service.
    fn stated(&self) -> Vec<UnitKind> {
        let volume = self.total_volume.is_some() || self.uplink_volume.is_some() || self.downlink_volume.is_some();
        [
            (self.time.is_some(), UnitKind::Time),
            (volume, UnitKind::Volume),
            (self.service_specific_units.is_some(), UnitKind::Service),
        ]
        .into_iter()
        .filter_map(|(stated, kind)| stated.then_some(kind))
        .collect()
    }

    /// What a `requestedUnit` asks of rating group `group`: the kind and amount to grant. The
    /// group's unit decides the kind (the one the request states when the manifest names none);
    /// a request that leaves the amount to the charging function gets the group's quota.
    pub fn requested(&self, group: &RatingGroup, field: &str) -> Result<(UnitKind, u64), Problem> {
        let stated = self.stated();
        let kind = match (group.unit, stated.as_slice()) {
            (Some(unit), _) => unit.into(),
            (None, []) => UnitKind::Time,
            (None, [one]) => *one,
            (None, _) => {
                return Err(incorrect(
                    field.into(),
                    "states more than one kind of unit and the rating group names none (`unit` in the manifest)",
                ));
            }
        };
        match self.of(kind, field)? {
            Some(0) => Err(incorrect(format!("{field}.{}", kind.ie()), "asks for 0 units")),
            Some(amount) => Ok((kind, amount)),
            None if stated.is_empty() => Ok((kind, group.quota)),
            None => Err(incorrect(
                field.into(),
                &format!("states no {} and the rating group is charged in {}", kind.ie(), kind.ie()),
            )),
        }
    }

    /// A grant of `amount` units of `kind`.
    pub fn granted(kind: UnitKind, amount: u64) -> GrantedUnit {
        let mut unit = GrantedUnit::default();
        match kind {
            UnitKind::Time => unit.time = Some(amount),
            UnitKind::Volume => unit.total_volume = Some(amount),
            UnitKind::Service => unit.service_specific_units = Some(amount),
        }
        unit
    }
}

/// The units used in `containers`, counted in the grant's kind (an SMF reports time and volumes
/// together; the other kinds are accepted and not charged). A container stating amounts but
/// none of the grant's kind is refused.
pub fn used(containers: &[Units], kind: UnitKind, field: &str) -> Result<u64, Problem> {
    let mut total = 0u64;
    for (i, container) in containers.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let amount = match container.of(kind, &at)? {
            Some(amount) => amount,
            None if container.stated().is_empty() => 0,
            None => {
                return Err(incorrect(at, &format!("reports no {}, the unit its grant is in", kind.ie())));
            }
        };
        total =
            total.checked_add(amount).ok_or_else(|| incorrect(field.into(), "adds up to more than 2^64 - 1 units"))?;
    }
    Ok(total)
}

/// Units granted (`GrantedUnit`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantedUnit {
    /// Seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
    /// Octets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_volume: Option<u64>,
    /// Units of the service's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_specific_units: Option<u64>,
}

/// One used-unit report (`UsedUnitContainer`): the amounts, and its mandatory sequence number.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsedUnitContainer {
    /// The container's number within the report (mandatory; not read).
    #[serde(rename = "localSequenceNumber")]
    pub _local_sequence_number: i64,
    /// The amounts.
    #[serde(flatten)]
    pub units: Units,
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
    pub used_unit_container: Vec<UsedUnitContainer>,
}

impl MultipleUnitUsage {
    /// The reported amounts.
    pub fn containers(&self) -> Vec<Units> {
        self.used_unit_container.iter().map(|c| c.units.clone()).collect()
    }
}

/// A `ChargingDataRequest` (the fields this node reads).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargingDataRequest {
    /// The subscriber (`Supi`, e.g. `imsi-001010000000001`): the account's key.
    pub subscriber_identifier: Option<String>,
    /// The request's number within the session: its idempotency key.
    pub invocation_sequence_number: u32,
    /// Set on a request sent again because its answer did not arrive.
    #[serde(default)]
    pub retransmission_indicator: bool,
    /// Usage and requests, per rating group.
    #[serde(default)]
    pub multiple_unit_usage: Vec<MultipleUnitUsage>,
}

/// The mandatory IEs of a `ChargingDataRequest` and of the parts this node reads, by path
/// (`[]` for each element of an array).
const MANDATORY: &[&str] = &[
    "nfConsumerIdentification",
    "nfConsumerIdentification.nodeFunctionality",
    "invocationTimeStamp",
    "invocationSequenceNumber",
    "multipleUnitUsage[].ratingGroup",
    "multipleUnitUsage[].usedUnitContainer[].localSequenceNumber",
];

/// The first mandatory IE `body` lacks, as a path with indices.
fn missing(body: &Value) -> Option<String> {
    fn walk(value: &Value, parts: &[&str], at: String) -> Option<String> {
        let (part, rest) = parts.split_first()?;
        let (name, each) = match part.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (*part, false),
        };
        let here = if at.is_empty() { name.to_string() } else { format!("{at}.{name}") };
        let Some(child) = value.get(name) else {
            // An optional array (or object holding the IE) that is absent holds nothing missing.
            return (!each && rest.is_empty()).then_some(here);
        };
        if each {
            let items = child.as_array()?;
            return items.iter().enumerate().find_map(|(i, item)| walk(item, rest, format!("{here}[{i}]")));
        }
        walk(child, rest, here)
    }
    MANDATORY.iter().find_map(|path| {
        let parts: Vec<&str> = path.split('.').collect();
        // Nested IEs are mandatory only where their parent is present.
        walk(body, &parts, String::new())
    })
}

/// Decodes a `ChargingDataRequest`, naming the first missing or incorrect IE.
pub fn decode(body: &Value) -> Result<ChargingDataRequest, Problem> {
    if !body.is_object() {
        return Err(Problem::malformed("the body is not a ChargingDataRequest (a JSON object)"));
    }
    if let Some(field) = missing(body) {
        return Err(Problem::new(StatusCode::BAD_REQUEST, "MANDATORY_IE_MISSING", format!("`{field}` is missing")));
    }
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        incorrect(path, &format!("is not what TS 32.291 allows: {}", e.inner()))
    })
}

/// `400 MANDATORY_IE_INCORRECT` naming `field`.
pub fn incorrect(field: String, problem: &str) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "MANDATORY_IE_INCORRECT", format!("`{field}` {problem}"))
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
    /// The traffic still allowed, for `RESTRICT_ACCESS` (an `IPFilterRule`: one rule).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restriction_filter_rule: Option<String>,
    /// Every rule, when there is more than one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restriction_filter_rule_list: Option<Vec<String>>,
}

impl From<FinalUnitView> for FinalUnitIndication {
    fn from(action: FinalUnitView) -> FinalUnitIndication {
        let indication = |action: &str| FinalUnitIndication {
            final_unit_action: action.into(),
            redirect_server: None,
            restriction_filter_rule: None,
            restriction_filter_rule_list: None,
        };
        match action {
            FinalUnitView::Terminate => indication("TERMINATE"),
            FinalUnitView::Redirect(to) => FinalUnitIndication {
                redirect_server: Some(RedirectServer {
                    redirect_address_type: "URL".into(),
                    redirect_server_address: to,
                }),
                ..indication("REDIRECT")
            },
            FinalUnitView::RestrictAccess(rules) => FinalUnitIndication {
                restriction_filter_rule: rules.first().cloned(),
                restriction_filter_rule_list: (rules.len() > 1).then_some(rules),
                ..indication("RESTRICT_ACCESS")
            },
        }
    }
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

/// What the usage reported for a rating group was charged (a tollgate extension of
/// `MultipleUnitInformation`; receivers ignore IEs they do not know, TS 29.501).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageCharge {
    /// Units reported used, in the grant's kind.
    pub used_units: u64,
    /// Money taken, in minor units of `currency`.
    pub charged_minor_units: i64,
    /// Money the account could not cover, recorded as unpaid.
    pub unpaid_minor_units: i64,
    /// The account's currency (ISO 4217).
    pub currency: String,
    /// Whether the grant had lapsed (its validity passed) before the usage was reported.
    pub late: bool,
}

/// One rating group's answer (`MultipleUnitInformation`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MultipleUnitInformation {
    /// `SUCCESS`, `END_USER_SERVICE_DENIED`, `QUOTA_LIMIT_REACHED`, `RATING_FAILED` or
    /// `END_USER_SERVICE_REJECTED`.
    pub result_code: String,
    /// The rating group.
    pub rating_group: u32,
    /// Units granted, in the rating group's kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granted_unit: Option<GrantedUnit>,
    /// Seconds the grant is valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validity_time: Option<u64>,
    /// Set when these are the last units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_unit_indication: Option<FinalUnitIndication>,
    /// What the usage reported in this request was charged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_charge: Option<UsageCharge>,
}

impl MultipleUnitInformation {
    /// An answer with `code` and nothing granted.
    pub fn code(rating_group: u32, code: &str) -> MultipleUnitInformation {
        MultipleUnitInformation {
            result_code: code.into(),
            rating_group,
            granted_unit: None,
            validity_time: None,
            final_unit_indication: None,
            usage_charge: None,
        }
    }
}

/// A `ChargingDataResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargingDataResponse {
    /// When this node answered (RFC 3339, UTC).
    pub invocation_time_stamp: String,
    /// The request's sequence number, echoed.
    pub invocation_sequence_number: u32,
    /// Per rating group.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub multiple_unit_information: Vec<MultipleUnitInformation>,
}

/// `ms` since the epoch as an RFC 3339 date-time in UTC, to the millisecond.
pub fn timestamp(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn group(unit: Option<RatingUnit>) -> RatingGroup {
        RatingGroup { offer: "voice".into(), unit, quota: 60 }
    }

    fn units(value: Value) -> Units {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_missing_mandatory_ie_is_named_with_its_index() {
        let ok = json!({"nfConsumerIdentification": {"nodeFunctionality": "SMF"}, "invocationTimeStamp": "t",
            "invocationSequenceNumber": 0, "multipleUnitUsage": [{"ratingGroup": 1, "usedUnitContainer": [{"localSequenceNumber": 1}]}]});
        assert_eq!(missing(&ok), None);
        let cases = [
            ("/nfConsumerIdentification", "nfConsumerIdentification"),
            ("/nfConsumerIdentification/nodeFunctionality", "nfConsumerIdentification.nodeFunctionality"),
            ("/invocationTimeStamp", "invocationTimeStamp"),
            ("/invocationSequenceNumber", "invocationSequenceNumber"),
            ("/multipleUnitUsage/0/ratingGroup", "multipleUnitUsage[0].ratingGroup"),
            (
                "/multipleUnitUsage/0/usedUnitContainer/0/localSequenceNumber",
                "multipleUnitUsage[0].usedUnitContainer[0].localSequenceNumber",
            ),
        ];
        for (pointer, named) in cases {
            let mut body = ok.clone();
            let (parent, leaf) = pointer.rsplit_once('/').unwrap();
            body.pointer_mut(parent).unwrap().as_object_mut().unwrap().remove(leaf);
            assert_eq!(missing(&body).as_deref(), Some(named), "{pointer}");
            let problem = decode(&body).unwrap_err();
            assert_eq!((problem.status, problem.cause.as_str()), (400, "MANDATORY_IE_MISSING"));
            assert!(problem.detail.contains(named), "{}", problem.detail);
        }
        let wrong = json!({"nfConsumerIdentification": {"nodeFunctionality": "SMF"}, "invocationTimeStamp": "t",
            "invocationSequenceNumber": -1});
        let problem = decode(&wrong).unwrap_err();
        assert_eq!(problem.cause, "MANDATORY_IE_INCORRECT");
        assert!(problem.detail.contains("`invocationSequenceNumber`"), "{}", problem.detail);
    }

    #[test]
    fn a_request_leaves_the_amount_to_the_group_or_states_it_in_the_groups_unit() {
        let time = group(None);
        assert_eq!(units(json!({})).requested(&time, "r").unwrap(), (UnitKind::Time, 60));
        assert_eq!(units(json!({"totalVolume": 5})).requested(&time, "r").unwrap(), (UnitKind::Volume, 5));
        assert!(units(json!({"time": 1, "totalVolume": 5})).requested(&time, "r").is_err());
        let volume = group(Some(RatingUnit::Volume));
        let smf = units(json!({"time": 60, "uplinkVolume": 3, "downlinkVolume": 4}));
        assert_eq!(smf.requested(&volume, "r").unwrap(), (UnitKind::Volume, 7));
        let only_time = units(json!({"time": 60})).requested(&volume, "r").unwrap_err();
        assert!(only_time.detail.contains("states no totalVolume"), "{}", only_time.detail);
        let zero = units(json!({"totalVolume": 0})).requested(&volume, "r").unwrap_err();
        assert!(zero.detail.contains("`r.totalVolume` asks for 0 units"), "{}", zero.detail);
        let long = units(json!({"time": u64::from(u32::MAX) + 1})).requested(&time, "r").unwrap_err();
        assert!(long.detail.contains("Uint32"), "{}", long.detail);
        let max = units(json!({"uplinkVolume": u64::MAX, "downlinkVolume": 1})).requested(&volume, "r").unwrap_err();
        assert!(max.detail.contains("over 2^64 - 1"), "{}", max.detail);
    }

    #[test]
    fn usage_is_counted_in_the_grants_unit() {
        let smf = [
            units(json!({"time": 30, "totalVolume": 1000, "uplinkVolume": 400, "downlinkVolume": 600})),
            units(json!({})),
            units(json!({"time": 3, "totalVolume": 10})),
        ];
        assert_eq!(used(&smf, UnitKind::Time, "u").unwrap(), 33);
        assert_eq!(used(&smf, UnitKind::Volume, "u").unwrap(), 1010);
        let err = used(&smf, UnitKind::Service, "u").unwrap_err();
        assert!(err.detail.contains("`u[0]` reports no serviceSpecificUnits"), "{}", err.detail);
        let huge = [units(json!({"serviceSpecificUnits": u64::MAX})), units(json!({"serviceSpecificUnits": 1}))];
        assert!(used(&huge, UnitKind::Service, "u").unwrap_err().detail.contains("more than 2^64 - 1"));
    }

    #[test]
    fn a_restriction_is_one_filter_rule_with_the_list_beside_it() {
        let one =
            FinalUnitIndication::from(FinalUnitView::RestrictAccess(vec!["permit out ip from any to 10.0.0.1".into()]));
        assert_eq!(
            serde_json::to_value(&one).unwrap(),
            json!({"finalUnitAction": "RESTRICT_ACCESS", "restrictionFilterRule": "permit out ip from any to 10.0.0.1"})
        );
        let two = FinalUnitIndication::from(FinalUnitView::RestrictAccess(vec!["a".into(), "b".into()]));
        let two = serde_json::to_value(&two).unwrap();
        assert_eq!(
            (&two["restrictionFilterRule"], &two["restrictionFilterRuleList"]),
            (&json!("a"), &json!(["a", "b"]))
        );
        let redirect = serde_json::to_value(FinalUnitIndication::from(FinalUnitView::Redirect("http://top.up".into())));
        assert_eq!(
            redirect.unwrap(),
            json!({"finalUnitAction": "REDIRECT", "redirectServer": {"redirectAddressType": "URL", "redirectServerAddress": "http://top.up"}})
        );
    }

    #[test]
    fn timestamps_are_rfc_3339_utc() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(1_796_119_200_123), "2026-12-01T10:00:00.123Z");
    }
}
