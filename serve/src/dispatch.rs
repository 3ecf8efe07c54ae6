//! Which worker runs which key's requests.
//!
//! A key's requests run on one worker at a time, in the order they arrived, so a node's
//! workers never race each other on a key. A key goes to its home worker (by hash, so its
//! state stays resident there) unless that worker has been busy with one request for longer
//! than the reroute threshold: a worker stuck on a hostile request (a guest looping over a
//! host import until the wall-clock backstop) then holds only that key's requests. New keys
//! go to the least loaded worker that is not stuck, and the keys already waiting for the
//! stuck worker move there too. A key is bound to a worker only while it has requests
//! waiting or running there; it can move only when none runs, so it never runs on two
//! workers at once, and it moves with all its waiting requests, so they stay in order.
//!
//! Requests wait here, not in the workers' own queues: a worker is handed one batch at a
//! time, so what waits can still move. A batch is the first waiting request of each of up to
//! `max_batch` keys ready on the worker (never two of one key, so a key's requests still run
//! one after the other), decided together and written with one append (see
//! `tollgate_runtime::Runtime::begin_batch`); a request that cannot be batched runs alone.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

/// The requests waiting for, and running on, a node's workers; `J` is one request's work.
pub(crate) struct Dispatch<J> {
    workers: Vec<Worker>,
    keys: HashMap<String, Bound<J>>,
    reroute_after: Duration,
    max_batch: usize,
    closed: bool,
    rerouted: u64,
}

/// Whether a request may share a batch with others (one that may not runs alone).
pub(crate) trait Batchable {
    /// `true` when the request can be decided in a batch and answered again from scratch.
    fn batchable(&self) -> bool;
}

/// One worker: the keys of the batch it runs now (and since when), and the keys waiting for
/// it, in turn.
#[derive(Default)]
struct Worker {
    running: Vec<String>,
    since: Option<Instant>,
    ready: VecDeque<String>,
}

/// A key with requests waiting or running: its worker and its requests not yet started.
struct Bound<J> {
    worker: usize,
    waiting: VecDeque<J>,
}

/// A batch of requests to hand to a worker now, each of another key.
pub(crate) struct Start<J> {
    /// The worker's index.
    pub(crate) worker: usize,
    /// The requests' work, in the order their keys were ready.
    pub(crate) jobs: Vec<J>,
}

impl<J: Batchable> Dispatch<J> {
    /// Dispatch over `workers` workers (at least one), handing each up to `max_batch`
    /// requests at once (at least one); a worker busy with one batch for `reroute_after` is
    /// passed over.
    pub(crate) fn new(workers: usize, reroute_after: Duration, max_batch: usize) -> Dispatch<J> {
        assert!(workers > 0, "a dispatch needs a worker");
        Dispatch {
            workers: (0..workers).map(|_| Worker::default()).collect(),
            keys: HashMap::new(),
            reroute_after,
            max_batch: max_batch.max(1),
            closed: false,
            rerouted: 0,
        }
    }

    /// The worker `key` goes to when none is stuck.
    pub(crate) fn home(&self, key: &str) -> usize {
        // `DefaultHasher::new()` has fixed keys: a key's home is the same in every run, so
        // its snapshot and state stay warm on one worker across restarts.
        let mut hasher = std::hash::DefaultHasher::new();
        key.hash(&mut hasher);
        (hasher.finish() % self.workers.len() as u64) as usize
    }

    /// Queues `job` for `key`; returns it to start at once when its worker is free. After
    /// [`Dispatch::close`] the job is handed back.
    pub(crate) fn submit(&mut self, key: &str, job: J, now: Instant) -> Result<Option<Start<J>>, J> {
        if self.closed {
            return Err(job);
        }
        if let Some(bound) = self.keys.get_mut(key) {
            // Running or waiting on its worker: after the requests it already has.
            bound.waiting.push_back(job);
            return Ok(None);
        }
        let home = self.home(key);
        let worker = if self.stuck(home, now) { self.least_loaded(home, now).unwrap_or(home) } else { home };
        if worker != home {
            self.rerouted += 1;
        }
        self.keys.insert(key.to_string(), Bound { worker, waiting: VecDeque::from([job]) });
        self.workers[worker].ready.push_back(key.to_string());
        Ok(self.next(worker, now))
    }

    /// Worker `worker` has finished its batch; returns its next one, if any.
    pub(crate) fn finished(&mut self, worker: usize, now: Instant) -> Option<Start<J>> {
        self.workers[worker].since = None;
        for key in std::mem::take(&mut self.workers[worker].running) {
            match self.keys.get(&key) {
                Some(bound) if !bound.waiting.is_empty() => self.workers[worker].ready.push_back(key),
                _ => {
                    self.keys.remove(&key);
                }
            }
        }
        self.next(worker, now)
    }

    /// Moves the keys waiting for a stuck worker to the least loaded workers that are not;
    /// returns the requests to start now.
    pub(crate) fn reroute(&mut self, now: Instant) -> Vec<Start<J>> {
        let mut starts = Vec::new();
        for stuck in 0..self.workers.len() {
            if !self.stuck(stuck, now) {
                continue;
            }
            while let Some(key) = self.workers[stuck].ready.pop_front() {
                let Some(to) = self.least_loaded(stuck, now) else {
                    // Every worker is stuck: the key waits where it is.
                    self.workers[stuck].ready.push_front(key);
                    break;
                };
                if let Some(bound) = self.keys.get_mut(&key) {
                    bound.worker = to;
                }
                self.rerouted += 1;
                self.workers[to].ready.push_back(key);
                starts.extend(self.next(to, now));
            }
        }
        starts
    }

    /// Whether [`Dispatch::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Takes no more requests and hands back those not started (their callers hear that the
    /// node stopped); the running ones finish as they do.
    pub(crate) fn close(&mut self) -> Vec<J> {
        self.closed = true;
        for worker in &mut self.workers {
            worker.ready.clear();
        }
        self.keys.values_mut().flat_map(|bound| bound.waiting.drain(..)).collect()
    }

    /// How long a worker may be busy with one request before it is passed over.
    pub(crate) fn reroute_after(&self) -> Duration {
        self.reroute_after
    }

    /// Whether `worker` is running a batch now.
    pub(crate) fn is_running(&self, worker: usize) -> bool {
        self.workers[worker].since.is_some()
    }

    /// Requests waiting for a worker, not yet started.
    pub(crate) fn waiting(&self) -> usize {
        self.keys.values().map(|bound| bound.waiting.len()).sum()
    }

    /// Keys moved off their home worker (or off a stuck one) so far.
    pub(crate) fn rerouted(&self) -> u64 {
        self.rerouted
    }

    /// Workers busy with one request for longer than the reroute threshold now.
    pub(crate) fn stuck_workers(&self, now: Instant) -> usize {
        (0..self.workers.len()).filter(|&w| self.stuck(w, now)).count()
    }

    fn stuck(&self, worker: usize, now: Instant) -> bool {
        self.workers[worker].since.is_some_and(|since| now.duration_since(since) >= self.reroute_after)
    }

    /// The worker with the fewest requests running or waiting, other than `except`, that is
    /// not stuck (the first of equals).
    fn least_loaded(&self, except: usize, now: Instant) -> Option<usize> {
        (0..self.workers.len())
            .filter(|&w| w != except && !self.stuck(w, now))
            .min_by_key(|&w| usize::from(self.workers[w].since.is_some()) + self.workers[w].ready.len())
    }

    /// The next batch for `worker` when it is free: the first request of each key next in
    /// turn, up to `max_batch` of them, stopping before one that runs alone (which, first in
    /// turn, makes a batch of its own).
    fn next(&mut self, worker: usize, now: Instant) -> Option<Start<J>> {
        if self.workers[worker].since.is_some() {
            return None;
        }
        let mut jobs = Vec::new();
        while jobs.len() < self.max_batch {
            let Some(key) = self.workers[worker].ready.pop_front() else { break };
            let Some(bound) = self.keys.get_mut(&key) else { continue };
            let Some(first) = bound.waiting.front() else { continue };
            let alone = !first.batchable();
            if alone && !jobs.is_empty() {
                self.workers[worker].ready.push_front(key);
                break;
            }
            jobs.extend(bound.waiting.pop_front());
            self.workers[worker].running.push(key);
            if alone {
                break;
            }
        }
        if jobs.is_empty() {
            return None;
        }
        self.workers[worker].since = Some(now);
        Some(Start { worker, jobs })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const REROUTE: Duration = Duration::from_millis(500);

    /// A job: its key and its number among that key's jobs.
    type Job = (String, u32);

    impl Batchable for Job {
        /// Job number 99 runs alone.
        fn batchable(&self) -> bool {
            self.1 != 99
        }
    }

    fn job(key: &str, n: u32) -> Job {
        (key.to_string(), n)
    }

    /// Keys whose home is `worker` among `workers`.
    fn keys_at(dispatch: &Dispatch<Job>, worker: usize, count: usize) -> Vec<String> {
        (0..).map(|n| format!("k{n}")).filter(|k| dispatch.home(k) == worker).take(count).collect()
    }

    #[test]
    fn a_keys_requests_run_on_its_home_worker_one_at_a_time_in_order() {
        let t0 = Instant::now();
        let mut d = Dispatch::<Job>::new(4, REROUTE, 1);
        let key = "alice";
        let home = d.home(key);
        let first = d.submit(key, job(key, 0), t0).unwrap().unwrap();
        assert_eq!((first.worker, first.jobs[0].1), (home, 0));
        for n in 1..4 {
            assert!(d.submit(key, job(key, n), t0).unwrap().is_none(), "one at a time");
        }
        for n in 1..4 {
            let next = d.finished(home, t0).unwrap();
            assert_eq!((next.worker, next.jobs[0].1), (home, n), "in order, on the same worker");
        }
        assert!(d.finished(home, t0).is_none());
        assert!(d.keys.is_empty(), "a key with nothing waiting is bound nowhere");
    }

    #[test]
    fn keys_waiting_behind_a_stuck_worker_move_and_the_stuck_key_stays() {
        let t0 = Instant::now();
        let mut d = Dispatch::<Job>::new(3, REROUTE, 1);
        let at_0 = keys_at(&d, 0, 3);
        let (bad, others) = (&at_0[0], &at_0[1..]);
        assert!(d.submit(bad, job(bad, 0), t0).unwrap().is_some());
        assert!(d.submit(bad, job(bad, 1), t0).unwrap().is_none());
        for key in others {
            assert!(d.submit(key, job(key, 0), t0).unwrap().is_none(), "queued behind the bad key");
        }
        assert!(d.reroute(t0 + REROUTE / 2).is_empty(), "not stuck yet");
        let moved = d.reroute(t0 + REROUTE);
        let mut started: Vec<_> = moved.iter().map(|s| (s.jobs[0].0.clone(), s.worker)).collect();
        started.sort();
        assert_eq!(started.len(), 2, "both other keys start at once, one on each free worker");
        assert!(started.iter().all(|(_, w)| *w != 0));
        assert_ne!(started[0].1, started[1].1);
        assert!(d.workers[0].ready.is_empty());
        assert_eq!(d.keys[bad].waiting.len(), 1, "the bad key's next request waits for it");
        // A new key whose home is the stuck worker goes elsewhere at once.
        let late = &keys_at(&d, 0, 4)[3];
        let start = d.submit(late, job(late, 0), t0 + REROUTE).unwrap();
        assert!(start.is_none_or(|s| s.worker != 0), "not to the stuck worker");
        assert_ne!(d.keys[late].worker, 0);
        assert_eq!(d.rerouted(), 3);
        assert_eq!(d.stuck_workers(t0 + REROUTE), 1);
        // The stuck request ends: its key's next request runs there.
        let next = d.finished(0, t0 + REROUTE * 3).unwrap();
        assert_eq!((next.worker, next.jobs[0].clone()), (0, job(bad, 1)));
    }

    #[test]
    fn when_every_worker_is_stuck_keys_wait_where_they_are() {
        let t0 = Instant::now();
        let mut d = Dispatch::<Job>::new(2, REROUTE, 1);
        for worker in 0..2 {
            let key = &keys_at(&d, worker, 1)[0];
            assert!(d.submit(key, job(key, 0), t0).unwrap().is_some());
        }
        let waiting = &keys_at(&d, 1, 2)[1];
        assert!(d.submit(waiting, job(waiting, 0), t0 + REROUTE).unwrap().is_none());
        assert!(d.reroute(t0 + REROUTE).is_empty());
        assert_eq!(d.keys[waiting].worker, 1);
        // The first worker to free up is where it may go next.
        assert!(d.finished(0, t0 + REROUTE).is_none());
        let moved = d.reroute(t0 + REROUTE);
        assert_eq!(moved.iter().map(|s| (s.worker, s.jobs[0].clone())).collect::<Vec<_>>(), [(0, job(waiting, 0))]);
    }

    #[test]
    fn closing_hands_back_what_never_started() {
        let t0 = Instant::now();
        let mut d = Dispatch::<Job>::new(1, REROUTE, 1);
        assert!(d.submit("a", job("a", 0), t0).unwrap().is_some());
        assert!(d.submit("a", job("a", 1), t0).unwrap().is_none());
        assert!(d.submit("b", job("b", 0), t0).unwrap().is_none());
        let mut dropped = d.close();
        dropped.sort();
        assert_eq!(dropped, [job("a", 1), job("b", 0)]);
        assert_eq!(d.submit("c", job("c", 0), t0).err(), Some(job("c", 0)));
        assert!(d.is_running(0));
        assert!(d.finished(0, t0).is_none());
    }

    #[test]
    fn a_batch_takes_one_request_per_ready_key_and_stops_before_one_that_runs_alone() {
        let t0 = Instant::now();
        let mut d = Dispatch::<Job>::new(1, REROUTE, 3);
        assert_eq!(d.submit("a", job("a", 0), t0).unwrap().unwrap().jobs, [job("a", 0)]);
        for (key, n) in [("a", 1), ("b", 0), ("a", 2), ("c", 0), ("d", 99), ("e", 0)] {
            assert!(d.submit(key, job(key, n), t0).unwrap().is_none(), "the worker is busy");
        }
        assert_eq!(d.waiting(), 6);
        let batch = d.finished(0, t0).unwrap().jobs;
        assert_eq!(batch, [job("b", 0), job("c", 0)], "keys in turn, up to one that runs alone");
        let alone = d.finished(0, t0).unwrap().jobs;
        assert_eq!(alone, [job("d", 99)], "a request that runs alone makes its own batch");
        let next = d.finished(0, t0).unwrap().jobs;
        assert_eq!(next, [job("e", 0), job("a", 1)], "a key's next request in a later batch");
        assert_eq!(d.finished(0, t0).unwrap().jobs, [job("a", 2)]);
        assert!(d.finished(0, t0).is_none());
        assert_eq!(d.waiting(), 0);
    }

    /// A random schedule of requests, finishes, stuck workers and reroutes, with batches of
    /// up to four: a key never runs on two workers (or twice in one batch) at once, and its
    /// requests start in the order they were submitted.
    #[test]
    fn under_any_schedule_a_key_runs_once_at_a_time_and_in_order() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..400 {
            let workers = 1 + random(5) as usize;
            let max_batch = 1 + random(4) as usize;
            let mut d = Dispatch::<Job>::new(workers, REROUTE, max_batch);
            let mut now = Instant::now();
            let mut submitted: HashMap<String, u32> = HashMap::new();
            let mut started: HashMap<String, u32> = HashMap::new();
            let mut running: Vec<Option<Vec<String>>> = vec![None; workers];
            let mut check = |start: Start<Job>, running: &mut Vec<Option<Vec<String>>>| {
                assert!(running[start.worker].is_none(), "a worker runs one batch at a time");
                assert!((1..=max_batch).contains(&start.jobs.len()), "a batch of 1..={max_batch}");
                let mut keys = Vec::new();
                for (key, n) in start.jobs {
                    assert!(!keys.contains(&key), "{key} twice in one batch");
                    assert!(!running.iter().flatten().flatten().any(|k| *k == key), "{key} on two workers at once");
                    let expected = started.entry(key.clone()).or_default();
                    assert_eq!(n, *expected, "{key}'s requests start in order");
                    *expected += 1;
                    keys.push(key);
                }
                running[start.worker] = Some(keys);
            };
            for _ in 0..300 {
                match random(4) {
                    0 | 1 => {
                        let key = format!("k{}", random(6));
                        let n = submitted.entry(key.clone()).or_default();
                        let start = d.submit(&key, (key.clone(), *n), now).unwrap();
                        *n += 1;
                        start.into_iter().for_each(|s| check(s, &mut running));
                    }
                    2 => {
                        let worker = random(workers as u64) as usize;
                        if running[worker].take().is_some() {
                            d.finished(worker, now).into_iter().for_each(|s| check(s, &mut running));
                        }
                    }
                    _ => {
                        now += Duration::from_millis(random(400));
                        d.reroute(now).into_iter().for_each(|s| check(s, &mut running));
                    }
                }
            }
            // Everything submitted runs in the end.
            while let Some(worker) = running.iter().position(Option::is_some) {
                running[worker] = None;
                d.finished(worker, now).into_iter().for_each(|s| check(s, &mut running));
            }
            assert_eq!(started, submitted);
        }
    }
}
