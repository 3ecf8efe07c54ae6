//! Money at the Nchf seam: a real `tollgate serve` answering real clients (this file's HTTP
//! client, a Python client checking every message against 3GPP's OpenAPI documents, NATS
//! peers). Every used unit is charged once, and what the money does not cover is unpaid.

use crate::root;
use crate::serve::{Answer, Server, command};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::path::Path;
use tollgate_host_test::fixtures::{ADMISSION_POLICY, BALANCE_PROJECTOR, CHARGING_SESSION, PREPAID_ACCOUNT, RATER};

const NCHF: &str = "/nchf-convergedcharging/v3/chargingdata";

/// A core charging rating groups 100 (voice, 2 a second), 200 (data, in volume, 1 an octet,
/// 1 MiB granted when the amount is left to the node), 300 (roaming, fenced to DE/AT) and 400
/// (video, 10 a second), 500 (sms, in service units, 9 each); grants valid `validity_ms`; the charging-session manager expires them
/// at their validity.
fn manifest(dir: &Path, validity_ms: u64) -> String {
    let actor = crate::actor;
    let text = format!(
        r#"
[rating_groups]
100 = "voice"
200 = {{ offer = "data", unit = "volume", quota = 1048576 }}
300 = "roaming"
400 = "video"
500 = {{ offer = "sms", unit = "service" }}

[actors.account]
kind = "aggregate"
file = "{}"

[actors.rater]
kind = "rater"
file = "{}"

[actors.rater.config]
"offer.voice" = '{{"kind":"per-unit","currency":"EUR","unit_price":2}}'
"offer.data" = '{{"kind":"per-unit","currency":"EUR","unit_price":1}}'
"offer.video" = '{{"kind":"per-unit","currency":"EUR","unit_price":10}}'
"offer.roaming" = '{{"kind":"per-unit","currency":"EUR","unit_price":5,"countries":["DE","AT"]}}'
"offer.sms" = '{{"kind":"per-unit","currency":"EUR","unit_price":9}}'

[actors.policy]
kind = "policy"
file = "{}"
links = {{ charging = "account", rating = "rater" }}
config = {{ "validity-ms" = "{validity_ms}" }}

[actors.balances]
kind = "projector"
file = "{}"

[actors.sessions]
kind = "process-manager"
file = "{}"
"#,
        actor(PREPAID_ACCOUNT),
        actor(RATER),
        actor(ADMISSION_POLICY),
        actor(BALANCE_PROJECTOR),
        actor(CHARGING_SESSION),
    );
    let path = dir.join("nchf.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A node over a fresh store in `dir`, with grants valid `validity_ms`.
fn node(dir: &Path, validity_ms: u64, extra: &[&str]) -> Server {
    let store = format!("file:{}", dir.join("log").display());
    Server::start(&manifest(dir, validity_ms), &store, extra)
}

/// Opens `imsi` with `balance` minor units of EUR.
fn open(server: &Server, imsi: &str, balance: i64) {
    let path = format!("/v1/commands/account/{imsi}");
    let opened = server.post(&path, &command(&format!("open-{imsi}"), json!({"open": {"currency": "EUR"}})));
    assert_eq!(opened.status, 200, "{}", opened.body);
    if balance > 0 {
        let money = json!({"top-up": {"amount": {"minor_units": balance, "currency": "EUR"}}});
        assert_eq!(server.post(&path, &command(&format!("top-{imsi}"), money)).status, 200);
    }
}

/// A `ChargingDataRequest`.
fn request(sequence: u32, usage: Value, subscriber: Option<&str>) -> Value {
    let mut body = json!({
        "nfConsumerIdentification": {"nodeFunctionality": "SMF", "nFName": "5b0c3f52-0000-4000-8000-000000000001"},
        "invocationTimeStamp": "2026-12-01T10:00:00Z",
        "invocationSequenceNumber": sequence,
        "multipleUnitUsage": usage,
    });
    if let Some(s) = subscriber {
        body["subscriberIdentifier"] = json!(s);
    }
    body
}

/// One rating group's usage (`used` seconds, in one container) and request (`next` seconds).
fn usage(group: u32, used: Option<u64>, next: Option<u64>) -> Value {
    let mut entry = json!({"ratingGroup": group});
    if let Some(used) = used {
        entry["usedUnitContainer"] = json!([{"localSequenceNumber": 1, "time": used}]);
    }
    if let Some(next) = next {
        entry["requestedUnit"] = json!({"time": next});
    }
    entry
}

/// Creates charging data for `imsi`: its ref and the answer. Each create names a charging id
/// of its own, as an SMF's do (identical content is one create sent again).
fn create(server: &Server, imsi: &str, usage: Value) -> (String, Answer) {
    static CHARGING_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let mut body = request(0, usage, Some(imsi));
    body["chargingId"] = json!(CHARGING_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let answer = server.post(NCHF, &body.to_string());
    assert_eq!(answer.status, 201, "{}", answer.body);
    let location = answer.location.clone().unwrap();
    (location.rsplit('/').next().unwrap().to_string(), answer)
}

fn update(server: &Server, reference: &str, body: &Value) -> Answer {
    server.post(&format!("{NCHF}/{reference}/update"), &body.to_string())
}

fn release(server: &Server, reference: &str, body: &Value) -> Answer {
    server.post(&format!("{NCHF}/{reference}/release"), &body.to_string())
}

/// The answer for `group` in a `ChargingDataResponse`.
fn info(answer: &Value, group: u64) -> &Value {
    answer["multipleUnitInformation"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["ratingGroup"] == group))
        .unwrap_or_else(|| panic!("no rating group {group} in {answer}"))
}

/// What `imsi`'s account was charged and left unpaid, from its own events, and what it holds.
#[derive(Debug, Default, PartialEq, Eq)]
struct Money {
    charged: i64,
    unpaid: i64,
    held: i64,
    balance: i64,
}

fn money(server: &Server, imsi: &str) -> Money {
    let events = server.get(&format!("/v1/streams/account/{imsi}")).body;
    let mut m = Money::default();
    for e in events.as_array().unwrap() {
        let p = &e["payload"];
        let n = |f: &str| p[f].as_i64().unwrap_or(0);
        match e["type"].as_str().unwrap() {
            "topped-up" => m.balance += n("amount"),
            "reserved" => m.held += n("held"),
            "debited" => {
                m.charged += n("charged");
                m.held -= n("charged") + n("released");
            }
            "usage-charged" => {
                m.charged += n("charged");
                m.unpaid += n("unpaid");
            }
            "released" | "expired" => m.held -= n("released"),
            "direct-debited" => m.balance -= n("amount"),
            _ => {}
        }
    }
    m.balance -= m.charged;
    m
}

/// Polls until `done` (a state the node reaches; the harness's timeout is the bound).
fn until(mut done: impl FnMut() -> bool) {
    while !done() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits until the account's reservations have all lapsed (the validity timer expired them).
fn until_expired(server: &Server, imsi: &str, count: usize) {
    until(|| {
        let events = server.get(&format!("/v1/streams/account/{imsi}")).body;
        events.as_array().unwrap().iter().filter(|e| e["type"] == "expired").count() >= count
    });
}

#[test]
fn a_session_reserves_charges_and_releases_and_a_retransmission_charges_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = node(dir.path(), 60_000, &[]);
    let imsi = "imsi-001010000000010";
    open(&server, imsi, 1_000);

    let (reference, created) = create(&server, imsi, json!([usage(100, None, Some(60))]));
    let location = created.location.as_deref().unwrap();
    assert!(location.starts_with("http://") && location.ends_with(&format!("{NCHF}/{reference}")), "{location}");
    let granted = info(&created.body, 100);
    assert_eq!((granted["resultCode"].as_str(), &granted["grantedUnit"]), (Some("SUCCESS"), &json!({"time": 60})));
    assert!(granted["validityTime"].as_u64().unwrap() > 0, "{}", created.body);
    assert_eq!(server.get(&format!("/v1/kv/balances/{imsi}?consistent=true")).body["held"], 120);

    // Two updates: report usage, ask for more. The first is sent again: charged once.
    let first = request(1, json!([usage(100, Some(40), Some(60))]), Some(imsi));
    let answered = update(&server, &reference, &first);
    assert_eq!(answered.status, 200, "{}", answered.body);
    let events = server.get(&format!("/v1/streams/account/{imsi}")).body.as_array().unwrap().len();
    let again = update(&server, &reference, &first);
    assert_eq!((again.status, &again.body), (200, &answered.body));
    assert_eq!(server.get(&format!("/v1/streams/account/{imsi}")).body.as_array().unwrap().len(), events);
    assert_eq!(update(&server, &reference, &request(2, json!([usage(100, Some(60), Some(60))]), None)).status, 200);

    // Release with the final usage; the rest of the hold is freed; then the session is gone.
    let released = release(&server, &reference, &request(3, json!([usage(100, Some(10), None)]), None));
    assert_eq!(released.status, 204, "{}", released.body);
    assert_eq!(money(&server, imsi), Money { charged: 220, unpaid: 0, held: 0, balance: 780 });
    let types: Vec<String> = server
        .get(&format!("/v1/streams/account/{imsi}"))
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["opened", "topped-up", "reserved", "debited", "reserved", "debited", "reserved", "debited"]);
    let after = update(&server, &reference, &request(4, json!([usage(100, Some(1), None)]), None));
    assert_eq!((after.status, after.body["cause"].as_str()), (404, Some("CONTEXT_NOT_FOUND")));

    // An unrated group is answered RATING_FAILED; usage for a group with no grant is refused.
    let (unrated, answer) = create(&server, imsi, json!([usage(7, None, Some(60))]));
    assert_eq!(info(&answer.body, 7)["resultCode"], "RATING_FAILED");
    let refused = update(&server, &unrated, &request(1, json!([usage(7, Some(5), None)]), None));
    assert_eq!((refused.status, refused.body["cause"].as_str()), (400, Some("MANDATORY_IE_INCORRECT")));
    assert!(refused.body["detail"].as_str().unwrap().contains("no open grant"), "{}", refused.body);
    // Every error class is ProblemDetails with its status and cause.
    let mut keyless = request(0, json!([]), Some(imsi));
    keyless.as_object_mut().unwrap().remove("invocationTimeStamp");
    let problems = [
        (update(&server, "nope", &first), 404, "CONTEXT_NOT_FOUND"),
        (server.post(NCHF, &request(0, json!([]), None).to_string()), 400, "MANDATORY_IE_MISSING"),
        (server.post(NCHF, &keyless.to_string()), 400, "MANDATORY_IE_MISSING"),
        (server.post(NCHF, "[1, 2"), 400, "INVALID_MSG_FORMAT"),
        (server.post(NCHF, r#"{"subscriberIdentifier": 7}"#), 400, "MANDATORY_IE_MISSING"),
    ];
    for (answer, status, cause) in problems {
        assert_eq!(answer.content_type, "application/problem+json", "{}", answer.body);
        let seen = (answer.status, answer.body["status"].as_u64(), answer.body["cause"].as_str());
        assert_eq!(seen, (status, Some(u64::from(status)), Some(cause)), "{}", answer.body);
    }
    let (code, err) = server.terminate();
    assert_eq!(code, 0, "{err}");
}

#[test]
fn usage_over_the_grant_is_charged_and_what_the_balance_cannot_cover_is_unpaid() {
    let dir = tempfile::tempdir().unwrap();
    let server = node(dir.path(), 60_000, &[]);
    let imsi = "imsi-001010000000001";
    open(&server, imsi, 130);

    // Granted 60 s (held 120), 61 used: the grant from its hold, the 61st second from what is
    // left: charged 122, nothing dropped, nothing left held.
    let (reference, created) = create(&server, imsi, json!([usage(100, None, Some(60))]));
    assert_eq!(info(&created.body, 100)["grantedUnit"], json!({"time": 60}), "{}", created.body);
    let over = update(&server, &reference, &request(1, json!([usage(100, Some(61), None)]), Some(imsi)));
    assert_eq!(over.status, 200, "{}", over.body);
    let charge = &info(&over.body, 100)["usageCharge"];
    assert_eq!(
        (
            info(&over.body, 100)["resultCode"].as_str(),
            charge["chargedMinorUnits"].as_i64(),
            charge["unpaidMinorUnits"].as_i64()
        ),
        (Some("SUCCESS"), Some(122), Some(0)),
        "{}",
        over.body
    );
    assert_eq!(money(&server, imsi), Money { charged: 122, unpaid: 0, held: 0, balance: 8 });

    // 8 left: 4 s granted; 10 used: 8 from the hold, the 6 s beyond find nothing left: unpaid 12.
    let (second, created) = create(&server, imsi, json!([usage(100, None, Some(60))]));
    assert_eq!(info(&created.body, 100)["grantedUnit"], json!({"time": 4}), "{}", created.body);
    let over = release(&server, &second, &request(1, json!([usage(100, Some(10), None)]), Some(imsi)));
    assert_eq!(over.status, 204, "{}", over.body);
    assert_eq!(money(&server, imsi), Money { charged: 130, unpaid: 12, held: 0, balance: 0 });

    // The unpaid usage is visible to the operator: /metrics and `tollgate stats`.
    server.metrics_until("tollgate_usage_unpaid_minor_units{currency=\"EUR\"} 12");
    let (code, err) = server.terminate();
    assert_eq!(code, 0, "{err}");
    let store = format!("file:{}", dir.path().join("log").display());
    let (code, out, err) =
        crate::run(&["stats", &dir.path().join("nchf.toml").display().to_string(), "--store", &store]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("unpaid usage: 12 minor units EUR over 1 charges"), "{out}");
}

#[test]
fn usage_reported_after_the_grants_validity_is_charged_late_and_the_excess_is_unpaid() {
    let dir = tempfile::tempdir().unwrap();
    let server = node(dir.path(), 1_000, &[]);
    let imsi = "imsi-001010000000002";
    open(&server, imsi, 1_000);

    // An SMF reports on its VALIDITY_TIME trigger: after the validity timer freed the hold.
    let (reference, _) = create(&server, imsi, json!([usage(100, None, Some(60))]));
    until_expired(&server, imsi, 1);
    assert_eq!(money(&server, imsi).held, 0, "the hold went at the grant's validity");
    let late = update(&server, &reference, &request(1, json!([usage(100, Some(30), Some(60))]), None));
    assert_eq!(late.status, 200, "{}", late.body);
    let answered = info(&late.body, 100);
    assert_eq!(answered["resultCode"], "SUCCESS", "{}", late.body);
    assert_eq!(
        (answered["usageCharge"]["chargedMinorUnits"].as_i64(), answered["usageCharge"]["late"].as_bool()),
        (Some(60), Some(true)),
        "{}",
        late.body
    );
    assert_eq!(money(&server, imsi).charged, 60);

    // Late again, after the balance was spent elsewhere: what is left is charged, the rest unpaid.
    until_expired(&server, imsi, 2);
    let spend = json!({"direct-debit": {"amount": {"minor_units": 930, "currency": "EUR"}, "description": "sms"}});
    assert_eq!(server.post(&format!("/v1/commands/account/{imsi}"), &command("spend", spend)).status, 200);
    let late = release(&server, &reference, &request(2, json!([usage(100, Some(30), None)]), None));
    assert_eq!(late.status, 204, "{}", late.body);
    let m = money(&server, imsi);
    assert_eq!((m.charged, m.unpaid, m.held, m.balance + 930), (70, 50, 0, 930), "{m:?}");
}

#[test]
fn retransmissions_are_the_original_and_other_content_under_a_used_number_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let server = node(dir.path(), 60_000, &[]);
    let imsi = "imsi-001010000000003";
    open(&server, imsi, 10_000);

    // A create sent again with retransmissionIndicator names the same session and holds once.
    let first = request(0, json!([usage(100, None, Some(60))]), Some(imsi));
    let mut again = first.clone();
    again["retransmissionIndicator"] = json!(true);
    let created = server.post(NCHF, &first.to_string());
    assert_eq!(created.status, 201, "{}", created.body);
    let reference = created.location.as_ref().unwrap().rsplit('/').next().unwrap().to_string();
    let retransmitted = server.post(NCHF, &again.to_string());
    assert_eq!((retransmitted.status, &retransmitted.location), (201, &created.location));
    assert_eq!(retransmitted.body, created.body);
    assert_eq!(money(&server, imsi).held, 120);

    // An update answered, then the same number with other usage: 409, the 40 s more never
    // taken as the original; the real retransmission answers the original.
    let ten = request(1, json!([usage(100, Some(10), Some(60))]), Some(imsi));
    let answered = update(&server, &reference, &ten);
    assert_eq!(answered.status, 200, "{}", answered.body);
    let mut fifty = request(1, json!([usage(100, Some(50), Some(60))]), Some(imsi));
    fifty["retransmissionIndicator"] = json!(true);
    let conflict = update(&server, &reference, &fifty);
    assert_eq!((conflict.status, conflict.body["cause"].as_str()), (409, Some("INVOCATION_SEQUENCE_NUMBER_CONFLICT")));
    assert_eq!(conflict.content_type, "application/problem+json");
    let mut retransmitted = ten.clone();
    retransmitted["retransmissionIndicator"] = json!(true);
    assert_eq!(update(&server, &reference, &retransmitted).body, answered.body);
    assert_eq!(money(&server, imsi).charged, 20, "charged once, for 10 s");

    // One rating group twice in one request: refused naming the field, nothing charged.
    let twice = request(2, json!([usage(100, Some(5), Some(1)), usage(100, Some(5), Some(2))]), None);
    let refused = update(&server, &reference, &twice);
    assert_eq!((refused.status, refused.body["cause"].as_str()), (400, Some("MANDATORY_IE_INCORRECT")));
    assert!(
        refused.body["detail"].as_str().unwrap().contains("`multipleUnitUsage[1].ratingGroup`"),
        "{}",
        refused.body
    );
    assert_eq!(money(&server, imsi), Money { charged: 20, unpaid: 0, held: 120, balance: 9_980 });

    // A release sent again is the release; another request under its number is a conflict.
    let done = request(2, json!([usage(100, Some(5), None)]), None);
    assert_eq!(release(&server, &reference, &done).status, 204);
    assert_eq!(release(&server, &reference, &done).status, 204);
    let other = request(2, json!([usage(100, Some(6), None)]), None);
    assert_eq!(release(&server, &reference, &other).status, 409);
    assert_eq!(money(&server, imsi), Money { charged: 30, unpaid: 0, held: 0, balance: 9_970 });
}

#[test]
fn one_session_is_served_one_step_at_a_time_and_keeps_its_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let server = node(dir.path(), 60_000, &["--workers", "4"]);
    let imsi = "imsi-001010000000004";
    open(&server, imsi, 100_000);
    let (reference, _) = create(&server, imsi, json!([usage(100, None, Some(10))]));

    // Eight updates at once, some naming the subscriber, some not: each settles the grant the
    // one before it left, so every one is charged, none races another.
    let answers: Vec<Answer> = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..=8u32)
            .map(|sequence| {
                let (server, reference) = (&server, &reference);
                scope.spawn(move || {
                    let who = (sequence % 2 == 0).then_some(imsi);
                    update(server, reference, &request(sequence, json!([usage(100, Some(5), Some(10))]), who))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(info(&answer.body, 100)["usageCharge"]["chargedMinorUnits"], 10, "{}", answer.body);
    }
    let m = money(&server, imsi);
    assert_eq!((m.charged, m.held), (80, 20), "{m:?}");
    let metrics = server.get("/metrics").body.as_str().unwrap().to_string();
    assert!(metrics.contains("tollgate_occ_conflicts_total 0"), "{metrics}");

    // Another subscriber than the session's is refused.
    let stranger =
        update(&server, &reference, &request(9, json!([usage(100, Some(5), None)]), Some("imsi-001019999999999")));
    assert_eq!((stranger.status, stranger.body["cause"].as_str()), (400, Some("MANDATORY_IE_INCORRECT")));
    assert!(stranger.body["detail"].as_str().unwrap().contains("subscriberIdentifier"), "{}", stranger.body);
    assert_eq!(money(&server, imsi).charged, 80);
}

#[test]
fn an_unknown_subscriber_gets_404_user_unknown_and_no_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = node(dir.path(), 60_000, &[]);
    let body = request(0, json!([usage(100, None, Some(60))]), Some("imsi-001019999999999"));
    let refused = server.post(NCHF, &body.to_string());
    assert_eq!((refused.status, refused.body["cause"].as_str()), (404, Some("USER_UNKNOWN")), "{}", refused.body);
    assert_eq!(refused.content_type, "application/problem+json");
    let reference = tollgate_serve::nchf::reference_of(&body);
    let session = server.get(&format!("/v1/streams/{}/{reference}", tollgate_serve::nchf::SESSION_STREAM));
    assert_eq!(session.body, json!([]), "no charging data was recorded");
    // An account opened afterwards is found, whichever worker saw it missing first.
    open(&server, "imsi-001019999999999", 1_000);
    assert_eq!(server.post(NCHF, &body.to_string()).status, 201);
}

#[test]
fn what_an_smf_sends_is_charged_in_the_rating_groups_unit() {
    let dir = tempfile::tempdir().unwrap();
    let server = node(dir.path(), 60_000, &[]);
    let imsi = "imsi-001010000000005";
    open(&server, imsi, 100_000_000);
    // `requestedUnit: {}`: the charging function chooses, from the manifest.
    let (reference, created) = create(&server, imsi, json!([{"ratingGroup": 200, "requestedUnit": {}}]));
    assert_eq!(info(&created.body, 200)["grantedUnit"], json!({"totalVolume": 1048576}), "{}", created.body);
    let stamp = created.body["invocationTimeStamp"].as_str().unwrap();
    assert_ne!(stamp, "2026-12-01T10:00:00Z", "the node answers with its own time");
    assert!(stamp.ends_with('Z') && stamp.len() >= 20, "{stamp}");
    // Time and volumes in one container: the volume is charged (1 a byte), the rest accepted.
    let container = json!({"localSequenceNumber": 1, "time": 30, "totalVolume": 5000, "uplinkVolume": 1000, "downlinkVolume": 4000});
    let body = request(1, json!([{"ratingGroup": 200, "usedUnitContainer": [container]}]), None);
    let reported = release(&server, &reference, &body);
    assert_eq!(reported.status, 204, "{}", reported.body);
    let m = money(&server, imsi);
    assert_eq!((m.charged, m.held), (5000, 0), "{m:?}");
}

#[test]
fn client_mistakes_are_4xx_never_5xx() {
    let dir = tempfile::tempdir().unwrap();
    let server = node(dir.path(), 60_000, &[]);
    let imsi = "imsi-001010000000006";
    open(&server, imsi, 1_000);
    let body = request(0, json!([usage(100, None, Some(60))]), Some(imsi)).to_string();
    let as_text = server.post_as(NCHF, &body, "text/plain");
    assert_eq!((as_text.status, as_text.body["cause"].as_str()), (415, Some("UNSUPPORTED_MEDIA_TYPE")));
    let mut missing = request(0, json!([usage(100, None, Some(60))]), Some(imsi));
    missing["multipleUnitUsage"][0]["usedUnitContainer"] = json!([{"time": 3}]);
    let answer = server.post(NCHF, &missing.to_string());
    assert_eq!((answer.status, answer.body["cause"].as_str()), (400, Some("MANDATORY_IE_MISSING")), "{}", answer.body);
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains("multipleUnitUsage[0].usedUnitContainer[0].localSequenceNumber")
    );
    for (path, status, cause) in [
        ("/v1/commands/nothing/k", 404, "RESOURCE_URI_STRUCTURE_NOT_FOUND"),
        ("/v1/commands/tollgate.timers/k", 403, "RESERVED_NAME"),
    ] {
        let answer = server.post(path, &command("c1", json!({"open": {"currency": "EUR"}})));
        assert_eq!((answer.status, answer.body["cause"].as_str()), (status, Some(cause)), "{path}: {}", answer.body);
    }
    let metrics = server.get("/metrics").body.as_str().unwrap().to_string();
    let server_errors = metrics.lines().filter(|l| {
        l.starts_with("tollgate_http_requests_total") && !l.contains("/readyz") && l.contains("status=\"5")
    });
    assert_eq!(server_errors.count(), 0, "{metrics}");
}

#[test]
fn the_native_api_and_nats_charge_usage_by_the_same_rules() {
    let Some(nats) = tollgate_store::testing::NatsServer::start_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = node(dir.path(), 60_000, &["--nats", &nats.url, "--node", "core"]);
    let peer = crate::lattice::Peer::connect(&nats.url);
    for (imsi, over_nats) in [("imsi-001010000000007", false), ("imsi-001010000000008", true)] {
        open(&server, imsi, 1_000);
        let send = |id: &str, body: Value| -> (u16, Value) {
            if over_nats {
                let body = json!({"key": imsi, "id": id, "command": body}).to_string();
                let (reply, code) = peer.request("tollgate.core.command.account", &body);
                (code.map_or(200, |c| c.parse().unwrap()), reply)
            } else {
                let answer = server.post(&format!("/v1/commands/account/{imsi}"), &command(id, body));
                (answer.status, answer.body)
            }
        };
        let admission = json!({"id": format!("{imsi}-use"), "subscriber": imsi, "offer": "voice", "units": 10});
        assert_eq!(server.post("/v1/admissions", &admission.to_string()).status, 200);
        let reservation = format!("{imsi}-use");
        // A debit past the grant is refused, as it always was; a settlement charges the usage.
        let (status, reply) = send("d", json!({"debit": {"reservation_id": reservation, "used_units": 12}}));
        assert_eq!((status, reply["cause"].as_str()), (422, Some("exceeds-grant")), "{reply}");
        let (status, reply) = send("s", json!({"settle": {"reservation_id": reservation, "used_units": 12}}));
        assert_eq!(status, 200, "{reply}");
        let types: Vec<&str> =
            reply["accepted"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["usage-charged", "debited"], "{reply}");
        // The same id with other content is refused, never taken as the first.
        let (status, reply) = send("s", json!({"settle": {"reservation_id": reservation, "used_units": 50}}));
        assert!((400..500).contains(&status), "{status} {reply}");
        assert_eq!(reply["cause"], "command-id-conflict", "{reply}");
        // Usage of a lapsed grant is charged late, from what is available: a grant valid for
        // 1 ms, expired (retried until its validity has passed by the node's clock).
        let plan = json!(["per-unit voice 2"]);
        let reserve = json!({"reserve": {"reservation_id": "late", "units": 10, "plan": plan, "currency": "EUR", "validity_ms": 1, "offer": "voice"}});
        assert_eq!(send("r", reserve).0, 200);
        // The node's own charging session, whose expiry timer is due as soon, may expire it
        // first: then it is no longer open.
        let mut attempt = 0;
        until(|| {
            attempt += 1;
            let (status, reply) = send(&format!("e{attempt}"), json!({"expire": {"reservation_id": "late"}}));
            let expired_already = reply["cause"] == "unknown-reservation";
            assert!(status == 200 || expired_already || reply["cause"] == "not-expired", "{reply}");
            status == 200 || expired_already
        });
        let (status, reply) = send("l", json!({"settle": {"reservation_id": "late", "used_units": 7}}));
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["accepted"][0]["type"], "usage-charged", "{reply}");
        assert_eq!(money(&server, imsi), Money { charged: 24 + 14, unpaid: 0, held: 0, balance: 1_000 - 38 });
    }
}

/// The Python conformance suite: every request validated against TS 32.291's OpenAPI before it
/// is sent, every response against the answer the specification defines for its status.
#[test]
fn nchf_answers_conform_to_the_3gpp_openapi_documents() {
    let python = root().join("target/nchf-tools/bin/python");
    if !python.is_file() {
        let install = "python3 -m venv target/nchf-tools && target/nchf-tools/bin/pip install openapi-core==0.23.1 requests pyyaml rfc3339-validator";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the Nchf conformance suite needs its tools (CI=true): {install}"
        );
        eprintln!("skipped: the Nchf conformance suite needs `{install}`");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = node(dir.path(), 60_000, &[]);
    let script = root().join("serve/tests/nchf/conformance.py");
    let out = std::process::Command::new(&python).arg(&script).arg(server.base()).output().unwrap();
    let (code, stdout, stderr) = crate::output(out);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap_or(Value::Null);
    println!("Nchf conformance: {summary}");
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(summary["failures"], json!([]), "{summary:#}");
    let (requests, responses) = (summary["requests"].as_u64().unwrap(), summary["responses"].as_u64().unwrap());
    assert!(requests >= 34 && responses >= 38, "validated {requests} requests and {responses} responses");
}

/// A step of a random session.
#[derive(Debug, Clone)]
enum Step {
    /// Report `used` seconds, ask for `next` more.
    Update { used: u64, next: Option<u64> },
    /// Send the last request again, marked as a retransmission.
    Retransmit,
    /// Send the last answered number again with other usage.
    Conflict { used: u64 },
    /// Several updates at once (then one reporting nothing, so the grant is known again).
    Concurrent { used: Vec<u64> },
    /// One rating group twice.
    Twice,
    /// Release with the final usage.
    Release { used: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    let used = prop_oneof![Just(0u64), 1u64..80, Just(u64::from(u32::MAX))];
    prop_oneof![
        4 => (used.clone(), prop::option::of(1u64..100)).prop_map(|(used, next)| Step::Update { used, next }),
        1 => Just(Step::Retransmit),
        1 => (1u64..50).prop_map(|used| Step::Conflict { used }),
        1 => prop::collection::vec(0u64..20, 2..6).prop_map(|used| Step::Concurrent { used }),
        1 => Just(Step::Twice),
        1 => used.prop_map(|used| Step::Release { used }),
    ]
}

/// Random sessions against one node: whatever the usage (within, beyond, far beyond a grant),
/// retransmissions, conflicts, repeated rating groups and concurrent updates, the money the
/// account was charged plus what is unpaid is the price of the distinct usage answered, and
/// after the release nothing is held.
#[test]
fn random_sessions_charge_every_used_unit_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = node(dir.path(), 60_000, &["--workers", "3"]);
    let config = ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let case = std::sync::atomic::AtomicU32::new(0);
    let strategy = (prop_oneof![Just(0i64), 1i64..300, Just(100_000i64)], prop::collection::vec(step(), 1..12));
    runner
        .run(&strategy, |(balance, steps)| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let imsi = format!("imsi-00101{n:010}");
            open(&server, &imsi, balance);
            let (reference, created) = create(&server, &imsi, json!([usage(100, None, Some(60))]));
            let mut granted = info(&created.body, 100)["resultCode"] == "SUCCESS";
            let mut used_answered: u128 = 0;
            let mut last: Option<(Value, Answer)> = None;
            let mut sequence = 0;
            let mut released = false;
            let send = |body: &Value, granted: &mut bool, used_answered: &mut u128, used: u64| -> Answer {
                let answer = update(&server, &reference, body);
                match answer.status {
                    200 => {
                        *used_answered += u128::from(used);
                        *granted = answer.body["multipleUnitInformation"]
                            .as_array()
                            .and_then(|a| a.first())
                            .is_some_and(|i| i["grantedUnit"].is_object());
                    }
                    400 => assert!(used > 0 && !*granted, "refused with a grant open: {}", answer.body),
                    other => panic!("update answered {other}: {}", answer.body),
                }
                answer
            };
            for step in steps {
                match step {
                    Step::Update { used, next } => {
                        sequence += 1;
                        let body = request(sequence, json!([usage(100, Some(used), next)]), None);
                        let answer = send(&body, &mut granted, &mut used_answered, used);
                        last = (answer.status == 200).then_some((body, answer));
                    }
                    Step::Retransmit => {
                        let Some((body, answer)) = &last else { continue };
                        let mut again = body.clone();
                        again["retransmissionIndicator"] = json!(true);
                        let repeated = update(&server, &reference, &again);
                        prop_assert_eq!((repeated.status, &repeated.body), (answer.status, &answer.body));
                    }
                    Step::Conflict { used } => {
                        let Some((body, _)) = &last else { continue };
                        let mut other = body.clone();
                        other["multipleUnitUsage"] = json!([usage(100, Some(used + 1_000), None)]);
                        prop_assert_eq!(update(&server, &reference, &other).status, 409);
                    }
                    Step::Concurrent { used } => {
                        let first = sequence + 1;
                        sequence += used.len() as u32;
                        let answers: Vec<(u64, Answer)> = std::thread::scope(|scope| {
                            let handles: Vec<_> = used
                                .iter()
                                .enumerate()
                                .map(|(i, &u)| {
                                    let (server, reference) = (&server, &reference);
                                    scope.spawn(move || {
                                        let body =
                                            request(first + i as u32, json!([usage(100, Some(u), Some(10))]), None);
                                        (u, update(server, reference, &body))
                                    })
                                })
                                .collect();
                            handles.into_iter().map(|h| h.join().unwrap()).collect()
                        });
                        for (u, answer) in answers {
                            match answer.status {
                                200 => used_answered += u128::from(u),
                                400 => prop_assert!(u > 0, "{}", answer.body),
                                other => prop_assert!(false, "concurrent update answered {other}: {}", answer.body),
                            }
                        }
                        // Which one ran last is unknown: a report of nothing makes the grant known.
                        sequence += 1;
                        let body = request(sequence, json!([usage(100, Some(0), Some(10))]), None);
                        let answer = send(&body, &mut granted, &mut used_answered, 0);
                        prop_assert_eq!(answer.status, 200);
                        last = None;
                    }
                    Step::Twice => {
                        sequence += 1;
                        let body = request(
                            sequence,
                            json!([usage(100, Some(1), Some(1)), usage(100, Some(1), Some(1))]),
                            None,
                        );
                        prop_assert_eq!(update(&server, &reference, &body).status, 400);
                    }
                    Step::Release { used } => {
                        sequence += 1;
                        let answer = release(
                            &server,
                            &reference,
                            &request(sequence, json!([usage(100, Some(used), None)]), None),
                        );
                        if answer.status == 204 {
                            used_answered += u128::from(used);
                            released = true;
                            break;
                        }
                        prop_assert!(answer.status == 400 && used > 0 && !granted, "{}", answer.body);
                    }
                }
            }
            if !released {
                sequence += 1;
                prop_assert_eq!(release(&server, &reference, &request(sequence, json!([]), None)).status, 204);
            }
            let m = money(&server, &imsi);
            prop_assert_eq!(
                i128::from(m.charged) + i128::from(m.unpaid),
                2 * used_answered as i128,
                "charged + unpaid = the price of the usage answered: {:?}",
                m
            );
            prop_assert_eq!(m.held, 0, "a hold outlived its session: {:?}", m);
            prop_assert!(m.balance >= 0, "{:?}", m);
            Ok(())
        })
        .unwrap();
}
