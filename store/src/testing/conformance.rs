//! The conformance suite every [`EventStore`] must pass (feature `testing`).
//!
//! Each test is a function taking a [`Factory`] that opens the SAME store again on every call
//! (reopen a directory, reconnect to a server), so the suite also checks what survives a
//! reopen. Run them all against a backend with one [`conformance_tests!`](crate::conformance_tests)
//! call in an integration test; it makes one `#[tokio::test]` per test, named after it. The
//! generated tests need nothing but `tollgate-store` with feature `testing` (tokio comes
//! through it). Each test starts with an empty store: let the factory expression make a fresh
//! one (a new directory, a new server, a unique prefix).
//!
//! ```
//! use tollgate_store::testing::conformance::Factory;
//! use tollgate_store::{EventStore, FileStore};
//!
//! /// Every `open` opens the same directory again.
//! struct FileFactory {
//!     dir: tempfile::TempDir,
//! }
//!
//! impl Factory for FileFactory {
//!     async fn open(&self) -> Box<dyn EventStore> {
//!         Box::new(FileStore::open(self.dir.path()).expect("open the store"))
//!     }
//! }
//!
//! // In `tests/conformance.rs`, or in a module of it per backend. The expression is evaluated
//! // by every test; `None` skips the test (e.g. a server the backend needs is not installed).
//! tollgate_store::conformance_tests!(tempfile::tempdir().ok().map(|dir| FileFactory { dir }));
//! # fn main() {}
//! ```

// The suite is tests: it fails loudly on the first unexpected error.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use super::event;
use crate::{ConsumerOptions, EventStore, ExpectedVersion, KvWrite, NackOutcome, Snapshot, StoreError, Timer};

#[doc(hidden)]
pub use tokio as __tokio;

/// Opens the store under test. Every call opens the same underlying data (reopens the
/// directory, reconnects to the server), so that the suite can check what survives.
pub trait Factory {
    /// Opens (or reopens) the store.
    fn open(&self) -> impl Future<Output = Box<dyn EventStore>>;
}

const WAIT: Duration = Duration::from_millis(1500);
const SHORT: Duration = Duration::from_millis(200);

/// Appends to two keys and reads them back: sequences dense from 1 per key, positions
/// increasing, every envelope field kept, reads from a sequence, streams and keys separate,
/// invalid appends refused, and the events still there after a reopen.
pub async fn append_and_read(f: &impl Factory) {
    let s = f.open().await;
    let key = "acc.1 *>_x"; // not a valid subject token as is
    let r1 = s
        .append(
            "account",
            key,
            ExpectedVersion::NoStream,
            vec![event("opened", "c1", "a"), event("credited", "c1", "b")],
        )
        .await
        .expect("first append");
    assert_eq!((r1.first_sequence, r1.last_sequence), (1, 2));
    assert_eq!(r1.positions.len(), 2);
    assert!(r1.positions[0] >= 1 && r1.positions[0] < r1.positions[1]);

    let r2 = s
        .append("account", key, ExpectedVersion::Exact(2), vec![event("debited", "c2", "c")])
        .await
        .expect("second append");
    assert_eq!((r2.first_sequence, r2.last_sequence), (3, 3));
    assert!(r2.positions[0] > r1.positions[1]);

    let other = s
        .append("account", "acc.2", ExpectedVersion::NoStream, vec![event("opened", "c3", "d")])
        .await
        .expect("other key");
    assert_eq!(other.first_sequence, 1, "sequences are per key");

    let all = s.read("account", key, 1).await.unwrap();
    assert_eq!(all.len(), 3);
    let seqs: Vec<u64> = all.iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(all[0].payload, b"a");
    assert_eq!(all[2].payload, b"c");
    assert_eq!(all[1].event_type, "credited");
    assert_eq!(all[1].correlation_id, "corr-c1");
    assert_eq!(all[1].causation_id, "cause-c1");
    assert_eq!(all[1].stream, "account");
    assert_eq!(all[1].key, key);
    assert_eq!(all[1].time_ms, 1_700_000_000_000);
    assert_eq!(all[2].position, r2.positions[0]);

    let tail = s.read("account", key, 2).await.unwrap();
    assert_eq!(tail.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![2, 3]);
    assert!(s.read("account", key, 4).await.unwrap().is_empty());
    assert!(s.read("account", "nobody", 1).await.unwrap().is_empty());
    assert!(s.read("order", key, 1).await.unwrap().is_empty(), "streams are separate");
    assert_eq!(s.last_sequence("account", key).await.unwrap(), 3);
    assert_eq!(s.last_sequence("account", "nobody").await.unwrap(), 0);

    assert!(matches!(
        s.append("account", key, ExpectedVersion::Any, vec![]).await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        s.append("account", key, ExpectedVersion::Any, vec![event("x", "c8", ""), event("x", "c9", "")]).await,
        Err(StoreError::InvalidArgument(_))
    ));

    drop(s);
    let s = f.open().await;
    let again = s.read("account", key, 1).await.unwrap();
    assert_eq!(again, all, "events survive reopening");
}

/// A `NoStream` or `Exact` expectation that does not hold is a [`StoreError::Conflict`]
/// naming the actual sequence and writes nothing; among racing appenders each expected
/// version is won exactly once, and `Any` never loses an event.
pub async fn optimistic_concurrency(f: &impl Factory) {
    let s = f.open().await;
    s.append("account", "k", ExpectedVersion::NoStream, vec![event("a", "", "1")]).await.unwrap();
    match s.append("account", "k", ExpectedVersion::NoStream, vec![event("a", "", "2")]).await {
        Err(StoreError::Conflict { expected, actual, .. }) => {
            assert_eq!(expected, ExpectedVersion::NoStream);
            assert_eq!(actual, 1);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    match s.append("account", "k", ExpectedVersion::Exact(5), vec![event("a", "", "3")]).await {
        Err(StoreError::Conflict { actual: 1, .. }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(s.last_sequence("account", "k").await.unwrap(), 1, "conflicts write nothing");

    // Racing appenders: exactly one wins each version; `Any` never loses events.
    let s: Arc<dyn EventStore> = Arc::from(s);
    let mut tasks = Vec::new();
    for t in 0..6 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut wins = 0;
            for i in 0..5 {
                let r =
                    s.append("account", "race", ExpectedVersion::Exact(i), vec![event("r", "", &format!("{t}"))]).await;
                match r {
                    Ok(_) => wins += 1,
                    Err(StoreError::Conflict { .. }) => {}
                    Err(e) => panic!("unexpected error {e}"),
                }
                s.append("account", "any", ExpectedVersion::Any, vec![event("r", "", "x")])
                    .await
                    .expect("Any always succeeds");
            }
            wins
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += t.await.unwrap();
    }
    assert_eq!(wins, 5, "each expected version is won exactly once");
    assert_eq!(s.last_sequence("account", "race").await.unwrap(), 5);
    let any = s.read("account", "any", 1).await.unwrap();
    assert_eq!(any.len(), 30);
    assert!(any.iter().enumerate().all(|(i, e)| e.sequence == i as u64 + 1));
}

/// An append whose command id its key already committed is a [`StoreError::Duplicate`]
/// carrying the original result (checked before the version, for older commands too, and
/// after a reopen); command ids are per key, and empty ones are never de-duplicated.
pub async fn duplicate_command(f: &impl Factory) {
    let s = f.open().await;
    let first = s
        .append("account", "k", ExpectedVersion::NoStream, vec![event("a", "cmd-1", "1"), event("b", "cmd-1", "2")])
        .await
        .unwrap();
    let check_dup = |r: Result<_, StoreError>| match r {
        Err(StoreError::Duplicate { command_id, original, .. }) => {
            assert_eq!(command_id, "cmd-1");
            assert_eq!(original, first);
        }
        other => panic!("expected a duplicate, got {other:?}"),
    };
    // Retried with the same expectation: a duplicate, not a conflict.
    check_dup(
        s.append("account", "k", ExpectedVersion::NoStream, vec![event("a", "cmd-1", "1"), event("b", "cmd-1", "2")])
            .await,
    );
    check_dup(s.append("account", "k", ExpectedVersion::Any, vec![event("a", "cmd-1", "1")]).await);
    s.append("account", "k", ExpectedVersion::Exact(2), vec![event("c", "cmd-2", "3")]).await.unwrap();
    // An older command, no longer the last one of the key.
    check_dup(s.append("account", "k", ExpectedVersion::Any, vec![event("a", "cmd-1", "1")]).await);
    // The same command id on another key is another command.
    s.append("account", "k2", ExpectedVersion::Any, vec![event("a", "cmd-1", "1")])
        .await
        .expect("command ids are scoped to a key");
    // Empty command ids are never de-duplicated.
    for _ in 0..2 {
        s.append("account", "k3", ExpectedVersion::Any, vec![event("a", "", "1")]).await.unwrap();
    }
    assert_eq!(s.last_sequence("account", "k3").await.unwrap(), 2);
    let events = s.read("account", "k", 1).await.unwrap();
    assert_eq!(events.len(), 3, "duplicates wrote nothing");
    let found = crate::find_duplicate(&events, "cmd-1").unwrap();
    assert_eq!(found, first);
    drop(s);
    let s = f.open().await;
    check_dup(s.append("account", "k", ExpectedVersion::Any, vec![event("a", "cmd-1", "1")]).await);
}

/// [`EventStore::read_all`] returns every event in commit order across streams, and paging
/// with a small `max` from `last.position + 1` visits the same events.
pub async fn read_all_order(f: &impl Factory) {
    let s = f.open().await;
    let mut expected = Vec::new();
    for i in 0..7u64 {
        let (stream, key) = if i % 2 == 0 { ("account", "a") } else { ("order", "o") };
        let n = 1 + (i % 3) as usize;
        let events = (0..n).map(|j| event("e", "", &format!("{i}-{j}"))).collect();
        let r = s.append(stream, key, ExpectedVersion::Any, events).await.unwrap();
        for (j, p) in r.positions.iter().enumerate() {
            expected.push((*p, format!("{i}-{j}"), stream.to_owned()));
        }
    }
    let all = s.read_all(0, 1000).await.unwrap();
    let got: Vec<(u64, String, String)> =
        all.iter().map(|e| (e.position, String::from_utf8(e.payload.clone()).unwrap(), e.stream.clone())).collect();
    assert_eq!(got, expected, "global commit order");
    // Paging with a small max visits the same events.
    let mut paged = Vec::new();
    let mut from = 0;
    loop {
        let page = s.read_all(from, 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        from = page.last().unwrap().position + 1;
        paged.extend(page);
    }
    assert_eq!(paged, all);
    let from_middle = s.read_all(expected[4].0, 3).await.unwrap();
    assert_eq!(from_middle.len(), 3);
    assert_eq!(from_middle[0].position, expected[4].0);
}

/// A consumer filtered to one stream gets whole commits in order; ack, nack with
/// redelivery and a growing attempt count, dead letter after `max_deliver`, nothing
/// redelivered silently; acks and dead letters survive a reopen; a redrive delivers again
/// with a fresh attempt count; another consumer starts from the beginning.
pub async fn consumer_delivery(f: &impl Factory) {
    let s = f.open().await;
    let mut commits = Vec::new();
    for i in 0..3 {
        let r = s
            .append(
                "account",
                &format!("k{i}"),
                ExpectedVersion::Any,
                vec![event("e", &format!("c{i}"), "x"), event("e", &format!("c{i}"), "y")],
            )
            .await
            .unwrap();
        commits.push(*r.positions.last().unwrap());
    }
    s.append("order", "o1", ExpectedVersion::Any, vec![event("placed", "", "o")]).await.unwrap();
    let options = ConsumerOptions { stream: Some("account".into()), max_deliver: 3, ..ConsumerOptions::default() };
    let mut c = s.consumer("billing-proj", options.clone()).await.unwrap();
    let d = c.next(10, WAIT).await.unwrap();
    assert_eq!(d.iter().map(|d| d.position).collect::<Vec<_>>(), commits, "filtered, in order");
    assert!(d.iter().all(|d| d.attempt == 1 && d.events.len() == 2));
    assert_eq!(d[1].events[0].key, "k1");

    c.ack(commits[0]).await.unwrap();
    assert!(matches!(c.ack(commits[0]).await, Err(StoreError::NotDelivered { .. })));
    assert_eq!(c.nack(commits[1], "boom").await.unwrap(), NackOutcome::Redeliver);
    let d = c.next(10, WAIT).await.unwrap();
    assert_eq!(d.len(), 1, "only the nacked commit comes back: {d:?}");
    assert_eq!((d[0].position, d[0].attempt), (commits[1], 2));
    assert_eq!(c.nack(commits[1], "boom").await.unwrap(), NackOutcome::Redeliver);
    let d = c.next(10, WAIT).await.unwrap();
    assert_eq!((d[0].position, d[0].attempt), (commits[1], 3));
    assert_eq!(c.nack(commits[1], "still boom").await.unwrap(), NackOutcome::DeadLettered);
    c.ack(commits[2]).await.unwrap();
    assert!(c.next(10, SHORT).await.unwrap().is_empty(), "nothing silently redelivered");

    let dead = s.dead_letters("billing-proj").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].position, commits[1]);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].reason, "still boom");
    assert_eq!(dead[0].events.len(), 2);
    assert_eq!(dead[0].events[1].payload, b"y");
    assert!(s.dead_letters("other").await.unwrap().is_empty());

    // Restart: the checkpoint and the dead letter survive.
    drop(c);
    drop(s);
    let s = f.open().await;
    let mut c = s.consumer("billing-proj", options.clone()).await.unwrap();
    assert!(c.next(10, SHORT).await.unwrap().is_empty(), "acked commits are not redelivered");
    assert_eq!(s.dead_letters("billing-proj").await.unwrap().len(), 1);
    let r = s.append("account", "k9", ExpectedVersion::Any, vec![event("e", "c9", "z")]).await.unwrap();
    let d = c.next(10, WAIT).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].position, r.positions[0]);
    c.ack(d[0].position).await.unwrap();

    // Redrive: delivered again, with a fresh attempt count, then gone from the dead letters.
    assert!(matches!(s.redrive("billing-proj", 999_999).await, Err(StoreError::NoSuchDeadLetter { .. })));
    s.redrive("billing-proj", commits[1]).await.unwrap();
    assert!(s.dead_letters("billing-proj").await.unwrap().is_empty());
    let d = c.next(10, WAIT).await.unwrap();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!((d[0].position, d[0].attempt), (commits[1], 1));
    assert_eq!(d[0].events[0].key, "k1");
    c.ack(commits[1]).await.unwrap();
    assert!(c.next(10, SHORT).await.unwrap().is_empty());

    // A second consumer has its own checkpoint.
    let mut other = s.consumer("audit", ConsumerOptions::default()).await.unwrap();
    let d = other.next(10, WAIT).await.unwrap();
    assert_eq!(d.len(), 5, "all streams, from the start");
}

/// A page of deliveries acknowledged with one call: a position not delivered refuses the
/// call and leaves the page delivered (to be acknowledged after all); acknowledged once,
/// nothing of it is acknowledged twice or delivered again, also after a reopen.
pub async fn ack_all_settles_a_page(f: &impl Factory) {
    let s = f.open().await;
    let mut commits = Vec::new();
    for i in 0..4 {
        let (key, command) = (format!("k{i}"), format!("c{i}"));
        let r = s.append("account", &key, ExpectedVersion::Any, vec![event("e", &command, "x")]).await.unwrap();
        commits.push(r.positions[0]);
    }
    let options = ConsumerOptions::default();
    let mut c = s.consumer("pager", options.clone()).await.unwrap();
    let d = c.next(10, WAIT).await.unwrap();
    assert_eq!(d.iter().map(|d| d.position).collect::<Vec<_>>(), commits);

    let never = commits[3] + 1_000;
    let refused = c.ack_all(&[never, commits[0], commits[1]]).await;
    assert!(matches!(refused, Err(StoreError::NotDelivered { position, .. }) if position == never), "{refused:?}");
    c.ack_all(&commits[..2]).await.unwrap();
    assert!(matches!(c.ack_all(&commits[1..2]).await, Err(StoreError::NotDelivered { .. })), "acknowledged once");
    c.ack_all(&commits[2..]).await.unwrap();
    c.ack_all(&[]).await.unwrap();
    assert!(c.next(10, SHORT).await.unwrap().is_empty(), "nothing redelivered");

    drop(c);
    drop(s);
    let s = f.open().await;
    let mut c = s.consumer("pager", options).await.unwrap();
    assert!(c.next(10, SHORT).await.unwrap().is_empty(), "the page stays acknowledged after a reopen");
}

/// Snapshots are kept per `(stream, key, actor digest)`, a newer one of the same digest
/// replaces the older, and they survive a reopen.
pub async fn snapshots_by_digest(f: &impl Factory) {
    let s = f.open().await;
    assert_eq!(s.get_snapshot("account", "k", "sha256:a").await.unwrap(), None);
    let snap = |d: &str, seq, st: &[u8]| Snapshot { actor_digest: d.into(), sequence: seq, state: st.to_vec() };
    s.put_snapshot("account", "k", snap("sha256:a", 5, b"five")).await.unwrap();
    assert_eq!(s.get_snapshot("account", "k", "sha256:a").await.unwrap(), Some(snap("sha256:a", 5, b"five")));
    assert_eq!(s.get_snapshot("account", "k", "sha256:b").await.unwrap(), None, "other digest");
    assert_eq!(s.get_snapshot("account", "k2", "sha256:a").await.unwrap(), None, "other key");
    s.put_snapshot("account", "k", snap("sha256:a", 7, b"seven")).await.unwrap();
    s.put_snapshot("account", "k", snap("sha256:b", 6, b"six")).await.unwrap();
    drop(s);
    let s = f.open().await;
    assert_eq!(s.get_snapshot("account", "k", "sha256:a").await.unwrap(), Some(snap("sha256:a", 7, b"seven")));
    assert_eq!(s.get_snapshot("account", "k", "sha256:b").await.unwrap(), Some(snap("sha256:b", 6, b"six")));
}

fn put(bucket: &str, key: &str, v: &str) -> KvWrite {
    KvWrite { bucket: bucket.into(), key: key.into(), value: Some(v.as_bytes().to_vec()) }
}

/// A projection commit applies its key-value writes and its checkpoint together; a stale
/// one is refused whole; a consumer of the projection's name resumes after its checkpoint;
/// all of it survives a reopen.
pub async fn projection_commit(f: &impl Factory) {
    let s = f.open().await;
    assert_eq!(s.checkpoint("balances").await.unwrap(), 0);
    let r1 = s.append("account", "a", ExpectedVersion::Any, vec![event("e", "", "1")]).await.unwrap();
    let r2 = s.append("account", "b", ExpectedVersion::Any, vec![event("e", "", "2")]).await.unwrap();
    s.commit_projection(
        "balances",
        r1.positions[0],
        vec![put("by-id", "a", "10"), put("by-id", "b.x", "20"), put("totals", "all", "30")],
    )
    .await
    .unwrap();
    assert_eq!(s.checkpoint("balances").await.unwrap(), r1.positions[0]);
    assert_eq!(s.kv_get("balances", "by-id", "a").await.unwrap(), Some(b"10".to_vec()));
    assert_eq!(s.kv_get("balances", "by-id", "zz").await.unwrap(), None);
    assert_eq!(s.kv_get("other", "by-id", "a").await.unwrap(), None, "buckets are per consumer");
    assert_eq!(
        s.kv_list("balances", "by-id").await.unwrap(),
        vec![("a".into(), b"10".to_vec()), ("b.x".into(), b"20".to_vec())]
    );

    // A stale commit is refused as a whole.
    let stale = s.commit_projection("balances", r1.positions[0], vec![put("by-id", "a", "BAD")]).await;
    assert!(matches!(stale, Err(StoreError::StaleCheckpoint { .. })), "{stale:?}");
    assert_eq!(s.kv_get("balances", "by-id", "a").await.unwrap(), Some(b"10".to_vec()));

    // A consumer of the same name resumes after the projection's checkpoint.
    let mut c = s.consumer("balances", ConsumerOptions::default()).await.unwrap();
    let d = c.next(10, WAIT).await.unwrap();
    assert_eq!(d.iter().map(|d| d.position).collect::<Vec<_>>(), vec![r2.positions[0]]);
    s.commit_projection(
        "balances",
        r2.positions[0],
        vec![KvWrite { bucket: "by-id".into(), key: "a".into(), value: None }, put("by-id", "b.x", "21")],
    )
    .await
    .unwrap();
    drop(c); // not acked: only the checkpoint protects it now
    drop(s);
    let s = f.open().await;
    assert_eq!(s.checkpoint("balances").await.unwrap(), r2.positions[0]);
    assert_eq!(s.kv_list("balances", "by-id").await.unwrap(), vec![("b.x".into(), b"21".to_vec())]);
    assert_eq!(s.kv_list("balances", "totals").await.unwrap().len(), 1);
    let mut c = s.consumer("balances", ConsumerOptions::default()).await.unwrap();
    assert!(c.next(10, SHORT).await.unwrap().is_empty(), "commits at or below the checkpoint are never applied twice");
}

/// [`EventStore::rebuild_projection`] may commit at the checkpoint (replacing contents) but
/// never below it.
pub async fn projection_rebuild(f: &impl Factory) {
    let s = f.open().await;
    let r = s.append("account", "a", ExpectedVersion::Any, vec![event("e", "", "1")]).await.unwrap();
    let head = r.positions[0];
    s.commit_projection("balances", head, vec![put("by-id", "a", "wrong"), put("by-id", "old", "1")]).await.unwrap();
    // A rebuild at the head replaces contents without moving the checkpoint...
    let fix = vec![put("by-id", "a", "right"), KvWrite { bucket: "by-id".into(), key: "old".into(), value: None }];
    s.rebuild_projection("balances", head, fix).await.unwrap();
    // ...but never moves it backwards.
    let back = s.rebuild_projection("balances", head - 1, vec![put("by-id", "a", "BAD")]).await;
    assert!(matches!(back, Err(StoreError::StaleCheckpoint { .. })), "{back:?}");
    drop(s);
    let s = f.open().await;
    assert_eq!(s.checkpoint("balances").await.unwrap(), head);
    assert_eq!(s.kv_list("balances", "by-id").await.unwrap(), vec![("a".into(), b"right".to_vec())]);
}

/// Timers come due in order of time, cancel once, are replaced by id, and survive a reopen.
pub async fn timers_survive_reopen(f: &impl Factory) {
    let s = f.open().await;
    let timer = |id: &str, at| Timer { id: id.into(), fire_at_ms: at, payload: id.as_bytes().to_vec() };
    s.put_timer(timer("t1", 100)).await.unwrap();
    s.put_timer(timer("t2", 50)).await.unwrap();
    s.put_timer(timer("t.3 *", 500)).await.unwrap();
    let due = s.due_timers(200).await.unwrap();
    assert_eq!(due, vec![timer("t2", 50), timer("t1", 100)]);
    assert!(s.cancel_timer("t1").await.unwrap());
    assert!(!s.cancel_timer("t1").await.unwrap());
    s.put_timer(timer("t2", 300)).await.unwrap();
    drop(s);
    let s = f.open().await;
    assert!(s.due_timers(200).await.unwrap().is_empty());
    assert_eq!(s.due_timers(1000).await.unwrap(), vec![timer("t2", 300), timer("t.3 *", 500)]);

    // Several puts and cancels at once; a cancel of a timer that is not there changes nothing.
    let writes = vec![
        ("t2".to_string(), None),
        ("t4".to_string(), Some(timer("t4", 400))),
        ("never".to_string(), None),
        ("t.3 *".to_string(), Some(timer("t.3 *", 600))),
    ];
    s.write_timers(writes).await.unwrap();
    s.write_timers(Vec::new()).await.unwrap();
    drop(s);
    let s = f.open().await;
    assert_eq!(s.due_timers(1000).await.unwrap(), vec![timer("t4", 400), timer("t.3 *", 600)]);
}

/// Due timers read a page at a time come in due order, each once, and their count is the
/// number due: timers at one time, timers moved later or cancelled, and the last instant.
pub async fn due_timers_page_by_page(f: &impl Factory) {
    let s = f.open().await;
    let timer = |n: u64| Timer { id: format!("p{n:02}"), fire_at_ms: 100 + n / 3, payload: vec![n as u8] };
    let writes: Vec<(String, Option<Timer>)> = (0..40).map(|n| (format!("p{n:02}"), Some(timer(n)))).collect();
    s.write_timers(writes).await.unwrap();
    // One moved later, one cancelled, one due at the end of time.
    s.put_timer(Timer { fire_at_ms: 200, ..timer(4) }).await.unwrap();
    assert!(s.cancel_timer("p05").await.unwrap());
    s.put_timer(Timer { id: "last".into(), fire_at_ms: u64::MAX, payload: Vec::new() }).await.unwrap();
    for now in [99, 100, 105, 113, 200, u64::MAX - 1, u64::MAX] {
        let all = s.due_timers(now).await.unwrap();
        assert_eq!(s.due_timer_count(now).await.unwrap(), all.len(), "count due at {now}");
        for max in [1, 7, 64] {
            let mut paged = Vec::new();
            let mut after: Option<(u64, String)> = None;
            loop {
                let page = s.due_timers_page(now, after.as_ref(), max).await.unwrap();
                assert!(page.len() <= max);
                let Some(last) = page.last() else { break };
                after = Some((last.fire_at_ms, last.id.clone()));
                paged.extend(page);
            }
            assert_eq!(paged, all, "due at {now} in pages of {max}");
        }
    }
    assert_eq!(s.due_timer_count(105).await.unwrap(), 16, "p00..p17 less p04 (moved) and p05 (cancelled)");
    assert_eq!(s.due_timer_count(u64::MAX).await.unwrap(), 40, "less p05, with `last`");
}

/// A delivery neither acked nor nacked (its consumer handle dropped, as in a crash) is
/// delivered again to the next handle.
pub async fn unacked_redelivered(f: &impl Factory) {
    let s = f.open().await;
    let r = s.append("account", "k", ExpectedVersion::Any, vec![event("e", "c1", "x")]).await.unwrap();
    let options = ConsumerOptions { ack_wait: Duration::from_secs(1), ..ConsumerOptions::default() };
    let mut c = s.consumer("flaky", options.clone()).await.unwrap();
    let d = c.next(10, WAIT).await.unwrap();
    assert_eq!(d.len(), 1);
    drop(c); // crashed before ack or nack
    let mut c = s.consumer("flaky", options).await.unwrap();
    let d = c.next(10, Duration::from_secs(4)).await.unwrap();
    assert_eq!(d.len(), 1, "an unacked delivery comes back");
    assert_eq!(d[0].position, r.positions[0]);
    c.ack(d[0].position).await.unwrap();
    assert!(c.next(10, SHORT).await.unwrap().is_empty());
}

/// Appends several commits with one call: each checked in order as `append` checks it (a
/// later append on a key sees an earlier one of the batch), an append after a failed one on
/// the same key refused untried, other keys unaffected, a duplicate answered as one, and the
/// head position the highest written; all of it still there after a reopen.
pub async fn append_batch_and_head(f: &impl Factory) {
    let s = f.open().await;
    assert_eq!(s.head_position().await.unwrap(), 0, "an empty log has no head");
    s.append("account", "a", ExpectedVersion::NoStream, vec![event("opened", "a1", "a")]).await.unwrap();
    let batch = |stream: &str, key: &str, expected: u64, command: &str| crate::BatchAppend {
        stream: stream.into(),
        key: key.into(),
        expected: ExpectedVersion::Exact(expected),
        events: vec![event("credited", command, command)],
    };
    let results = s
        .append_batch(vec![
            batch("account", "a", 1, "a2"),
            batch("account", "b", 0, "b1"),
            // Checked against a2, earlier in the batch.
            batch("account", "a", 2, "a3"),
            // Wrong: b is at 1 after b1.
            batch("account", "b", 0, "b2"),
            // After a failed append on b: refused without being tried, though it would fit.
            batch("account", "b", 1, "b3"),
            // a's command a1 again: the original commit.
            crate::BatchAppend {
                stream: "account".into(),
                key: "a".into(),
                expected: ExpectedVersion::Any,
                events: vec![event("opened", "a1", "a")],
            },
            batch("account", "c", 0, "c1"),
        ])
        .await;
    assert_eq!(results.len(), 7);
    let sequences: Vec<Option<(u64, u64)>> =
        results.iter().map(|r| r.as_ref().ok().map(|r| (r.first_sequence, r.last_sequence))).collect();
    assert_eq!(sequences, [Some((1 + 1, 2)), Some((1, 1)), Some((3, 3)), None, None, None, Some((1, 1))]);
    assert!(matches!(results[3], Err(StoreError::Conflict { .. })), "{:?}", results[3]);
    assert!(matches!(results[4], Err(StoreError::Conflict { .. })), "{:?}", results[4]);
    match &results[5] {
        Err(StoreError::Duplicate { original, .. }) => assert_eq!(original.first_sequence, 1),
        other => panic!("a repeated command id is a duplicate: {other:?}"),
    }
    // Keys may commit in any order (JetStream runs them concurrently): the head is the
    // highest position the batch wrote.
    let last = results.iter().flatten().flat_map(|r| r.positions.iter().copied()).max().unwrap();
    assert_eq!(s.head_position().await.unwrap(), last, "the head is the batch's last event");
    drop(s);
    let s = f.open().await;
    let payloads = |events: Vec<crate::StoredEvent>| events.into_iter().map(|e| e.payload).collect::<Vec<_>>();
    assert_eq!(payloads(s.read("account", "a", 1).await.unwrap()), [b"a".to_vec(), b"a2".to_vec(), b"a3".to_vec()]);
    assert_eq!(payloads(s.read("account", "b", 1).await.unwrap()), [b"b1".to_vec()]);
    assert_eq!(s.head_position().await.unwrap(), last, "and after a reopen");
}

/// Generates one `#[tokio::test]` (multi-threaded runtime, 2 workers) per test of
/// [`testing::conformance`](crate::testing::conformance), named after it, for a backend.
///
/// The argument is an expression evaluating to `Option<F>` where `F` implements
/// [`testing::conformance::Factory`](crate::testing::conformance::Factory); each test
/// evaluates it anew (so each gets an empty store of its own), and `None` skips that test.
/// Call it once per module (each backend in its own module, so test names stay apart). The
/// generated tests reach tokio through `tollgate_store`: the calling crate needs no tokio
/// dependency of its own. Feature `testing`. The example is in the module's documentation.
#[macro_export]
macro_rules! conformance_tests {
    (@tests $factory:expr; $($name:ident),*) => {
        // tokio's test attribute names its crate by a path in a string, where `$crate` is not
        // expanded: the alias gives that path a name in the calling module.
        #[allow(unused_imports)]
        use $crate::testing::conformance::__tokio as __tollgate_store_tokio;
        $(
            #[$crate::testing::conformance::__tokio::test(
                flavor = "multi_thread",
                worker_threads = 2,
                crate = "__tollgate_store_tokio"
            )]
            async fn $name() {
                let Some(f) = $factory else { return };
                $crate::testing::conformance::$name(&f).await;
            }
        )*
    };
    ($factory:expr $(,)?) => {
        $crate::conformance_tests!(@tests $factory;
            append_and_read,
            append_batch_and_head,
            optimistic_concurrency,
            duplicate_command,
            read_all_order,
            consumer_delivery,
            ack_all_settles_a_page,
            snapshots_by_digest,
            projection_commit,
            projection_rebuild,
            timers_survive_reopen,
            due_timers_page_by_page,
            unacked_redelivered
        );
    };
}
