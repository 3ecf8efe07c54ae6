//! The on-disk format of the file store's log, and reading it back.
//!
//! A segment starts with a header (see [`SEGMENT_HEADER`]) and holds records framed as
//! `len: u32 LE | crc32(body): u32 LE | crc32(len ++ body crc): u32 LE | body`. The header
//! checksum of a record makes its length trustworthy on its own, which is what tells an
//! incomplete final record (a torn last write: its header is intact but the file ends before
//! its body does) from damage (a checksum that fails on bytes that are all there).
//!
//! A segment other than the last ends with an end-of-segment record naming the next segment.
//! The next segment is created (header written and fsynced) before that marker is written, and
//! its header records where the previous segment's records ended, so a missing last segment,
//! a missing middle segment and records cut from the end of a sealed segment are all seen.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::marker::{MarkerState, check_mark, marker_path, read_marker};
use super::record::Record;
use crate::{Result, StoreError};

/// Version of the segment and record format this build reads and writes.
pub const FORMAT_VERSION: u32 = 2;

/// `TGLOG` plus three bytes that a text file or an unheadered (version 1) log is unlikely to
/// start with.
pub(super) const MAGIC: [u8; 8] = *b"TGLOG\x00\xfe\x0a";

/// Bytes of a segment header: magic 8 | format version u32 | segment number u64 |
/// end of the previous segment's records u64 | store id 16 bytes | crc32 of the above u32.
pub(super) const SEGMENT_HEADER: usize = 8 + 4 + 8 + 8 + 16 + 4;

/// Bytes of a record's frame before its body.
pub(super) const RECORD_HEADER: usize = 12;

pub(super) const SEGMENT_EXT: &str = "seg";

/// Identity of a store, written into every segment header so that a segment copied from
/// another store is refused.
pub(super) type StoreId = [u8; 16];

/// A fresh store id: random (std's per-process random hasher keys), time and pid mixed.
pub(super) fn new_store_id() -> StoreId {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut id = [0u8; 16];
    for (i, chunk) in id.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    id
}

/// A store id as lowercase hex.
pub(super) fn hex(id: &StoreId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.{SEGMENT_EXT}"))
}

/// The little-endian `u32` at `at`; the caller checked that `data` holds it.
pub(super) fn le_u32(data: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&data[at..at + 4]);
    u32::from_le_bytes(b)
}

/// The little-endian `u64` at `at`; the caller checked that `data` holds it.
pub(super) fn le_u64(data: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&data[at..at + 8]);
    u64::from_le_bytes(b)
}

pub(super) fn crc(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// Fills in the frame of a record whose body follows `RECORD_HEADER` reserved bytes.
pub(super) fn frame(buf: &mut [u8]) {
    let len = (buf.len() - RECORD_HEADER) as u32;
    buf[0..4].copy_from_slice(&len.to_le_bytes());
    let body_crc = crc(&[&buf[RECORD_HEADER..]]);
    buf[4..8].copy_from_slice(&body_crc.to_le_bytes());
    let head_crc = crc(&[&buf[0..8]]);
    buf[8..12].copy_from_slice(&head_crc.to_le_bytes());
}

/// The header of segment `n`.
pub(super) fn segment_header(n: u64, prev_end: u64, store_id: &StoreId) -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&n.to_le_bytes());
    h[20..28].copy_from_slice(&prev_end.to_le_bytes());
    h[28..44].copy_from_slice(store_id);
    let c = crc(&[&h[0..44]]);
    h[44..48].copy_from_slice(&c.to_le_bytes());
    h
}

/// Creates segment `n` (replacing a torn one) with its header, synced with its directory
/// entry when `sync`. The returned file appends.
pub(super) fn create_segment(
    dir: &Path,
    n: u64,
    prev_end: u64,
    store_id: &StoreId,
    sync: bool,
) -> std::io::Result<File> {
    let mut f = OpenOptions::new().create(true).truncate(true).write(true).open(segment_path(dir, n))?;
    f.write_all(&segment_header(n, prev_end, store_id))?;
    if sync {
        f.sync_all()?;
        File::open(dir)?.sync_all()?;
    }
    drop(f);
    OpenOptions::new().append(true).open(segment_path(dir, n))
}

/// Segment numbers present in `dir`, ascending.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut segments: Vec<u64> = std::fs::read_dir(dir)
        .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let stem = name.strip_suffix(&format!(".{SEGMENT_EXT}"))?;
            stem.parse::<u64>().ok()
        })
        .collect();
    segments.sort_unstable();
    Ok(segments)
}

/// A place in the log that is damaged or incomplete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The segment file (for a missing segment, the path it should have).
    pub path: PathBuf,
    /// Byte offset in that file.
    pub offset: u64,
    /// What is wrong there.
    pub problem: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} offset {}: {}", self.path.display(), self.offset, self.problem)
    }
}

/// One segment as read by [`crate::FileStore::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentReport {
    /// Segment number (its file name).
    pub number: u64,
    /// The file.
    pub path: PathBuf,
    /// File length.
    pub bytes: u64,
    /// Complete, checksummed records read (the end-of-segment marker included).
    pub records: u64,
    /// Whether it ends with its end-of-segment marker (every segment but the last does).
    pub sealed: bool,
    /// Offset just after the last complete record (or the header): where an incomplete or
    /// damaged record starts, if any.
    pub valid_end: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Header {
    Ok {
        prev_end: u64,
    },
    /// Shorter than a header, and what is there matches the magic: a crash while creating it.
    Torn,
    Damaged,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum End {
    /// Ends with the end-of-segment marker at this offset.
    Sealed {
        at: u64,
    },
    /// Ends after a complete record (or the header).
    Open,
    /// Ends inside a record that starts here (or in all-zero bytes from here).
    Torn {
        at: u64,
    },
    Damaged,
}

pub(super) struct SegmentScan {
    pub(super) report: SegmentReport,
    pub(super) header: Header,
    pub(super) end: End,
}

/// A roll to a new segment that a crash interrupted: the new segment exists (with no records)
/// but the previous one has no end-of-segment marker yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Roll {
    /// The segment to seal.
    pub(super) segment: u64,
    /// Where its records end (its marker goes there; anything after is a torn marker).
    pub(super) prev_end: u64,
    /// The new segment's header is torn and must be written again.
    pub(super) rewrite_next_header: bool,
}

/// Everything read from a log directory.
#[derive(Default)]
pub(super) struct LogScan {
    pub(super) segments: Vec<SegmentScan>,
    pub(super) store_id: Option<StoreId>,
    /// Corruption: the store must not open.
    pub(super) problems: Vec<Damage>,
    /// An incomplete final record (or segment header) that a writable open drops.
    pub(super) torn: Option<Damage>,
    pub(super) roll: Option<Roll>,
    /// The store marker (`DIR/COMMITTED`), if there is one that could be read.
    pub(super) marker: Option<MarkerState>,
    /// Position of the last event read before the first problem (0: none).
    pub(super) last_position: u64,
}

/// Called for every complete record: segment number, offset, the record, and whether no
/// problem was found before it (a replay stops trusting records after the first problem).
pub(super) type Visit<'a> = dyn FnMut(u64, u64, Record, bool) -> std::result::Result<(), String> + 'a;

/// Reads every segment of `dir`, checks the structure of the log and hands each complete
/// record to `visit`. Damage is collected, not returned as an error; I/O failures are errors.
pub(super) fn scan_log(dir: &Path, visit: &mut Visit<'_>) -> Result<LogScan> {
    let mut numbers = list_segments(dir)?;
    let mut scan = LogScan::default();
    // A file named as segment 0 or u64::MAX was not written by a store (numbers start at 1,
    // and each segment names its successor): damage, not read.
    numbers.retain(|&n| {
        let in_range = n != 0 && n != u64::MAX;
        if !in_range {
            scan.problems.push(Damage {
                path: segment_path(dir, n),
                offset: 0,
                problem: format!("segment number {n} is out of range (1 to {})", u64::MAX - 1),
            });
        }
        in_range
    });
    let mut expected = 1;
    for &n in &numbers {
        if n != expected {
            let missing = if n == expected + 1 { format!("{expected}") } else { format!("{expected} to {}", n - 1) };
            scan.problems.push(Damage {
                path: segment_path(dir, expected),
                offset: 0,
                problem: format!("segment {missing} is missing (the log continues with segment {n})"),
            });
        }
        expected = n + 1;
    }
    for (i, &n) in numbers.iter().enumerate() {
        let last = i + 1 == numbers.len();
        let seg = scan_segment(dir, n, last, &mut scan, visit)?;
        scan.segments.push(seg);
    }
    check_ends(dir, &mut scan);
    check_marker(dir, &mut scan)?;
    // Earliest first: a cut segment makes the next one's records look out of place too, but
    // the damage is where the log first goes wrong.
    scan.problems.sort_by(|a, b| (&a.path, a.offset).cmp(&(&b.path, b.offset)));
    Ok(scan)
}

fn scan_segment(dir: &Path, n: u64, last: bool, scan: &mut LogScan, visit: &mut Visit<'_>) -> Result<SegmentScan> {
    let path = segment_path(dir, n);
    let data = std::fs::read(&path).map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
    let mut seg = SegmentScan {
        report: SegmentReport {
            number: n,
            path: path.clone(),
            bytes: data.len() as u64,
            records: 0,
            sealed: false,
            valid_end: 0,
        },
        header: Header::Damaged,
        end: End::Damaged,
    };
    let problem = |scan: &mut LogScan, offset: usize, problem: String| {
        scan.problems.push(Damage { path: path.clone(), offset: offset as u64, problem });
    };
    let magic = data.len().min(MAGIC.len());
    if data[..magic] != MAGIC[..magic] {
        problem(
            scan,
            0,
            format!(
                "no segment header: not a tollgate log segment of format version {FORMAT_VERSION} (logs written \
                 before format version {FORMAT_VERSION} have no header and are not read by this build)"
            ),
        );
        return Ok(seg);
    }
    if data.len() < SEGMENT_HEADER {
        if last {
            seg.header = Header::Torn;
        } else {
            problem(scan, 0, format!("segment header cut short ({} of {SEGMENT_HEADER} bytes)", data.len()));
        }
        return Ok(seg);
    }
    // From here on `data` holds a whole header.
    let field = |at: usize| le_u64(&data, at);
    if crc(&[&data[0..44]]) != le_u32(&data, 44) {
        problem(scan, 0, "segment header checksum mismatch".into());
        return Ok(seg);
    }
    let version = le_u32(&data, 8);
    if version != FORMAT_VERSION {
        problem(scan, 8, format!("segment format version {version}; this build reads version {FORMAT_VERSION}"));
        return Ok(seg);
    }
    if field(12) != n {
        problem(scan, 12, format!("the header says this is segment {}, the file name says {n}", field(12)));
        return Ok(seg);
    }
    let mut id: StoreId = [0; 16];
    id.copy_from_slice(&data[28..44]);
    match scan.store_id {
        None => scan.store_id = Some(id),
        Some(store) if store != id => {
            problem(
                scan,
                28,
                format!("segment of another store (store id {}; this store's id is {})", hex(&id), hex(&store)),
            );
            return Ok(seg);
        }
        Some(_) => {}
    }
    seg.header = Header::Ok { prev_end: field(20) };
    let mut off = SEGMENT_HEADER;
    seg.report.valid_end = off as u64;
    let mut sealed_at = None;
    seg.end = loop {
        let rest = data.len() - off;
        if rest == 0 {
            break match sealed_at {
                Some(at) => End::Sealed { at },
                None => End::Open,
            };
        }
        if sealed_at.is_some() {
            problem(scan, off, format!("{rest} bytes after the end-of-segment marker"));
            break End::Damaged;
        }
        // A torn write leaves a prefix of the record, or (on some file systems) zeros where
        // the data did not reach the disk; neither can be followed by anything.
        if rest < RECORD_HEADER || data[off..].iter().all(|&b| b == 0) {
            break End::Torn { at: off as u64 };
        }
        // `rest` holds at least a record header.
        let word = |at: usize| le_u32(&data, off + at);
        let (len, body_crc, head_crc) = (word(0) as usize, word(4), word(8));
        if crc(&[&data[off..off + 8]]) != head_crc {
            problem(scan, off, "record header checksum mismatch".into());
            break End::Damaged;
        }
        if len == 0 {
            problem(scan, off, "record of length 0".into());
            break End::Damaged;
        }
        if len > rest - RECORD_HEADER {
            break End::Torn { at: off as u64 };
        }
        let body = &data[off + RECORD_HEADER..off + RECORD_HEADER + len];
        if crc(&[body]) != body_crc {
            problem(scan, off, format!("record checksum mismatch (a complete {len}-byte record)"));
            break End::Damaged;
        }
        let record = match Record::decode(body) {
            Ok(r) => r,
            Err(_) => {
                problem(scan, off, "record passed its checksums but does not decode".into());
                break End::Damaged;
            }
        };
        if let Record::SegmentEnd { next_segment } = &record {
            if *next_segment != n + 1 {
                problem(scan, off, format!("end-of-segment marker names segment {next_segment}, expected {}", n + 1));
                break End::Damaged;
            }
            seg.report.sealed = true;
            sealed_at = Some(off as u64);
        }
        seg.report.records += 1;
        let clean = scan.problems.is_empty();
        if let (true, Record::Events(c)) = (clean, &record)
            && !c.events.is_empty()
        {
            scan.last_position = c.last_position();
        }
        if let Err(m) = visit(n, off as u64, record, clean) {
            problem(scan, off, m);
            break End::Damaged;
        }
        off += RECORD_HEADER + len;
        seg.report.valid_end = off as u64;
    };
    Ok(seg)
}

/// Checks how each segment ends against the segments after it.
fn check_ends(dir: &Path, scan: &mut LogScan) {
    let count = scan.segments.len();
    let (mut problems, mut torn, mut roll) = (Vec::new(), None, None);
    for (i, seg) in scan.segments.iter().enumerate() {
        let (n, path) = (seg.report.number, seg.report.path.clone());
        let next = scan.segments.get(i + 1);
        let damage = |offset: u64, problem: String| Damage { path: path.clone(), offset, problem };
        match (seg.header, seg.end, next) {
            (Header::Torn, _, _) => {
                let prev_sealed = i > 0 && matches!(scan.segments[i - 1].end, End::Sealed { .. });
                if prev_sealed {
                    problems.push(damage(
                        0,
                        format!(
                            "segment header cut short ({} bytes) though segment {} was sealed after it was written",
                            seg.report.bytes,
                            n - 1
                        ),
                    ));
                } else if i == 0 {
                    torn = Some(damage(0, format!("segment header cut short ({} bytes)", seg.report.bytes)));
                }
                // Otherwise the previous segment reports the interrupted roll.
            }
            (Header::Damaged, _, _) | (_, End::Damaged, _) => {}
            (Header::Ok { .. }, End::Sealed { at }, _) => match next.map(|s| s.header) {
                None => problems.push(Damage {
                    path: segment_path(dir, n + 1),
                    offset: 0,
                    problem: format!(
                        "segment {} is missing: segment {n} ends with its end-of-segment marker (offset {at}), \
                         written only after segment {} existed",
                        n + 1,
                        n + 1
                    ),
                }),
                Some(Header::Ok { prev_end }) if prev_end != at && next.is_some_and(|s| s.report.number == n + 1) => {
                    problems.push(damage(
                        at,
                        format!(
                            "records end at offset {at}, but segment {} recorded that they end at {prev_end}",
                            n + 1
                        ),
                    ))
                }
                Some(_) => {}
            },
            (Header::Ok { .. }, End::Open, None) => {}
            (Header::Ok { .. }, End::Torn { at }, None) => {
                torn = Some(damage(at, format!("incomplete final record ({} bytes)", seg.report.bytes - at)));
            }
            (Header::Ok { .. }, end, Some(next)) => {
                let roll_end = match next.header {
                    _ if next.report.records > 0 || i + 2 != count => None,
                    Header::Ok { prev_end } => Some(prev_end),
                    Header::Torn => Some(seg.report.valid_end),
                    Header::Damaged => None,
                };
                // Only the end-of-segment marker may be missing or torn, and only while the
                // next segment has no records yet.
                let torn_marker_only = |prev_end: u64| {
                    seg.report.valid_end == prev_end
                        && match end {
                            End::Open => true,
                            End::Torn { at } => at == prev_end && seg.report.bytes - at < SEAL_LEN,
                            _ => false,
                        }
                };
                match roll_end {
                    Some(prev_end) if torn_marker_only(prev_end) => {
                        roll = Some(Roll { segment: n, prev_end, rewrite_next_header: next.header == Header::Torn });
                    }
                    _ => {
                        let at = match end {
                            End::Torn { at } => at,
                            _ => seg.report.valid_end,
                        };
                        problems.push(damage(
                            at,
                            format!(
                                "segment {n} ends without its end-of-segment marker{}, but segment {} follows: \
                                 records are missing from its end",
                                if matches!(end, End::Torn { .. }) { " (in an incomplete record)" } else { "" },
                                n + 1
                            ),
                        ));
                    }
                }
            }
        }
    }
    scan.problems.extend(problems);
    if torn.is_some() {
        scan.torn = torn;
    }
    scan.roll = roll;
}

/// Reads the store marker and checks the log against it: the marker belongs to this store,
/// exists whenever segments do, and the log holds every record it says was acknowledged (then
/// an incomplete record before the mark is acknowledged data lost, not a torn write).
fn check_marker(dir: &Path, scan: &mut LogScan) -> Result<()> {
    let path = marker_path(dir);
    let marker = match read_marker(dir)? {
        Ok(m) => m,
        Err(damage) => {
            scan.problems.push(damage);
            return Ok(());
        }
    };
    let Some(marker) = marker else {
        if !scan.segments.is_empty() {
            scan.problems.push(Damage {
                path,
                offset: 0,
                problem: format!(
                    "the store marker is missing though the log has segments, so whether records were cut from \
                     its end cannot be told (it was deleted, or the log was written before tollgate kept one); \
                     `tollgate store repair --store file:{} --accept-end` writes it for the log as it is",
                    dir.display()
                ),
            });
        }
        return Ok(());
    };
    scan.marker = Some(marker);
    if let Some(id) = scan.store_id
        && id != marker.store_id
    {
        scan.problems.push(Damage {
            path,
            offset: 12,
            problem: format!(
                "store marker of another store (store id {}; the segments' id is {})",
                hex(&marker.store_id),
                hex(&id)
            ),
        });
        return Ok(());
    }
    let end = scan.segments.last().map(|s| (s.report.number, s.report.valid_end));
    if let Some(lost) = check_mark(dir, &marker, end, scan.last_position, |n| segment_path(dir, n)) {
        // What looked like a torn write is part of what was acknowledged.
        scan.torn = None;
        scan.problems.push(lost);
    }
    Ok(())
}

/// Bytes of an end-of-segment record: frame, tag, next segment number.
pub(super) const SEAL_LEN: u64 = (RECORD_HEADER + 1 + 8) as u64;
