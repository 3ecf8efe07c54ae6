//! Event stores for tollgate: embedded durable log and NATS JetStream.
//!
//! One object-safe trait, [`EventStore`], with two implementations that pass the same
//! conformance suite (`testing::conformance`, feature `testing`, which another backend can run
//! too):
//!
//! * [`FileStore`] (`file:DIR`): an embedded, crash-safe, checksummed append-only log with
//!   group commit. No server needed. The default.
//! * [`NatsStore`] (`nats://127.0.0.1:4222`): NATS JetStream (server 2.9+), for deployments
//!   that outgrow one machine.
//!
//! Pick one at run time with [`open`]. See `store/README.md` for durability notes.
//!
//! ## Contract shared by both stores
//! * `sequence` is 1-based and dense per `(stream, key)`.
//! * `position` is store-wide, strictly increasing in commit order and >= 1. It is dense in
//!   [`FileStore`]; in [`NatsStore`] it is `jetstream_sequence << 12 | index_in_append`,
//!   so it has gaps. Continue a scan from `last.position + 1`.
//! * Appends are atomic: all events of one call are committed together or not at all.
//! * Idempotency: an append whose events carry a non-empty `command_id` that the store already
//!   committed for the same `(stream, key)` fails with [`StoreError::Duplicate`], which carries
//!   the original [`AppendResult`]. The duplicate check runs before the version check, so a
//!   retried command is reported as a duplicate, not as a conflict. See [`find_duplicate`] for
//!   the check a runtime can do on the events it already read.

pub mod access;
mod codec;
mod file;
mod nats;
pub mod subject;
#[cfg(feature = "testing")]
pub mod testing;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use access::NatsAccess;
pub use file::{Damage, FORMAT_VERSION, FileOptions, FileStats, FileStore, LogReport, RepairReport, SegmentReport};
pub use nats::{FIXED_4320, NatsOptions, NatsStore, serializes_replicated_appends};

/// Largest number of events accepted in one append (the JetStream position encoding reserves
/// 12 bits for the index of an event inside its append).
pub const MAX_EVENTS_PER_APPEND: usize = 4096;

/// An event to append; mirrors the `tollgate:eventsourcing` `event` record minus the fields the
/// store assigns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Event type name, e.g. `"funds-reserved"`.
    pub event_type: String,
    /// Version of the payload schema for this event type.
    pub schema_version: u32,
    /// MIME type of `payload`, e.g. `"application/json"`.
    pub content_type: String,
    /// Encoded event body.
    pub payload: Vec<u8>,
    /// Id of the command that produced the event; the idempotency key (empty: no de-dup).
    pub command_id: String,
    /// SHA-256 of the command that produced the event (its type, content type and payload),
    /// the same for every event of one append; empty when unknown (a fact reported from
    /// outside, or an event written before digests were kept). The same command id with
    /// another digest is another command reusing the id.
    #[serde(default)]
    pub command_digest: Vec<u8>,
    /// Id shared by everything caused by one external request.
    pub correlation_id: String,
    /// Id of the message (command or event) that caused this event.
    pub causation_id: String,
    /// Wall-clock time of the event in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// An event as committed, with its place in its stream and in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Aggregate type, e.g. `"account"`.
    pub stream: String,
    /// Aggregate id.
    pub key: String,
    /// 1-based, dense per `(stream, key)`.
    pub sequence: u64,
    /// Store-wide commit order (see the crate docs for density).
    pub position: u64,
    /// Event type name.
    pub event_type: String,
    /// Version of the payload schema.
    pub schema_version: u32,
    /// MIME type of `payload`.
    pub content_type: String,
    /// Encoded event body.
    pub payload: Vec<u8>,
    /// Id of the command that produced the event.
    pub command_id: String,
    /// SHA-256 of that command (see [`NewEvent::command_digest`]); empty when unknown.
    #[serde(default)]
    pub command_digest: Vec<u8>,
    /// Correlation id.
    pub correlation_id: String,
    /// Causation id.
    pub causation_id: String,
    /// Event time in ms since the Unix epoch.
    pub time_ms: u64,
}

impl StoredEvent {
    /// Builds a stored event from its envelope and the coordinates the store assigned.
    pub fn from_new(stream: &str, key: &str, sequence: u64, position: u64, e: NewEvent) -> Self {
        StoredEvent {
            stream: stream.to_owned(),
            key: key.to_owned(),
            sequence,
            position,
            event_type: e.event_type,
            schema_version: e.schema_version,
            content_type: e.content_type,
            payload: e.payload,
            command_id: e.command_id,
            command_digest: e.command_digest,
            correlation_id: e.correlation_id,
            causation_id: e.causation_id,
            time_ms: e.time_ms,
        }
    }

    /// The envelope without the store-assigned coordinates.
    pub fn to_new(&self) -> NewEvent {
        NewEvent {
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            content_type: self.content_type.clone(),
            payload: self.payload.clone(),
            command_id: self.command_id.clone(),
            command_digest: self.command_digest.clone(),
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
            time_ms: self.time_ms,
        }
    }
}

/// The version an append expects its `(stream, key)` to be at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The `(stream, key)` must have no events yet.
    NoStream,
    /// The last sequence must be exactly this (`Exact(0)` is the same as `NoStream`).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose last sequence is `actual` satisfies this expectation.
    pub fn matches(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(n) => actual == n,
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => write!(f, "any"),
            ExpectedVersion::NoStream => write!(f, "no stream"),
            ExpectedVersion::Exact(n) => write!(f, "sequence {n}"),
        }
    }
}

/// What a successful append committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    /// Sequence of the first appended event.
    pub first_sequence: u64,
    /// Sequence of the last appended event.
    pub last_sequence: u64,
    /// Position of each appended event, in order.
    pub positions: Vec<u64>,
}

/// One append of [`EventStore::append_batch`].
#[derive(Clone, Debug)]
pub struct BatchAppend {
    /// The stream appended to.
    pub stream: String,
    /// The key appended to.
    pub key: String,
    /// Where the key must be for the append to commit.
    pub expected: ExpectedVersion,
    /// The events (1..=[`MAX_EVENTS_PER_APPEND`]), all of one command.
    pub events: Vec<NewEvent>,
}

/// A snapshot of an aggregate's state, valid only for the actor build that wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Digest of the actor component that produced `state` (e.g. `sha256:...`).
    pub actor_digest: String,
    /// Sequence of the last event folded into `state`.
    pub sequence: u64,
    /// Encoded state.
    pub state: Vec<u8>,
}

/// One key-value write of a projection commit: `value: None` deletes the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvWrite {
    /// Bucket name, owned by the projection (consumer) that writes it.
    pub bucket: String,
    /// Key inside the bucket.
    pub key: String,
    /// New value; `None` deletes.
    pub value: Option<Vec<u8>>,
}

/// A process-manager timer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    /// Unique id; putting an existing id replaces that timer.
    pub id: String,
    /// When it is due, in ms since the Unix epoch.
    pub fire_at_ms: u64,
    /// Opaque data handed back when due.
    pub payload: Vec<u8>,
}

/// Settings of a durable consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerOptions {
    /// Only deliver events of this aggregate type (`None`: all).
    pub stream: Option<String>,
    /// Deliveries (first one included) before a nacked commit goes to the dead letters.
    pub max_deliver: u32,
    /// NatsStore: time after which an unacked delivery is redelivered by the server.
    /// FileStore: unacked deliveries are redelivered when the consumer is opened again.
    pub ack_wait: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions { stream: None, max_deliver: 5, ack_wait: Duration::from_secs(30) }
    }
}

/// One delivery to a consumer: all events of one append (commit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Position of the last event of the commit; pass it to `ack`/`nack`.
    pub position: u64,
    /// The events of the commit, in order.
    pub events: Vec<StoredEvent>,
    /// 1 for the first delivery, then counting redeliveries.
    pub attempt: u32,
}

/// What `nack` did with a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NackOutcome {
    /// It will be delivered again.
    Redeliver,
    /// `max_deliver` was reached; it is now in the dead letters.
    DeadLettered,
}

/// A commit that a consumer gave up on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Consumer name.
    pub consumer: String,
    /// Position of the last event of the commit (as in [`Delivery::position`]).
    pub position: u64,
    /// The events of the commit.
    pub events: Vec<StoredEvent>,
    /// How many deliveries failed.
    pub attempts: u32,
    /// The reason given by the last `nack`.
    pub reason: String,
}

/// Errors of the event stores. Each variant names the problem.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Optimistic concurrency check failed.
    #[error("version conflict on {stream}/{key}: expected {expected}, actual last sequence {actual}")]
    Conflict {
        /// Aggregate type.
        stream: String,
        /// Aggregate id.
        key: String,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The actual last sequence.
        actual: u64,
    },
    /// The command was already committed; `original` is what that append committed.
    #[error("command {command_id} was already committed to {stream}/{key}")]
    Duplicate {
        /// Aggregate type.
        stream: String,
        /// Aggregate id.
        key: String,
        /// The repeated command id.
        command_id: String,
        /// The result of the original append.
        original: AppendResult,
    },
    /// The caller passed something the store cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The store URL is not `file:DIR` or `nats://HOST:PORT`.
    #[error("unsupported store URL {0:?}: expected file:DIR or nats://HOST:PORT")]
    InvalidUrl(String),
    /// A projection commit would move the checkpoint backwards or keep it in place.
    #[error("projection {consumer}: commit at position {position} is not after checkpoint {checkpoint}")]
    StaleCheckpoint {
        /// Consumer (projection) name.
        consumer: String,
        /// The rejected position.
        position: u64,
        /// The current checkpoint.
        checkpoint: u64,
    },
    /// `ack`/`nack` named a position that this consumer handle has not delivered.
    #[error("consumer {consumer}: position {position} is not an outstanding delivery")]
    NotDelivered {
        /// Consumer name.
        consumer: String,
        /// The unknown position.
        position: u64,
    },
    /// `redrive` named a dead letter that does not exist.
    #[error("consumer {consumer}: no dead letter at position {position}")]
    NoSuchDeadLetter {
        /// Consumer name.
        consumer: String,
        /// The position.
        position: u64,
    },
    /// Another process holds the file store's directory.
    #[error("store directory {0} is locked by another process")]
    Locked(String),
    /// Data on disk is damaged: anything but an incomplete final record (a torn last write),
    /// named by file and byte offset. The store refuses to open; nothing was written.
    #[error("corrupt log: {0}")]
    Corrupt(String),
    /// A write was asked of a store opened read-only ([`FileStore::open_read_only`],
    /// [`NatsStore::connect_read_only`]).
    #[error("store {0} is open read-only: nothing is written")]
    ReadOnly(String),
    /// A read-only open found no log where the URL points (a JetStream server without the
    /// store's streams): there is nothing to read, and nothing was created.
    #[error("nothing to read: {0}")]
    Empty(String),
    /// An earlier write or fsync failed; the file store refuses further writes.
    #[error("file store is poisoned after a failed write: {0}")]
    Poisoned(String),
    /// File system error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Error talking to NATS / JetStream.
    #[error("nats: {op}: {message}")]
    Nats {
        /// The operation that failed.
        op: &'static str,
        /// The client's error text.
        message: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io { context: context.into(), source }
    }
}

/// An event store. Object safe: hold it as `Box<dyn EventStore>` (see [`open`]).
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends `events` (1..=[`MAX_EVENTS_PER_APPEND`]) to `(stream, key)` atomically if the
    /// stream is at `expected`; see the crate docs for de-duplication by `command_id`.
    async fn append(
        &self,
        stream: &str,
        key: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult>;

    /// Appends several commits at once, each checked and de-duplicated as
    /// [`EventStore::append`] checks it, in order; one result per append, in order. An append
    /// after a failed one on the same `(stream, key)` fails with a conflict without being
    /// tried: it was decided on the events that did not commit. A store that syncs shares one
    /// durable write among them where it can (the embedded log: one `fdatasync` for the
    /// batch); this default runs each key's appends in turn and the keys concurrently.
    async fn append_batch(&self, appends: Vec<BatchAppend>) -> Vec<Result<AppendResult>> {
        let count = appends.len();
        let mut chains: Vec<Vec<(usize, BatchAppend)>> = Vec::new();
        let mut chain_of: std::collections::HashMap<(String, String), usize> = std::collections::HashMap::new();
        for (i, append) in appends.into_iter().enumerate() {
            let k = (append.stream.clone(), append.key.clone());
            let at = *chain_of.entry(k).or_insert_with(|| {
                chains.push(Vec::new());
                chains.len() - 1
            });
            chains[at].push((i, append));
        }
        let runs = chains.into_iter().map(|chain| async move {
            let mut out = Vec::with_capacity(chain.len());
            let mut failed = false;
            for (i, a) in chain {
                let result = if failed {
                    Err(StoreError::Conflict { stream: a.stream, key: a.key, expected: a.expected, actual: 0 })
                } else {
                    self.append(&a.stream, &a.key, a.expected, a.events).await
                };
                failed |= result.is_err();
                out.push((i, result));
            }
            out
        });
        let mut results: Vec<Option<Result<AppendResult>>> = (0..count).map(|_| None).collect();
        for (i, result) in futures_util::future::join_all(runs).await.into_iter().flatten() {
            results[i] = Some(result);
        }
        results.into_iter().map(|r| r.expect("every append of the batch ran in its key's chain")).collect()
    }

    /// Events of `(stream, key)` with `sequence >= from_sequence`, in order.
    async fn read(&self, stream: &str, key: &str, from_sequence: u64) -> Result<Vec<StoredEvent>>;

    /// Last committed sequence of `(stream, key)`; 0 when it has no events.
    async fn last_sequence(&self, stream: &str, key: &str) -> Result<u64>;

    /// Up to `max` events of all streams with `position >= from_position`, in position order.
    /// A page may end inside an append; continue from `last.position + 1`.
    async fn read_all(&self, from_position: u64, max: usize) -> Result<Vec<StoredEvent>>;

    /// The position of the log's last committed event, 0 when it has none. This default
    /// finds it with O(log n) one-event reads (an exponential, then a binary search), not by
    /// reading the log; a store that knows it answers at once.
    async fn head_position(&self) -> Result<u64> {
        let Some(mut last) = self.read_all(1, 1).await?.into_iter().next().map(|e| e.position) else {
            return Ok(0);
        };
        // Invariant: an event lies at `last`; none at or after `past`.
        let mut past = loop {
            if last == u64::MAX {
                return Ok(last);
            }
            let probe = last.saturating_mul(2).max(last + 1);
            match self.read_all(probe, 1).await?.into_iter().next() {
                Some(event) => last = event.position,
                None => break probe,
            }
        };
        // Another writer may append meanwhile and put an event past `past`: then that event
        // is the head seen, which is all a caller of a moving log can have.
        while past.saturating_sub(last) > 1 {
            let mid = last + (past - last) / 2;
            match self.read_all(mid, 1).await?.into_iter().next() {
                Some(event) if event.position >= past => return Ok(event.position),
                Some(event) => last = event.position,
                None => past = mid,
            }
        }
        Ok(last)
    }

    /// Opens the durable consumer `name` (created on first use). Deliveries start after the
    /// consumer's acked positions and after [`EventStore::checkpoint`]`(name)`, so a projection
    /// that commits with [`EventStore::commit_projection`] never sees a commit twice.
    async fn consumer(&self, name: &str, options: ConsumerOptions) -> Result<Box<dyn Consumer>>;

    /// Dead letters of consumer `name`, by position.
    async fn dead_letters(&self, name: &str) -> Result<Vec<DeadLetter>>;

    /// Moves the dead letter at `position` back to consumer `name`: it is delivered again
    /// (before new commits) with a fresh attempt count.
    async fn redrive(&self, name: &str, position: u64) -> Result<()>;

    /// Stores a snapshot of `(stream, key)`, replacing one with the same actor digest.
    async fn put_snapshot(&self, stream: &str, key: &str, snapshot: Snapshot) -> Result<()>;

    /// The snapshot of `(stream, key)` written by `actor_digest`, if any.
    async fn get_snapshot(&self, stream: &str, key: &str, actor_digest: &str) -> Result<Option<Snapshot>>;

    /// Atomically applies `writes` to the projection's buckets and sets its checkpoint to
    /// `position`, which must be greater than the current checkpoint.
    async fn commit_projection(&self, consumer: &str, position: u64, writes: Vec<KvWrite>) -> Result<()>;

    /// [`EventStore::commit_projection`] for a projection rebuilt from the log: `position` may
    /// equal the current checkpoint (a rebuild at the head of an up-to-date projection).
    async fn rebuild_projection(&self, consumer: &str, position: u64, writes: Vec<KvWrite>) -> Result<()>;

    /// The projection's checkpoint (0 before its first commit).
    async fn checkpoint(&self, consumer: &str) -> Result<u64>;

    /// A value of a projection's bucket.
    async fn kv_get(&self, consumer: &str, bucket: &str, key: &str) -> Result<Option<Vec<u8>>>;

    /// All `(key, value)` pairs of a projection's bucket, sorted by key.
    async fn kv_list(&self, consumer: &str, bucket: &str) -> Result<Vec<(String, Vec<u8>)>>;

    /// Creates or replaces a timer.
    async fn put_timer(&self, timer: Timer) -> Result<()>;

    /// Removes a timer; returns whether it existed.
    async fn cancel_timer(&self, id: &str) -> Result<bool>;

    /// Creates or replaces the `Some` timers and removes the timers named with `None`, as one
    /// write where the store can (the embedded log records them with one sync); by default
    /// [`EventStore::put_timer`] and [`EventStore::cancel_timer`] for each, concurrently.
    async fn write_timers(&self, writes: Vec<(String, Option<Timer>)>) -> Result<()> {
        let calls = writes.into_iter().map(|(id, timer)| async move {
            match timer {
                Some(timer) => self.put_timer(timer).await,
                None => self.cancel_timer(&id).await.map(drop),
            }
        });
        futures_util::future::try_join_all(calls).await.map(drop)
    }

    /// Timers with `fire_at_ms <= now_ms`, earliest first. Timers stay until cancelled, so
    /// firing is at-least-once: fire, then `cancel_timer`.
    async fn due_timers(&self, now_ms: u64) -> Result<Vec<Timer>>;

    /// At most `max` of the timers due at `now_ms` that come after `after` in due order
    /// (`(fire_at_ms, id)`), earliest first: [`EventStore::due_timers`] a page at a time, so
    /// firing a batch does not copy every due timer. The embedded log reads its page from an
    /// index in due order; the default filters `due_timers`.
    async fn due_timers_page(&self, now_ms: u64, after: Option<&(u64, String)>, max: usize) -> Result<Vec<Timer>> {
        let due = self.due_timers(now_ms).await?;
        let after = |t: &Timer| after.is_none_or(|(at, id)| (t.fire_at_ms, &t.id) > (*at, id));
        Ok(due.into_iter().filter(after).take(max).collect())
    }

    /// How many timers are due at `now_ms`.
    async fn due_timer_count(&self, now_ms: u64) -> Result<usize> {
        Ok(self.due_timers(now_ms).await?.len())
    }

    /// Records written and `fdatasync` calls made so far, for a store that writes its own log
    /// (the embedded one; `None` for JetStream, whose server syncs).
    fn write_stats(&self) -> Option<FileStats> {
        None
    }

    /// How the event log is copied across servers, for a store that replicates it; `None`
    /// for one that keeps a single copy (the embedded log, JetStream without a cluster).
    async fn replication(&self) -> Result<Option<Replication>> {
        Ok(None)
    }
}

/// How a replicated event log is copied ([`EventStore::replication`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replication {
    /// Copies configured.
    pub replicas: usize,
    /// The server leading the log; `None` while the cluster elects one.
    pub leader: Option<String>,
    /// The other copies.
    pub followers: Vec<Follower>,
}

/// One copy of a replicated log other than the leader's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Follower {
    /// The server holding it.
    pub server: String,
    /// Whether it has every operation the leader has.
    pub current: bool,
    /// Operations it is behind the leader.
    pub lag: u64,
    /// Whether the group considers the server gone.
    pub offline: bool,
}

/// A handle on a durable consumer with explicit acknowledgement.
#[async_trait]
pub trait Consumer: Send {
    /// The consumer's name.
    fn name(&self) -> &str;

    /// Up to `max` deliveries, waiting up to `wait` when none is ready (then returns empty).
    async fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>>;

    /// Marks a delivery as processed.
    async fn ack(&mut self, position: u64) -> Result<()>;

    /// Marks deliveries as processed, as one write where the store can (the embedded log
    /// records them with one sync); by default one [`Consumer::ack`] after the other. On an
    /// error, the deliveries not yet marked stay delivered, to be acknowledged or redelivered.
    async fn ack_all(&mut self, positions: &[u64]) -> Result<()> {
        for &position in positions {
            self.ack(position).await?;
        }
        Ok(())
    }

    /// Marks a delivery as failed: redelivered, or dead-lettered once it was delivered
    /// `max_deliver` times. Never dropped silently.
    async fn nack(&mut self, position: u64, reason: &str) -> Result<NackOutcome>;
}

/// Opens a store from a URL: `file:DIR` (also `file://DIR`) or `nats://HOST:PORT` (several
/// servers of one cluster: `nats://HOST:PORT,HOST:PORT`).
pub async fn open(url: &str) -> Result<Box<dyn EventStore>> {
    open_with(url, 1, &NatsAccess::default()).await
}

/// [`open`], with `replicas` copies of every JetStream stream and bucket it creates, and
/// `access` for a NATS server. The embedded log keeps one copy: more is refused rather than
/// silently not kept.
pub async fn open_with(url: &str, replicas: usize, access: &NatsAccess) -> Result<Box<dyn EventStore>> {
    if let Some(rest) = url.strip_prefix("file:") {
        let dir = rest.strip_prefix("//").unwrap_or(rest);
        if dir.is_empty() {
            return Err(StoreError::InvalidUrl(url.to_owned()));
        }
        if replicas != 1 {
            return Err(StoreError::InvalidArgument(format!(
                "replicas = {replicas} needs a nats:// store: the embedded log at {dir} keeps one copy"
            )));
        }
        let store = FileStore::open(dir)?;
        Ok(Box::new(store))
    } else if access::is_nats_url(url) {
        let options = NatsOptions { replicas, access: access.clone(), ..NatsOptions::default() };
        let store = NatsStore::connect(url, options).await?;
        Ok(Box::new(store))
    } else {
        Err(StoreError::InvalidUrl(url.to_owned()))
    }
}

/// Opens a store from a URL for reading only; every write fails with
/// [`StoreError::ReadOnly`]. `file:DIR` opens with [`FileStore::open_read_only`]: nothing on
/// disk is created, truncated or written, and a missing directory is an error. `nats://` (or
/// `tls://`, reached with `access`) opens with [`NatsStore::connect_read_only`]: no stream,
/// bucket or durable consumer is created, and a server holding no tollgate log is
/// [`StoreError::Empty`].
pub async fn open_read_only(url: &str, access: &NatsAccess) -> Result<Box<dyn EventStore>> {
    match url.strip_prefix("file:") {
        Some(rest) => {
            let dir = rest.strip_prefix("//").unwrap_or(rest);
            if dir.is_empty() {
                return Err(StoreError::InvalidUrl(url.to_owned()));
            }
            Ok(Box::new(FileStore::open_read_only(dir)?))
        }
        None if access::is_nats_url(url) => {
            let options = NatsOptions { access: access.clone(), ..NatsOptions::default() };
            Ok(Box::new(NatsStore::connect_read_only(url, options).await?))
        }
        None => Err(StoreError::InvalidUrl(url.to_owned())),
    }
}

/// Looks for `command_id` among events of one `(stream, key)` that the caller already read
/// (e.g. the tail a runtime replays after a snapshot) and rebuilds the original append's
/// result. Use it to catch retries of old commands that a store's own de-dup can no longer
/// see (JetStream's de-dup window expires).
pub fn find_duplicate(events: &[StoredEvent], command_id: &str) -> Option<AppendResult> {
    if command_id.is_empty() {
        return None;
    }
    let matching: Vec<&StoredEvent> = events.iter().filter(|e| e.command_id == command_id).collect();
    let first = matching.first()?;
    let last = matching.last()?;
    Some(AppendResult {
        first_sequence: first.sequence,
        last_sequence: last.sequence,
        positions: matching.iter().map(|e| e.position).collect(),
    })
}

/// Validates an append's events and returns their common command id ("" when none).
pub(crate) fn validate_append(stream: &str, events: &[NewEvent]) -> Result<String> {
    if stream.is_empty() {
        return Err(StoreError::InvalidArgument("stream name is empty".into()));
    }
    if events.is_empty() {
        return Err(StoreError::InvalidArgument("append of zero events".into()));
    }
    if events.len() > MAX_EVENTS_PER_APPEND {
        return Err(StoreError::InvalidArgument(format!(
            "append of {} events exceeds the limit of {MAX_EVENTS_PER_APPEND}",
            events.len()
        )));
    }
    let command_id = events[0].command_id.clone();
    if events.iter().any(|e| e.command_id != command_id) {
        return Err(StoreError::InvalidArgument("all events of one append must carry the same command_id".into()));
    }
    if events.iter().any(|e| e.command_digest != events[0].command_digest) {
        return Err(StoreError::InvalidArgument("all events of one append must carry the same command_digest".into()));
    }
    Ok(command_id)
}

/// Builds the stored events of one commit.
pub(crate) fn stored_events(
    stream: &str,
    key: &str,
    first_sequence: u64,
    positions: &[u64],
    events: &[NewEvent],
) -> Vec<StoredEvent> {
    events
        .iter()
        .zip(positions)
        .enumerate()
        .map(|(i, (e, &p))| StoredEvent::from_new(stream, key, first_sequence + i as u64, p, e.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(cmd: &str) -> NewEvent {
        NewEvent {
            event_type: "t".into(),
            schema_version: 1,
            content_type: "application/json".into(),
            payload: vec![],
            command_id: cmd.into(),
            command_digest: Vec::new(),
            correlation_id: String::new(),
            causation_id: String::new(),
            time_ms: 0,
        }
    }

    #[test]
    fn find_duplicate_rebuilds_the_original_result() {
        let events = stored_events("a", "k", 3, &[10, 11, 12], &[ev("x"), ev("y"), ev("y")]);
        let found = find_duplicate(&events, "y").expect("y is there");
        assert_eq!(found.first_sequence, 4);
        assert_eq!(found.last_sequence, 5);
        assert_eq!(found.positions, vec![11, 12]);
        assert!(find_duplicate(&events, "z").is_none());
        assert!(find_duplicate(&events, "").is_none());
    }

    #[test]
    fn validate_rejects_mixed_command_ids_and_empty_appends() {
        assert!(validate_append("a", &[]).is_err());
        assert!(validate_append("a", &[ev("x"), ev("y")]).is_err());
        assert!(validate_append("", &[ev("x")]).is_err());
        assert_eq!(validate_append("a", &[ev("x"), ev("x")]).unwrap(), "x");
    }

    #[tokio::test]
    async fn an_embedded_log_refuses_more_than_one_copy_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file:{}", dir.path().join("log").display());
        let err = open_with(&url, 3, &NatsAccess::default()).await.err().expect("refused").to_string();
        assert!(err.contains("replicas = 3 needs a nats:// store"), "{err}");
        assert!(!dir.path().join("log").exists());
        assert!(open_with(&url, 1, &NatsAccess::default()).await.is_ok());
    }

    #[test]
    fn expected_version_matching() {
        assert!(ExpectedVersion::Any.matches(7));
        assert!(ExpectedVersion::NoStream.matches(0));
        assert!(!ExpectedVersion::NoStream.matches(1));
        assert!(ExpectedVersion::Exact(0).matches(0));
        assert!(!ExpectedVersion::Exact(2).matches(3));
    }
}
