//! `tollgate replay`: rebuilds aggregate states and projections from the whole log, timed,
//! and repairs projections whose stored contents differ from the rebuild. Each key's events
//! are folded in bounded batches ([`tollgate_host::aggregate::FOLD_BATCH_EVENTS`]), so a long
//! tail replays within the same CPU cap as the node.

use crate::error::RuntimeError;
use crate::journal::{Journal, from_stored};
use crate::namespace::{META, is_reserved};
use crate::{Loader, Manifest};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tollgate_host::aggregate::Event;
use tollgate_host::{Actor, ActorKind, AggregateHost, HostState, ProjectorActor};
use tollgate_store::{KvWrite, StoreError, StoredEvent};

/// Events read per page, and handed to a projector per call.
const PAGE: usize = 4096;

/// One aggregate rebuilt from its events (no snapshots).
#[derive(Debug, Clone)]
pub struct AggregateReplay {
    /// The actor.
    pub actor: String,
    /// Its stream.
    pub stream: String,
    /// Keys rebuilt.
    pub keys: usize,
    /// Events folded.
    pub events: u64,
    /// Time spent folding.
    pub elapsed: Duration,
}

/// One projection rebuilt and compared with what the store holds.
#[derive(Debug, Clone)]
pub struct ProjectionReplay {
    /// The projector.
    pub projector: String,
    /// Events it was given.
    pub events: u64,
    /// Time spent projecting.
    pub elapsed: Duration,
    /// Entries of the rebuilt projection.
    pub entries: usize,
    /// Entries that differ from the stored projection (new, changed or stale).
    pub differing: usize,
    /// Whether the differences were written.
    pub repaired: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    /// Events in the log.
    pub events: u64,
    /// Time spent reading them.
    pub read: Duration,
    /// Aggregates.
    pub aggregates: Vec<AggregateReplay>,
    /// Projections.
    pub projections: Vec<ProjectionReplay>,
}

/// Rebuilds every aggregate and projector of `manifest` from the log in `journal`; when
/// `repair`, writes each projection that differs at the log's head (its checkpoint does not
/// move backwards). Process managers are not replayed: their reactions sent commands.
pub fn replay(
    manifest: &Manifest,
    loader: &mut Loader,
    journal: &Journal,
    repair: bool,
) -> Result<ReplayReport, RuntimeError> {
    let started = Instant::now();
    let mut log: Vec<StoredEvent> = Vec::new();
    loop {
        let from = log.last().map_or(1, |e| e.position + 1);
        let page = journal.run("read log", journal.store().read_all(from, PAGE))?;
        if page.is_empty() {
            break;
        }
        log.extend(page);
    }
    let mut report = ReplayReport { events: log.len() as u64, read: started.elapsed(), ..ReplayReport::default() };
    let head = log.last().map_or(0, |e| e.position);
    let mut hosts: BTreeMap<String, AggregateHost> = BTreeMap::new();
    for name in manifest.actors.keys() {
        if manifest.kind(name) != ActorKind::Aggregate {
            continue;
        }
        let (actor, host_state) = load(loader, manifest, name, ActorKind::Aggregate)?;
        let mut host = AggregateHost::new(actor, host_state)?.without_history();
        let stream = host.info().stream.clone();
        let mut by_key: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
        for e in log.iter().filter(|e| e.stream == stream) {
            by_key.entry(&e.key).or_default().push(from_stored(e.clone()));
        }
        let events = by_key.values().map(|v| v.len() as u64).sum();
        let keys = by_key.len();
        let t = Instant::now();
        for (key, events) in by_key {
            host.load(key, None, events)?;
        }
        report.aggregates.push(AggregateReplay {
            actor: name.clone(),
            stream: stream.clone(),
            keys,
            events,
            elapsed: t.elapsed(),
        });
        hosts.insert(stream, host);
    }
    for name in manifest.actors.keys() {
        if manifest.kind(name) != ActorKind::Projector {
            continue;
        }
        let (actor, host_state) = load(loader, manifest, name, ActorKind::Projector)?;
        let mut projector = ProjectorActor::new(actor, host_state.clone())?;
        let subscriptions = projector.subscriptions()?;
        let mut wanted = Vec::new();
        for e in log.iter().filter(|e| subscriptions.contains(&e.stream)) {
            let event = from_stored(e.clone());
            match hosts.get_mut(&e.stream) {
                Some(host) => wanted.extend(host.upcast(vec![event])?),
                None => wanted.push(event),
            }
        }
        let t = Instant::now();
        for batch in wanted.chunks(PAGE) {
            // Live, each commit is one delivery with its own import budgets; so here.
            let commits = 1 + batch
                .windows(2)
                .filter(|w| (&w[0].stream, &w[0].key, &w[0].command_id) != (&w[1].stream, &w[1].key, &w[1].command_id))
                .count();
            projector.project_deliveries(batch, commits as u64)?.map_err(|r| RuntimeError::ReplayRefused {
                projector: name.clone(),
                code: r.code,
                message: r.message,
            })?;
        }
        let elapsed = t.elapsed();
        let mut rebuilt = host_state.kv_snapshot();
        // A projector's writes to the runtime's own buckets were refused when it ran live;
        // they are not part of its projection here either.
        rebuilt.retain(|bucket, _| {
            let reserved = is_reserved(bucket);
            if reserved {
                tracing::warn!(projector = %name, bucket, "replay ignores writes to a bucket reserved for the runtime");
            }
            !reserved
        });
        let mut buckets: BTreeSet<String> = rebuilt.keys().cloned().collect();
        if let Some(list) = journal.run("read projection", journal.store().kv_get(name, META, "buckets"))? {
            let listed = serde_json::from_slice::<Vec<String>>(&list).map_err(|e| {
                journal.error("read projection", StoreError::Corrupt(format!("bucket list of `{name}`: {e}")))
            })?;
            buckets.extend(listed.into_iter().filter(|b| !is_reserved(b)));
        }
        let mut writes = Vec::new();
        for bucket in &buckets {
            let stored: BTreeMap<String, Vec<u8>> =
                journal.run("read projection", journal.store().kv_list(name, bucket))?.into_iter().collect();
            let fresh = rebuilt.get(bucket).cloned().unwrap_or_default();
            for (key, value) in &fresh {
                if stored.get(key) != Some(value) {
                    writes.push(KvWrite { bucket: bucket.clone(), key: key.clone(), value: Some(value.clone()) });
                }
            }
            for key in stored.keys().filter(|k| !fresh.contains_key(*k)) {
                writes.push(KvWrite { bucket: bucket.clone(), key: key.clone(), value: None });
            }
        }
        let differing = writes.len();
        let repaired = repair && differing > 0 && head > 0;
        if repaired {
            let list: Vec<&String> = buckets.iter().collect();
            writes.push(KvWrite {
                bucket: META.into(),
                key: "buckets".into(),
                value: Some(serde_json::to_vec(&list).expect("a list of strings always encodes as JSON")),
            });
            journal.run("write rebuilt projection", journal.store().rebuild_projection(name, head, writes))?;
        }
        report.projections.push(ProjectionReplay {
            projector: name.clone(),
            events: wanted.len() as u64,
            elapsed,
            entries: rebuilt.values().map(|b| b.len()).sum(),
            differing,
            repaired,
        });
    }
    Ok(report)
}

/// A manifest's actor with a fresh host state holding its configuration.
fn load(
    loader: &mut Loader,
    manifest: &Manifest,
    name: &str,
    kind: ActorKind,
) -> Result<(Actor, HostState), RuntimeError> {
    let spec = &manifest.actors[name];
    let actor = loader.load_actor(name, &spec.file, kind, manifest.registry.plain_http)?;
    let host_state = HostState::new();
    host_state.replace_config(spec.config.clone());
    Ok((actor, host_state))
}
