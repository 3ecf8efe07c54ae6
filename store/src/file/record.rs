//! What the log's records say, and how a record body is encoded.
//!
//! A record body starts with a tag byte naming its kind ([`tag`]), followed by the kind's
//! fields in the length-prefixed encoding of [`crate::codec`]. The frame around the body
//! (length and checksums) is [`super::segment`]'s.

use super::segment::{RECORD_HEADER, frame};
use crate::codec::{Dec, DecodeError, Enc};
use crate::{AppendResult, KvWrite, NewEvent, Snapshot, StoredEvent, Timer, stored_events};

/// The first byte of a record body. These numbers are on disk: never reuse or renumber one.
mod tag {
    pub(super) const EVENTS: u8 = 1;
    pub(super) const SNAPSHOT: u8 = 2;
    pub(super) const PROJECTION: u8 = 3;
    pub(super) const TIMER_PUT: u8 = 4;
    pub(super) const TIMER_CANCEL: u8 = 5;
    pub(super) const ACK: u8 = 6;
    pub(super) const NACK: u8 = 7;
    pub(super) const DEAD_LETTER: u8 = 8;
    pub(super) const REDRIVE: u8 = 9;
    pub(super) const SEGMENT_END: u8 = 10;
    /// [`EVENTS`] followed by the digest of the command that produced them. Written since
    /// digests are kept; [`EVENTS`] records still read, with no digest.
    pub(super) const EVENTS_WITH_DIGEST: u8 = 11;
}

/// The events of one append, with the coordinates the store gave them.
#[derive(Debug, Clone)]
pub(super) struct Commit {
    pub(super) stream: String,
    pub(super) key: String,
    pub(super) first_sequence: u64,
    pub(super) first_position: u64,
    /// Never empty: an append has at least one event, and replay refuses a record without.
    pub(super) events: Vec<NewEvent>,
}

impl Commit {
    pub(super) fn last_position(&self) -> u64 {
        self.first_position + self.events.len() as u64 - 1
    }

    pub(super) fn last_sequence(&self) -> u64 {
        self.first_sequence + self.events.len() as u64 - 1
    }

    pub(super) fn positions(&self) -> Vec<u64> {
        (self.first_position..=self.last_position()).collect()
    }

    /// What the append of this commit returned.
    pub(super) fn result(&self) -> AppendResult {
        AppendResult {
            first_sequence: self.first_sequence,
            last_sequence: self.last_sequence(),
            positions: self.positions(),
        }
    }

    pub(super) fn stored(&self) -> Vec<StoredEvent> {
        stored_events(&self.stream, &self.key, self.first_sequence, &self.positions(), &self.events)
    }
}

/// One log record.
#[derive(Debug, Clone)]
pub(super) enum Record {
    Events(Commit),
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
    /// The record, framed, as it goes on disk.
    pub(super) fn encode(&self) -> Vec<u8> {
        framed(|e| match self {
            Record::Events(commit) => encode_commit(e, commit),
            Record::Snapshot { stream, key, snapshot } => {
                e.u8(tag::SNAPSHOT)
                    .str(stream)
                    .str(key)
                    .str(&snapshot.actor_digest)
                    .u64(snapshot.sequence)
                    .bytes(&snapshot.state);
            }
            Record::Projection { consumer, position, writes } => {
                e.u8(tag::PROJECTION).str(consumer).u64(*position).kv_writes(writes);
            }
            Record::TimerPut(t) => {
                e.u8(tag::TIMER_PUT).str(&t.id).u64(t.fire_at_ms).bytes(&t.payload);
            }
            Record::TimerCancel(id) => {
                e.u8(tag::TIMER_CANCEL).str(id);
            }
            Record::Ack { consumer, position } => {
                e.u8(tag::ACK).str(consumer).u64(*position);
            }
            Record::Nack { consumer, position, attempts } => {
                e.u8(tag::NACK).str(consumer).u64(*position).u32(*attempts);
            }
            Record::DeadLetter { consumer, position, attempts, reason } => {
                e.u8(tag::DEAD_LETTER).str(consumer).u64(*position).u32(*attempts).str(reason);
            }
            Record::Redrive { consumer, position } => {
                e.u8(tag::REDRIVE).str(consumer).u64(*position);
            }
            Record::SegmentEnd { next_segment } => {
                e.u8(tag::SEGMENT_END).u64(*next_segment);
            }
        })
    }

    /// `Record::Events(commit).encode()` for a commit the caller keeps.
    pub(super) fn encode_events(commit: &Commit) -> Vec<u8> {
        framed(|e| encode_commit(e, commit))
    }

    /// Decodes a record body (the frame already checked and removed).
    pub(super) fn decode(body: &[u8]) -> Result<Record, DecodeError> {
        let mut d = Dec::new(body);
        let r = match d.u8()? {
            tag::EVENTS => Record::Events(Commit {
                stream: d.str()?,
                key: d.str()?,
                first_sequence: d.u64()?,
                first_position: d.u64()?,
                events: d.events()?,
            }),
            tag::EVENTS_WITH_DIGEST => Record::Events(Commit {
                stream: d.str()?,
                key: d.str()?,
                first_sequence: d.u64()?,
                first_position: d.u64()?,
                events: d.events_with_digest()?,
            }),
            tag::SNAPSHOT => Record::Snapshot {
                stream: d.str()?,
                key: d.str()?,
                snapshot: Snapshot { actor_digest: d.str()?, sequence: d.u64()?, state: d.bytes()? },
            },
            tag::PROJECTION => Record::Projection { consumer: d.str()?, position: d.u64()?, writes: d.kv_writes()? },
            tag::TIMER_PUT => Record::TimerPut(Timer { id: d.str()?, fire_at_ms: d.u64()?, payload: d.bytes()? }),
            tag::TIMER_CANCEL => Record::TimerCancel(d.str()?),
            tag::ACK => Record::Ack { consumer: d.str()?, position: d.u64()? },
            tag::NACK => Record::Nack { consumer: d.str()?, position: d.u64()?, attempts: d.u32()? },
            tag::DEAD_LETTER => {
                Record::DeadLetter { consumer: d.str()?, position: d.u64()?, attempts: d.u32()?, reason: d.str()? }
            }
            tag::REDRIVE => Record::Redrive { consumer: d.str()?, position: d.u64()? },
            tag::SEGMENT_END => Record::SegmentEnd { next_segment: d.u64()? },
            _ => return Err(DecodeError),
        };
        if !d.is_empty() {
            return Err(DecodeError);
        }
        Ok(r)
    }
}

fn encode_commit(e: &mut Enc, c: &Commit) {
    e.u8(tag::EVENTS_WITH_DIGEST)
        .str(&c.stream)
        .str(&c.key)
        .u64(c.first_sequence)
        .u64(c.first_position)
        .events_with_digest(&c.events);
}

/// A record body written by `body`, inside its frame.
fn framed(body: impl FnOnce(&mut Enc)) -> Vec<u8> {
    let mut e = Enc::default();
    e.buf.extend_from_slice(&[0; RECORD_HEADER]);
    body(&mut e);
    let mut buf = e.buf;
    frame(&mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(digest: &[u8]) -> Commit {
        let event = NewEvent {
            event_type: "noted".into(),
            schema_version: 1,
            content_type: "application/json".into(),
            payload: b"{}".to_vec(),
            command_id: "c1".into(),
            command_digest: digest.to_vec(),
            correlation_id: "c1".into(),
            causation_id: String::new(),
            time_ms: 1,
        };
        Commit { stream: "s".into(), key: "k".into(), first_sequence: 3, first_position: 9, events: vec![event] }
    }

    #[test]
    fn events_records_keep_their_commands_digest_and_older_records_still_read() {
        let written = commit(&[5; 32]);
        let framed = Record::encode_events(&written);
        let Ok(Record::Events(read)) = Record::decode(&framed[RECORD_HEADER..]) else { panic!("not events") };
        assert_eq!(read.events, written.events);

        // A log written before digests were kept: tag 1, no digest after the events.
        let mut e = Enc::default();
        let old = commit(&[]);
        e.u8(tag::EVENTS)
            .str(&old.stream)
            .str(&old.key)
            .u64(old.first_sequence)
            .u64(old.first_position)
            .events(&old.events);
        let Ok(Record::Events(read)) = Record::decode(&e.buf) else { panic!("not events") };
        assert_eq!((read.first_sequence, read.events), (3, old.events));
    }
}
