//! "warm": prepaid-account `handle` on a warm instance, wasm vs the same crate natively.
//!
//! Commands alternate: `reserve` of a new reservation on a realistic state S (opened, topped
//! up, counters on four offers, eight open reservations), then `release` of that reservation
//! on S + the reservation. `handle` is pure and the host keeps the state, so the state stays
//! bounded without applying anything. Both sides include encoding: the wasm side lowers the
//! host's command and state into the instance, the guest decodes JSON, decides, encodes the
//! events, and they are lifted back; the native side runs
//! `tollgate_sdk::aggregate::handle::<PrepaidAccount>` on the same bytes.

use criterion::Throughput;
use std::hint::black_box;
use tollgate_benches::fixtures::{self, KEY};
use tollgate_benches::measure::{self, PHASE, Report};
use tollgate_host::fixtures::PREPAID_ACCOUNT;
use tollgate_host::{Actor, AggregateActor, Fakes, HostEngine, Limits};

fn main() {
    let engine = HostEngine::new(Limits::default()).expect("engine");
    let actor = Actor::load(&engine, fixtures::actor(PREPAID_ACCOUNT)).expect("load prepaid-account");
    let mut wasm = AggregateActor::new(actor, Fakes::new()).expect("aggregate actor");

    let history = fixtures::events(&fixtures::realistic_history(), 1);
    let s0 = fixtures::fold(None, &history);
    let reserve = fixtures::command("bench-reserve", &fixtures::reserve("bench-r"), 1_700_000_000_000);
    let drafts = wasm.handle(Some(&s0), &reserve).expect("no trap").expect("reserve is accepted");
    assert_eq!(drafts.len(), 1);
    let reserved =
        fixtures::events(&[tollgate_sdk::codec::decode(&drafts[0].event_type, &drafts[0].payload).unwrap()], 99);
    let s1 = fixtures::fold(Some(&s0), &reserved);
    let release = fixtures::command("bench-release", &fixtures::release("bench-r"), 1_700_000_000_001);
    wasm.handle(Some(&s1), &release).expect("no trap").expect("release is accepted");
    let (native_reserve, native_release) = (fixtures::native_command(&reserve), fixtures::native_command(&release));
    type Native = prepaid_account::PrepaidAccount;
    tollgate_sdk::aggregate::handle::<Native>(Some(&s1), &native_release).expect("release is accepted natively");
    println!("warm: account {KEY}: state {} bytes, reserve payload {} bytes", s0.len(), reserve.payload.len());

    let mut wasm_op = |i: u64| {
        let r = if i.is_multiple_of(2) { wasm.handle(Some(&s0), &reserve) } else { wasm.handle(Some(&s1), &release) };
        black_box(r.expect("no trap").expect("accepted"));
    };
    let native_op = |i: u64| {
        let r = if i.is_multiple_of(2) {
            tollgate_sdk::aggregate::handle::<Native>(Some(&s0), &native_reserve)
        } else {
            tollgate_sdk::aggregate::handle::<Native>(Some(&s1), &native_release)
        };
        black_box(r.expect("accepted"));
    };

    let mut c = measure::criterion();
    {
        let mut group = c.benchmark_group("warm");
        group.throughput(Throughput::Elements(2));
        group.bench_function("wasm reserve+release", |b| {
            b.iter(|| {
                wasm_op(0);
                wasm_op(1);
            })
        });
        group.bench_function("native reserve+release", |b| {
            b.iter(|| {
                native_op(0);
                native_op(1);
            })
        });
        group.finish();
    }
    c.final_summary();

    if !measure::bench_mode() {
        return;
    }
    let mut n = 0u64;
    let wasm_timing = measure::measure(PHASE, || {
        wasm_op(n);
        n += 1;
    });
    let mut n = 0u64;
    let native_timing = measure::measure(PHASE, || {
        native_op(n);
        n += 1;
    });
    let ratio = wasm_timing.mean_ns / native_timing.mean_ns;
    let op = "one handle call (reserve or release, alternating) on a ~1.5 KiB state, encoding included";
    Report::new("warm-wasm", op, &wasm_timing)
        .ratio(ratio)
        .target(">= 500k/s, native_ratio <= 3", wasm_timing.ops_per_sec >= 500_000.0 && ratio <= 3.0)
        .write();
    Report::new("warm-native", op, &native_timing).write();
}
