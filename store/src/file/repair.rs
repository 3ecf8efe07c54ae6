//! The operator's tools for a damaged log: [`FileStore::verify`] reads it and reports what it
//! holds and where it is damaged, [`FileStore::repair_truncate`] cuts it at a record boundary.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::FileStore;
use super::index::LogIndex;
use super::marker::{Mark, marker_path, write_marker};
use super::record::Record;
use super::recovery::{existing_dir, lock_dir};
use super::segment::{
    Damage, Header, SEGMENT_HEADER, SegmentReport, hex, list_segments, new_store_id, scan_log, segment_path,
};
use crate::{Result, StoreError};

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
    /// How far the store marker says the log was acknowledged: segment, offset and event
    /// position (`None`: no readable marker, or nothing acknowledged yet).
    pub acknowledged: Option<(u64, u64, u64)>,
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
    /// Positions of acknowledged events (from the store marker) whose records were already
    /// gone from the log before the cut: lost, not removed by it.
    pub lost_positions: Option<(u64, u64)>,
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
        if let Some((a, b)) = self.lost_positions {
            write!(f, "; acknowledged events at positions {a}-{b} were already gone")?;
        }
        write!(f, ", {} bytes ({} of them unreadable)", self.removed_bytes, self.unreadable_bytes)?;
        if !self.removed_segments.is_empty() {
            let names: Vec<String> = self.removed_segments.iter().map(|p| p.display().to_string()).collect();
            write!(f, ", deleted {}", names.join(", "))?;
        }
        Ok(())
    }
}

/// Appends `what` an operator's repair did to `DIR/REPAIRS.log` (synced) and to the log.
fn log_repair(dir: &Path, what: &str) -> Result<()> {
    let log_path = dir.join("REPAIRS.log");
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .and_then(|mut f| writeln!(f, "unix time {secs}: {what}").and_then(|_| f.sync_all()))
        .map_err(|e| StoreError::io(format!("writing {}", log_path.display()), e))?;
    tracing::warn!(repair = %what, "store repaired by an operator");
    Ok(())
}

impl FileStore {
    /// Reads the whole log of the store in `dir` without writing anything and reports what it
    /// holds and every problem found (file and offset). Errors only when the directory cannot
    /// be read or a writer holds it.
    pub fn verify(dir: impl AsRef<Path>) -> Result<LogReport> {
        let dir = dir.as_ref().to_path_buf();
        existing_dir(&dir)?;
        let _lock = lock_dir(&dir, false)?;
        let mut index = LogIndex::new();
        let mut events = 0u64;
        let scan = scan_log(&dir, &mut |_, _, record, clean| {
            if let Record::Events(c) = &record {
                events += c.events.len() as u64;
            }
            if clean { index.replay(record) } else { Ok(()) }
        })?;
        Ok(LogReport {
            dir,
            store_id: scan.store_id.as_ref().map(hex),
            records: scan.segments.iter().map(|s| s.report.records).sum(),
            events,
            last_position: index.next_position - 1,
            segments: scan.segments.into_iter().map(|s| s.report).collect(),
            torn_tail: scan.torn,
            unfinished_roll: scan.roll.map(|r| r.segment),
            acknowledged: scan
                .marker
                .map(|m| m.mark)
                .filter(Mark::acknowledged_anything)
                .map(|m| (m.segment, m.offset, m.position)),
            problems: scan.problems,
        })
    }

    /// Writes the store marker of `dir` anew for the log as it is, taking the end of its last
    /// segment's complete records as the acknowledged end: for a log written before tollgate
    /// kept a marker, or whose marker was lost. Whatever was cut from the end of the log
    /// before this, if anything, can no longer be told. Appended to `DIR/REPAIRS.log`. Returns
    /// the problems the log still has (empty when it opens).
    pub fn repair_accept_end(dir: impl AsRef<Path>) -> Result<Vec<Damage>> {
        let dir = dir.as_ref().to_path_buf();
        existing_dir(&dir)?;
        let _lock = lock_dir(&dir, true)?;
        let scan = scan_log(&dir, &mut |_, _, _, _| Ok(()))?;
        let store_id = match (scan.store_id, scan.marker) {
            (Some(id), _) => id,
            (None, Some(m)) => m.store_id,
            (None, None) => new_store_id(),
        };
        let mark = match scan.segments.last() {
            Some(last) => Mark {
                generation: 0,
                segment: last.report.number,
                offset: last.report.valid_end,
                position: scan.last_position,
            },
            None => Mark::default(),
        };
        let io = |what: &str, p: &Path, e| StoreError::io(format!("{what} {}", p.display()), e);
        write_marker(&dir, &store_id, &mark, true).map_err(|e| io("writing", &marker_path(&dir), e))?;
        let what = format!(
            "wrote the store marker for the log as it is: acknowledged up to segment {} offset {} (event position {})",
            mark.segment, mark.offset, mark.position
        );
        log_repair(&dir, &what)?;
        Ok(scan_log(&dir, &mut |_, _, _, _| Ok(()))?.problems)
    }

    /// Cuts the log of the store in `dir` at `offset` of segment `segment`, removing every
    /// record from there on (later segments included), for an operator who decided to give up
    /// what follows damage. `offset` must be a record boundary: the start of a complete
    /// record, the end of the last complete one, just after the segment header, or 0 to remove
    /// segment 1 (the whole log). The store marker is rewritten to acknowledge the log up to
    /// the cut (naming acknowledged events that were already gone). The cut is appended to
    /// `DIR/REPAIRS.log`.
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
        let mut kept_position = 0u64;
        let scan = scan_log(&dir, &mut |n, off, record, _| {
            if n == segment {
                boundaries.insert(off);
            }
            if n < segment || (n == segment && off < offset) {
                if let Record::Events(c) = &record
                    && !c.events.is_empty()
                {
                    kept_position = c.last_position();
                }
            } else {
                removed_records += 1;
                // A record without events is damage that replay reports; it removes no position.
                if let Record::Events(c) = &record
                    && !c.events.is_empty()
                {
                    let (first, last) = (c.first_position, c.last_position());
                    match removed_positions.last_mut() {
                        Some((_, end)) if *end + 1 == first => *end = last,
                        _ => removed_positions.push((first, last)),
                    }
                }
            }
            Ok(())
        })?;
        let path = segment_path(&dir, segment);
        let Some(scanned) = scan.segments.iter().find(|s| s.report.number == segment) else {
            // Listed above, gone now: someone else is changing the directory.
            return Err(StoreError::io(
                format!("reading {}", path.display()),
                std::io::Error::new(std::io::ErrorKind::NotFound, "the segment disappeared while the log was read"),
            ));
        };
        let (seg, header_ok) = (&scanned.report, matches!(scanned.header, Header::Ok { .. }));
        if header_ok {
            boundaries.insert(SEGMENT_HEADER as u64);
            if !seg.sealed {
                boundaries.insert(seg.valid_end);
            }
        }
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
        // What is left is what the operator decided to keep: the marker acknowledges up to the
        // cut, and says which acknowledged events were already gone before it.
        let old_mark = scan.marker.map(|m| m.mark).unwrap_or_default();
        let last_readable = removed_positions.last().map_or(kept_position, |r| r.1).max(scan.last_position);
        let lost_positions = (old_mark.position > last_readable).then_some((last_readable + 1, old_mark.position));
        let mark = if offset == 0 {
            Mark::default()
        } else {
            Mark { generation: 0, segment, offset, position: kept_position }
        };
        let store_id = scan.store_id.or(scan.marker.map(|m| m.store_id)).unwrap_or_else(new_store_id);
        write_marker(&dir, &store_id, &mark, true).map_err(|e| io("writing", &marker_path(&dir), e))?;
        let report = RepairReport {
            path,
            offset,
            removed_records,
            removed_positions,
            lost_positions,
            removed_bytes: report_removed_bytes,
            unreadable_bytes,
            removed_segments,
            remaining: Vec::new(),
        };
        log_repair(&dir, &report.to_string())?;
        let mut index = LogIndex::new();
        let after = scan_log(&dir, &mut |_, _, record, clean| if clean { index.replay(record) } else { Ok(()) })?;
        Ok(RepairReport { remaining: after.problems, ..report })
    }
}
