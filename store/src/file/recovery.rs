//! Opening a log: the directory lock, replaying the log into memory (any damage but an
//! incomplete final record refuses the open), and making the end of the log appendable.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::index::LogIndex;
use super::record::Record;
use super::segment::{Damage, Header, LogScan, Roll, SEGMENT_HEADER, StoreId, create_segment, scan_log, segment_path};
use crate::{Result, StoreError};

/// Fails unless `dir` is an existing directory (read-only opens and the operator's tools
/// create nothing).
pub(super) fn existing_dir(dir: &Path) -> Result<()> {
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
pub(super) fn lock_dir(dir: &Path, write: bool) -> Result<Option<File>> {
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
pub(super) fn recover(dir: &Path) -> Result<(LogIndex, LogScan)> {
    let mut index = LogIndex::new();
    let scan = scan_log(dir, &mut |_, _, record, clean| if clean { index.replay(record) } else { Ok(()) })?;
    if let Some(first) = scan.problems.first() {
        let more = scan.problems.len() - 1;
        return Err(StoreError::Corrupt(if more == 0 {
            first.to_string()
        } else {
            format!("{first} (and {more} more: `tollgate store verify --store file:{}` lists them)", dir.display())
        }));
    }
    Ok((index, scan))
}

/// Says on stderr, whatever the log level, that an incomplete final record is not replayed:
/// an operator must see it even when tracing is off.
pub(super) fn report_torn(torn: &Damage, writable: bool) {
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
pub(super) fn prepare_tail(dir: &Path, scan: &LogScan, store_id: &StoreId, sync: bool) -> Result<(u64, File, u64)> {
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
