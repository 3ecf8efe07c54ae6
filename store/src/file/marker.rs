//! `DIR/COMMITTED`: the store's marker, saying that the directory holds a log (its store id)
//! and how far that log was acknowledged.
//!
//! Nothing inside a segment can tell a record cut from its end by a crash (never acknowledged,
//! fine to drop) from one cut later by damage or a careless operator (acknowledged: dropping it
//! loses an event a client was told is committed, and a retry of its command would be taken
//! as new). Nor can an empty directory tell whether it ever held a log. The marker can: the
//! writer records in it, after every group commit, where the last acknowledged record ends
//! (segment, offset and event position). That is one `pwrite` of 40 bytes per group commit and
//! no fsync of its own: the mark is written only once what it names is durable, so whatever
//! version of it reaches the disk never claims more than the segments hold, and recovery can
//! refuse a log that ends before its mark. The page cache holds the mark from the moment it
//! is written, so it is exact across a killed process and any damage done afterwards; the
//! writer fsyncs it when the store closes. Only a power loss can leave it behind the log by
//! what the kernel had not yet written back, which makes recovery trust the segments for that
//! stretch, as it did before there was a marker.
//!
//! Layout (little-endian): magic `TGMARK\0\n` | marker version u32 | store id 16 bytes |
//! crc32 of those 28 bytes | slot 0 | slot 1. A slot is generation u64 | segment u64 |
//! offset u64 | event position u64 | crc32 of those 32 bytes | 4 zero bytes. Marks alternate
//! between the slots, so a torn write of one leaves the other (one generation older) whole;
//! the slot with a valid checksum and the higher generation is the mark.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::segment::{Damage, StoreId, crc, hex, le_u32, le_u64};

/// The marker's file name in the store directory.
pub(super) const MARKER_FILE: &str = "COMMITTED";

const MAGIC: [u8; 8] = *b"TGMARK\x00\n";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 16 + 4;
const SLOT: usize = 8 * 4 + 4 + 4;
/// Bytes of a marker file.
const MARKER_BYTES: usize = HEADER + 2 * SLOT;

pub(super) fn marker_path(dir: &Path) -> PathBuf {
    dir.join(MARKER_FILE)
}

/// Where the last acknowledged record ends. `segment` 0 is a store with nothing acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Mark {
    pub(super) generation: u64,
    pub(super) segment: u64,
    /// Offset in `segment` just after the last acknowledged record.
    pub(super) offset: u64,
    /// Position of the last acknowledged event (0: none).
    pub(super) position: u64,
}

impl Mark {
    /// Whether the log holds anything acknowledged.
    pub(super) fn acknowledged_anything(&self) -> bool {
        self.segment != 0
    }
}

/// A marker read from disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MarkerState {
    pub(super) store_id: StoreId,
    pub(super) mark: Mark,
}

fn slot_bytes(mark: &Mark) -> [u8; SLOT] {
    let mut s = [0u8; SLOT];
    s[0..8].copy_from_slice(&mark.generation.to_le_bytes());
    s[8..16].copy_from_slice(&mark.segment.to_le_bytes());
    s[16..24].copy_from_slice(&mark.offset.to_le_bytes());
    s[24..32].copy_from_slice(&mark.position.to_le_bytes());
    let c = crc(&[&s[0..32]]);
    s[32..36].copy_from_slice(&c.to_le_bytes());
    s
}

fn slot_offset(generation: u64) -> u64 {
    (HEADER + (generation % 2) as usize * SLOT) as u64
}

fn marker_bytes(store_id: &StoreId, mark: &Mark) -> Vec<u8> {
    let mut b = vec![0u8; MARKER_BYTES];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12..28].copy_from_slice(store_id);
    let c = crc(&[&b[0..28]]);
    b[28..32].copy_from_slice(&c.to_le_bytes());
    let at = slot_offset(mark.generation) as usize;
    b[at..at + SLOT].copy_from_slice(&slot_bytes(mark));
    b
}

/// Reads the marker of `dir`: `None` when there is none, damage when it cannot be trusted.
pub(super) fn read_marker(dir: &Path) -> crate::Result<Result<Option<MarkerState>, Damage>> {
    let path = marker_path(dir);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(None)),
        Err(e) => return Err(crate::StoreError::io(format!("reading {}", path.display()), e)),
    };
    let damage =
        |offset: usize, problem: String| Ok(Err(Damage { path: path.clone(), offset: offset as u64, problem }));
    if data.len() != MARKER_BYTES {
        return damage(0, format!("store marker of {} bytes, expected {MARKER_BYTES}", data.len()));
    }
    if data[0..8] != MAGIC || crc(&[&data[0..28]]) != le_u32(&data, 28) {
        return damage(0, "store marker header damaged (magic or checksum)".into());
    }
    let version = le_u32(&data, 8);
    if version != VERSION {
        return damage(8, format!("store marker version {version}; this build reads version {VERSION}"));
    }
    let mut store_id: StoreId = [0; 16];
    store_id.copy_from_slice(&data[12..28]);
    let slot = |at: usize| {
        let s = &data[at..at + SLOT];
        (crc(&[&s[0..32]]) == le_u32(s, 32)).then(|| Mark {
            generation: le_u64(s, 0),
            segment: le_u64(s, 8),
            offset: le_u64(s, 16),
            position: le_u64(s, 24),
        })
    };
    let mark = match (slot(HEADER), slot(HEADER + SLOT)) {
        (Some(a), Some(b)) => {
            if a.generation >= b.generation {
                a
            } else {
                b
            }
        }
        (Some(m), None) | (None, Some(m)) => m,
        // Marks alternate between the slots: a torn write can spoil one, never both.
        (None, None) => return damage(HEADER, "both marks of the store marker are damaged".into()),
    };
    Ok(Ok(Some(MarkerState { store_id, mark })))
}

/// Writes a marker for `store_id` holding `mark`, replacing any (through a new file renamed
/// over it, so a crash leaves the old marker or the new one), synced with its directory entry
/// when `sync`.
pub(super) fn write_marker(dir: &Path, store_id: &StoreId, mark: &Mark, sync: bool) -> std::io::Result<()> {
    let path = marker_path(dir);
    let new = dir.join(format!("{MARKER_FILE}.new"));
    let mut f = OpenOptions::new().create(true).truncate(true).write(true).open(&new)?;
    f.write_all(&marker_bytes(store_id, mark))?;
    if sync {
        f.sync_all()?;
    }
    std::fs::rename(&new, &path)?;
    if sync {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The writer's handle on the marker: records each new mark in place.
pub(super) struct Marker {
    file: File,
    mark: Mark,
}

impl Marker {
    /// Opens the marker of `dir` (which must exist, written by [`write_marker`]) whose current
    /// mark is `mark`.
    pub(super) fn open(dir: &Path, mark: Mark) -> std::io::Result<Marker> {
        let file = OpenOptions::new().write(true).open(marker_path(dir))?;
        Ok(Marker { file, mark })
    }

    /// Records that everything up to `offset` of `segment` (events up to `position`) is
    /// acknowledged, once it is durable. No fsync: see the module docs.
    pub(super) fn record(&mut self, segment: u64, offset: u64, position: u64) -> std::io::Result<()> {
        if (segment, offset) == (self.mark.segment, self.mark.offset) {
            return Ok(());
        }
        let mark = Mark { generation: self.mark.generation + 1, segment, offset, position };
        self.file.write_all_at(&slot_bytes(&mark), slot_offset(mark.generation))?;
        self.mark = mark;
        Ok(())
    }

    /// Makes the last mark durable (when the store closes).
    pub(super) fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// Checks the end of the scanned log against the marker: the log must hold every acknowledged
/// record. `last_segment` and `valid_end` say where the log's complete records end (`None`:
/// no segment), `last_position` the last event position read. Returns the damage if not, as
/// the problem an operator must decide on.
pub(super) fn check_mark(
    dir: &Path,
    marker: &MarkerState,
    end: Option<(u64, u64)>,
    last_position: u64,
    segment_path: impl Fn(u64) -> PathBuf,
) -> Option<Damage> {
    let mark = marker.mark;
    if !mark.acknowledged_anything() {
        return None;
    }
    let lost_events = if mark.position > last_position {
        format!(
            "events at positions {} to {}, and any other record written with them",
            last_position + 1,
            mark.position
        )
    } else {
        "no events, but other acknowledged records (acks, snapshots, timers or projection commits)".to_string()
    };
    match end {
        None => Some(Damage {
            path: segment_path(mark.segment),
            offset: 0,
            problem: format!(
                "the log's segments are gone: {} (store {}) says records up to segment {} offset {} (event \
                 position {}) were acknowledged",
                marker_path(dir).display(),
                hex(&marker.store_id),
                mark.segment,
                mark.offset,
                mark.position
            ),
        }),
        Some((segment, _)) if segment < mark.segment => Some(Damage {
            path: segment_path(segment + 1),
            offset: 0,
            problem: format!(
                "segment {} is missing: the log ends in segment {segment}, but records up to segment {} offset {} \
                 (event position {}) were acknowledged (lost: {lost_events})",
                segment + 1,
                mark.segment,
                mark.offset,
                mark.position,
            ),
        }),
        Some((segment, valid_end)) if segment == mark.segment && valid_end < mark.offset => Some(Damage {
            path: segment_path(segment),
            offset: valid_end,
            problem: format!(
                "the log ends at offset {valid_end}, but records up to offset {} (event position {}) were \
                 acknowledged: {} bytes of acknowledged records are gone, not a torn write (lost: {lost_events}); \
                 `tollgate store repair --store file:{} --truncate-at {segment}:{valid_end}` would give them up for good",
                mark.offset,
                mark.position,
                mark.offset - valid_end,
                dir.display(),
            ),
        }),
        Some(_) => None,
    }
}
