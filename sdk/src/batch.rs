//! Events packed for one crossing (`event-batch`): one buffer of strings and payloads, eight
//! end offsets per event, and their numbers in flat lists. The host packs; these read, and
//! refuse a batch whose offsets or lists do not add up (`malformed-batch`).

use crate::aggregate::Stored;
use crate::bindings::aggregate::tollgate::eventsourcing::types::EventBatch;
use crate::types::{Event, Rejection};

/// The parts of one event in a batch, in `ends` order.
const PARTS: usize = 8;

fn malformed(message: String) -> Rejection {
    Rejection::malformed("malformed-batch", message)
}

/// The eight parts of event `i`, each checked to lie within the data, after the part before.
fn parts(batch: &EventBatch, i: usize) -> Result<[&[u8]; PARTS], Rejection> {
    let ends = batch.ends.get(i * PARTS..(i + 1) * PARTS).ok_or_else(|| {
        malformed(format!("{} end offsets cannot describe event {i} ({PARTS} per event)", batch.ends.len()))
    })?;
    let mut start = match i {
        0 => 0,
        _ => batch.ends[i * PARTS - 1] as usize,
    };
    let mut parts = [&[][..]; PARTS];
    for (part, &end) in parts.iter_mut().zip(ends) {
        let end = end as usize;
        *part = batch.data.get(start..end).ok_or_else(|| {
            malformed(format!("part {start}..{end} of event {i} lies outside the batch's {} bytes", batch.data.len()))
        })?;
        start = end;
    }
    Ok(parts)
}

fn text(bytes: &[u8]) -> Result<&str, Rejection> {
    std::str::from_utf8(bytes).map_err(|e| malformed(e.to_string()))
}

/// An event's content type: every event of a JSON aggregate says `application/json`, which is
/// recognised by its bytes without validating them as UTF-8 again.
fn content_type(bytes: &[u8]) -> Result<&str, Rejection> {
    if bytes == crate::codec::JSON.as_bytes() { Ok(crate::codec::JSON) } else { text(bytes) }
}

/// How many events the batch holds, once its lists agree.
fn count(batch: &EventBatch) -> Result<usize, Rejection> {
    let n = batch.sequences.len();
    if batch.ends.len() != n * PARTS || batch.schema_versions.len() != n || batch.times.len() != n {
        return Err(malformed(format!(
            "{} sequences, {} schema versions, {} times and {} end offsets do not describe one set of events",
            n,
            batch.schema_versions.len(),
            batch.times.len(),
            batch.ends.len()
        )));
    }
    Ok(n)
}

/// The events of a batch as an aggregate's `load` folds them, borrowing from the batch.
pub fn unpack(batch: &EventBatch) -> impl Iterator<Item = Result<Stored<'_>, Rejection>> {
    let n = count(batch);
    let (err, n) = match n {
        Ok(n) => (None, n),
        Err(e) => (Some(e), 0),
    };
    err.map(Err).into_iter().chain((0..n).map(move |i| {
        let [_, _, event_type, content, payload, ..] = parts(batch, i)?;
        Ok(Stored {
            event_type: text(event_type)?,
            schema_version: batch.schema_versions[i],
            content_type: content_type(content)?,
            payload,
            sequence: batch.sequences[i],
        })
    }))
}

/// Every event of a batch as a whole envelope (what projectors are handed).
pub fn events(batch: &EventBatch) -> Result<Vec<Event>, Rejection> {
    (0..count(batch)?)
        .map(|i| {
            let [stream, key, event_type, content, payload, command_id, correlation_id, causation_id] =
                parts(batch, i)?;
            Ok(Event {
                stream: text(stream)?.into(),
                key: text(key)?.into(),
                event_type: text(event_type)?.into(),
                schema_version: batch.schema_versions[i],
                content_type: content_type(content)?.into(),
                payload: payload.to_vec(),
                sequence: batch.sequences[i],
                time: batch.times[i],
                command_id: text(command_id)?.into(),
                correlation_id: text(correlation_id)?.into(),
                causation_id: text(causation_id)?.into(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(ends: Vec<u32>) -> EventBatch {
        EventBatch {
            data: b"tallytaddedapplication/json{\"name\":\"a\",\"n\":2}c1".to_vec(),
            ends,
            schema_versions: vec![1],
            sequences: vec![1],
            times: vec![7],
        }
    }

    #[test]
    fn a_batch_reads_back_as_its_events() {
        let events = events(&batch(vec![5, 6, 11, 27, 45, 47, 47, 47])).unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!((e.stream.as_str(), e.key.as_str(), e.event_type.as_str()), ("tally", "t", "added"));
        assert_eq!((e.payload.as_slice(), e.command_id.as_str(), e.time), (&br#"{"name":"a","n":2}"#[..], "c1", 7));
    }

    #[test]
    fn offsets_or_lists_that_do_not_add_up_are_malformed() {
        for ends in [
            vec![5, 6, 11, 27, 45, 47, 47, 48],       // past the data
            vec![5, 6, 11, 27, 45, 47, 46, 47],       // a part ending before it starts
            vec![5, 6, 11, 27, 45, 47, 47],           // seven offsets for one event
            vec![5, 6, 11, 27, 45, 47, 47, u32::MAX], // far past the data
        ] {
            let r = events(&batch(ends.clone())).unwrap_err();
            assert_eq!(r.code, "malformed-batch", "{ends:?}");
            assert!(unpack(&batch(ends.clone())).any(|e| e.is_err()), "{ends:?}");
        }
        let mut lists = batch(vec![5, 6, 11, 27, 45, 47, 47, 47]);
        lists.times.push(8);
        assert_eq!(events(&lists).unwrap_err().code, "malformed-batch");
    }
}
