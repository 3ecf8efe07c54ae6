//! The edge quota model over embedded stores (core and edge each a `file:` log): batched
//! admissions decide as one by one would, log their uses in one append, and survive a reopen.

use crate::edge::loader;
use crate::jetstream::{core_manifest, open_account};
use tollgate_runtime::quota::{EdgeDecision, EdgeNode, EdgeRequest, QUOTA_STREAM, QuotaEvent, QuotaPolicy};
use tollgate_runtime::{Journal, ResultCode, Runtime};

fn policy() -> QuotaPolicy {
    QuotaPolicy { grant_units: 10, unit_price: 10, currency: "EUR".into(), validity_ms: 60_000, clock_skew_ms: 1_000 }
}

fn request(id: &str, units: u64) -> EdgeRequest {
    EdgeRequest { subscriber: "sub".into(), request_id: id.into(), units }
}

#[test]
fn a_batch_decides_in_order_logs_its_uses_once_and_survives_a_reopen() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let journal = |d: &tempfile::TempDir| Journal::open(&format!("file:{}", d.path().display())).unwrap();
    let mut core = Runtime::open(&core_manifest(), &mut loader(), journal(&dirs.0)).unwrap();
    // 150: one grant of 10 units (100), then only 5 more units' worth.
    open_account(&mut core, "sub", 150);
    let mut edge = EdgeNode::open("e", core, journal(&dirs.1), policy()).unwrap();
    let batch = [request("r1", 4), request("r2", 4), request("r1", 4), request("r3", 4), request("r4", 9)];
    let decisions = edge.admit_many(&batch, 1_000).unwrap();
    let admitted = |d: &EdgeDecision| match d {
        EdgeDecision::Admitted { reservation_id } => Some(reservation_id.clone()),
        EdgeDecision::Denied { .. } => None,
    };
    // Grants are named after the node, its log's instance, the subscriber and a count.
    let instance = edge.grants().keys().next().unwrap().split('/').nth(1).unwrap().to_string();
    let grant = |n: u32| format!("e/{instance}/sub/{n}");
    let ids: Vec<Option<String>> = decisions.iter().map(admitted).collect();
    // r1 and r2 fill the first grant to 8; the repeated r1 uses nothing; r3 needs a second
    // grant (the core grants the 5 units the balance still covers); r4 wants 9 and gets none.
    assert_eq!(ids[..4], [Some(grant(1)), Some(grant(1)), Some(grant(1)), Some(grant(2))]);
    assert!(
        matches!(&decisions[4], EdgeDecision::Denied { code: ResultCode::QuotaLimitReached, .. }),
        "{:?}",
        decisions[4]
    );
    assert_eq!((edge.grants()[&grant(1)].used, edge.grants()[&grant(2)].used), (8, 4));

    // The uses were logged in one append, after the grants they use.
    drop(edge);
    let log = Journal::open(&format!("file:{}", dirs.1.path().display())).unwrap();
    let events = log.run("read", log.store().read(QUOTA_STREAM, "e", 1)).unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(kinds, ["started", "grant-obtained", "grant-obtained", "uses-admitted"]);
    let QuotaEvent::UsesAdmitted { uses } = tollgate_codec::decode(&events[3].event_type, &events[3].payload).unwrap()
    else {
        panic!("{kinds:?}")
    };
    assert_eq!(uses.iter().map(|u| u.request_id.as_str()).collect::<Vec<_>>(), ["r1", "r2", "r3"]);
    drop(log);

    // Reopened, the node knows every use: repeats answer the same and use nothing.
    let core = Runtime::open(&core_manifest(), &mut loader(), journal(&dirs.0)).unwrap();
    let mut edge = EdgeNode::open("e", core, journal(&dirs.1), policy()).unwrap();
    assert_eq!(edge.admit("sub", "r3", 4, 2_000).unwrap(), EdgeDecision::Admitted { reservation_id: grant(2) });
    assert_eq!((edge.grants()[&grant(1)].used, edge.grants()[&grant(2)].used), (8, 4));
    assert_eq!(edge.report().unsettled_units, 12);
}

#[test]
fn two_nodes_given_one_name_never_share_a_grant() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let journal = |d: &tempfile::TempDir| Journal::open(&format!("file:{}", d.path().display())).unwrap();
    let mut core = Runtime::open(&core_manifest(), &mut loader(), journal(&dirs.0)).unwrap();
    open_account(&mut core, "sub", 1_000);
    let mut first = EdgeNode::open("e", core, journal(&dirs.1), policy()).unwrap();
    assert!(matches!(first.admit("sub", "r1", 10, 1_000).unwrap(), EdgeDecision::Admitted { .. }));
    first.settle(1_000, true).unwrap();
    let core = std::mem::replace(
        first.core(),
        Runtime::open(&core_manifest(), &mut loader(), journal(&tempfile::tempdir().unwrap())).unwrap(),
    );
    // A second node named "e", with a log of its own (another machine, or a lost log).
    let mut second = EdgeNode::open("e", core, journal(&dirs.2), policy()).unwrap();
    let EdgeDecision::Admitted { reservation_id } = second.admit("sub", "r1", 10, 2_000).unwrap() else {
        panic!("the second node is refused")
    };
    assert!(!first.grants().contains_key(&reservation_id), "{reservation_id} is the first node's grant");
    assert_eq!(second.settle(2_000, true).unwrap().settled, 1);
    // Both uses were charged: 2 x 10 units at 10.
    assert_eq!(second.core().reload_account("sub").unwrap().unwrap().balance, 800);
}
