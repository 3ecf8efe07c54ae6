//! "fresh": a fresh instance per command, from the actor's `InstancePre` with the pooling
//! allocator: each iteration creates a new `AggregateActor`, whose first `handle` (reserve on
//! the realistic state) instantiates, and drops it (returning its pool slot).
//!
//! `fresh-raw` does the same one level lower, to show what the harness adds: a new store
//! (`StoreState::new_store`: WASI context with nothing granted, memory cap), `instantiate` from
//! the `InstancePre`, the typed bindings, one `handle`.

#![allow(clippy::unwrap_used)] // a benchmark stops on the first unexpected error

use std::hint::black_box;
use tollgate_benches::fixtures;
use tollgate_benches::measure::{self, PHASE, Report};
use tollgate_host::bindings::aggregate::Aggregate;
use tollgate_host::state::StoreState;
use tollgate_host::{Actor, AggregateActor, HostEngine, HostState, Limits};
use tollgate_host_test::fixtures::PREPAID_ACCOUNT;

fn main() {
    let engine = HostEngine::new(Limits::default()).expect("engine");
    let actor = Actor::load(&engine, fixtures::actor(PREPAID_ACCOUNT)).expect("load prepaid-account");
    let host_state = HostState::new();
    let state = fixtures::fold(None, &fixtures::events(&fixtures::realistic_history(), 1));
    let reserve = fixtures::command("bench-reserve", &fixtures::reserve("bench-r"), 1_700_000_000_000);

    let fresh = || {
        let mut a = AggregateActor::new(actor.clone(), host_state.clone()).expect("aggregate actor");
        black_box(a.handle(Some(&state), &reserve).expect("no trap").expect("accepted"));
        debug_assert_eq!(a.guest().instances_created(), 1);
    };
    let raw = || {
        let mut store = StoreState::new_store(&engine, host_state.clone(), None);
        store.set_epoch_deadline(engine.limits().cpu_ms);
        let instance = actor.instance_pre().instantiate(&mut store).expect("instantiate");
        let bindings = Aggregate::new(&mut store, &instance).expect("bindings");
        let r = bindings.tollgate_eventsourcing_command_handler().call_handle(&mut store, Some(&state), &reserve);
        black_box(r.expect("no trap").expect("accepted"));
    };
    fresh();
    raw();

    let mut c = measure::criterion();
    c.bench_function("fresh instance + reserve", |b| b.iter(fresh));
    c.bench_function("fresh-raw instantiate + reserve", |b| b.iter(raw));
    c.final_summary();

    if !measure::bench_mode() {
        return;
    }
    let timing = measure::measure(PHASE, fresh);
    Report::new(
        "fresh",
        "new AggregateActor + first handle (reserve): instantiate from InstancePre (pooling) + call",
        &timing,
    )
    .target(">= 40k/s", timing.ops_per_sec >= 40_000.0)
    .write();
    let timing = measure::measure(PHASE, raw);
    Report::new(
        "fresh-raw",
        "new store + InstancePre::instantiate + bindings + handle, without the harness's Guest",
        &timing,
    )
    .write();
}
