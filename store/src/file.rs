//! The embedded event store: an append-only, checksummed, segmented log with group commit.
//!
//! Layout of `DIR`: `LOCK` (held with an exclusive file lock while open for writing, a shared
//! one while open read-only), `COMMITTED` (the store marker: its id and how far the log was
//! acknowledged, see `marker`) and segment files `00000000000000000001.seg`, ..., each
//! starting with a header (magic, format version, segment number, store id). Records are
//! checksummed frames whose body starts with a tag byte. Everything (events, snapshots,
//! projection commits, timers, consumer acks/nacks, dead letters, redrives) is a record of the
//! same log, so it is all crash-safe the same way.
//!
//! A synced store (the default) writes on one writer thread that takes every queued record,
//! writes them, and calls `fdatasync` once for the whole batch (group commit) before
//! acknowledging any of them. An unsynced store ([`FileOptions::sync`] off) has no writer
//! thread: the caller that queued a record writes what is queued itself, without `fdatasync`.
//! On open the log is replayed into memory. Only an incomplete final record past the marker's
//! mark (a torn last write, never acknowledged) is dropped, and that is said on stderr.
//! Anything else (a failed checksum, data after a bad record, a missing segment, a segment of
//! another store, a log that ends before what it acknowledged, a missing marker) is
//! [`StoreError::Corrupt`] naming the file and offset, and nothing is written.
//!
//! Events are kept in memory after replay (index by `(stream, key)` and by position), so reads
//! never touch the disk. There is no compaction yet: snapshots and acks add to the log.
//!
//! The parts:
//! * `segment`: the on-disk format (segment headers, record frames) and reading a log back;
//! * `record`: the kinds of record, their tags and encoding;
//! * `index`: the log held in memory;
//! * `writer`: group commit, segment rolls, answering the callers;
//! * `marker`: the store marker, how far the log was acknowledged;
//! * `recovery`: the directory lock, replay on open, making the tail appendable;
//! * `repair`: [`FileStore::verify`] and [`FileStore::repair_truncate`] for operators;
//! * `consumer`: durable consumers;
//! * this module: [`FileStore`] itself and its [`EventStore`] methods.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use async_trait::async_trait;
use tokio::sync::{oneshot, watch};

mod consumer;
mod index;
mod marker;
mod record;
mod recovery;
mod repair;
mod segment;
mod writer;

use crate::{
    AppendResult, BatchAppend, Consumer, ConsumerOptions, DeadLetter, EventStore, ExpectedVersion, KvWrite, NewEvent,
    Result, Snapshot, StoreError, StoredEvent, Timer, validate_append,
};
use consumer::FileConsumer;
use index::LogIndex;
use marker::{Mark, Marker, marker_path, write_marker};
use record::{Commit, Record};
use recovery::{existing_dir, lock_dir, prepare_tail, recover, report_torn};
pub use repair::{LogReport, RepairReport};
use segment::new_store_id;
pub use segment::{Damage, FORMAT_VERSION, SegmentReport};
pub use writer::FileStats;
use writer::{Counters, InlineWriter, LogWriter, PendingWrite};

/// Tuning of a [`FileStore`].
#[derive(Clone, Debug)]
pub struct FileOptions {
    /// A new segment file is started once the current one would grow past this many bytes.
    pub segment_bytes: u64,
    /// Most records written per batch (one `write`, and one `fdatasync` when `sync`).
    pub max_batch: usize,
    /// `fdatasync` each batch before acknowledging it. Only an ephemeral store (a runtime
    /// without `--store`, whose directory is deleted on exit) turns this off; with no sync to
    /// wait for there is nothing to batch behind, so such a store has no writer thread: each
    /// caller writes what is queued (its own record among it) itself.
    pub sync: bool,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions { segment_bytes: 64 << 20, max_batch: 4096, sync: true }
    }
}

/// The embedded event store (`file:DIR`). Cheap to clone; all clones share one log.
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    index: Arc<Mutex<LogIndex>>,
    /// Where writes are queued; `None` once closing, and for a read-only store.
    tx: Mutex<Option<mpsc::Sender<PendingWrite>>>,
    /// The writer thread of a synced store.
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The writer of an unsynced store, run by the callers.
    inline: Option<Mutex<InlineWriter>>,
    durable: watch::Receiver<u64>,
    counters: Arc<Counters>,
    /// Opened with [`FileStore::open_read_only`]: there is no writer.
    read_only: bool,
    _lock: Option<File>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer thread once it has flushed what it holds.
        drop(lock(&self.tx).take());
        if let Some(handle) = lock(&self.writer).take() {
            let _ = handle.join();
        }
    }
}

/// Locks `m`, whether or not a panic of another holder poisoned it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FileStore {
    /// Opens (creating if needed) the store in `dir` with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<FileStore> {
        FileStore::open_with(dir, FileOptions::default())
    }

    /// Opens (creating if needed) the store in `dir` for writing: replays the log, drops an
    /// incomplete final record (said on stderr), finishes a roll to a new segment that a crash
    /// interrupted, and starts the writer thread (synced stores only). Any other damage is [`StoreError::Corrupt`] naming
    /// the file and offset, and then nothing was written.
    pub fn open_with(dir: impl AsRef<Path>, options: FileOptions) -> Result<FileStore> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        let lock_existed = dir.join("LOCK").exists();
        let lock_file = lock_dir(&dir, true)?;
        let (index, scan) = recover(&dir).inspect_err(|_| {
            // A refused open leaves the directory as it found it.
            if !lock_existed {
                let _ = std::fs::remove_file(dir.join("LOCK"));
            }
        })?;
        let store_id = scan.store_id.or(scan.marker.map(|m| m.store_id)).unwrap_or_else(new_store_id);
        if let Some(torn) = &scan.torn {
            report_torn(torn, true);
        }
        let mark = match scan.marker {
            Some(m) => m.mark,
            None => {
                // A new store: the marker exists before its first segment, so a directory
                // that ever held a segment of it is never taken for a new store.
                write_marker(&dir, &store_id, &Mark::default(), options.sync)
                    .map_err(|e| StoreError::io(format!("creating the store marker in {}", dir.display()), e))?;
                Mark::default()
            }
        };
        let marker = Marker::open(&dir, mark)
            .map_err(|e| StoreError::io(format!("opening {}", marker_path(&dir).display()), e))?;
        let (segment, file, size) = prepare_tail(&dir, &scan, &store_id, options.sync)?;

        let durable_pos = index.next_position - 1;
        let (durable_tx, durable_rx) = watch::channel(durable_pos);
        let index = Arc::new(Mutex::new(index));
        let (tx, queue) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let sync = options.sync;
        let writer = LogWriter {
            counters: counters.clone(),
            dir: dir.clone(),
            options,
            store_id,
            segment,
            file,
            size,
            index: index.clone(),
            durable: durable_tx,
            marker,
        };
        let (handle, inline) = if sync {
            let handle = writer.spawn(queue).map_err(|e| StoreError::io("spawning the writer thread", e))?;
            (Some(handle), None)
        } else {
            (None, Some(Mutex::new(InlineWriter { writer, queue })))
        };
        Ok(FileStore {
            inner: Arc::new(Inner {
                dir,
                index,
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(handle),
                inline,
                durable: durable_rx,
                counters,
                read_only: false,
                _lock: lock_file,
            }),
        })
    }

    /// Opens the existing store in `dir` without ever writing to it: no file is created,
    /// truncated or locked exclusively (a shared lock keeps writers out while it is open). An
    /// incomplete final record is left on disk and skipped (said on stderr); damage is
    /// [`StoreError::Corrupt`]. Every write fails with [`StoreError::ReadOnly`].
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<FileStore> {
        let dir = dir.as_ref().to_path_buf();
        existing_dir(&dir)?;
        let lock_file = lock_dir(&dir, false)?;
        let (index, scan) = recover(&dir)?;
        if let Some(torn) = &scan.torn {
            report_torn(torn, false);
        }
        let (_, durable) = watch::channel(index.next_position - 1);
        Ok(FileStore {
            inner: Arc::new(Inner {
                dir,
                index: Arc::new(Mutex::new(index)),
                tx: Mutex::new(None),
                writer: Mutex::new(None),
                inline: None,
                durable,
                counters: Arc::default(),
                read_only: true,
                _lock: lock_file,
            }),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Writer counters since this store was opened.
    pub fn stats(&self) -> FileStats {
        self.inner.counters.stats()
    }

    /// Highest position that is durable (fsynced); 0 when empty.
    pub fn durable_position(&self) -> u64 {
        *self.inner.durable.borrow()
    }

    /// Whether the store takes writes now (not read-only, not poisoned); `index` is the
    /// locked index.
    fn send_check(&self, index: &LogIndex) -> Result<()> {
        if self.inner.read_only {
            return Err(StoreError::ReadOnly(self.inner.dir.display().to_string()));
        }
        if let Some(p) = &index.poisoned {
            return Err(StoreError::Poisoned(p.clone()));
        }
        Ok(())
    }

    /// Queues a write; `index` is the locked index (a poisoned store takes no more writes).
    fn send(&self, index: &LogIndex, write: PendingWrite) -> Result<()> {
        self.send_check(index)?;
        let tx = lock(&self.inner.tx);
        let tx = tx.as_ref().ok_or_else(|| StoreError::Poisoned("store is closing".into()))?;
        tx.send(write).map_err(|_| StoreError::Poisoned("writer thread has stopped".into()))
    }

    /// Writes a non-event record and applies it to the index once it is on disk.
    async fn write(&self, record: Record) -> Result<()> {
        self.write_all(vec![record]).await
    }

    /// Writes non-event records as one write (one sync), applying them to the index once they
    /// are all on disk: none of them is applied if the write fails.
    async fn write_all(&self, records: Vec<Record>) -> Result<()> {
        let bytes = records.iter().map(Record::encode).collect::<Vec<_>>().concat();
        let (done, wait) = oneshot::channel();
        {
            let index = self.index();
            let count = records.len() as u64;
            self.send(&index, PendingWrite { bytes, records: count, apply: records, last_position: None, done })?;
        }
        self.write_queued();
        wait.await.map_err(|_| StoreError::Poisoned("writer thread has stopped".into()))?
    }

    /// Without a writer thread (an unsynced store), writes what callers queued (this one's
    /// write among them, unless another caller already wrote it). Called with the index
    /// unlocked: the writer locks it.
    fn write_queued(&self) {
        if let Some(inline) = &self.inner.inline {
            lock(inline).write_queued();
        }
    }

    /// Checks an append against the locked index and gives the index its commit at once (so
    /// an append checked after it on the same key is checked against it); returns its result,
    /// its framed record and its last position, for the caller to queue.
    fn check_append(
        index: &mut LogIndex,
        stream: &str,
        key: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<(AppendResult, Vec<u8>, u64)> {
        let command_id = validate_append(stream, &events)?;
        let k = (stream.to_owned(), key.to_owned());
        let (actual, dup) = match index.keys.get(&k) {
            Some(ki) => (ki.last_sequence, ki.command_ids.get(&command_id).map(|&i| index.commits[i].result())),
            None => (0, None),
        };
        if let Some(original) = dup {
            return Err(StoreError::Duplicate { stream: stream.to_owned(), key: key.to_owned(), command_id, original });
        }
        if !expected.matches(actual) {
            return Err(StoreError::Conflict { stream: stream.to_owned(), key: key.to_owned(), expected, actual });
        }
        let commit = Commit {
            stream: stream.to_owned(),
            key: key.to_owned(),
            first_sequence: actual + 1,
            first_position: index.next_position,
            events,
        };
        let bytes = Record::encode_events(&commit);
        let result = commit.result();
        let last_position = commit.last_position();
        index.insert_commit(commit, &command_id);
        Ok((result, bytes, last_position))
    }

    fn index(&self) -> MutexGuard<'_, LogIndex> {
        lock(&self.inner.index)
    }
}

#[async_trait]
impl EventStore for FileStore {
    async fn append(
        &self,
        stream: &str,
        key: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        let (done, wait) = oneshot::channel();
        let result = {
            let mut index = self.index();
            // Checked before queueing: a store that takes no writes changes no index.
            self.send_check(&index)?;
            let (result, bytes, last) = Self::check_append(&mut index, stream, key, expected, events)?;
            let write = PendingWrite { bytes, records: 1, apply: Vec::new(), last_position: Some(last), done };
            if let Err(e) = self.send(&index, write) {
                // The index took the commit, which will never be written: nothing more may be.
                index.poisoned.get_or_insert(e.to_string());
                return Err(e);
            }
            result
        };
        self.write_queued();
        wait.await.map_err(|_| StoreError::Poisoned("writer thread has stopped".into()))??;
        Ok(result)
    }

    /// Checks the appends in order and queues every one that passes as one write: one
    /// `write` and one `fdatasync` for the batch.
    async fn append_batch(&self, appends: Vec<BatchAppend>) -> Vec<Result<AppendResult>> {
        let (done, wait) = oneshot::channel();
        let mut results = Vec::with_capacity(appends.len());
        let mut queued = false;
        {
            let mut index = self.index();
            if let Err(e) = self.send_check(&index) {
                let message = e.to_string();
                return appends.iter().map(|_| Err(StoreError::Poisoned(message.clone()))).collect();
            }
            let mut failed: HashSet<(String, String)> = HashSet::new();
            let (mut bytes, mut records, mut last_position) = (Vec::new(), 0, 0);
            for a in appends {
                let k = (a.stream, a.key);
                let result = if failed.contains(&k) {
                    let actual = index.keys.get(&k).map_or(0, |ki| ki.last_sequence);
                    Err(StoreError::Conflict { stream: k.0.clone(), key: k.1.clone(), expected: a.expected, actual })
                } else {
                    Self::check_append(&mut index, &k.0, &k.1, a.expected, a.events).map(|(result, b, last)| {
                        bytes.extend_from_slice(&b);
                        records += 1;
                        last_position = last;
                        result
                    })
                };
                if result.is_err() {
                    failed.insert(k);
                }
                results.push(result);
            }
            if records > 0 {
                let write =
                    PendingWrite { bytes, records, apply: Vec::new(), last_position: Some(last_position), done };
                match self.send(&index, write) {
                    Ok(()) => queued = true,
                    Err(e) => {
                        let message = e.to_string();
                        // The index took commits that will never be written: nothing more may be.
                        index.poisoned.get_or_insert(message.clone());
                        for r in results.iter_mut().filter(|r| r.is_ok()) {
                            *r = Err(StoreError::Poisoned(message.clone()));
                        }
                    }
                }
            }
        }
        if !queued {
            return results;
        }
        self.write_queued();
        let written = match wait.await {
            Ok(written) => written,
            Err(_) => Err(StoreError::Poisoned("writer thread has stopped".into())),
        };
        if let Err(e) = written {
            let message = e.to_string();
            for r in results.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(StoreError::Poisoned(message.clone()));
            }
        }
        results
    }

    async fn read(&self, stream: &str, key: &str, from_sequence: u64) -> Result<Vec<StoredEvent>> {
        let durable = self.durable_position();
        let index = self.index();
        let Some(ki) = index.keys.get(&(stream.to_owned(), key.to_owned())) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for &i in &ki.commits {
            let c = &index.commits[i];
            if c.last_position() > durable {
                break;
            }
            if c.first_sequence + c.events.len() as u64 > from_sequence {
                out.extend(c.stored().into_iter().filter(|e| e.sequence >= from_sequence));
            }
        }
        Ok(out)
    }

    async fn last_sequence(&self, stream: &str, key: &str) -> Result<u64> {
        let durable = self.durable_position();
        let index = self.index();
        Ok(index
            .keys
            .get(&(stream.to_owned(), key.to_owned()))
            .map_or(0, |ki| index.durable_last_sequence(ki, durable)))
    }

    fn write_stats(&self) -> Option<FileStats> {
        Some(self.stats())
    }

    async fn head_position(&self) -> Result<u64> {
        Ok(self.durable_position())
    }

    async fn read_all(&self, from_position: u64, max: usize) -> Result<Vec<StoredEvent>> {
        let durable = self.durable_position();
        let index = self.index();
        let start = index.commits.partition_point(|c| c.last_position() < from_position.max(1));
        let mut out = Vec::new();
        for c in &index.commits[start..] {
            if c.last_position() > durable || out.len() >= max {
                break;
            }
            for e in c.stored() {
                if e.position >= from_position && out.len() < max {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }

    async fn consumer(&self, name: &str, options: ConsumerOptions) -> Result<Box<dyn Consumer>> {
        if name.is_empty() {
            return Err(StoreError::InvalidArgument("consumer name is empty".into()));
        }
        if options.max_deliver == 0 {
            return Err(StoreError::InvalidArgument("max_deliver must be at least 1".into()));
        }
        Ok(Box::new(FileConsumer::open(self, name, options)))
    }

    async fn dead_letters(&self, name: &str) -> Result<Vec<DeadLetter>> {
        let index = self.index();
        Ok(index
            .dead
            .range((name.to_owned(), 0)..=(name.to_owned(), u64::MAX))
            .filter_map(|((consumer, position), d)| {
                let c = index.commit_at(*position)?;
                Some(DeadLetter {
                    consumer: consumer.clone(),
                    position: *position,
                    events: c.stored(),
                    attempts: d.attempts,
                    reason: d.reason.clone(),
                })
            })
            .collect())
    }

    async fn redrive(&self, name: &str, position: u64) -> Result<()> {
        if !self.index().dead.contains_key(&(name.to_owned(), position)) {
            return Err(StoreError::NoSuchDeadLetter { consumer: name.to_owned(), position });
        }
        self.write(Record::Redrive { consumer: name.to_owned(), position }).await
    }

    async fn put_snapshot(&self, stream: &str, key: &str, snapshot: Snapshot) -> Result<()> {
        self.write(Record::Snapshot { stream: stream.to_owned(), key: key.to_owned(), snapshot }).await
    }

    async fn get_snapshot(&self, stream: &str, key: &str, actor_digest: &str) -> Result<Option<Snapshot>> {
        Ok(self.index().snapshots.get(&(stream.to_owned(), key.to_owned(), actor_digest.to_owned())).cloned())
    }

    async fn commit_projection(&self, consumer: &str, position: u64, writes: Vec<KvWrite>) -> Result<()> {
        let checkpoint = self.index().checkpoints.get(consumer).copied().unwrap_or(0);
        if position <= checkpoint {
            return Err(StoreError::StaleCheckpoint { consumer: consumer.to_owned(), position, checkpoint });
        }
        self.write(Record::Projection { consumer: consumer.to_owned(), position, writes }).await
    }

    async fn rebuild_projection(&self, consumer: &str, position: u64, writes: Vec<KvWrite>) -> Result<()> {
        let checkpoint = self.index().checkpoints.get(consumer).copied().unwrap_or(0);
        if position < checkpoint {
            return Err(StoreError::StaleCheckpoint { consumer: consumer.to_owned(), position, checkpoint });
        }
        self.write(Record::Projection { consumer: consumer.to_owned(), position, writes }).await
    }

    async fn checkpoint(&self, consumer: &str) -> Result<u64> {
        Ok(self.index().checkpoints.get(consumer).copied().unwrap_or(0))
    }

    async fn kv_get(&self, consumer: &str, bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.index().kv.get(&(consumer.to_owned(), bucket.to_owned(), key.to_owned())).cloned())
    }

    async fn kv_list(&self, consumer: &str, bucket: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let index = self.index();
        let lo = (consumer.to_owned(), bucket.to_owned(), String::new());
        Ok(index
            .kv
            .range(lo..)
            .take_while(|((c, b, _), _)| c == consumer && b == bucket)
            .map(|((_, _, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn put_timer(&self, timer: Timer) -> Result<()> {
        self.write(Record::TimerPut(timer)).await
    }

    async fn cancel_timer(&self, id: &str) -> Result<bool> {
        if !self.index().timers.contains(id) {
            return Ok(false);
        }
        self.write(Record::TimerCancel(id.to_owned())).await?;
        Ok(true)
    }

    async fn write_timers(&self, writes: Vec<(String, Option<Timer>)>) -> Result<()> {
        let records: Vec<Record> = {
            let index = self.index();
            writes
                .into_iter()
                .filter_map(|(id, timer)| match timer {
                    Some(timer) => Some(Record::TimerPut(timer)),
                    None => index.timers.contains(&id).then_some(Record::TimerCancel(id)),
                })
                .collect()
        };
        if records.is_empty() {
            return Ok(());
        }
        self.write_all(records).await
    }

    async fn due_timers(&self, now_ms: u64) -> Result<Vec<Timer>> {
        Ok(self.index().timers.due(now_ms, None, usize::MAX))
    }

    async fn due_timers_page(&self, now_ms: u64, after: Option<&(u64, String)>, max: usize) -> Result<Vec<Timer>> {
        Ok(self.index().timers.due(now_ms, after, max))
    }

    async fn due_timer_count(&self, now_ms: u64) -> Result<usize> {
        Ok(self.index().timers.count_due(now_ms))
    }
}
