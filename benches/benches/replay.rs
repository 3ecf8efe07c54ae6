//! "replay": rebuild an account's state from 100k events with batched `load` (1000 events per
//! call, packed into one buffer by the host), from scratch and from a snapshot (the state after
//! 99k events, then the last 1k), and take its snapshot at the end. Native baselines run the
//! SDK's `Resident<PrepaidAccount>::load`, what the component runs, on the same events.
//!
//! `ops_per_sec` counts events; the latencies time one whole rebuild.

#![allow(clippy::unwrap_used)] // a benchmark stops on the first unexpected error

use criterion::{BatchSize, Throughput};
use std::hint::black_box;
use tollgate_benches::fixtures;
use tollgate_benches::measure::{self, PHASE, Report, Timing};
use tollgate_host::aggregate::{Base, Event, StoredState};
use tollgate_host::{Actor, AggregateActor, HostEngine, HostState, Limits};
use tollgate_host_test::fixtures::PREPAID_ACCOUNT;
use tollgate_sdk::aggregate::{self as sdk, Resident};

const EVENTS: usize = 100_000;
const BATCH: usize = 1_000;

type Native = prepaid_account::PrepaidAccount;

fn wasm_rebuild(actor: &mut AggregateActor, snapshot: Option<(u64, &[u8])>, batches: &[Vec<Event>]) -> Vec<u8> {
    let mut base = match snapshot {
        Some((sequence, state)) => Base::Snapshot(StoredState { sequence, state: state.to_vec() }),
        None => Base::Initial,
    };
    for batch in batches {
        actor.load(fixtures::KEY, &base, batch).expect("no trap").expect("events fold");
        base = Base::Resident(batch.last().expect("a batch has events").sequence);
    }
    let Base::Resident(at) = base else { unreachable!("at least one batch") };
    actor.snapshot(fixtures::KEY, at).expect("no trap").expect("the state is held")
}

fn stored(e: &tollgate_sdk::Event) -> Result<sdk::Stored<'_>, tollgate_sdk::Rejection> {
    Ok(sdk::Stored {
        event_type: &e.event_type,
        schema_version: e.schema_version,
        content_type: &e.content_type,
        payload: &e.payload,
        sequence: e.sequence,
    })
}

fn native_rebuild(
    resident: &mut Resident<Native>,
    snapshot: Option<(u64, &[u8])>,
    batches: Vec<Vec<tollgate_sdk::Event>>,
) -> Vec<u8> {
    let mut base = match snapshot {
        Some((sequence, state)) => sdk::Base::Snapshot(sequence, state),
        None => sdk::Base::Initial,
    };
    let mut at = 0;
    for batch in &batches {
        resident.load(fixtures::KEY, base, batch.iter().map(stored)).expect("events fold");
        at = batch.last().expect("a batch has events").sequence;
        base = sdk::Base::Resident(at);
    }
    resident.snapshot(fixtures::KEY, at).expect("the state is held")
}

fn main() {
    let engine = HostEngine::new(Limits::default()).expect("engine");
    let actor = Actor::load(&engine, fixtures::actor(PREPAID_ACCOUNT)).expect("load prepaid-account");
    let mut wasm = AggregateActor::new(actor, HostState::new()).expect("aggregate actor");
    let mut native = Resident::<Native>::new();

    let events = fixtures::events(&fixtures::replay_history(EVENTS), 1);
    let batches: Vec<Vec<Event>> = events.chunks(BATCH).map(<[Event]>::to_vec).collect();
    let native_batches: Vec<Vec<tollgate_sdk::Event>> =
        batches.iter().map(|b| b.iter().map(fixtures::native_event).collect()).collect();
    let (head, tail) = batches.split_at(batches.len() - 1);
    let snapshot = wasm_rebuild(&mut wasm, None, head);
    let snapshot_at = (head.len() * BATCH) as u64;
    let full = wasm_rebuild(&mut wasm, None, &batches);
    assert_eq!(
        full,
        native_rebuild(&mut native, None, native_batches.clone()),
        "wasm and native fold to the same bytes"
    );
    assert_eq!(full, wasm_rebuild(&mut wasm, Some((snapshot_at, &snapshot)), tail), "snapshot + tail = full replay");
    println!(
        "replay: {EVENTS} events ({} bytes of payload), final state {} bytes, snapshot {} bytes",
        events.iter().map(|e| e.payload.len()).sum::<usize>(),
        full.len(),
        snapshot.len()
    );
    let native_tail = &native_batches[native_batches.len() - 1..];

    let mut c = measure::criterion();
    {
        let mut group = c.benchmark_group("replay");
        group.sample_size(10).throughput(Throughput::Elements(EVENTS as u64));
        group.bench_function("wasm 100k events", |b| b.iter(|| black_box(wasm_rebuild(&mut wasm, None, &batches))));
        group.bench_function("native 100k events", |b| {
            b.iter_batched(
                || native_batches.clone(),
                |n| black_box(native_rebuild(&mut native, None, n)),
                BatchSize::LargeInput,
            )
        });
        group.sample_size(20).throughput(Throughput::Elements(BATCH as u64));
        group.bench_function("wasm snapshot + 1k events", |b| {
            b.iter(|| black_box(wasm_rebuild(&mut wasm, Some((snapshot_at, &snapshot)), tail)))
        });
        group.bench_function("native snapshot + 1k events", |b| {
            b.iter_batched(
                || native_tail.to_vec(),
                |n| black_box(native_rebuild(&mut native, Some((snapshot_at, &snapshot)), n)),
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
    c.final_summary();

    if !measure::bench_mode() {
        return;
    }
    let per_event = |t: Timing, events: usize| Timing { ops_per_sec: t.ops_per_sec * events as f64, ..t };
    let full_wasm = measure::measure_with_setup(
        PHASE,
        10,
        |_| (),
        |()| {
            black_box(wasm_rebuild(&mut wasm, None, &batches));
        },
    );
    let full_native = measure::measure_with_setup(
        PHASE,
        10,
        |_| native_batches.clone(),
        |n| {
            black_box(native_rebuild(&mut native, None, n));
        },
    );
    let snap_wasm = measure::measure_with_setup(
        PHASE,
        100,
        |_| (),
        |()| {
            black_box(wasm_rebuild(&mut wasm, Some((snapshot_at, &snapshot)), tail));
        },
    );
    let snap_native = measure::measure_with_setup(
        PHASE,
        100,
        |_| native_tail.to_vec(),
        |n| {
            black_box(native_rebuild(&mut native, Some((snapshot_at, &snapshot)), n));
        },
    );
    let full_ratio = full_wasm.mean_ns / full_native.mean_ns;
    let snap_ratio = snap_wasm.mean_ns / snap_native.mean_ns;
    let full_wasm = per_event(full_wasm, EVENTS);
    let met = full_wasm.ops_per_sec >= 1_000_000.0;
    Report::new(
        "replay-100k-wasm",
        "events/s; latencies: one rebuild from 100k events (100 load calls of 1000, then the snapshot)",
        &full_wasm,
    )
    .ratio(full_ratio)
    .target(">= 1M events/s", met)
    .write();
    Report::new(
        "replay-100k-native",
        "events/s; latencies: one rebuild from 100k events",
        &per_event(full_native, EVENTS),
    )
    .write();
    Report::new(
        "replay-snapshot-wasm",
        "events/s; latencies: one rebuild from the 99k snapshot + 1k events (1 load call, then the snapshot)",
        &per_event(snap_wasm, BATCH),
    )
    .ratio(snap_ratio)
    .write();
    Report::new(
        "replay-snapshot-native",
        "events/s; latencies: one rebuild from the 99k snapshot + 1k events",
        &per_event(snap_native, BATCH),
    )
    .write();
}
