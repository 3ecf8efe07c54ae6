//! Writing records: group commit, segment rolls, and completing the callers' writes.
//!
//! Callers queue [`PendingWrite`]s. A [`LogWriter`] takes every queued write (up to
//! [`crate::FileOptions::max_batch`]), writes them with one `write`, calls `fdatasync` once
//! for the whole batch when the store syncs, records the batch's end in the store marker, and
//! only then applies them to the index and answers their callers. A synced store runs the writer on its own thread, so that writes
//! queued while a sync is under way share the next one. An unsynced store has no thread: the
//! caller that queued a write drains the queue itself ([`InlineWriter`]).

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use tokio::sync::{oneshot, watch};

use super::index::LogIndex;
use super::marker::Marker;
use super::record::Record;
use super::segment::{SEGMENT_HEADER, StoreId, create_segment};
use super::{FileOptions, lock};
use crate::{Result, StoreError};

/// Counters of a [`FileStore`](crate::FileStore)'s writer, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStats {
    /// Records written (appends, acks, snapshots, ...).
    pub records: u64,
    /// `fdatasync` calls; fewer than `records` when group commit batched writes.
    pub syncs: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// The live counters behind [`FileStats`].
#[derive(Default)]
pub(super) struct Counters {
    records: AtomicU64,
    syncs: AtomicU64,
    bytes: AtomicU64,
}

impl Counters {
    pub(super) fn stats(&self) -> FileStats {
        FileStats {
            records: self.records.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// One record queued for the writer.
pub(super) struct PendingWrite {
    /// The framed records (several for the appends of one batch).
    pub(super) bytes: Vec<u8>,
    /// How many records `bytes` holds.
    pub(super) records: u64,
    /// Applied to the index once written (events are indexed when they are queued).
    pub(super) apply: Vec<Record>,
    /// Last position of an events record, to advance the durable watermark.
    pub(super) last_position: Option<u64>,
    /// Answered once the record is written (and synced), or the write failed.
    pub(super) done: oneshot::Sender<Result<()>>,
}

/// Appends records to the last segment of the log.
pub(super) struct LogWriter {
    pub(super) dir: PathBuf,
    pub(super) options: FileOptions,
    pub(super) store_id: StoreId,
    /// Number of the segment being appended to.
    pub(super) segment: u64,
    pub(super) file: File,
    /// Length of `file`.
    pub(super) size: u64,
    pub(super) index: Arc<Mutex<LogIndex>>,
    /// Highest event position written (and synced).
    pub(super) durable: watch::Sender<u64>,
    pub(super) counters: Arc<Counters>,
    /// Where each batch, once durable, is recorded as acknowledged.
    pub(super) marker: Marker,
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // The marks were written without a sync of their own; the store is closing.
        if self.options.sync
            && let Err(e) = self.marker.sync()
        {
            tracing::warn!(dir = %self.dir.display(), "syncing the store marker on close: {e}");
        }
    }
}

impl LogWriter {
    /// Runs the writer on its own thread until every sender of `queue` is gone.
    pub(super) fn spawn(self, queue: mpsc::Receiver<PendingWrite>) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new().name("tollgate-store-writer".into()).spawn(move || self.run(queue))
    }

    fn run(mut self, queue: mpsc::Receiver<PendingWrite>) {
        while let Ok(first) = queue.recv() {
            self.write_batch(first, &queue);
        }
    }

    /// Writes `first` and whatever else is queued (up to a batch), then answers them.
    fn write_batch(&mut self, first: PendingWrite, queue: &mpsc::Receiver<PendingWrite>) {
        let mut batch = vec![first];
        while batch.len() < self.options.max_batch {
            match queue.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let poisoned = lock(&self.index).poisoned.clone();
        let durable = batch.iter().filter_map(|w| w.last_position).fold(*self.durable.borrow(), u64::max);
        let outcome = match poisoned {
            Some(p) => Err(p),
            // Recorded as acknowledged once durable, and before anyone is told.
            None => self
                .write_records(&batch)
                .and_then(|()| self.marker.record(self.segment, self.size, durable))
                .map_err(|e| e.to_string()),
        };
        match outcome {
            Ok(()) => {
                let mut index = lock(&self.index);
                let mut done = Vec::with_capacity(batch.len());
                for w in batch {
                    for r in w.apply {
                        index.apply(r);
                    }
                    done.push(w.done);
                }
                drop(index);
                self.durable.send_replace(durable);
                for d in done {
                    let _ = d.send(Ok(()));
                }
            }
            Err(msg) => {
                lock(&self.index).poisoned.get_or_insert(msg.clone());
                for w in batch {
                    let _ = w.done.send(Err(StoreError::Poisoned(msg.clone())));
                }
            }
        }
    }

    /// Writes the records of a batch, starting a new segment where the current one is full.
    fn write_records(&mut self, batch: &[PendingWrite]) -> std::io::Result<()> {
        let mut buf: Vec<u8> = Vec::new();
        for w in batch {
            let len = w.bytes.len() as u64;
            let used = self.size + buf.len() as u64;
            if used > SEGMENT_HEADER as u64 && used + len > self.options.segment_bytes {
                self.flush(&buf)?;
                buf.clear();
                self.roll()?;
            }
            buf.extend_from_slice(&w.bytes);
        }
        self.flush(&buf)?;
        self.counters.records.fetch_add(batch.iter().map(|w| w.records).sum(), Ordering::Relaxed);
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

/// The writer of an unsynced store. Without `fdatasync` there is nothing to wait for and so
/// nothing to batch behind: no thread, each caller writes what is queued (its own write, unless
/// another caller already took it), sparing two thread hand-offs per append.
pub(super) struct InlineWriter {
    pub(super) writer: LogWriter,
    pub(super) queue: mpsc::Receiver<PendingWrite>,
}

impl InlineWriter {
    /// Writes everything queued. Call it with the index unlocked: the writer locks it.
    pub(super) fn write_queued(&mut self) {
        while let Ok(first) = self.queue.try_recv() {
            self.writer.write_batch(first, &self.queue);
        }
    }
}
