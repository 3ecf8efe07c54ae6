//! "warm": prepaid-account commands on a warm instance, wasm vs the same crate natively.
//!
//! The state S is realistic (opened, topped up, counters on four offers, eight open
//! reservations; about 1.5 KiB of JSON), loaded once from a snapshot. Then `warm-command`:
//! what the runtime does per command, one `execute` naming the state by its sequence, which
//! decides and evolves it. Commands alternate: `reserve` of a new reservation, then `release`
//! of it, so the state evolves and comes back to S.
//! - the wasm side lowers the command into the instance, the guest decodes it, decides on the
//!   state it holds, encodes the events, folds them into that state, and the drafts are lifted
//!   back; the native side runs the same SDK code (`Resident<PrepaidAccount>`) on the same
//!   command;
//! - `warm-command-wasm-parallel`: both cores, one instance and one account per thread;
//! - `command digest`: the SHA-256 the runtime takes of every command (to refuse a reused
//!   command id), on the same two commands.

#![allow(clippy::unwrap_used)] // a benchmark stops on the first unexpected error

use criterion::Throughput;
use std::hint::black_box;
use tollgate_benches::fixtures::{self, KEY};
use tollgate_benches::measure::{self, PHASE, Report};
use tollgate_host::aggregate::{self as host, Base, StoredState};
use tollgate_host::{Actor, AggregateActor, HostEngine, HostState, Limits};
use tollgate_host_test::fixtures::PREPAID_ACCOUNT;
use tollgate_sdk::aggregate::{self as sdk, Resident};

type Native = prepaid_account::PrepaidAccount;

fn wasm_command(wasm: &mut AggregateActor, at: &mut u64, command: &host::Command) {
    let drafts = wasm.execute(*at, command).expect("no trap").expect("accepted");
    *at += drafts.len() as u64;
}

fn native_command(native: &mut Resident<Native>, at: &mut u64, command: &tollgate_sdk::Command) {
    let drafts = native.execute(*at, command).expect("accepted");
    *at += drafts.len() as u64;
}

/// A warm instance holding S for `KEY` at `at`.
fn warm_instance(actor: &Actor, state: &[u8], at: u64) -> AggregateActor {
    let mut wasm = AggregateActor::new(actor.clone(), HostState::new()).expect("aggregate actor");
    let base = Base::Snapshot(StoredState { sequence: at, state: state.to_vec() });
    wasm.load(KEY, &base, &[]).expect("no trap").expect("S loads");
    wasm
}

fn main() {
    let engine = HostEngine::new(Limits::default()).expect("engine");
    let actor = Actor::load(&engine, fixtures::actor(PREPAID_ACCOUNT)).expect("load prepaid-account");

    let history = fixtures::realistic_history();
    let s0 = fixtures::fold(None, &fixtures::events(&history, 1));
    let start = history.len() as u64;
    let mut wasm = warm_instance(&actor, &s0, start);
    let mut native = Resident::<Native>::new();
    native.load(KEY, sdk::Base::Snapshot(start, &s0), std::iter::empty()).expect("S loads natively");

    let reserve = fixtures::command("bench-reserve", &fixtures::reserve("bench-r"), 1_700_000_000_000);
    let release = fixtures::command("bench-release", &fixtures::release("bench-r"), 1_700_000_000_001);
    let (native_reserve, native_release) = (fixtures::native_command(&reserve), fixtures::native_command(&release));
    println!("warm: account {KEY}: state {} bytes, reserve payload {} bytes", s0.len(), reserve.payload.len());

    let (mut wasm_at, mut native_at) = (start, start);
    for _ in 0..2 {
        wasm_command(&mut wasm, &mut wasm_at, &reserve);
        native_command(&mut native, &mut native_at, &native_reserve);
        assert_eq!(
            wasm.snapshot(KEY, wasm_at).expect("no trap"),
            native.snapshot(KEY, native_at),
            "wasm and native evolve the state alike"
        );
        wasm_command(&mut wasm, &mut wasm_at, &release);
        native_command(&mut native, &mut native_at, &native_release);
        assert_eq!(wasm.snapshot(KEY, wasm_at).expect("no trap").as_deref(), Some(&s0[..]), "release undoes reserve");
    }
    let commands = [&reserve, &release];
    let native_commands = [&native_reserve, &native_release];

    let mut c = measure::criterion();
    {
        let mut group = c.benchmark_group("warm");
        group.throughput(Throughput::Elements(2));
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
    let ratio = wasm_timing.mean_ns / native_timing.mean_ns;
    let op = "one command as the runtime runs it: execute (decide + evolve) on the state the instance holds, \
              reserve or release alternating on a ~1.5 KiB state";
    Report::new("warm-command-wasm", op, &wasm_timing)
        .ratio(ratio)
        .target(">= 500k/s, native_ratio <= 3", wasm_timing.ops_per_sec >= 500_000.0 && ratio <= 3.0)
        .write();
    Report::new("warm-command-native", op, &native_timing).write();

    let parallel = measure::parallel(2, PHASE, |_| {
        let mut wasm = warm_instance(&actor, &s0, start);
        let (mut at, mut n) = (start, 0usize);
        move || {
            wasm_command(&mut wasm, &mut at, commands[n % 2]);
            n += 1;
        }
    });
    Report::new("warm-command-wasm-parallel", &format!("{op}; two threads, an instance each"), &parallel).write();
}
