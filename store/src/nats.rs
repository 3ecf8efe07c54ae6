//! The NATS JetStream event store (server 2.9 or newer).
//!
//! Layout (prefix `P`, default `tollgate`; tokens encoded with [`crate::subject`]):
//! * stream `P_events`, subjects `P.ev.<type>.<key>`: ONE message per append, carrying all of
//!   its events (2.9 has no atomic batch publish, so a batch message is what makes a
//!   multi-event append atomic). One stream for all aggregate types, because `position` must
//!   be a store-wide commit order and JetStream orders only within one stream.
//!   `position = stream_sequence << 12 | index`.
//! * optimistic concurrency: `Nats-Expected-Last-Subject-Sequence` = the JetStream sequence of
//!   the last message of the key, read just before publishing (for `Any` too, because the
//!   store assigns the event sequences); a race loses with "wrong last sequence".
//! * de-dup: `Nats-Msg-Id = <type>.<key>.<command_id>` catches publish retries within the
//!   stream's `duplicate_window`; the command id of the key's last message is checked before
//!   every publish; [`crate::find_duplicate`] covers older ones from the tail a runtime reads.
//! * consumers: durable pull consumers on `P_events` with explicit ack and no server-side
//!   delivery limit; after `max_deliver` failed deliveries the commit is written to KV
//!   `P_dead` and only then terminated (`+TERM`), so nothing is dropped silently. Redrive
//!   publishes to stream `P_redrive` (`P.redrive.<consumer>`), read by a second durable
//!   consumer before new events.
//! * KV buckets `P_snapshots`, `P_projections` (+ `P_applied`), `P_timers`, `P_dead`.
//! * projection commits: one message on stream `P_proj` (`P.proj.<consumer>`, last one kept)
//!   holds the checkpoint and all writes; it is then applied to `P_projections` and the
//!   applied marker. An interrupted apply is finished by the next call for that projection.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::{self, AckKind, consumer, kv, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::codec::{Dec, Enc};
use crate::subject::encode_token;
use crate::{
    AppendResult, Consumer, ConsumerOptions, DeadLetter, Delivery, EventStore, ExpectedVersion, Follower, KvWrite,
    MAX_EVENTS_PER_APPEND, NackOutcome, NewEvent, Replication, Result, Snapshot, StoreError, StoredEvent, Timer,
    stored_events, validate_append,
};

/// Settings of a [`NatsStore`].
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// Prefix of every stream, subject and bucket name (`[a-z0-9-]+`).
    pub prefix: String,
    /// JetStream de-dup window of the events stream.
    pub duplicate_window: Duration,
    /// How often an append with `ExpectedVersion::Any` retries after losing a race.
    pub max_append_retries: u32,
    /// How long one JetStream request (publish ack, message get) may take before it fails;
    /// an edge node cut off from NATS wants this short.
    pub request_timeout: Duration,
    /// Copies JetStream keeps of every stream and bucket this store creates (1..=5; a
    /// cluster of three servers runs 3). Applies when they are created.
    pub replicas: usize,
    /// How long an append, an open or a read keeps retrying while the cluster has no leader
    /// for a stream (a server lost, an election under way) before it fails. nats-server
    /// starts an election 4 to 9 s after it last heard from the leader, and a split vote
    /// takes another round: the default of 30 s covers two rounds on a loaded machine.
    /// Retries are safe: reads change nothing, the message id de-duplicates a publish that
    /// did land, and the stream's `duplicate_window` must outlast this.
    pub failover_timeout: Duration,
    /// The credentials and TLS settings of the connection.
    pub access: crate::access::NatsAccess,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            prefix: "tollgate".into(),
            duplicate_window: Duration::from_secs(120),
            max_append_retries: 64,
            request_timeout: Duration::from_secs(5),
            replicas: 1,
            failover_timeout: Duration::from_secs(30),
            access: crate::access::NatsAccess::default(),
        }
    }
}

const INDEX_BITS: u32 = 12;

fn position(stream_sequence: u64, index: usize) -> u64 {
    (stream_sequence << INDEX_BITS) | index as u64
}

fn nats_err<E: std::fmt::Display>(op: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Nats { op, message: e.to_string() }
}

/// The NATS JetStream event store (`nats://HOST:PORT`). Cheap to clone.
#[derive(Clone)]
pub struct NatsStore {
    client: async_nats::Client,
    js: jetstream::Context,
    prefix: String,
    events: stream::Stream,
    proj_log: stream::Stream,
    snapshots: kv::Store,
    projections: kv::Store,
    applied: kv::Store,
    timers: kv::Store,
    dead: kv::Store,
    proj: std::sync::Arc<tokio::sync::Mutex<HashMap<String, ProjState>>>,
    options: NatsOptions,
    /// Opened with [`NatsStore::connect_read_only`]: every write is refused.
    read_only: bool,
}

#[derive(Clone, Copy)]
struct ProjState {
    checkpoint: u64,
    /// JetStream sequence of the consumer's last projection-log message (0: none).
    log_sequence: u64,
}

/// One append as stored in one JetStream message.
struct Batch {
    stream: String,
    key: String,
    first_sequence: u64,
    events: Vec<NewEvent>,
}

impl Batch {
    fn encode(&self) -> Bytes {
        let mut e = Enc::default();
        e.u8(2).str(&self.stream).str(&self.key).u64(self.first_sequence).events_with_digest(&self.events);
        e.buf.into()
    }

    fn decode(d: &mut Dec<'_>) -> Result<Batch> {
        let bad = |_| StoreError::Corrupt("undecodable event message in JetStream".into());
        // Version 2 adds the command's digest after the events; version 1 messages still read.
        let version = d.u8().map_err(bad)?;
        if !matches!(version, 1 | 2) {
            return Err(StoreError::Corrupt(format!("unknown event message version {version}")));
        }
        let batch = Batch {
            stream: d.str().map_err(bad)?,
            key: d.str().map_err(bad)?,
            first_sequence: d.u64().map_err(bad)?,
            events: if version == 1 { d.events() } else { d.events_with_digest() }.map_err(bad)?,
        };
        // What the rest of the store relies on: an append has 1..=MAX_EVENTS_PER_APPEND events
        // (positions keep 12 bits for the index) with sequences from 1 that fit in a u64.
        let n = batch.events.len();
        if n == 0 || n > MAX_EVENTS_PER_APPEND {
            return Err(StoreError::Corrupt(format!(
                "event message of {}/{} holds {n} events; an append holds 1 to {MAX_EVENTS_PER_APPEND}",
                batch.stream, batch.key
            )));
        }
        if batch.first_sequence == 0 || batch.first_sequence.checked_add(n as u64 - 1).is_none() {
            return Err(StoreError::Corrupt(format!(
                "event message of {}/{} starts at sequence {}, which cannot number its {n} events",
                batch.stream, batch.key, batch.first_sequence
            )));
        }
        Ok(batch)
    }

    /// Cannot underflow or overflow: an append has at least one event, and [`Batch::decode`]
    /// refuses a message whose sequences do not fit.
    fn last_sequence(&self) -> u64 {
        self.first_sequence + self.events.len() as u64 - 1
    }

    fn result(&self, msg_seq: u64) -> AppendResult {
        AppendResult {
            first_sequence: self.first_sequence,
            last_sequence: self.last_sequence(),
            positions: (0..self.events.len()).map(|i| position(msg_seq, i)).collect(),
        }
    }

    fn stored(&self, msg_seq: u64) -> Vec<StoredEvent> {
        let positions: Vec<u64> = (0..self.events.len()).map(|i| position(msg_seq, i)).collect();
        stored_events(&self.stream, &self.key, self.first_sequence, &positions, &self.events)
    }
}

/// A dead letter as stored in KV.
fn encode_dead(attempts: u32, reason: &str, msg_seq: u64, batch: &Batch) -> Bytes {
    let mut e = Enc::default();
    e.u32(attempts).str(reason).u64(msg_seq);
    let mut buf = e.buf;
    buf.extend_from_slice(&batch.encode());
    buf.into()
}

fn decode_dead(data: &[u8]) -> Result<(u32, String, u64, Batch)> {
    let bad = |_| StoreError::Corrupt("undecodable dead letter".into());
    let mut d = Dec::new(data);
    let attempts = d.u32().map_err(bad)?;
    let reason = d.str().map_err(bad)?;
    let msg_seq = d.u64().map_err(bad)?;
    let batch = Batch::decode(&mut d)?;
    Ok((attempts, reason, msg_seq, batch))
}

fn is_tombstone(headers: Option<&HeaderMap>) -> bool {
    headers.and_then(|h| h.get("KV-Operation")).is_some_and(|v| v.as_str() == "DEL" || v.as_str() == "PURGE")
}

impl NatsStore {
    /// Connects to `nats://HOST:PORT` (or several servers of one cluster,
    /// `nats://HOST:PORT,HOST:PORT,...`: the client fails over between them) and creates the
    /// streams and buckets it needs, with [`NatsOptions::replicas`] copies each. While the
    /// cluster elects the leaders that answer for them (it has just started, or lost a
    /// server), it waits for up to [`NatsOptions::failover_timeout`].
    pub async fn connect(url: &str, options: NatsOptions) -> Result<NatsStore> {
        NatsStore::connect_with(url, options, false).await
    }

    /// Connects like [`NatsStore::connect`], but only opens the streams and buckets that exist:
    /// it creates nothing, and says so ([`StoreError::Empty`]) when they are not there. Every
    /// write fails with [`StoreError::ReadOnly`]; reads wait out an election as writes do.
    pub async fn connect_read_only(url: &str, options: NatsOptions) -> Result<NatsStore> {
        NatsStore::connect_with(url, options, true).await
    }

    async fn connect_with(url: &str, options: NatsOptions, read_only: bool) -> Result<NatsStore> {
        if !options.prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            || options.prefix.is_empty()
        {
            return Err(StoreError::InvalidArgument(format!("NATS prefix {:?} must match [a-z0-9-]+", options.prefix)));
        }
        if !(1..=5).contains(&options.replicas) {
            let message = format!("replicas = {}: JetStream keeps 1 to 5 copies of a stream", options.replicas);
            return Err(StoreError::InvalidArgument(message));
        }
        if options.failover_timeout >= options.duplicate_window {
            let message = format!(
                "the failover timeout ({:?}) must be shorter than the duplicate window ({:?}), or a retried publish could land twice",
                options.failover_timeout, options.duplicate_window
            );
            return Err(StoreError::InvalidArgument(message));
        }
        let client = options.access.options().await?.connect(servers(url)?).await.map_err(nats_err("connect"))?;
        let version = client.server_info().version;
        if options.replicas > 1 && !read_only && !serializes_replicated_appends(&version) {
            return Err(StoreError::InvalidArgument(format!(
                "nats-server {version} cannot hold optimistic concurrency for replicated streams: two appends expecting the same last sequence can both commit (nats-io/nats-server#4320, fixed in {}); run a newer server or replicas = 1",
                FIXED_4320.iter().map(u32::to_string).collect::<Vec<_>>().join(".")
            )));
        }
        let mut js = jetstream::new(client.clone());
        js.set_timeout(options.request_timeout);
        let opener =
            Opener { js: js.clone(), client: client.clone(), options: options.clone(), read_only, url: url.to_owned() };
        let p = options.prefix.clone();
        let replicas = options.replicas;
        let stream = |name: String, subjects: String, per_subject: i64| stream::Config {
            name,
            subjects: vec![subjects],
            storage: stream::StorageType::File,
            max_messages_per_subject: per_subject,
            num_replicas: replicas,
            ..Default::default()
        };
        // Each stream and bucket has a leader of its own to elect: looked up at once, not one
        // election after another. (Boxed: eight of these futures side by side would not fit
        // a test thread's stack in a debug build.)
        let (events, proj_log, _redrive, snapshots, projections, applied, timers, dead) = tokio::try_join!(
            Box::pin(opener.stream(stream::Config {
                duplicate_window: options.duplicate_window,
                ..stream(format!("{p}_events"), format!("{p}.ev.>"), 0)
            })),
            Box::pin(opener.stream(stream(format!("{p}_proj"), format!("{p}.proj.>"), 1))),
            Box::pin(opener.stream(stream(format!("{p}_redrive"), format!("{p}.redrive.>"), 0))),
            Box::pin(opener.kv(format!("{p}_snapshots"))),
            Box::pin(opener.kv(format!("{p}_projections"))),
            Box::pin(opener.kv(format!("{p}_applied"))),
            Box::pin(opener.kv(format!("{p}_timers"))),
            Box::pin(opener.kv(format!("{p}_dead"))),
        )?;
        Ok(NatsStore {
            client,
            js,
            prefix: p,
            events,
            proj_log,
            snapshots,
            projections,
            applied,
            timers,
            dead,
            proj: std::sync::Arc::new(tokio::sync::Mutex::new(HashMap::new())),
            options,
            read_only,
        })
    }

    /// Fails with [`StoreError::ReadOnly`] on a read-only store.
    fn writable(&self) -> Result<()> {
        if self.read_only {
            return Err(StoreError::ReadOnly(self.read_only_name()));
        }
        Ok(())
    }

    fn read_only_name(&self) -> String {
        format!("JetStream ({}_* streams)", self.prefix)
    }

    /// One small JetStream request (a lookup, a message get), cut short after
    /// [`probe_timeout`]: while a stream has no leader nobody answers, and a retry (once
    /// there is one) is worth more than waiting out the full request timeout.
    async fn probe<T, E: std::fmt::Display>(
        &self,
        op: &'static str,
        request: impl std::future::Future<Output = std::result::Result<T, E>>,
    ) -> Result<T> {
        probe(&self.options, op, request).await
    }

    fn event_subject(&self, stream: &str, key: &str) -> String {
        format!("{}.ev.{}.{}", self.prefix, encode_token(stream), encode_token(key))
    }

    /// The last message of `subject` in `stream`, if any.
    async fn last_message(
        &self,
        stream: &stream::Stream,
        subject: &str,
    ) -> Result<Option<jetstream::message::StreamMessage>> {
        let got = self.probe("get last message", async {
            match stream.get_last_raw_message_by_subject(subject).await {
                Ok(m) => Ok(Some(m)),
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(e),
            }
        });
        got.await
    }

    async fn last_batch(&self, subject: &str) -> Result<Option<(u64, Batch)>> {
        match self.last_message(&self.events, subject).await? {
            None => Ok(None),
            Some(m) => Ok(Some((m.sequence, Batch::decode(&mut Dec::new(&m.payload))?))),
        }
    }

    /// Reads every message of `filter` in `stream_name` (from `deliver`) with an ordered
    /// consumer; `f` returns false to stop early.
    async fn scan(
        &self,
        stream_name: &str,
        filter: String,
        deliver: consumer::DeliverPolicy,
        mut f: impl FnMut(u64, &async_nats::Message) -> Result<bool> + Send,
    ) -> Result<()> {
        let stream = self.js.get_stream_no_info(stream_name).await.map_err(nats_err("get stream"))?;
        let c = self
            .probe(
                "create ordered consumer",
                stream.create_consumer(consumer::push::OrderedConfig {
                    deliver_subject: self.client.new_inbox(),
                    filter_subject: filter,
                    deliver_policy: deliver,
                    ..Default::default()
                }),
            )
            .await?;
        if c.cached_info().num_pending == 0 {
            return Ok(());
        }
        let mut messages = c.messages().await.map_err(nats_err("ordered consumer"))?;
        while let Some(m) = messages.next().await {
            let m = m.map_err(nats_err("ordered consumer message"))?;
            let info = m.info().map_err(nats_err("message info"))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            if !f(seq, &m.message)? || pending == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Latest live value of every KV key matching `filter` (without `$KV.bucket.`).
    async fn kv_scan(&self, bucket: &kv::Store, filter: &str) -> Result<Vec<(String, Bytes)>> {
        let prefix = format!("$KV.{}.", bucket.name);
        let mut out = Vec::new();
        self.scan(
            &format!("KV_{}", bucket.name),
            format!("{prefix}{filter}"),
            consumer::DeliverPolicy::LastPerSubject,
            |_, m| {
                if !is_tombstone(m.headers.as_ref()) {
                    let key = m.subject.as_str().strip_prefix(&prefix).unwrap_or_default();
                    out.push((key.to_owned(), m.payload.clone()));
                }
                Ok(true)
            },
        )
        .await?;
        Ok(out)
    }

    /// Loads a projection's state, finishing an interrupted apply first.
    async fn ensure_applied(&self, cache: &mut HashMap<String, ProjState>, consumer: &str) -> Result<ProjState> {
        if let Some(s) = cache.get(consumer) {
            return Ok(*s);
        }
        let subject = format!("{}.proj.{}", self.prefix, encode_token(consumer));
        let state = match self.last_message(&self.proj_log, &subject).await? {
            None => ProjState { checkpoint: 0, log_sequence: 0 },
            Some(m) => {
                let (position, writes) = decode_projection(&m.payload)?;
                let applied = match self.probe("kv get", self.applied.get(encode_token(consumer))).await? {
                    Some(v) => decode_u64(&v)?,
                    None => 0,
                };
                // The marker is the commit's message sequence: a rebuild may reuse a position. A
                // reader leaves an interrupted commit to the next writer and reads through it
                // ([`NatsStore::unapplied`]).
                if applied < m.sequence && !self.read_only {
                    tracing::warn!(consumer, position, "finishing an interrupted projection commit");
                    self.apply_projection(consumer, m.sequence, &writes).await?;
                }
                ProjState { checkpoint: position, log_sequence: m.sequence }
            }
        };
        cache.insert(consumer.to_owned(), state);
        Ok(state)
    }

    /// For a read-only store: the writes of the projection's last commit if a writer stopped
    /// before applying them to its buckets (a writer finishes them when it next reads).
    async fn unapplied(&self, consumer: &str) -> Result<Vec<KvWrite>> {
        if !self.read_only {
            return Ok(Vec::new());
        }
        let subject = format!("{}.proj.{}", self.prefix, encode_token(consumer));
        let Some(m) = self.last_message(&self.proj_log, &subject).await? else { return Ok(Vec::new()) };
        let applied = match self.probe("kv get", self.applied.get(encode_token(consumer))).await? {
            Some(v) => decode_u64(&v)?,
            None => 0,
        };
        if applied >= m.sequence {
            return Ok(Vec::new());
        }
        Ok(decode_projection(&m.payload)?.1)
    }

    async fn apply_projection(&self, consumer: &str, commit_sequence: u64, writes: &[KvWrite]) -> Result<()> {
        for w in writes {
            let key = projection_key(consumer, &w.bucket, &w.key);
            match &w.value {
                Some(v) => {
                    self.projections.put(key, Bytes::from(v.clone())).await.map_err(nats_err("kv put"))?;
                }
                None => {
                    self.projections.delete(key).await.map_err(nats_err("kv delete"))?;
                }
            }
        }
        self.applied
            .put(encode_token(consumer), Bytes::copy_from_slice(&commit_sequence.to_le_bytes()))
            .await
            .map_err(nats_err("kv put"))?;
        Ok(())
    }

    async fn write_dead_letter(
        &self,
        consumer: &str,
        position: u64,
        attempts: u32,
        reason: &str,
        msg_seq: u64,
        batch: &Batch,
    ) -> Result<()> {
        self.dead
            .put(format!("{}.{position}", encode_token(consumer)), encode_dead(attempts, reason, msg_seq, batch))
            .await
            .map_err(nats_err("kv put dead letter"))?;
        Ok(())
    }
}

fn projection_key(consumer: &str, bucket: &str, key: &str) -> String {
    format!("{}.{}.{}", encode_token(consumer), encode_token(bucket), encode_token(key))
}

fn decode_u64(v: &[u8]) -> Result<u64> {
    Ok(u64::from_le_bytes(v.try_into().map_err(|_| StoreError::Corrupt("applied marker is not 8 bytes".into()))?))
}

fn decode_projection(data: &[u8]) -> Result<(u64, Vec<KvWrite>)> {
    let bad = |_| StoreError::Corrupt("undecodable projection commit".into());
    let mut d = Dec::new(data);
    Ok((d.u64().map_err(bad)?, d.kv_writes().map_err(bad)?))
}

/// The first nats-server whose clustered streams check `Nats-Expected-Last-Subject-Sequence`
/// against the appends still being replicated, not only the committed ones.
pub const FIXED_4320: [u32; 3] = [2, 9, 21];

/// Whether nats-server `version` (`2.9.10`, `v2.15.1`) serializes appends to a replicated
/// stream that expect the same last subject sequence (see [`FIXED_4320`]).
pub fn serializes_replicated_appends(version: &str) -> bool {
    let numbers: Vec<u32> = version
        .trim()
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    numbers.as_slice() >= FIXED_4320.as_slice()
}

/// Publish failures a stream leader's loss explains: no responder for the subject (no
/// leader), and, when the append can be de-duplicated, an ack that never came.
fn is_failover(e: &PublishError, deduplicated: bool) -> bool {
    use jetstream::context::PublishErrorKind::{BrokenPipe, StreamNotFound, TimedOut};
    // A retry of an append whose first publish is still being replicated: wait for it.
    let in_process = server_code(e) == Some(jetstream::ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT);
    e.kind() == StreamNotFound || (deduplicated && (matches!(e.kind(), TimedOut | BrokenPipe) || in_process))
}

/// Whether the stream refused the publish because the key moved on (another writer's append
/// came first) or may be moving (an append to it still being replicated): re-read and retry.
/// Newer servers answer some of these with codes of their own.
fn lost_race(e: &PublishError) -> bool {
    use jetstream::ErrorCode;
    e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence
        || matches!(
            server_code(e),
            Some(
                ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
                    | ErrorCode::STREAM_EXPECTED_LAST_SEQ_PER_SUBJECT_NOT_READY
            )
        )
}

/// The JetStream error code of a publish the server refused.
fn server_code(e: &PublishError) -> Option<jetstream::ErrorCode> {
    std::error::Error::source(e)?.downcast_ref::<jetstream::Error>().map(jetstream::Error::error_code)
}

/// Evaluates the read `$op` (an expression ending in `.await`) until it answers, waiting out an
/// election (a server lost, a leader not yet chosen) for up to the store's failover timeout:
/// reads change nothing, so trying again is always safe. (A macro, not an async closure: the
/// futures of those are not yet proven `Send` for `async_trait`.)
macro_rules! retrying {
    ($store:expr, $op:expr) => {{
        let mut failover = Failover::new(&$store.options, &$store.client);
        loop {
            match $op {
                Err(StoreError::Nats { message, .. }) if failover.wait().await => {
                    tracing::debug!(%message, "JetStream not answering; retrying");
                }
                done => break done,
            }
        }
    }};
}

/// The retry budget of one operation while the cluster elects a leader: the failover timeout,
/// as long as the client stays connected to some server. An election keeps that connection (or
/// wins it back at once from another server); a partition does not, and a node cut off from
/// every server gives up once it has been so for a request timeout, instead of holding its
/// caller for the whole failover timeout.
struct Failover {
    deadline: tokio::time::Instant,
    pause: Duration,
    client: async_nats::Client,
    patience: Duration,
    disconnected_since: Option<tokio::time::Instant>,
}

impl Failover {
    fn new(options: &NatsOptions, client: &async_nats::Client) -> Failover {
        Failover {
            deadline: tokio::time::Instant::now() + options.failover_timeout,
            pause: Duration::from_millis(25),
            client: client.clone(),
            patience: options.request_timeout,
            disconnected_since: None,
        }
    }

    /// Waits before the next try (doubling, at most 1 s); false once the budget is spent.
    async fn wait(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if now >= self.deadline {
            return false;
        }
        if self.client.connection_state() == async_nats::connection::State::Connected {
            self.disconnected_since = None;
        } else if now.duration_since(*self.disconnected_since.get_or_insert(now)) >= self.patience {
            return false;
        }
        tokio::time::sleep(self.pause.min(self.deadline - now)).await;
        self.pause = (self.pause * 2).min(Duration::from_secs(1));
        true
    }
}

/// `nats://A,B,...` as one address per server (the scheme is written once or on each).
/// The servers of `nats://HOST:PORT,...` or `tls://HOST:PORT,...` (each in the URL's scheme).
fn servers(url: &str) -> Result<Vec<String>> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| StoreError::InvalidUrl(url.to_owned()))?;
    if !crate::access::is_nats_url(url) {
        return Err(StoreError::InvalidUrl(url.to_owned()));
    }
    let servers: Vec<String> = rest
        .split(',')
        .map(|server| {
            let server = server.trim();
            if server.is_empty() { Err(StoreError::InvalidUrl(url.to_owned())) } else { Ok(server) }
        })
        .map(|server| server.map(|s| if s.contains("://") { s.to_owned() } else { format!("{scheme}://{s}") }))
        .collect::<Result<_>>()?;
    Ok(servers)
}

/// How long one small JetStream request may take while the store waits out an election:
/// a second (less if the request timeout is shorter). A healthy server answers a lookup or a
/// message get in milliseconds, even loaded; a stream without a leader never answers it.
fn probe_timeout(options: &NatsOptions) -> Duration {
    options.request_timeout.min(Duration::from_secs(1))
}

async fn probe<T, E: std::fmt::Display>(
    options: &NatsOptions,
    op: &'static str,
    request: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(probe_timeout(options), request).await {
        Ok(answer) => answer.map_err(nats_err(op)),
        Err(_) => Err(StoreError::Nats { op, message: format!("no answer within {:?}", probe_timeout(options)) }),
    }
}

/// Whether JetStream answered that the stream does not exist.
fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// Opens the streams and buckets of a store: creating what is missing (a writer), or only
/// finding what exists (a reader). Each waits out an election on its own.
struct Opener {
    js: jetstream::Context,
    client: async_nats::Client,
    options: NatsOptions,
    read_only: bool,
    url: String,
}

impl Opener {
    async fn stream(&self, config: stream::Config) -> Result<stream::Stream> {
        let (name, wanted) = (config.name.clone(), config.num_replicas.max(1));
        let mut failover = Failover::new(&self.options, &self.client);
        let stream = loop {
            let attempt = if self.read_only {
                let found = probe(&self.options, "get stream", async {
                    match self.js.get_stream(&name).await {
                        Ok(stream) => Ok(Some(stream)),
                        Err(e) if is_not_found(&e) => Ok(None),
                        Err(e) => Err(e),
                    }
                });
                match found.await {
                    Ok(None) => return Err(self.nothing_here(&name)),
                    other => other.map(|s| s.expect("None returned above")),
                }
            } else {
                probe(&self.options, "create stream", self.js.get_or_create_stream(config.clone())).await
            };
            match attempt {
                Err(StoreError::Nats { message, .. }) if failover.wait().await => {
                    tracing::debug!(stream = %name, %message, "JetStream not answering yet; retrying");
                }
                done => break done?,
            }
        };
        // An existing stream keeps the copies it was created with. Said, not refused: a reader
        // (`tollgate events`, `stats`) opens with the default and must still read a replicated log.
        let has = stream.cached_info().config.num_replicas.max(1);
        if has != wanted && !self.read_only {
            tracing::warn!(
                "JetStream stream {name} has {has} replicas, not the {wanted} configured; `nats stream edit {name} --replicas {wanted}` changes it"
            );
        }
        Ok(stream)
    }

    async fn kv(&self, bucket: String) -> Result<kv::Store> {
        // The backing stream is made here rather than with `create_key_value`, which first
        // queries account info in a shape that nats-server 2.9 does not answer with.
        self.stream(stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: self.options.replicas,
            ..Default::default()
        })
        .await?;
        let mut failover = Failover::new(&self.options, &self.client);
        loop {
            match probe(&self.options, "open kv bucket", self.js.get_key_value(&bucket)).await {
                Err(StoreError::Nats { message, .. }) if failover.wait().await => {
                    tracing::debug!(%bucket, %message, "JetStream not answering yet; retrying");
                }
                done => return done,
            }
        }
    }

    fn nothing_here(&self, stream: &str) -> StoreError {
        StoreError::Empty(format!(
            "{} has no JetStream stream {stream}: no tollgate log with prefix `{}` was ever written there \
             (a read-only command creates nothing)",
            self.url, self.options.prefix
        ))
    }
}

impl NatsStore {
    /// A projection commit; a rebuild may keep the checkpoint where it is.
    async fn commit(&self, consumer: &str, position: u64, writes: Vec<KvWrite>, rebuild: bool) -> Result<()> {
        let mut cache = self.proj.lock().await;
        let state = retrying!(self, self.ensure_applied(&mut cache, consumer).await)?;
        if position < state.checkpoint || (position == state.checkpoint && !rebuild) {
            return Err(StoreError::StaleCheckpoint {
                consumer: consumer.to_owned(),
                position,
                checkpoint: state.checkpoint,
            });
        }
        let mut e = Enc::default();
        e.u64(position).kv_writes(&writes);
        let mut headers = HeaderMap::new();
        headers
            .insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, state.log_sequence.to_string().as_str());
        let ack = self
            .js
            .publish_with_headers(format!("{}.proj.{}", self.prefix, encode_token(consumer)), headers, e.buf.into())
            .await
            .map_err(nats_err("publish projection commit"))?
            .await;
        let ack = match ack {
            Ok(a) => a,
            Err(err) => {
                cache.remove(consumer);
                if err.kind() == jetstream::context::PublishErrorKind::WrongLastSequence {
                    let now = retrying!(self, self.ensure_applied(&mut cache, consumer).await)?;
                    return Err(StoreError::StaleCheckpoint {
                        consumer: consumer.to_owned(),
                        position,
                        checkpoint: now.checkpoint,
                    });
                }
                return Err(nats_err("publish projection commit ack")(err));
            }
        };
        // The commit is durable in the log from here on; a failed apply is finished later.
        cache.remove(consumer);
        self.apply_projection(consumer, ack.sequence, &writes).await?;
        cache.insert(consumer.to_owned(), ProjState { checkpoint: position, log_sequence: ack.sequence });
        Ok(())
    }
}

#[async_trait]
impl EventStore for NatsStore {
    async fn append(
        &self,
        stream: &str,
        key: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        self.writable()?;
        let command_id = validate_append(stream, &events)?;
        let subject = self.event_subject(stream, key);
        let duplicate = |original| StoreError::Duplicate {
            stream: stream.to_owned(),
            key: key.to_owned(),
            command_id: command_id.clone(),
            original,
        };
        let mut batch = Batch { stream: stream.to_owned(), key: key.to_owned(), first_sequence: 0, events };
        let mut attempt = 0;
        let mut failover = Failover::new(&self.options, &self.client);
        loop {
            attempt += 1;
            let last = match self.last_batch(&subject).await {
                Err(StoreError::Nats { message, .. }) if failover.wait().await => {
                    tracing::debug!(%message, "no answer from the stream's leader; retrying");
                    continue;
                }
                read => read?,
            };
            let (actual, last_msg_seq) = match &last {
                Some((seq, b)) => {
                    if !command_id.is_empty() && b.events.first().is_some_and(|e| e.command_id == command_id) {
                        return Err(duplicate(b.result(*seq)));
                    }
                    (b.last_sequence(), *seq)
                }
                None => (0, 0),
            };
            if !expected.matches(actual) {
                return Err(StoreError::Conflict { stream: stream.to_owned(), key: key.to_owned(), expected, actual });
            }
            batch.first_sequence = actual + 1;
            let mut headers = HeaderMap::new();
            headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, last_msg_seq.to_string().as_str());
            if !command_id.is_empty() {
                headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    format!("{}.{}.{}", encode_token(stream), encode_token(key), command_id).as_str(),
                );
            }
            let ack = match self.js.publish_with_headers(subject.clone(), headers, batch.encode()).await {
                Ok(ack) => ack.await,
                // Not sent: nothing can have landed.
                Err(_) if failover.wait().await => continue,
                Err(e) => return Err(nats_err("publish")(e)),
            };
            match ack {
                Ok(ack) if ack.duplicate => {
                    let m = self.events.get_raw_message(ack.sequence).await.map_err(nats_err("get message"))?;
                    let original = Batch::decode(&mut Dec::new(&m.payload))?;
                    return Err(duplicate(original.result(ack.sequence)));
                }
                Ok(ack) => return Ok(batch.result(ack.sequence)),
                Err(e) if lost_race(&e) && attempt <= self.options.max_append_retries => {
                    // Lost a race: re-read; the loop reports Conflict or Duplicate, or
                    // retries for ExpectedVersion::Any.
                    continue;
                }
                // No leader answered (an election after a server was lost): publish again.
                // Had the first publish landed, the re-read finds it (its command id), or
                // JetStream's de-duplication answers it as a duplicate; without a command id
                // only a publish that no stream received is retried.
                Err(e) if is_failover(&e, !command_id.is_empty()) && failover.wait().await => {
                    tracing::debug!(error = %e, "publish unanswered; retrying");
                    continue;
                }
                Err(e) => return Err(nats_err("publish ack")(e)),
            }
        }
    }

    async fn read(&self, stream: &str, key: &str, from_sequence: u64) -> Result<Vec<StoredEvent>> {
        retrying!(self, self.read_once(stream, key, from_sequence).await)
    }

    async fn last_sequence(&self, stream: &str, key: &str) -> Result<u64> {
        let subject = self.event_subject(stream, key);
        retrying!(self, self.last_batch(&subject).await).map(|last| last.map_or(0, |(_, b)| b.last_sequence()))
    }

    async fn read_all(&self, from_position: u64, max: usize) -> Result<Vec<StoredEvent>> {
        retrying!(self, self.read_all_once(from_position, max).await)
    }

    async fn consumer(&self, name: &str, options: ConsumerOptions) -> Result<Box<dyn Consumer>> {
        if self.read_only {
            // A durable consumer lives on the server, and fetching from one changes it: a
            // reader gets a handle (a runtime opened for `tollgate stats` holds one per
            // projector) that refuses to do either.
            return Ok(Box::new(ReadOnlyConsumer { name: name.to_owned(), store: self.read_only_name() }));
        }
        self.open_consumer(name, options).await
    }

    async fn dead_letters(&self, name: &str) -> Result<Vec<DeadLetter>> {
        retrying!(self, self.dead_letters_once(name).await)
    }

    async fn redrive(&self, name: &str, position: u64) -> Result<()> {
        self.writable()?;
        self.redrive_once(name, position).await
    }

    async fn put_snapshot(&self, stream: &str, key: &str, snapshot: Snapshot) -> Result<()> {
        self.writable()?;
        let mut e = Enc::default();
        e.u64(snapshot.sequence).bytes(&snapshot.state);
        self.snapshots
            .put(
                format!("{}.{}.{}", encode_token(stream), encode_token(key), encode_token(&snapshot.actor_digest)),
                e.buf.into(),
            )
            .await
            .map_err(nats_err("kv put snapshot"))?;
        Ok(())
    }

    async fn get_snapshot(&self, stream: &str, key: &str, actor_digest: &str) -> Result<Option<Snapshot>> {
        let key = format!("{}.{}.{}", encode_token(stream), encode_token(key), encode_token(actor_digest));
        let v = retrying!(self, self.probe("kv get snapshot", self.snapshots.get(key.clone())).await)?;
        let Some(v) = v else { return Ok(None) };
        let bad = |_| StoreError::Corrupt("undecodable snapshot".into());
        let mut d = Dec::new(&v);
        Ok(Some(Snapshot {
            actor_digest: actor_digest.to_owned(),
            sequence: d.u64().map_err(bad)?,
            state: d.bytes().map_err(bad)?,
        }))
    }

    async fn commit_projection(&self, consumer: &str, position: u64, writes: Vec<KvWrite>) -> Result<()> {
        self.writable()?;
        self.commit(consumer, position, writes, false).await
    }

    async fn rebuild_projection(&self, consumer: &str, position: u64, writes: Vec<KvWrite>) -> Result<()> {
        self.writable()?;
        self.commit(consumer, position, writes, true).await
    }

    async fn checkpoint(&self, consumer: &str) -> Result<u64> {
        let mut cache = self.proj.lock().await;
        retrying!(self, self.ensure_applied(&mut cache, consumer).await).map(|state| state.checkpoint)
    }

    async fn kv_get(&self, consumer: &str, bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
        retrying!(self, self.kv_get_once(consumer, bucket, key).await)
    }

    async fn kv_list(&self, consumer: &str, bucket: &str) -> Result<Vec<(String, Vec<u8>)>> {
        retrying!(self, self.kv_list_once(consumer, bucket).await)
    }

    async fn put_timer(&self, timer: Timer) -> Result<()> {
        self.writable()?;
        let mut e = Enc::default();
        e.str(&timer.id).u64(timer.fire_at_ms).bytes(&timer.payload);
        self.timers.put(encode_token(&timer.id), e.buf.into()).await.map_err(nats_err("kv put timer"))?;
        Ok(())
    }

    async fn cancel_timer(&self, id: &str) -> Result<bool> {
        self.writable()?;
        let key = encode_token(id);
        let exists = self.timers.get(key.clone()).await.map_err(nats_err("kv get timer"))?.is_some();
        if exists {
            self.timers.delete(key).await.map_err(nats_err("kv delete timer"))?;
        }
        Ok(exists)
    }

    async fn due_timers(&self, now_ms: u64) -> Result<Vec<Timer>> {
        let bad = |_| StoreError::Corrupt("undecodable timer".into());
        let mut due = Vec::new();
        for (_, v) in retrying!(self, self.kv_scan(&self.timers, "*").await)? {
            let mut d = Dec::new(&v);
            let t = Timer {
                id: d.str().map_err(bad)?,
                fire_at_ms: d.u64().map_err(bad)?,
                payload: d.bytes().map_err(bad)?,
            };
            if t.fire_at_ms <= now_ms {
                due.push(t);
            }
        }
        due.sort_by(|a, b| (a.fire_at_ms, &a.id).cmp(&(b.fire_at_ms, &b.id)));
        Ok(due)
    }

    async fn replication(&self) -> Result<Option<Replication>> {
        let info = retrying!(self, self.probe("stream info", self.events.get_info()).await)?;
        let Some(cluster) = info.cluster.filter(|c| !c.replicas.is_empty() || info.config.num_replicas > 1) else {
            return Ok(None);
        };
        let followers = cluster
            .replicas
            .into_iter()
            .map(|peer| Follower {
                server: peer.name,
                current: peer.current,
                lag: peer.lag.unwrap_or(0),
                offline: peer.offline,
            })
            .collect();
        Ok(Some(Replication { replicas: info.config.num_replicas.max(1), leader: cluster.leader, followers }))
    }
}

/// The reads and writes behind [`EventStore`], each tried once.
impl NatsStore {
    async fn read_once(&self, stream: &str, key: &str, from_sequence: u64) -> Result<Vec<StoredEvent>> {
        let subject = self.event_subject(stream, key);
        let Some((seq, last)) = self.last_batch(&subject).await? else {
            return Ok(Vec::new());
        };
        if last.last_sequence() < from_sequence {
            return Ok(Vec::new());
        }
        if last.first_sequence <= from_sequence.max(1) {
            let mut v = last.stored(seq);
            v.retain(|e| e.sequence >= from_sequence);
            return Ok(v);
        }
        let mut out = Vec::new();
        self.scan(&self.events.cached_info().config.name, subject, consumer::DeliverPolicy::All, |seq, m| {
            let b = Batch::decode(&mut Dec::new(&m.payload))?;
            if b.last_sequence() >= from_sequence {
                out.extend(b.stored(seq).into_iter().filter(|e| e.sequence >= from_sequence));
            }
            Ok(true)
        })
        .await?;
        Ok(out)
    }

    async fn read_all_once(&self, from_position: u64, max: usize) -> Result<Vec<StoredEvent>> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let start_sequence = (from_position >> INDEX_BITS).max(1);
        self.scan(
            &self.events.cached_info().config.name,
            format!("{}.ev.>", self.prefix),
            consumer::DeliverPolicy::ByStartSequence { start_sequence },
            |seq, m| {
                let b = Batch::decode(&mut Dec::new(&m.payload))?;
                for e in b.stored(seq) {
                    if e.position >= from_position && out.len() < max {
                        out.push(e);
                    }
                }
                Ok(out.len() < max)
            },
        )
        .await?;
        Ok(out)
    }

    async fn open_consumer(&self, name: &str, options: ConsumerOptions) -> Result<Box<dyn Consumer>> {
        if name.is_empty() {
            return Err(StoreError::InvalidArgument("consumer name is empty".into()));
        }
        if options.max_deliver == 0 {
            return Err(StoreError::InvalidArgument("max_deliver must be at least 1".into()));
        }
        let durable = encode_token(name);
        let filter = match &options.stream {
            Some(s) => format!("{}.ev.{}.>", self.prefix, encode_token(s)),
            None => format!("{}.ev.>", self.prefix),
        };
        let config = consumer::pull::Config {
            durable_name: Some(durable.clone()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: options.ack_wait,
            max_deliver: -1,
            filter_subject: filter,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        };
        let main =
            self.events.get_or_create_consumer(&durable, config.clone()).await.map_err(nats_err("create consumer"))?;
        let redrive_stream =
            self.js.get_stream_no_info(format!("{}_redrive", self.prefix)).await.map_err(nats_err("get stream"))?;
        let redrive = redrive_stream
            .get_or_create_consumer(
                &durable,
                consumer::pull::Config { filter_subject: format!("{}.redrive.{durable}", self.prefix), ..config },
            )
            .await
            .map_err(nats_err("create consumer"))?;
        Ok(Box::new(NatsConsumer {
            store: self.clone(),
            name: name.to_owned(),
            options,
            main,
            redrive,
            pending: HashMap::new(),
        }))
    }

    async fn dead_letters_once(&self, name: &str) -> Result<Vec<DeadLetter>> {
        let mut out = Vec::new();
        for (key, value) in self.kv_scan(&self.dead, &format!("{}.*", encode_token(name))).await? {
            let position = key
                .rsplit('.')
                .next()
                .and_then(|p| p.parse::<u64>().ok())
                .ok_or_else(|| StoreError::Corrupt(format!("dead letter key {key}")))?;
            let (attempts, reason, msg_seq, batch) = decode_dead(&value)?;
            out.push(DeadLetter {
                consumer: name.to_owned(),
                position,
                events: batch.stored(msg_seq),
                attempts,
                reason,
            });
        }
        out.sort_by_key(|d| d.position);
        Ok(out)
    }

    async fn redrive_once(&self, name: &str, position: u64) -> Result<()> {
        let key = format!("{}.{position}", encode_token(name));
        let entry = self
            .dead
            .entry(key.clone())
            .await
            .map_err(nats_err("kv get dead letter"))?
            .filter(|e| e.operation == kv::Operation::Put)
            .ok_or_else(|| StoreError::NoSuchDeadLetter { consumer: name.to_owned(), position })?;
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("{key}.{}", entry.revision).as_str());
        self.js
            .publish_with_headers(format!("{}.redrive.{}", self.prefix, encode_token(name)), headers, entry.value)
            .await
            .map_err(nats_err("publish redrive"))?
            .await
            .map_err(nats_err("publish redrive ack"))?;
        self.dead.delete(key).await.map_err(nats_err("kv delete dead letter"))?;
        Ok(())
    }

    async fn kv_get_once(&self, consumer: &str, bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
        {
            let mut cache = self.proj.lock().await;
            self.ensure_applied(&mut cache, consumer).await?;
        }
        if let Some(w) = self.unapplied(consumer).await?.into_iter().rev().find(|w| w.bucket == bucket && w.key == key)
        {
            return Ok(w.value);
        }
        let value = self.probe("kv get", self.projections.get(projection_key(consumer, bucket, key))).await?;
        Ok(value.map(|b| b.to_vec()))
    }

    async fn kv_list_once(&self, consumer: &str, bucket: &str) -> Result<Vec<(String, Vec<u8>)>> {
        {
            let mut cache = self.proj.lock().await;
            self.ensure_applied(&mut cache, consumer).await?;
        }
        let filter = format!("{}.{}.*", encode_token(consumer), encode_token(bucket));
        let mut out = BTreeMap::new();
        for (k, v) in self.kv_scan(&self.projections, &filter).await? {
            let token = k.rsplit('.').next().unwrap_or_default();
            let key = crate::subject::decode_token(token)
                .ok_or_else(|| StoreError::Corrupt(format!("projection key {k}")))?;
            out.insert(key, v.to_vec());
        }
        for w in self.unapplied(consumer).await?.into_iter().filter(|w| w.bucket == bucket) {
            match w.value {
                Some(v) => out.insert(w.key, v),
                None => out.remove(&w.key),
            };
        }
        Ok(out.into_iter().collect())
    }
}

/// The consumer of a read-only store: it neither creates nor moves a durable consumer.
struct ReadOnlyConsumer {
    name: String,
    store: String,
}

#[async_trait]
impl Consumer for ReadOnlyConsumer {
    fn name(&self) -> &str {
        &self.name
    }

    async fn next(&mut self, _max: usize, _wait: Duration) -> Result<Vec<Delivery>> {
        Err(StoreError::ReadOnly(self.store.clone()))
    }

    async fn ack(&mut self, _position: u64) -> Result<()> {
        Err(StoreError::ReadOnly(self.store.clone()))
    }

    async fn nack(&mut self, _position: u64, _reason: &str) -> Result<NackOutcome> {
        Err(StoreError::ReadOnly(self.store.clone()))
    }
}

struct PendingDelivery {
    message: jetstream::Message,
    attempt: u32,
    msg_seq: u64,
    batch: Batch,
    redriven: bool,
}

/// A durable consumer of a [`NatsStore`].
struct NatsConsumer {
    store: NatsStore,
    name: String,
    options: ConsumerOptions,
    main: consumer::Consumer<consumer::pull::Config>,
    redrive: consumer::Consumer<consumer::pull::Config>,
    pending: HashMap<u64, PendingDelivery>,
}

impl NatsConsumer {
    /// Turns fetched messages into deliveries (dead-lettering over-delivered ones).
    async fn accept(
        &mut self,
        messages: Vec<jetstream::Message>,
        redriven: bool,
        out: &mut Vec<Delivery>,
    ) -> Result<()> {
        let checkpoint = self.store.checkpoint(&self.name).await?;
        for m in messages {
            let info = m.info().map_err(nats_err("message info"))?;
            let delivered = u32::try_from(info.delivered).unwrap_or(u32::MAX);
            let (msg_seq, batch) = if redriven {
                let (_, _, seq, batch) = decode_dead(&m.payload)?;
                (seq, batch)
            } else {
                (info.stream_sequence, Batch::decode(&mut Dec::new(&m.payload))?)
            };
            let last = position(msg_seq, batch.events.len() - 1);
            if let Some(p) = self.pending.get_mut(&last) {
                // Redelivered (ack_wait ran out) while this handle still holds it: keep the
                // newest delivery for the ack, do not hand it out twice.
                p.message = m;
                p.attempt = delivered;
                continue;
            }
            if !redriven && last <= checkpoint {
                m.double_ack().await.map_err(nats_err("ack"))?;
                continue;
            }
            if delivered > self.options.max_deliver {
                // Delivered (timed out) more often than allowed without an ack or nack.
                let reason = format!("not acknowledged after {} deliveries", delivered - 1);
                self.store.write_dead_letter(&self.name, last, delivered - 1, &reason, msg_seq, &batch).await?;
                m.double_ack_with(AckKind::Term).await.map_err(nats_err("term"))?;
                continue;
            }
            out.push(Delivery { position: last, events: batch.stored(msg_seq), attempt: delivered });
            self.pending.insert(last, PendingDelivery { message: m, attempt: delivered, msg_seq, batch, redriven });
        }
        Ok(())
    }
}

async fn collect_batch(
    c: &consumer::Consumer<consumer::pull::Config>,
    max: usize,
    wait: Option<Duration>,
) -> Result<Vec<jetstream::Message>> {
    let mut out = Vec::new();
    let mut stream = match wait {
        None => c.fetch().max_messages(max).messages().await.map_err(nats_err("fetch"))?,
        Some(w) => c.batch().max_messages(max).expires(w).messages().await.map_err(nats_err("fetch"))?,
    };
    while let Some(m) = stream.next().await {
        out.push(m.map_err(nats_err("fetch message"))?);
    }
    Ok(out)
}

#[async_trait]
impl Consumer for NatsConsumer {
    fn name(&self) -> &str {
        &self.name
    }

    async fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let max = max.max(1);
        let mut out = Vec::new();
        let redriven = collect_batch(&self.redrive, max, None).await?;
        self.accept(redriven, true, &mut out).await?;
        if out.len() < max {
            let wait = (out.is_empty() && !wait.is_zero()).then_some(wait);
            let fresh = collect_batch(&self.main, max - out.len(), wait).await?;
            self.accept(fresh, false, &mut out).await?;
        }
        Ok(out)
    }

    async fn ack(&mut self, position: u64) -> Result<()> {
        let p = self
            .pending
            .remove(&position)
            .ok_or_else(|| StoreError::NotDelivered { consumer: self.name.clone(), position })?;
        p.message.double_ack().await.map_err(nats_err("ack"))?;
        Ok(())
    }

    async fn nack(&mut self, position: u64, reason: &str) -> Result<NackOutcome> {
        let p = self
            .pending
            .remove(&position)
            .ok_or_else(|| StoreError::NotDelivered { consumer: self.name.clone(), position })?;
        if p.attempt >= self.options.max_deliver {
            self.store.write_dead_letter(&self.name, position, p.attempt, reason, p.msg_seq, &p.batch).await?;
            let kind = if p.redriven { AckKind::Ack } else { AckKind::Term };
            p.message.double_ack_with(kind).await.map_err(nats_err("term"))?;
            Ok(NackOutcome::DeadLettered)
        } else {
            p.message.double_ack_with(AckKind::Nak(None)).await.map_err(nats_err("nak"))?;
            Ok(NackOutcome::Redeliver)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_servers_with_the_fix_for_4320_run_replicated_streams() {
        for old in ["2.9.10", "v2.9.20", "2.8.4", "garbage", ""] {
            assert!(!serializes_replicated_appends(old), "{old}");
        }
        for fixed in ["2.9.21", "v2.10.0", "2.15.1", "3.0.0-beta"] {
            assert!(serializes_replicated_appends(fixed), "{fixed}");
        }
    }

    #[test]
    fn a_url_names_one_server_or_several() {
        assert_eq!(servers("nats://127.0.0.1:4222").unwrap(), ["nats://127.0.0.1:4222"]);
        let several = servers("nats://127.0.0.1:4222, 127.0.0.1:4223,nats://127.0.0.1:4224").unwrap();
        assert_eq!(several, ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223", "nats://127.0.0.1:4224"]);
        for bad in ["nats://", "nats://a:1,,b:2", "http://a:1"] {
            assert!(matches!(servers(bad), Err(StoreError::InvalidUrl(_))), "{bad}");
        }
    }
}
