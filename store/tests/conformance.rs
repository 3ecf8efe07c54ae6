//! Runs the one conformance suite (`tollgate_store::testing::conformance`) against both
//! stores, and the tests only one store can take.

#![allow(clippy::unwrap_used)] // a test fails loudly on the first unexpected error

use std::time::{Duration, Instant};

use tollgate_store::subject::encode_token;
use tollgate_store::testing::NatsServer;
use tollgate_store::testing::conformance::Factory;
use tollgate_store::testing::event;
use tollgate_store::{
    ConsumerOptions, EventStore, ExpectedVersion, FileOptions, FileStore, KvWrite, NatsOptions, NatsStore, StoreError,
    Timer,
};

/// A file store in a temp dir; every `open` reopens the same directory.
struct FileFactory {
    dir: tempfile::TempDir,
    options: FileOptions,
}

impl FileFactory {
    fn new() -> Option<FileFactory> {
        Some(FileFactory { dir: tempfile::tempdir().expect("temp dir"), options: FileOptions::default() })
    }

    /// Without fsync, as the runtime's ephemeral store: callers write inline, no writer thread.
    fn unsynced() -> Option<FileFactory> {
        let options = FileOptions { sync: false, ..FileOptions::default() };
        Some(FileFactory { dir: tempfile::tempdir().expect("temp dir"), options })
    }
}

impl Factory for FileFactory {
    async fn open(&self) -> Box<dyn EventStore> {
        Box::new(FileStore::open_with(self.dir.path(), self.options.clone()).expect("open file store"))
    }
}

/// A NATS store on its own nats-server; every `open` is a new connection.
struct NatsFactory {
    server: NatsServer,
}

impl NatsFactory {
    fn start() -> Option<NatsFactory> {
        NatsServer::start_or_skip().map(|server| NatsFactory { server })
    }
}

impl Factory for NatsFactory {
    async fn open(&self) -> Box<dyn EventStore> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match NatsStore::connect(&self.server.url, NatsOptions::default()).await {
                Ok(s) => return Box::new(s),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("nats not ready yet: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("connecting to {}: {e}", self.server.url),
            }
        }
    }
}

mod file {
    use super::*;
    tollgate_store::conformance_tests!(FileFactory::new());
}

mod file_unsynced {
    use super::*;
    tollgate_store::conformance_tests!(FileFactory::unsynced());
}

mod nats {
    use super::*;
    tollgate_store::conformance_tests!(NatsFactory::start());
}

/// NatsStore only: deliveries that time out more than `max_deliver` times are dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_ack_wait_exhaustion_dead_letters() {
    let Some(f) = NatsFactory::start() else {
        return;
    };
    let s = f.open().await;
    let r = s.append("account", "k", ExpectedVersion::Any, vec![event("e", "c1", "x")]).await.unwrap();
    let options = ConsumerOptions { max_deliver: 2, ack_wait: Duration::from_secs(1), ..ConsumerOptions::default() };
    // A poison commit that crashes its consumer before it can ack or nack.
    for attempt in 1..=2 {
        let mut c = s.consumer("stuck", options.clone()).await.unwrap();
        let d = c.next(1, Duration::from_secs(3)).await.unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].attempt, attempt);
    }
    let mut c = s.consumer("stuck", options).await.unwrap();
    assert!(c.next(1, Duration::from_secs(3)).await.unwrap().is_empty());
    let dead = s.dead_letters("stuck").await.unwrap();
    assert_eq!(dead.len(), 1, "timed-out deliveries are dead-lettered, not dropped");
    assert_eq!(dead[0].position, r.positions[0]);
    assert!(dead[0].reason.contains("not acknowledged"), "{}", dead[0].reason);
}

/// NatsStore only: a projection commit whose KV apply was interrupted is finished on the
/// next read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_interrupted_projection_apply_is_finished() {
    let Some(f) = NatsFactory::start() else {
        return;
    };
    let s = f.open().await;
    let write = |k: &str, v: &str| KvWrite { bucket: "b".into(), key: k.into(), value: Some(v.as_bytes().to_vec()) };
    s.commit_projection("p", 10, vec![write("k1", "one"), write("k2", "two")]).await.unwrap();
    drop(s);
    // Simulate a crash after the commit message but before the KV apply.
    let client = async_nats::connect(&f.server.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let applied = js.get_key_value("tollgate_applied").await.unwrap();
    applied.put(encode_token("p"), bytes::Bytes::copy_from_slice(&0u64.to_le_bytes())).await.unwrap();
    let kv = js.get_key_value("tollgate_projections").await.unwrap();
    kv.delete(format!("{}.{}.{}", encode_token("p"), encode_token("b"), encode_token("k2"))).await.unwrap();

    // A reader reads through the unapplied commit and leaves it for a writer to finish.
    let reader = NatsStore::connect_read_only(&f.server.url, NatsOptions::default()).await.unwrap();
    assert_eq!(reader.kv_get("p", "b", "k2").await.unwrap(), Some(b"two".to_vec()));
    assert_eq!(reader.kv_list("p", "b").await.unwrap().len(), 2);
    assert_eq!(reader.checkpoint("p").await.unwrap(), 10);
    let marker = applied.get(encode_token("p")).await.unwrap().unwrap();
    assert_eq!(marker.as_ref(), 0u64.to_le_bytes(), "the reader applied the commit");
    drop(reader);

    let s = f.open().await;
    assert_eq!(s.kv_get("p", "b", "k2").await.unwrap(), Some(b"two".to_vec()));
    assert_eq!(s.checkpoint("p").await.unwrap(), 10);
    assert_eq!(s.kv_list("p", "b").await.unwrap().len(), 2);
}

/// NatsStore only: a read-only store creates nothing on a server that holds no log, and over
/// one that does reads everything, refuses every write and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_read_only_creates_nothing_and_writes_nothing() {
    let Some(f) = NatsFactory::start() else {
        return;
    };
    let client = async_nats::connect(&f.server.url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    // The account's streams and durable consumers (reads use ordered consumers, which are
    // ephemeral: the server removes them once idle). Asked raw: async-nats 0.51 does not read
    // every answer of nats-server 2.9.
    let contents = || async {
        let ask = |subject: String| async {
            let answer = client.request(subject, "".into()).await.unwrap();
            serde_json::from_slice::<serde_json::Value>(&answer.payload).unwrap()
        };
        let names = ask("$JS.API.STREAM.NAMES".into()).await;
        let mut streams: Vec<String> =
            names["streams"].as_array().into_iter().flatten().map(|n| n.as_str().unwrap().to_owned()).collect();
        streams.sort();
        let mut durables = Vec::new();
        for stream in &streams {
            let list = ask(format!("$JS.API.CONSUMER.LIST.{stream}")).await;
            for c in list["consumers"].as_array().into_iter().flatten() {
                if let Some(durable) = c["config"]["durable_name"].as_str() {
                    durables.push(format!("{stream}/{durable}"));
                }
            }
        }
        (streams, durables)
    };
    let empty = NatsStore::connect_read_only(&f.server.url, NatsOptions::default()).await.map(drop);
    let Err(StoreError::Empty(why)) = empty else { panic!("expected nothing to read: {empty:?}") };
    assert!(why.contains("no tollgate log with prefix `tollgate`"), "{why}");
    assert_eq!(contents().await, (Vec::new(), Vec::new()), "a read-only open created streams");

    let s = f.open().await;
    let r = s.append("acct", "k", ExpectedVersion::NoStream, vec![event("opened", "c1", "x")]).await.unwrap();
    s.put_timer(Timer { id: "t".into(), fire_at_ms: 1, payload: b"p".to_vec() }).await.unwrap();
    s.commit_projection("p", r.positions[0], Vec::new()).await.unwrap();
    drop(s);
    let before = contents().await;
    assert_eq!(before.0.len(), 8, "{before:?}");
    let state = |name: &'static str| {
        let js = js.clone();
        async move { js.get_stream(name).await.unwrap().info().await.unwrap().state.clone() }
    };
    let (events_before, timers_before) = (state("tollgate_events").await, state("KV_tollgate_timers").await);

    let reader = NatsStore::connect_read_only(&f.server.url, NatsOptions::default()).await.unwrap();
    assert_eq!(reader.read("acct", "k", 0).await.unwrap().len(), 1);
    assert_eq!(reader.read_all(0, 10).await.unwrap().len(), 1);
    assert_eq!(reader.due_timers(10).await.unwrap().len(), 1);
    assert_eq!(reader.checkpoint("p").await.unwrap(), r.positions[0]);
    let read_only = |what: &str, result: Result<(), StoreError>| {
        assert!(matches!(result, Err(StoreError::ReadOnly(_))), "{what}: {result:?}");
    };
    read_only("append", reader.append("acct", "k", ExpectedVersion::Any, vec![event("e", "c2", "y")]).await.map(drop));
    read_only("put_timer", reader.put_timer(Timer { id: "u".into(), fire_at_ms: 1, payload: Vec::new() }).await);
    read_only("cancel_timer", reader.cancel_timer("t").await.map(drop));
    read_only("commit_projection", reader.commit_projection("p", 9, Vec::new()).await);
    read_only("redrive", reader.redrive("p", 1).await);
    let mut consumer = reader.consumer("never-run", ConsumerOptions::default()).await.unwrap();
    read_only("consumer next", consumer.next(10, Duration::from_millis(10)).await.map(drop));
    read_only("consumer ack", consumer.ack(1).await);
    drop((consumer, reader));

    assert_eq!(contents().await, before, "a read-only store created or removed streams or durable consumers");
    assert_eq!(state("tollgate_events").await.messages, events_before.messages);
    assert_eq!(state("KV_tollgate_timers").await.messages, timers_before.messages);
}

#[tokio::test]
async fn open_parses_urls() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file:{}", dir.path().display());
    let s = tollgate_store::open(&url).await.expect("file URL");
    drop(s);
    assert!(matches!(tollgate_store::open("redis://x").await, Err(tollgate_store::StoreError::InvalidUrl(_))));
    assert!(matches!(tollgate_store::open("file:").await, Err(tollgate_store::StoreError::InvalidUrl(_))));
    // A second open of the same directory is refused while the first is alive.
    let a = FileStore::open(dir.path()).unwrap();
    assert!(matches!(FileStore::open(dir.path()), Err(tollgate_store::StoreError::Locked(_))));
    drop(a);
    FileStore::open(dir.path()).expect("lock released on drop");
}
