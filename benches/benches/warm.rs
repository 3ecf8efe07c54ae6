//! "warm": prepaid-account commands on a warm instance, wasm vs the same crate natively.
//!
//! The state S is realistic (opened, topped up, counters on four offers, eight open
//! reservations; about 1.5 KiB of JSON). Two measurements:
//! - `warm`: `handle` alone, the decision. Commands alternate: `reserve` of a new reservation
//!   on S, then `release` of it on S + the reservation. `handle` is pure and the host keeps the
//!   state, so the host passes the same two states again and again.
//! - `warm-command`: what the runtime does per command, `handle` then `apply` of the resulting
//!   events, the state evolving (reserve, release, reserve, ...).
//! - `command digest`: the SHA-256 the runtime takes of every command (to refuse a reused
//!   command id), on the same two commands.
//!
//! Both sides include encoding: the wasm side lowers the host's command and state into the
//! instance, the guest decodes JSON (the state only when its [`StateCache`] has not seen those
//! bytes), decides, encodes the events, and they are lifted back; the native side runs the
//! same SDK code (`StateCache<PrepaidAccount>`) on copies of the same bytes.

#![allow(clippy::unwrap_used)] // a benchmark stops on the first unexpected error

use criterion::Throughput;
use std::hint::black_box;
use tollgate_benches::fixtures::{self, KEY};
use tollgate_benches::measure::{self, PHASE, Report};
use tollgate_host::aggregate as host;
use tollgate_host::{Actor, AggregateActor, HostEngine, HostState, Limits};
use tollgate_host_test::fixtures::PREPAID_ACCOUNT;
use tollgate_sdk::aggregate::StateCache;

type Native = prepaid_account::PrepaidAccount;

/// A state evolving one command at a time, as the runtime keeps it.
struct Evolving {
    state: Vec<u8>,
    sequence: u64,
}

impl Evolving {
    fn envelopes(&mut self, drafts: impl IntoIterator<Item = (String, Vec<u8>)>) -> Vec<host::Event> {
        drafts
            .into_iter()
            .map(|(event_type, payload)| {
                self.sequence += 1;
                fixtures::envelope(event_type, payload, self.sequence)
            })
            .collect()
    }
}

fn wasm_command(wasm: &mut AggregateActor, at: &mut Evolving, command: &host::Command) {
    let drafts = wasm.handle(Some(&at.state), command).expect("no trap").expect("accepted");
    let events = at.envelopes(drafts.into_iter().map(|d| (d.event_type, d.payload)));
    at.state = wasm.apply(Some(&at.state), &events).expect("no trap").expect("events fold");
}

fn native_command(cache: &mut StateCache<Native>, at: &mut Evolving, command: &tollgate_sdk::Command) {
    let drafts = cache.handle(Some(at.state.clone()), command).expect("accepted");
    let events = at.envelopes(drafts.into_iter().map(|d| (d.event_type, d.payload)));
    let events = events.iter().map(fixtures::native_event).collect();
    at.state = cache.apply(Some(at.state.clone()), events).expect("events fold");
}

fn main() {
    let engine = HostEngine::new(Limits::default()).expect("engine");
    let actor = Actor::load(&engine, fixtures::actor(PREPAID_ACCOUNT)).expect("load prepaid-account");
    let mut wasm = AggregateActor::new(actor, HostState::new()).expect("aggregate actor");
    let mut native = StateCache::<Native>::new();

    let history = fixtures::realistic_history();
    let s0 = fixtures::fold(None, &fixtures::events(&history, 1));
    let reserve = fixtures::command("bench-reserve", &fixtures::reserve("bench-r"), 1_700_000_000_000);
    let drafts = wasm.handle(Some(&s0), &reserve).expect("no trap").expect("reserve is accepted");
    assert_eq!(drafts.len(), 1);
    let reserved = fixtures::events(&[tollgate_codec::decode(&drafts[0].event_type, &drafts[0].payload).unwrap()], 99);
    let s1 = fixtures::fold(Some(&s0), &reserved);
    let release = fixtures::command("bench-release", &fixtures::release("bench-r"), 1_700_000_000_001);
    wasm.handle(Some(&s1), &release).expect("no trap").expect("release is accepted");
    let (native_reserve, native_release) = (fixtures::native_command(&reserve), fixtures::native_command(&release));
    native.handle(Some(s1.clone()), &native_release).expect("release is accepted natively");
    println!("warm: account {KEY}: state {} bytes, reserve payload {} bytes", s0.len(), reserve.payload.len());

    let sequence = history.len() as u64;
    let mut wasm_at = Evolving { state: s0.clone(), sequence };
    let mut native_at = Evolving { state: s0.clone(), sequence };
    for _ in 0..2 {
        wasm_command(&mut wasm, &mut wasm_at, &reserve);
        native_command(&mut native, &mut native_at, &native_reserve);
        assert_eq!(wasm_at.state, native_at.state, "wasm and native evolve the state alike");
        wasm_command(&mut wasm, &mut wasm_at, &release);
        native_command(&mut native, &mut native_at, &native_release);
        assert_eq!(wasm_at.state, s0, "release undoes reserve");
    }

    let wasm_decide = |wasm: &mut AggregateActor, i: u64| {
        let r = if i.is_multiple_of(2) { wasm.handle(Some(&s0), &reserve) } else { wasm.handle(Some(&s1), &release) };
        black_box(r.expect("no trap").expect("accepted"));
    };
    let native_decide = |native: &mut StateCache<Native>, i: u64| {
        let r = if i.is_multiple_of(2) {
            native.handle(Some(s0.clone()), &native_reserve)
        } else {
            native.handle(Some(s1.clone()), &native_release)
        };
        black_box(r.expect("accepted"));
    };
    let commands = [&reserve, &release];
    let native_commands = [&native_reserve, &native_release];

    let mut c = measure::criterion();
    {
        let mut group = c.benchmark_group("warm");
        group.throughput(Throughput::Elements(2));
        group.bench_function("wasm handle reserve+release", |b| {
            b.iter(|| {
                wasm_decide(&mut wasm, 0);
                wasm_decide(&mut wasm, 1);
            })
        });
        group.bench_function("native handle reserve+release", |b| {
            b.iter(|| {
                native_decide(&mut native, 0);
                native_decide(&mut native, 1);
            })
        });
        group.bench_function("wasm command reserve+release", |b| {
            b.iter(|| commands.iter().for_each(|command| wasm_command(&mut wasm, &mut wasm_at, command)))
        });
        group.bench_function("native command reserve+release", |b| {
            b.iter(|| native_commands.iter().for_each(|command| native_command(&mut native, &mut native_at, command)))
        });
        // What the runtime adds per command to tell a retry from a reused id (its SHA-256 goes
        // into the log with the events), against the commands above.
        group.bench_function("command digest reserve+release", |b| {
            b.iter(|| commands.iter().for_each(|command| drop(black_box(host::command_digest(black_box(command))))))
        });
        group.finish();
    }
    c.final_summary();

    if !measure::bench_mode() {
        return;
    }
    let mut n = 0u64;
    let wasm_timing = measure::measure(PHASE, || {
        wasm_decide(&mut wasm, n);
        n += 1;
    });
    let mut n = 0u64;
    let native_timing = measure::measure(PHASE, || {
        native_decide(&mut native, n);
        n += 1;
    });
    let ratio = wasm_timing.mean_ns / native_timing.mean_ns;
    let op = "one handle call (reserve or release, alternating) on a ~1.5 KiB state, encoding included";
    Report::new("warm-wasm", op, &wasm_timing)
        .ratio(ratio)
        .target(">= 500k/s, native_ratio <= 3", wasm_timing.ops_per_sec >= 500_000.0 && ratio <= 3.0)
        .write();
    Report::new("warm-native", op, &native_timing).write();

    let mut n = 0usize;
    let wasm_timing = measure::measure(PHASE, || {
        wasm_command(&mut wasm, &mut wasm_at, commands[n % 2]);
        n += 1;
    });
    let mut n = 0usize;
    let native_timing = measure::measure(PHASE, || {
        native_command(&mut native, &mut native_at, native_commands[n % 2]);
        n += 1;
    });
    let op = "one command as the runtime runs it: handle, then apply of its events (state evolving)";
    Report::new("warm-command-wasm", op, &wasm_timing).ratio(wasm_timing.mean_ns / native_timing.mean_ns).write();
    Report::new("warm-command-native", op, &native_timing).write();
}
