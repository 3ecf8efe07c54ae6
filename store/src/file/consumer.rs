//! Durable consumers of a [`FileStore`]: deliveries come from the index, acks, nacks and dead
//! letters are records of the log.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::FileStore;
use super::index::ConsumerProgress;
use super::record::Record;
use crate::{Consumer, ConsumerOptions, Delivery, NackOutcome, Result, StoreError};

/// A durable consumer of a [`FileStore`].
pub(super) struct FileConsumer {
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
    /// A handle on consumer `name`, starting after what it acked and after its projection's
    /// checkpoint.
    pub(super) fn open(store: &FileStore, name: &str, options: ConsumerOptions) -> FileConsumer {
        let scan_from = {
            let index = store.index();
            let done = index.consumers.get(name).map_or(0, |c| c.done_upto);
            done.max(index.checkpoints.get(name).copied().unwrap_or(0)) + 1
        };
        FileConsumer {
            store: store.clone(),
            name: name.to_owned(),
            options,
            in_flight: HashMap::new(),
            scan_from,
            durable: store.inner.durable.clone(),
        }
    }

    /// Hands out what is ready: redriven dead letters first, then durable commits this
    /// handle has not delivered and the consumer has not settled.
    fn collect(&mut self, max: usize) -> Vec<Delivery> {
        let durable = *self.durable.borrow_and_update();
        let index = self.store.index();
        let empty = ConsumerProgress::default();
        let cs = index.consumers.get(&self.name).unwrap_or(&empty);
        let checkpoint = index.checkpoints.get(&self.name).copied().unwrap_or(0);
        let mut out = Vec::new();
        for &pos in &cs.redrive {
            if out.len() >= max {
                return out;
            }
            if self.in_flight.contains_key(&pos) {
                continue;
            }
            if let Some(c) = index.commit_at(pos) {
                let attempt = cs.attempts.get(&pos).copied().unwrap_or(0) + 1;
                self.in_flight.insert(pos, attempt);
                out.push(Delivery { position: pos, events: c.stored(), attempt });
            }
        }
        let start = index.commits.partition_point(|c| c.last_position() < self.scan_from);
        let mut settled_prefix = true;
        for c in &index.commits[start..] {
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

    async fn ack_all(&mut self, positions: &[u64]) -> Result<()> {
        let mut taken = Vec::with_capacity(positions.len());
        for &position in positions {
            match self.take_in_flight(position) {
                Ok(attempt) => taken.push((position, attempt)),
                Err(e) => {
                    self.in_flight.extend(taken);
                    return Err(e);
                }
            }
        }
        let records = positions.iter().map(|&position| Record::Ack { consumer: self.name.clone(), position }).collect();
        let res = self.store.write_all(records).await;
        if res.is_err() {
            self.in_flight.extend(taken);
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
            let first = self.store.index().commit_at(position).map_or(position, |c| c.first_position);
            self.scan_from = self.scan_from.min(first);
        }
        Ok(outcome)
    }
}
