//! What every store carries: WASI with nothing granted, the memory cap, the guest's captured
//! stderr, the log lines kept and the import budgets of the call in progress, the host state,
//! and the services a policy's imports are served by.

use crate::budget::{Budget, BudgetExceeded, ImportUse};
use crate::engine::HostEngine;
use crate::host_state::HostState;
use crate::services::PolicyServices;
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Most stderr kept per call: enough for a panic message and backtrace hint. Past it the
/// oldest bytes go, so the tail (where the panic message is) stays.
const STDERR_CAP: usize = 64 << 10;

#[derive(Default)]
struct Output {
    /// The last bytes written to stderr, at most `2 * STDERR_CAP` (trimmed to the cap in
    /// batches).
    tail: Vec<u8>,
    /// Bytes dropped from the front of the tail since the last take.
    dropped: u64,
    /// Bytes written to stdout and stderr in the call in progress, and the most it may write.
    written: u64,
    budget: u64,
}

/// The guest's stdout and stderr. Stdout is discarded; of stderr the last 64 KiB of a call are
/// kept (twice that between trims) and drained after every call, so a panic message reaches
/// the error. What a call writes to either counts against its `output_bytes` budget: past it
/// a write traps the call (a guest writing in a loop would otherwise hold the host for as long
/// as it likes, spending almost no fuel).
#[derive(Clone, Default)]
pub struct GuestOutput(Arc<Mutex<Output>>);

/// One of the guest's output streams.
#[derive(Clone)]
struct GuestStream {
    output: GuestOutput,
    /// Whether the bytes are kept (stderr) or only counted (stdout).
    keep: bool,
}

impl GuestOutput {
    fn lock(&self) -> std::sync::MutexGuard<'_, Output> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes what the guest wrote to stderr since the last call: its last 64 KiB, after a line
    /// saying how much came before when there was more.
    pub fn take(&self) -> String {
        let mut output = self.lock();
        let (tail, dropped) = (std::mem::take(&mut output.tail), std::mem::take(&mut output.dropped));
        drop(output);
        let keep = tail.len().min(STDERR_CAP);
        let cut = dropped.saturating_add((tail.len() - keep) as u64);
        let text = String::from_utf8_lossy(&tail[tail.len() - keep..]);
        if cut == 0 { text.into_owned() } else { format!("[{cut} earlier bytes of stderr dropped]\n{text}") }
    }

    /// Drops what the guest wrote to stderr since the last call, without copying it.
    pub fn clear(&self) {
        let mut output = self.lock();
        output.tail.clear();
        output.dropped = 0;
    }

    /// Starts a call that may write `budget` bytes.
    pub(crate) fn reset(&self, budget: u64) {
        let mut output = self.lock();
        output.written = 0;
        output.budget = budget;
    }

    fn stream(&self, keep: bool) -> GuestStream {
        GuestStream { output: self.clone(), keep }
    }
}

impl GuestStream {
    fn push(&self, bytes: &[u8]) -> Result<(), BudgetExceeded> {
        let mut output = self.output.lock();
        output.written = output.written.saturating_add(bytes.len() as u64);
        if output.written > output.budget {
            return Err(BudgetExceeded { budget: Budget::OutputBytes, limit: output.budget });
        }
        if !self.keep {
            return Ok(());
        }
        // Only the last STDERR_CAP bytes of `bytes` can survive.
        let skip = bytes.len().saturating_sub(STDERR_CAP);
        output.dropped = output.dropped.saturating_add(skip as u64);
        output.tail.extend_from_slice(&bytes[skip..]);
        if output.tail.len() > 2 * STDERR_CAP {
            let excess = output.tail.len() - STDERR_CAP;
            output.tail.drain(..excess);
            output.dropped = output.dropped.saturating_add(excess as u64);
        }
        Ok(())
    }
}

/// Most bytes of one guest log message passed on; the rest is cut and the cut marked.
pub const LOG_LINE_CAP: usize = 4 << 10;
/// Most bytes of a log line's context passed on.
const LOG_CONTEXT_CAP: usize = 256;
/// Most log lines one call may emit; later lines are dropped and counted.
pub const LOG_LINES_PER_CALL: u32 = 256;
/// Most log bytes (messages and contexts, after cutting) one call may emit.
pub const LOG_BYTES_PER_CALL: usize = 64 << 10;

/// What one call may still log: lines beyond the per-call caps are dropped and counted, and
/// one marker line says so when the call ends ([`LogBudget::finish`]).
#[derive(Debug, Default)]
pub struct LogBudget {
    lines: u32,
    bytes: usize,
    dropped_lines: u64,
    dropped_bytes: u64,
}

impl LogBudget {
    /// Lets a line through (cut to [`LOG_LINE_CAP`], the cut marked) or drops it when the
    /// call is over its budget.
    pub(crate) fn admit(&mut self, context: String, message: String) -> Option<(String, String)> {
        let size = context.len().saturating_add(message.len());
        if self.lines >= LOG_LINES_PER_CALL || self.bytes >= LOG_BYTES_PER_CALL {
            self.dropped_lines = self.dropped_lines.saturating_add(1);
            self.dropped_bytes = self.dropped_bytes.saturating_add(size as u64);
            return None;
        }
        let context = cut(context, LOG_CONTEXT_CAP);
        let message = cut(message, LOG_LINE_CAP);
        self.lines += 1;
        self.bytes = self.bytes.saturating_add(context.len() + message.len());
        Some((context, message))
    }

    /// Ends the call's budget: emits one warning naming what was dropped, if anything (also
    /// seen by the host state's observer), and starts the next call afresh.
    pub(crate) fn finish(&mut self, host_state: &HostState, actor: &str, function: &str) {
        if self.dropped_lines > 0 {
            let message = format!(
                "guest log truncated: {} lines ({} bytes) dropped, over the limit of {LOG_LINES_PER_CALL} lines or {LOG_BYTES_PER_CALL} bytes per call",
                self.dropped_lines, self.dropped_bytes
            );
            tracing::warn!(target: "tollgate::guest", actor, function, "{message}");
            host_state.log("warn", "tollgate", &message);
        }
        *self = LogBudget::default();
    }
}

/// `text` cut to at most `cap` bytes (at a character boundary), with the cut marked.
fn cut(mut text: String, cap: usize) -> String {
    if text.len() <= cap {
        return text;
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.len() - end;
    text.truncate(end);
    text.push_str(&format!(" [{cut} bytes cut]"));
    text
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestStream {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestStream {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        // Past the kept tail the oldest bytes are dropped, not refused; past the call's budget
        // the call traps.
        self.push(&bytes).map_err(|e| StreamError::Trap(e.into()))
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Any amount: past the cap the oldest bytes are dropped instead.
        Ok(STDERR_CAP)
    }
}

impl tokio::io::AsyncWrite for GuestStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = self.push(buf).map(|()| buf.len()).map_err(std::io::Error::other);
        std::task::Poll::Ready(written)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Caps linear memory and remembers that the cap was hit, so the error can say so.
pub struct MemoryCap {
    limit: usize,
    /// Set when a growth past the limit was refused.
    pub hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            wasmtime::bail!("memory cap of {} bytes reached (asked for {desired})", self.limit);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// Most host resources (streams, pollables, bucket handles) one instance may hold at once;
/// creating one more traps. Resources outlive the call that made them, so without a cap a
/// guest could fill host memory a handle at a time, call after call.
pub const MAX_RESOURCES: usize = 10_000;

/// The data of every store.
pub struct StoreState {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) memory: MemoryCap,
    pub(crate) output: GuestOutput,
    pub(crate) log_budget: LogBudget,
    /// What the call in progress has used of its import budgets (but `output_bytes`, which
    /// `output` counts).
    pub(crate) budget: ImportUse,
    pub(crate) host_state: HostState,
    pub(crate) services: Option<Arc<dyn PolicyServices>>,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl StoreState {
    /// A new store: no preopens, no environment, no arguments, no network, stdin empty,
    /// stdout discarded, stderr captured, the host state's virtual clock, deterministic randomness,
    /// at most [`MAX_RESOURCES`] host resources, and the fuel, wall-clock backstop and import
    /// budgets of one call ([`StoreState::arm`]).
    pub fn new_store(
        engine: &HostEngine,
        host_state: HostState,
        services: Option<Arc<dyn PolicyServices>>,
    ) -> Store<StoreState> {
        let output = GuestOutput::default();
        let wasi = WasiCtxBuilder::new()
            .stdout(output.stream(false))
            .stderr(output.stream(true))
            .wall_clock(host_state.clock().clone())
            .monotonic_clock(host_state.clock().clone())
            .secure_random(wasmtime_wasi::Deterministic::new(b"tollgate-seed".to_vec()))
            .insecure_random(wasmtime_wasi::Deterministic::new(b"tollgate-insecure".to_vec()))
            .insecure_random_seed(0x7011_6a7e)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let state = StoreState {
            wasi,
            table,
            memory: MemoryCap { limit: engine.limits().memory_bytes, hit: false },
            output,
            log_budget: LogBudget::default(),
            budget: ImportUse::new(engine.limits().imports),
            host_state,
            services,
        };
        let mut store = Store::new(engine.engine(), state);
        store.limiter(|s| &mut s.memory);
        StoreState::arm(engine, &mut store, 1);
        store
    }

    /// Gives `store` what one call may use: [`HostEngine::arm`]'s fuel and wall-clock backstop,
    /// and the engine's import budgets `times` over (a call doing the work of `times` calls).
    pub fn arm(engine: &HostEngine, store: &mut Store<StoreState>, times: u64) {
        engine.arm(store);
        let budgets = engine.limits().imports.times(times);
        let state = store.data_mut();
        state.memory.hit = false;
        state.output.reset(budgets.output_bytes);
        state.budget.reset(budgets);
    }

    /// WASI's randomness, which the budgeted `wasi:random` imports hand on to.
    pub(crate) fn wasi_random(&mut self) -> &mut wasmtime_wasi::random::WasiRandomCtx {
        self.wasi.random()
    }

    /// Counts `amount` against `budget` of the call in progress; over it, the trap to raise.
    pub(crate) fn charge(&mut self, budget: Budget, amount: usize) -> wasmtime::Result<()> {
        Ok(self.budget.charge(budget, amount as u64)?)
    }
}
