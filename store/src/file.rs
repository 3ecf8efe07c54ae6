//! The embedded event store: an append-only, checksummed, segmented log with group commit.
//!
//! Layout of `DIR`: `LOCK` (held with an exclusive file lock while open for writing, a shared
//! one while open read-only) and segment files `00000000000000000001.seg`, ..., each starting
//! with a header (magic, format version, segment number, store id; see `file/segment.rs`). Records
//! are checksummed frames whose body starts with a tag byte. Everything (events, snapshots,
//! projection commits, timers, consumer acks/nacks, dead letters, redrives) is a record of the
//! same log, so it is all crash-safe the same way.
//!
//! Writes go to one writer thread that takes every queued record, writes them, and calls
//! `fdatasync` once for the whole batch (group commit) before acknowledging any of them.
//! On open the log is replayed into memory. Only an incomplete final record (a torn last
//! write, never acknowledged) is dropped, and that is said on stderr. Anything else (a failed
//! checksum, data after a bad record, a missing segment, a segment of another store) is
//! [`StoreError::Corrupt`] naming the file and offset, and nothing is written.
//!
//! Events are kept in memory after replay (index by `(stream, key)` and by position), so reads
//! never touch the disk. There is no compaction yet: snapshots and acks add to the log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{oneshot, watch};

mod segment;

use crate::codec::{Dec, DecodeError, Enc};
use crate::{
    AppendResult, Consumer, ConsumerOptions, DeadLetter, Delivery, EventStore, ExpectedVersion, KvWrite, NackOutcome,
    NewEvent, Result, Snapshot, StoreError, StoredEvent, Timer, stored_events, validate_append,
};
pub use segment::{Damage, FORMAT_VERSION, SegmentReport};
use segment::{
    Header, LogScan, RECORD_HEADER, Roll, SEGMENT_HEADER, StoreId, create_segment, frame, hex, list_segments,
    new_store_id, scan_log, segment_path,
};

/// Tuning of a [`FileStore`].
#[derive(Clone, Debug)]
pub struct FileOptions {
    /// A new segment file is started once the current one would grow past this many bytes.
    pub segment_bytes: u64,
    /// Most records written per fsync.
    pub max_batch: usize,
    /// `fdatasync` each batch before acknowledging it. Only an ephemeral store (a runtime
    /// without `--store`, whose directory is deleted on exit) turns this off; with nothing to
    /// batch, each caller then writes its record itself instead of handing it to a writer thread.
    pub sync: bool,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions { segment_bytes: 64 << 20, max_batch: 4096, sync: true }
    }
}

/// Counters of a [`FileStore`]'s writer, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStats {
    /// Records written (appends, acks, snapshots, ...).
    pub records: u64,
    /// `fdatasync` calls; fewer than `records` when group commit batched writes.
    pub syncs: u64,
    /// Bytes written.
    pub bytes: u64,
}

#[derive(Default)]
struct Counters {
    records: AtomicU64,
    syncs: AtomicU64,
    bytes: AtomicU64,
}

/// The embedded event store (`file:DIR`). Cheap to clone; all clones share one log.
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Without fsync there is nothing to batch, so no writer thread: each caller writes what is
    /// queued itself, sparing two thread hand-offs per append.
    inline: Option<Mutex<(Writer, mpsc::Receiver<Job>)>>,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Job {
    bytes: Vec<u8>,
    /// Applied to the in-memory state after the fsync (events are indexed at append time).
    apply: Option<Record>,
    /// Last position of an events record, to advance the durable watermark.
    last_position: Option<u64>,
    done: oneshot::Sender<Result<()>>,
}

/// One log record.
#[derive(Debug, Clone)]
enum Record {
    Events {
        stream: String,
        key: String,
        first_sequence: u64,
        first_position: u64,
        events: Vec<NewEvent>,
    },
    Snapshot {
        stream: String,
        key: String,
        snapshot: Snapshot,
    },
    Projection {
        consumer: String,
        position: u64,
        writes: Vec<KvWrite>,
    },
    TimerPut(Timer),
    TimerCancel(String),
    Ack {
        consumer: String,
        position: u64,
    },
    Nack {
        consumer: String,
        position: u64,
        attempts: u32,
    },
    DeadLetter {
        consumer: String,
        position: u64,
        attempts: u32,
        reason: String,
    },
    Redrive {
        consumer: String,
        position: u64,
    },
    /// Last record of a full segment: the log continues in `next_segment`.
    SegmentEnd {
        next_segment: u64,
    },
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.buf.extend_from_slice(&[0; RECORD_HEADER]);
        match self {
            Record::Events { stream, key, first_sequence, first_position, events } => {
                e.u8(1).str(stream).str(key).u64(*first_sequence).u64(*first_position).events(events);
            }
            Record::Snapshot { stream, key, snapshot } => {
                e.u8(2).str(stream).str(key).str(&snapshot.actor_digest).u64(snapshot.sequence).bytes(&snapshot.state);
            }
            Record::Projection { consumer, position, writes } => {
                e.u8(3).str(consumer).u64(*position).kv_writes(writes);
            }
            Record::TimerPut(t) => {
                e.u8(4).str(&t.id).u64(t.fire_at_ms).bytes(&t.payload);
            }
            Record::TimerCancel(id) => {
                e.u8(5).str(id);
            }
            Record::Ack { consumer, position } => {
                e.u8(6).str(consumer).u64(*position);
            }
            Record::Nack { consumer, position, attempts } => {
                e.u8(7).str(consumer).u64(*position).u32(*attempts);
            }
            Record::DeadLetter { consumer, position, attempts, reason } => {
                e.u8(8).str(consumer).u64(*position).u32(*attempts).str(reason);
            }
            Record::Redrive { consumer, position } => {
                e.u8(9).str(consumer).u64(*position);
            }
            Record::SegmentEnd { next_segment } => {
                e.u8(10).u64(*next_segment);
            }
        }
        let mut buf = e.buf;
        frame(&mut buf);
        buf
    }

    fn decode(body: &[u8]) -> std::result::Result<Record, DecodeError> {
        let mut d = Dec::new(body);
        let r = match d.u8()? {
            1 => Record::Events {
                stream: d.str()?,
                key: d.str()?,
                first_sequence: d.u64()?,
                first_position: d.u64()?,
                events: d.events()?,
            },
            2 => Record::Snapshot {
                stream: d.str()?,
                key: d.str()?,
                snapshot: Snapshot { actor_digest: d.str()?, sequence: d.u64()?, state: d.bytes()? },
            },
            3 => Record::Projection { consumer: d.str()?, position: d.u64()?, writes: d.kv_writes()? },
            4 => Record::TimerPut(Timer { id: d.str()?, fire_at_ms: d.u64()?, payload: d.bytes()? }),
            5 => Record::TimerCancel(d.str()?),
            6 => Record::Ack { consumer: d.str()?, position: d.u64()? },
            7 => Record::Nack { consumer: d.str()?, position: d.u64()?, attempts: d.u32()? },
            8 => Record::DeadLetter { consumer: d.str()?, position: d.u64()?, attempts: d.u32()?, reason: d.str()? },
            9 => Record::Redrive { consumer: d.str()?, position: d.u64()? },
            10 => Record::SegmentEnd { next_segment: d.u64()? },
            _ => return Err(DecodeError),
        };
        if !d.is_empty() {
            return Err(DecodeError);
        }
        Ok(r)
    }
}

/// The events of one append.
struct Commit {
    stream: String,
    key: String,
    first_sequence: u64,
    first_position: u64,
    events: Vec<NewEvent>,
}

impl Commit {
    fn last_position(&self) -> u64 {
        self.first_position + self.events.len() as u64 - 1
    }
    fn positions(&self) -> Vec<u64> {
        (self.first_position..=self.last_position()).collect()
    }
    fn result(&self) -> AppendResult {
        AppendResult {
            first_sequence: self.first_sequence,
            last_sequence: self.first_sequence + self.events.len() as u64 - 1,
            positions: self.positions(),
        }
    }
    fn stored(&self) -> Vec<StoredEvent> {
        stored_events(&self.stream, &self.key, self.first_sequence, &self.positions(), &self.events)
    }
}

#[derive(Default)]
struct KeyIndex {
    last_sequence: u64,
    /// Indexes into `State::commits`.
    commits: Vec<usize>,
    command_ids: HashMap<String, usize>,
}

#[derive(Default)]
struct ConsumerState {
    /// Every commit whose last position is <= this is acked or dead-lettered.
    done_upto: u64,
    /// Last positions of commits acked out of order.
    done_above: BTreeSet<u64>,
    /// Failed deliveries so far, by commit last position.
    attempts: HashMap<u64, u32>,
    /// Dead letters moved back for redelivery.
    redrive: BTreeSet<u64>,
}

struct DeadRecord {
    attempts: u32,
    reason: String,
}

#[derive(Default)]
struct State {
    /// All commits (pending ones included), in position order.
    commits: Vec<Arc<Commit>>,
    next_position: u64,
    keys: HashMap<(String, String), KeyIndex>,
    snapshots: HashMap<(String, String, String), Snapshot>,
    checkpoints: HashMap<String, u64>,
    kv: BTreeMap<(String, String, String), Vec<u8>>,
    timers: HashMap<String, Timer>,
    consumers: HashMap<String, ConsumerState>,
    dead: BTreeMap<(String, u64), DeadRecord>,
    poisoned: Option<String>,
}

impl State {
    /// Index of the commit holding `position`.
    fn commit_index(&self, position: u64) -> Option<usize> {
        let i = self.commits.partition_point(|c| c.last_position() < position);
        (i < self.commits.len() && self.commits[i].first_position <= position).then_some(i)
    }

    fn commit_at(&self, position: u64) -> Option<&Arc<Commit>> {
        self.commit_index(position).map(|i| &self.commits[i])
    }

    fn insert_commit(&mut self, c: Commit, command_id: &str) {
        let idx = self.commits.len();
        let ki = self.keys.entry((c.stream.clone(), c.key.clone())).or_default();
        ki.last_sequence = c.first_sequence + c.events.len() as u64 - 1;
        ki.commits.push(idx);
        if !command_id.is_empty() {
            ki.command_ids.insert(command_id.to_owned(), idx);
        }
        self.next_position = c.last_position() + 1;
        self.commits.push(Arc::new(c));
    }

    /// Applies a non-event record (events are inserted with [`State::insert_commit`]).
    fn apply(&mut self, r: Record) {
        match r {
            Record::Events { .. } | Record::SegmentEnd { .. } => {}
            Record::Snapshot { stream, key, snapshot } => {
                self.snapshots.insert((stream, key, snapshot.actor_digest.clone()), snapshot);
            }
            Record::Projection { consumer, position, writes } => {
                for w in writes {
                    let k = (consumer.clone(), w.bucket, w.key);
                    match w.value {
                        Some(v) => self.kv.insert(k, v),
                        None => self.kv.remove(&k),
                    };
                }
                self.checkpoints.insert(consumer, position);
            }
            Record::TimerPut(t) => {
                self.timers.insert(t.id.clone(), t);
            }
            Record::TimerCancel(id) => {
                self.timers.remove(&id);
            }
            Record::Ack { consumer, position } => self.mark_done(&consumer, position),
            Record::Nack { consumer, position, attempts } => {
                self.consumers.entry(consumer).or_default().attempts.insert(position, attempts);
            }
            Record::DeadLetter { consumer, position, attempts, reason } => {
                self.mark_done(&consumer, position);
                self.dead.insert((consumer, position), DeadRecord { attempts, reason });
            }
            Record::Redrive { consumer, position } => {
                self.dead.remove(&(consumer.clone(), position));
                let cs = self.consumers.entry(consumer).or_default();
                cs.attempts.remove(&position);
                cs.redrive.insert(position);
            }
        }
    }

    fn mark_done(&mut self, consumer: &str, position: u64) {
        let cs = self.consumers.entry(consumer.to_owned()).or_default();
        cs.attempts.remove(&position);
        cs.redrive.remove(&position);
        if position > cs.done_upto {
            cs.done_above.insert(position);
        }
        // Advance over the contiguous prefix of finished commits (positions are dense).
        loop {
            let next_first = cs.done_upto + 1;
            let i = self.commits.partition_point(|c| c.last_position() < next_first);
            let Some(c) = self.commits.get(i) else { break };
            if c.first_position != next_first || !cs.done_above.remove(&c.last_position()) {
                break;
            }
            cs.done_upto = c.last_position();
        }
    }

    fn durable_last_sequence(&self, ki: &KeyIndex, durable: u64) -> u64 {
        ki.commits
            .iter()
            .rev()
            .map(|&i| &self.commits[i])
            .find(|c| c.last_position() <= durable)
            .map(|c| c.first_sequence + c.events.len() as u64 - 1)
            .unwrap_or(0)
    }
}

struct Writer {
    dir: PathBuf,
    options: FileOptions,
    store_id: StoreId,
    segment: u64,
    file: File,
    size: u64,
    state: Arc<Mutex<State>>,
    durable: watch::Sender<u64>,
    counters: Arc<Counters>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            self.commit(first, &rx);
        }
    }

    /// Writes `first` and whatever else is queued (up to a batch), then completes them.
    fn commit(&mut self, first: Job, rx: &mpsc::Receiver<Job>) {
        let mut jobs = vec![first];
        while jobs.len() < self.options.max_batch {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let poisoned = lock(&self.state).poisoned.clone();
        let outcome = match poisoned {
            Some(p) => Err(p),
            None => self.write_batch(&jobs).map_err(|e| e.to_string()),
        };
        match outcome {
            Ok(()) => {
                let mut st = lock(&self.state);
                let mut durable = *self.durable.borrow();
                let mut done = Vec::with_capacity(jobs.len());
                for j in jobs {
                    if let Some(r) = j.apply {
                        st.apply(r);
                    }
                    if let Some(p) = j.last_position {
                        durable = durable.max(p);
                    }
                    done.push(j.done);
                }
                drop(st);
                self.durable.send_replace(durable);
                for d in done {
                    let _ = d.send(Ok(()));
                }
            }
            Err(msg) => {
                lock(&self.state).poisoned.get_or_insert(msg.clone());
                for j in jobs {
                    let _ = j.done.send(Err(StoreError::Poisoned(msg.clone())));
                }
            }
        }
    }

    fn write_batch(&mut self, jobs: &[Job]) -> std::io::Result<()> {
        let mut buf: Vec<u8> = Vec::new();
        for j in jobs {
            let len = j.bytes.len() as u64;
            let used = self.size + buf.len() as u64;
            if used > SEGMENT_HEADER as u64 && used + len > self.options.segment_bytes {
                self.flush(&buf)?;
                buf.clear();
                self.roll()?;
            }
            buf.extend_from_slice(&j.bytes);
        }
        self.flush(&buf)?;
        self.counters.records.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Continues the log in a new segment. The new segment (whose header records where this
    /// one's records end) exists on disk before this one gets its end-of-segment marker, so a
    /// sealed segment without a successor is always damage, never a crash.
    fn roll(&mut self) -> std::io::Result<()> {
        let next = self.segment + 1;
        let file = create_segment(&self.dir, next, self.size, &self.store_id, self.options.sync)?;
        self.flush(&Record::SegmentEnd { next_segment: next }.encode())?;
        self.segment = next;
        self.file = file;
        self.size = SEGMENT_HEADER as u64;
        Ok(())
    }

    fn flush(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file.write_all(buf)?;
        if self.options.sync {
            self.file.sync_data()?;
            self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        }
        self.size += buf.len() as u64;
        self.counters.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl FileStore {
    /// Opens (creating if needed) the store in `dir` with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<FileStore> {
        FileStore::open_with(dir, FileOptions::default())
    }

    /// Opens (creating if needed) the store in `dir` for writing: replays the log, drops an
    /// incomplete final record (said on stderr), finishes a roll to a new segment that a crash
    /// interrupted, and starts the writer. Any other damage is [`StoreError::Corrupt`] naming
    /// the file and offset, and then nothing was written.
    pub fn open_with(dir: impl AsRef<Path>, options: FileOptions) -> Result<FileStore> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        let lock_existed = dir.join("LOCK").exists();
        let lock_file = lock_dir(&dir, true)?;
        let (state, scan) = recover(&dir).inspect_err(|_| {
            // A refused open leaves the directory as it found it.
            if !lock_existed {
                let _ = std::fs::remove_file(dir.join("LOCK"));
            }
        })?;
        let store_id = scan.store_id.unwrap_or_else(new_store_id);
        if let Some(torn) = &scan.torn {
            report_torn(torn, true);
        }
        let (segment, file, size) = prepare_tail(&dir, &scan, &store_id, options.sync)?;

        let durable_pos = state.next_position - 1;
        let (durable_tx, durable_rx) = watch::channel(durable_pos);
        let state = Arc::new(Mutex::new(state));
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let sync = options.sync;
        let writer = Writer {
            counters: counters.clone(),
            dir: dir.clone(),
            options,
            store_id,
            segment,
            file,
            size,
            state: state.clone(),
            durable: durable_tx,
        };
        let (handle, inline) = if sync {
            let handle = std::thread::Builder::new()
                .name("tollgate-store-writer".into())
                .spawn(move || writer.run(rx))
                .map_err(|e| StoreError::io("spawning the writer thread", e))?;
            (Some(handle), None)
        } else {
            (None, Some(Mutex::new((writer, rx))))
        };
        Ok(FileStore {
            inner: Arc::new(Inner {
                dir,
                state,
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
        let (state, scan) = recover(&dir)?;
        if let Some(torn) = &scan.torn {
            report_torn(torn, false);
        }
        let (_, durable) = watch::channel(state.next_position - 1);
        Ok(FileStore {
            inner: Arc::new(Inner {
                dir,
                state: Arc::new(Mutex::new(state)),
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

    /// Reads the whole log of the store in `dir` without writing anything and reports what it
    /// holds and every problem found (file and offset). Errors only when the directory cannot
    /// be read or a writer holds it.
    pub fn verify(dir: impl AsRef<Path>) -> Result<LogReport> {
        let dir = dir.as_ref().to_path_buf();
        existing_dir(&dir)?;
        let _lock = lock_dir(&dir, false)?;
        let mut state = State { next_position: 1, ..State::default() };
        let mut events = 0u64;
        let scan = scan_log(&dir, &mut |_, _, record, clean| {
            if let Record::Events { events: e, .. } = &record {
                events += e.len() as u64;
            }
            if clean { replay(&mut state, record) } else { Ok(()) }
        })?;
        Ok(LogReport {
            dir,
            store_id: scan.store_id.as_ref().map(hex),
            records: scan.segments.iter().map(|s| s.report.records).sum(),
            events,
            last_position: state.next_position - 1,
            segments: scan.segments.into_iter().map(|s| s.report).collect(),
            torn_tail: scan.torn,
            unfinished_roll: scan.roll.map(|r| r.segment),
            problems: scan.problems,
        })
    }

    /// Cuts the log of the store in `dir` at `offset` of segment `segment`, removing every
    /// record from there on (later segments included), for an operator who decided to give up
    /// what follows damage. `offset` must be a record boundary: the start of a complete
    /// record, the end of the last complete one, just after the segment header, or 0 to remove
    /// segment 1 (the whole log). The cut is appended to `DIR/REPAIRS.log`.
    pub fn repair_truncate(dir: impl AsRef<Path>, segment: u64, offset: u64) -> Result<RepairReport> {
        let dir = dir.as_ref().to_path_buf();
        existing_dir(&dir)?;
        let _lock = lock_dir(&dir, true)?;
        let numbers = list_segments(&dir)?;
        if !numbers.contains(&segment) {
            let have = match (numbers.first(), numbers.last()) {
                (Some(a), Some(b)) => format!("segments {a} to {b}"),
                _ => "no segments".into(),
            };
            return Err(StoreError::InvalidArgument(format!(
                "no segment {segment} in {} (it has {have})",
                dir.display()
            )));
        }
        let mut boundaries = BTreeSet::new();
        let mut removed_records = 0u64;
        let mut removed_positions: Vec<(u64, u64)> = Vec::new();
        let scan = scan_log(&dir, &mut |n, off, record, _| {
            if n == segment {
                boundaries.insert(off);
            }
            if n > segment || (n == segment && off >= offset) {
                removed_records += 1;
                if let Record::Events { first_position, events, .. } = &record {
                    let last = first_position + events.len() as u64 - 1;
                    match removed_positions.last_mut() {
                        Some((_, end)) if *end + 1 == *first_position => *end = last,
                        _ => removed_positions.push((*first_position, last)),
                    }
                }
            }
            Ok(())
        })?;
        let scanned = scan.segments.iter().find(|s| s.report.number == segment).expect("listed");
        let (seg, header_ok) = (&scanned.report, matches!(scanned.header, Header::Ok { .. }));
        if header_ok {
            boundaries.insert(SEGMENT_HEADER as u64);
            if !seg.sealed {
                boundaries.insert(seg.valid_end);
            }
        }
        let path = segment_path(&dir, segment);
        if offset == 0 && segment > 1 {
            return Err(StoreError::InvalidArgument(format!(
                "{} offset 0: removing segment {segment} whole would leave segment {} sealed without a \
                 successor; cut segment {} at its end-of-segment marker instead (`tollgate store verify` \
                 lists it as its last record), or segment {segment} at offset {SEGMENT_HEADER} to keep its header",
                path.display(),
                segment - 1,
                segment - 1
            )));
        }
        if offset != 0 && !boundaries.contains(&offset) {
            let before = boundaries.range(..offset).next_back().map_or("none".to_string(), u64::to_string);
            let after = boundaries.range(offset..).next().map_or("none".to_string(), u64::to_string);
            let why = if seg.sealed && offset == seg.bytes {
                " (it is after the segment's end-of-segment marker, which must go too)".to_string()
            } else {
                String::new()
            };
            return Err(StoreError::InvalidArgument(format!(
                "{} offset {offset} is not a record boundary{why}: the nearest boundaries are {before} (before) and {after} (after)",
                path.display()
            )));
        }
        let later: Vec<&SegmentReport> =
            scan.segments.iter().map(|s| &s.report).filter(|s| s.number > segment).collect();
        let unreadable_here = seg.bytes - seg.valid_end.max(offset);
        let report_removed_bytes = seg.bytes - offset + later.iter().map(|s| s.bytes).sum::<u64>();
        let unreadable_bytes = unreadable_here + later.iter().map(|s| s.bytes - s.valid_end).sum::<u64>();
        let io = |what: &str, p: &Path, e| StoreError::io(format!("{what} {}", p.display()), e);
        if offset == 0 {
            std::fs::remove_file(&path).map_err(|e| io("removing", &path, e))?;
        } else {
            let f = OpenOptions::new().write(true).open(&path).map_err(|e| io("opening", &path, e))?;
            f.set_len(offset).and_then(|_| f.sync_all()).map_err(|e| io("truncating", &path, e))?;
        }
        let mut removed_segments = Vec::new();
        for s in &later {
            std::fs::remove_file(&s.path).map_err(|e| io("removing", &s.path, e))?;
            removed_segments.push(s.path.clone());
        }
        File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| io("syncing", &dir, e))?;
        let report = RepairReport {
            path,
            offset,
            removed_records,
            removed_positions,
            removed_bytes: report_removed_bytes,
            unreadable_bytes,
            removed_segments,
            remaining: Vec::new(),
        };
        let log_path = dir.join("REPAIRS.log");
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .and_then(|mut f| writeln!(f, "unix time {secs}: {report}").and_then(|_| f.sync_all()))
            .map_err(|e| io("writing", &log_path, e))?;
        tracing::warn!(%report, "log cut by an operator");
        let mut state = State { next_position: 1, ..State::default() };
        let after = scan_log(&dir, &mut |_, _, record, clean| if clean { replay(&mut state, record) } else { Ok(()) })?;
        Ok(RepairReport { remaining: after.problems, ..report })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Writer counters since this store was opened.
    pub fn stats(&self) -> FileStats {
        let c = &self.inner.counters;
        FileStats {
            records: c.records.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
        }
    }

    /// Highest position that is durable (fsynced); 0 when empty.
    pub fn durable_position(&self) -> u64 {
        *self.inner.durable.borrow()
    }

    fn send(&self, st: &State, job: Job) -> Result<()> {
        if self.inner.read_only {
            return Err(StoreError::ReadOnly(self.inner.dir.display().to_string()));
        }
        if let Some(p) = &st.poisoned {
            return Err(StoreError::Poisoned(p.clone()));
        }
        let tx = lock(&self.inner.tx);
        let tx = tx.as_ref().ok_or_else(|| StoreError::Poisoned("store is closing".into()))?;
        tx.send(job).map_err(|_| StoreError::Poisoned("writer thread has stopped".into()))
    }

    async fn write(&self, record: Record) -> Result<()> {
        let bytes = record.encode();
        let (done, wait) = oneshot::channel();
        {
            let st = lock(&self.inner.state);
            self.send(&st, Job { bytes, apply: Some(record), last_position: None, done })?;
        }
        self.write_queued();
        wait.await.map_err(|_| StoreError::Poisoned("writer thread has stopped".into()))?
    }

    /// Without a writer thread, writes what callers queued (this one's job among them, unless
    /// another caller already wrote it). Called with the state unlocked: the writer locks it.
    fn write_queued(&self) {
        if let Some(inline) = &self.inner.inline {
            let mut inline = lock(inline);
            let (writer, rx) = &mut *inline;
            while let Ok(first) = rx.try_recv() {
                writer.commit(first, rx);
            }
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }
}

/// What [`FileStore::verify`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogReport {
    /// The store directory.
    pub dir: PathBuf,
    /// The store id in the segment headers (hex); `None` for a store with no segment.
    pub store_id: Option<String>,
    /// Every segment file, in order.
    pub segments: Vec<SegmentReport>,
    /// Complete records (end-of-segment markers included).
    pub records: u64,
    /// Events in those records.
    pub events: u64,
    /// Last event position readable before the first problem (0: none).
    pub last_position: u64,
    /// An incomplete final record: not corruption (a torn last write, never acknowledged);
    /// the next writable open drops it.
    pub torn_tail: Option<Damage>,
    /// A segment whose end-of-segment marker a crash kept from being written while its
    /// successor was being created; the next writable open writes it.
    pub unfinished_roll: Option<u64>,
    /// Corruption: while any is listed, the store refuses to open.
    pub problems: Vec<Damage>,
}

/// What [`FileStore::repair_truncate`] removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairReport {
    /// The segment that was cut.
    pub path: PathBuf,
    /// Where it was cut (0: the file was removed).
    pub offset: u64,
    /// Complete records removed (in the cut segment and in later ones).
    pub removed_records: u64,
    /// Positions of the removed events, as inclusive ranges.
    pub removed_positions: Vec<(u64, u64)>,
    /// All bytes removed.
    pub removed_bytes: u64,
    /// Of those, bytes that were not complete records (damaged or incomplete), whose
    /// contents cannot be told.
    pub unreadable_bytes: u64,
    /// Later segment files that were deleted.
    pub removed_segments: Vec<PathBuf>,
    /// Problems the log still has after the cut (damage before it); empty when it opens.
    pub remaining: Vec<Damage>,
}

impl std::fmt::Display for RepairReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cut {} at offset {}: removed {} records", self.path.display(), self.offset, self.removed_records)?;
        if self.removed_positions.is_empty() {
            write!(f, " (no events)")?;
        } else {
            let ranges: Vec<String> = self
                .removed_positions
                .iter()
                .map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
                .collect();
            write!(f, " (events at positions {})", ranges.join(", "))?;
        }
        write!(f, ", {} bytes ({} of them unreadable)", self.removed_bytes, self.unreadable_bytes)?;
        if !self.removed_segments.is_empty() {
            let names: Vec<String> = self.removed_segments.iter().map(|p| p.display().to_string()).collect();
            write!(f, ", deleted {}", names.join(", "))?;
        }
        Ok(())
    }
}

fn existing_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(StoreError::io(
            format!("opening the store {}", dir.display()),
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        ))
    }
}

/// Locks `DIR/LOCK`: exclusively for a writer (creating the file), shared for a reader (which
/// creates nothing: a directory without one is read unlocked).
fn lock_dir(dir: &Path, write: bool) -> Result<Option<File>> {
    let lock_path = dir.join("LOCK");
    let file = if write {
        OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)
    } else {
        File::open(&lock_path)
    };
    let file = match file {
        Ok(f) => f,
        Err(e) if !write && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(format!("opening {}", lock_path.display()), e)),
    };
    // A lock can outlive its holder for a moment when a concurrently spawned child
    // process still has the descriptor between fork and exec: retry briefly.
    let mut tries = 0;
    loop {
        let attempt = if write { file.try_lock() } else { file.try_lock_shared() };
        match attempt {
            Ok(()) => return Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) if tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked(dir.display().to_string())),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::io(format!("locking {}", lock_path.display()), e));
            }
        }
    }
}

/// Replays the log of `dir` into memory; any damage but an incomplete final record is
/// [`StoreError::Corrupt`].
fn recover(dir: &Path) -> Result<(State, LogScan)> {
    let mut state = State { next_position: 1, ..State::default() };
    let scan = scan_log(dir, &mut |_, _, record, clean| if clean { replay(&mut state, record) } else { Ok(()) })?;
    if let Some(first) = scan.problems.first() {
        let more = scan.problems.len() - 1;
        return Err(StoreError::Corrupt(if more == 0 {
            first.to_string()
        } else {
            format!("{first} (and {more} more: `tollgate store verify --store file:{}` lists them)", dir.display())
        }));
    }
    Ok((state, scan))
}

/// Says on stderr, whatever the log level, that an incomplete final record is not replayed:
/// an operator must see it even when tracing is off.
fn report_torn(torn: &Damage, writable: bool) {
    let action = if writable {
        "it is dropped (a write cut short is never acknowledged)"
    } else {
        "it is skipped and left on disk (read-only open)"
    };
    eprintln!("tollgate store: {torn}: {action}");
    tracing::warn!(segment = %torn.path.display(), offset = torn.offset, "{}: {action}", torn.problem);
}

/// Makes the end of the log appendable for a writer: finishes an interrupted roll, drops an
/// incomplete final record, creates the first segment of a new store. Returns the segment to
/// append to, its file and its length.
fn prepare_tail(dir: &Path, scan: &LogScan, store_id: &StoreId, sync: bool) -> Result<(u64, File, u64)> {
    let io = |what: &str, p: &Path, e| StoreError::io(format!("{what} {}", p.display()), e);
    if let Some(Roll { segment, prev_end, rewrite_next_header }) = scan.roll {
        // The successor must be whole before the marker says it exists.
        if rewrite_next_header {
            let next = segment_path(dir, segment + 1);
            create_segment(dir, segment + 1, prev_end, store_id, sync).map_err(|e| io("creating", &next, e))?;
        }
        let path = segment_path(dir, segment);
        let mut f = OpenOptions::new().append(true).open(&path).map_err(|e| io("opening", &path, e))?;
        f.set_len(prev_end)
            .and_then(|_| f.write_all(&Record::SegmentEnd { next_segment: segment + 1 }.encode()))
            .and_then(|_| if sync { f.sync_all() } else { Ok(()) })
            .map_err(|e| io("sealing", &path, e))?;
        eprintln!(
            "tollgate store: {}: wrote the end-of-segment marker that a crash interrupted (segment {} follows)",
            path.display(),
            segment + 1
        );
    }
    let Some(last) = scan.segments.last() else {
        let f = create_segment(dir, 1, 0, store_id, sync).map_err(|e| io("creating a segment in", dir, e))?;
        return Ok((1, f, SEGMENT_HEADER as u64));
    };
    let n = last.report.number;
    let path = segment_path(dir, n);
    if last.header == Header::Torn && scan.roll.is_none() {
        // A new store whose first header a crash cut short.
        let f = create_segment(dir, n, 0, store_id, sync).map_err(|e| io("creating", &path, e))?;
        return Ok((n, f, SEGMENT_HEADER as u64));
    }
    let f = OpenOptions::new().append(true).open(&path).map_err(|e| io("opening", &path, e))?;
    if let Some(torn) = &scan.torn {
        f.set_len(torn.offset).and_then(|_| f.sync_all()).map_err(|e| io("truncating", &path, e))?;
    }
    let size = f.metadata().map_err(|e| io("stat", &path, e))?.len();
    Ok((n, f, size))
}

/// Replays one record during recovery.
fn replay(state: &mut State, r: Record) -> std::result::Result<(), String> {
    if let Record::Events { stream, key, first_sequence, first_position, events } = r {
        if first_position != state.next_position {
            return Err(format!("events at position {first_position}, expected {}", state.next_position));
        }
        let expected_seq = state.keys.get(&(stream.clone(), key.clone())).map_or(0, |k| k.last_sequence) + 1;
        if first_sequence != expected_seq || events.is_empty() {
            return Err(format!("events of {stream}/{key} at sequence {first_sequence}, expected {expected_seq}"));
        }
        let command_id = events[0].command_id.clone();
        state.insert_commit(Commit { stream, key, first_sequence, first_position, events }, &command_id);
    } else {
        state.apply(r);
    }
    Ok(())
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
        let command_id = validate_append(stream, &events)?;
        let (done, wait) = oneshot::channel();
        let result = {
            let mut st = self.state();
            let k = (stream.to_owned(), key.to_owned());
            let (actual, dup) = match st.keys.get(&k) {
                Some(ki) => (ki.last_sequence, ki.command_ids.get(&command_id).map(|&i| st.commits[i].result())),
                None => (0, None),
            };
            if let Some(original) = dup {
                return Err(StoreError::Duplicate {
                    stream: stream.to_owned(),
                    key: key.to_owned(),
                    command_id,
                    original,
                });
            }
            if !expected.matches(actual) {
                return Err(StoreError::Conflict { stream: stream.to_owned(), key: key.to_owned(), expected, actual });
            }
            let first_position = st.next_position;
            let record = Record::Events {
                stream: stream.to_owned(),
                key: key.to_owned(),
                first_sequence: actual + 1,
                first_position,
                events,
            };
            let bytes = record.encode();
            let Record::Events { events, .. } = record else { unreachable!("built above") };
            let commit = Commit {
                stream: stream.to_owned(),
                key: key.to_owned(),
                first_sequence: actual + 1,
                first_position,
                events,
            };
            let result = commit.result();
            let last_position = commit.last_position();
            self.send(&st, Job { bytes, apply: None, last_position: Some(last_position), done })?;
            st.insert_commit(commit, &command_id);
            result
        };
        self.write_queued();
        wait.await.map_err(|_| StoreError::Poisoned("writer thread has stopped".into()))??;
        Ok(result)
    }

    async fn read(&self, stream: &str, key: &str, from_sequence: u64) -> Result<Vec<StoredEvent>> {
        let durable = self.durable_position();
        let st = self.state();
        let Some(ki) = st.keys.get(&(stream.to_owned(), key.to_owned())) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for &i in &ki.commits {
            let c = &st.commits[i];
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
        let st = self.state();
        Ok(st.keys.get(&(stream.to_owned(), key.to_owned())).map_or(0, |ki| st.durable_last_sequence(ki, durable)))
    }

    async fn read_all(&self, from_position: u64, max: usize) -> Result<Vec<StoredEvent>> {
        let durable = self.durable_position();
        let st = self.state();
        let start = st.commits.partition_point(|c| c.last_position() < from_position.max(1));
        let mut out = Vec::new();
        for c in &st.commits[start..] {
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
        let scan_from = {
            let st = self.state();
            let done = st.consumers.get(name).map_or(0, |c| c.done_upto);
            done.max(st.checkpoints.get(name).copied().unwrap_or(0)) + 1
        };
        Ok(Box::new(FileConsumer {
            store: self.clone(),
            name: name.to_owned(),
            options,
            in_flight: HashMap::new(),
            scan_from,
            durable: self.inner.durable.clone(),
        }))
    }

    async fn dead_letters(&self, name: &str) -> Result<Vec<DeadLetter>> {
        let st = self.state();
        Ok(st
            .dead
            .range((name.to_owned(), 0)..=(name.to_owned(), u64::MAX))
            .filter_map(|((consumer, position), d)| {
                let c = st.commit_at(*position)?;
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
        if !self.state().dead.contains_key(&(name.to_owned(), position)) {
            return Err(StoreError::NoSuchDeadLetter { consumer: name.to_owned(), position });
        }
        self.write(Record::Redrive { consumer: name.to_owned(), position }).await
    }

    async fn put_snapshot(&self, stream: &str, key: &str, snapshot: Snapshot) -> Result<()> {
        self.write(Record::Snapshot { stream: stream.to_owned(), key: key.to_owned(), snapshot }).await
    }

    async fn get_snapshot(&self, stream: &str, key: &str, actor_digest: &str) -> Result<Option<Snapshot>> {
        Ok(self.state().snapshots.get(&(stream.to_owned(), key.to_owned(), actor_digest.to_owned())).cloned())
    }

    async fn commit_projection(&self, consumer: &str, position: u64, writes: Vec<KvWrite>) -> Result<()> {
        let checkpoint = self.state().checkpoints.get(consumer).copied().unwrap_or(0);
        if position <= checkpoint {
            return Err(StoreError::StaleCheckpoint { consumer: consumer.to_owned(), position, checkpoint });
        }
        self.write(Record::Projection { consumer: consumer.to_owned(), position, writes }).await
    }

    async fn rebuild_projection(&self, consumer: &str, position: u64, writes: Vec<KvWrite>) -> Result<()> {
        let checkpoint = self.state().checkpoints.get(consumer).copied().unwrap_or(0);
        if position < checkpoint {
            return Err(StoreError::StaleCheckpoint { consumer: consumer.to_owned(), position, checkpoint });
        }
        self.write(Record::Projection { consumer: consumer.to_owned(), position, writes }).await
    }

    async fn checkpoint(&self, consumer: &str) -> Result<u64> {
        Ok(self.state().checkpoints.get(consumer).copied().unwrap_or(0))
    }

    async fn kv_get(&self, consumer: &str, bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.state().kv.get(&(consumer.to_owned(), bucket.to_owned(), key.to_owned())).cloned())
    }

    async fn kv_list(&self, consumer: &str, bucket: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let st = self.state();
        let lo = (consumer.to_owned(), bucket.to_owned(), String::new());
        Ok(st
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
        if !self.state().timers.contains_key(id) {
            return Ok(false);
        }
        self.write(Record::TimerCancel(id.to_owned())).await?;
        Ok(true)
    }

    async fn due_timers(&self, now_ms: u64) -> Result<Vec<Timer>> {
        let mut due: Vec<Timer> = self.state().timers.values().filter(|t| t.fire_at_ms <= now_ms).cloned().collect();
        due.sort_by(|a, b| (a.fire_at_ms, &a.id).cmp(&(b.fire_at_ms, &b.id)));
        Ok(due)
    }
}

/// A durable consumer of a [`FileStore`].
struct FileConsumer {
    store: FileStore,
    name: String,
    options: ConsumerOptions,
    /// Outstanding deliveries of this handle: last position -> attempt.
    in_flight: HashMap<u64, u32>,
    /// Commits before this position are settled for this handle.
    scan_from: u64,
    durable: watch::Receiver<u64>,
}

impl FileConsumer {
    fn collect(&mut self, max: usize) -> Vec<Delivery> {
        let durable = *self.durable.borrow_and_update();
        let st = self.store.state();
        let empty = ConsumerState::default();
        let cs = st.consumers.get(&self.name).unwrap_or(&empty);
        let checkpoint = st.checkpoints.get(&self.name).copied().unwrap_or(0);
        let mut out = Vec::new();
        for &pos in &cs.redrive {
            if out.len() >= max {
                return out;
            }
            if self.in_flight.contains_key(&pos) {
                continue;
            }
            if let Some(c) = st.commit_at(pos) {
                let attempt = cs.attempts.get(&pos).copied().unwrap_or(0) + 1;
                self.in_flight.insert(pos, attempt);
                out.push(Delivery { position: pos, events: c.stored(), attempt });
            }
        }
        let start = st.commits.partition_point(|c| c.last_position() < self.scan_from);
        let mut settled_prefix = true;
        for c in &st.commits[start..] {
            if out.len() >= max {
                break;
            }
            let last = c.last_position();
            if last > durable {
                break;
            }
            let wanted = self.options.stream.as_ref().is_none_or(|s| *s == c.stream);
            let done = !wanted
                || last <= cs.done_upto
                || last <= checkpoint
                || cs.done_above.contains(&last)
                || cs.redrive.contains(&last);
            if done {
                if settled_prefix {
                    self.scan_from = last + 1;
                }
                continue;
            }
            settled_prefix = false;
            if self.in_flight.contains_key(&last) {
                continue;
            }
            let attempt = cs.attempts.get(&last).copied().unwrap_or(0) + 1;
            self.in_flight.insert(last, attempt);
            out.push(Delivery { position: last, events: c.stored(), attempt });
        }
        out
    }

    fn take_in_flight(&mut self, position: u64) -> Result<u32> {
        self.in_flight
            .remove(&position)
            .ok_or_else(|| StoreError::NotDelivered { consumer: self.name.clone(), position })
    }
}

#[async_trait]
impl Consumer for FileConsumer {
    fn name(&self) -> &str {
        &self.name
    }

    async fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let out = self.collect(max.max(1));
            // A zero wait must not reach the timer: tokio rounds it up to the next 1 ms tick.
            if !out.is_empty() || wait.is_zero() {
                return Ok(out);
            }
            let mut rx = self.durable.clone();
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Ok(Vec::new()),
            }
        }
    }

    async fn ack(&mut self, position: u64) -> Result<()> {
        let attempt = self.take_in_flight(position)?;
        let res = self.store.write(Record::Ack { consumer: self.name.clone(), position }).await;
        if res.is_err() {
            self.in_flight.insert(position, attempt);
        }
        res
    }

    async fn nack(&mut self, position: u64, reason: &str) -> Result<NackOutcome> {
        let attempt = self.take_in_flight(position)?;
        let (record, outcome) = if attempt >= self.options.max_deliver {
            (
                Record::DeadLetter {
                    consumer: self.name.clone(),
                    position,
                    attempts: attempt,
                    reason: reason.to_owned(),
                },
                NackOutcome::DeadLettered,
            )
        } else {
            (Record::Nack { consumer: self.name.clone(), position, attempts: attempt }, NackOutcome::Redeliver)
        };
        if let Err(e) = self.store.write(record).await {
            self.in_flight.insert(position, attempt);
            return Err(e);
        }
        if outcome == NackOutcome::Redeliver {
            let first = self.store.state().commit_at(position).map_or(position, |c| c.first_position);
            self.scan_from = self.scan_from.min(first);
        }
        Ok(outcome)
    }
}
