//! What every store carries: WASI with nothing granted, the memory cap, the guest's captured
//! stderr, the log budget of the call in progress, the host state, and the services a policy's
//! imports are served by.

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
struct StderrTail {
    /// The last bytes written, at most `2 * STDERR_CAP` (trimmed to the cap in batches).
    bytes: Vec<u8>,
    /// Bytes dropped from the front since the last take.
    dropped: u64,
}

/// The guest's stderr, drained after every call so a panic message reaches the error. Holds at
/// most the last 64 KiB of a call (twice that between trims).
#[derive(Clone, Default)]
pub struct GuestStderr(Arc<Mutex<StderrTail>>);

impl GuestStderr {
    /// Takes what the guest wrote since the last call: its last 64 KiB, after a line saying
    /// how much came before when there was more.
    pub fn take(&self) -> String {
        let tail = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        let keep = tail.bytes.len().min(STDERR_CAP);
        let cut = tail.dropped.saturating_add((tail.bytes.len() - keep) as u64);
        let text = String::from_utf8_lossy(&tail.bytes[tail.bytes.len() - keep..]);
        if cut == 0 { text.into_owned() } else { format!("[{cut} earlier bytes of stderr dropped]\n{text}") }
    }

    /// Drops what the guest wrote since the last call, without copying it.
    pub fn clear(&self) {
        let mut tail = self.0.lock().unwrap_or_else(|e| e.into_inner());
        tail.bytes.clear();
        tail.dropped = 0;
    }

    fn push(&self, bytes: &[u8]) {
        let mut tail = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Only the last STDERR_CAP bytes of `bytes` can survive.
        let skip = bytes.len().saturating_sub(STDERR_CAP);
        tail.dropped = tail.dropped.saturating_add(skip as u64);
        tail.bytes.extend_from_slice(&bytes[skip..]);
        if tail.bytes.len() > 2 * STDERR_CAP {
            let excess = tail.bytes.len() - STDERR_CAP;
            tail.bytes.drain(..excess);
            tail.dropped = tail.dropped.saturating_add(excess as u64);
        }
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

impl IsTerminal for GuestStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStderr {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestStderr {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestStderr {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        // Past the cap the oldest bytes are dropped, not refused: a chatty guest must not trap.
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Any amount: past the cap the oldest bytes are dropped instead.
        Ok(STDERR_CAP)
    }
}

impl tokio::io::AsyncWrite for GuestStderr {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
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

/// The data of every store.
pub struct StoreState {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) memory: MemoryCap,
    pub(crate) stderr: GuestStderr,
    pub(crate) log_budget: LogBudget,
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
    /// and the fuel and wall-clock backstop of one call ([`HostEngine::arm`]).
    pub fn new_store(
        engine: &HostEngine,
        host_state: HostState,
        services: Option<Arc<dyn PolicyServices>>,
    ) -> Store<StoreState> {
        let stderr = GuestStderr::default();
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .wall_clock(host_state.clock().clone())
            .monotonic_clock(host_state.clock().clone())
            .secure_random(wasmtime_wasi::Deterministic::new(b"tollgate-seed".to_vec()))
            .insecure_random(wasmtime_wasi::Deterministic::new(b"tollgate-insecure".to_vec()))
            .insecure_random_seed(0x7011_6a7e)
            .build();
        let state = StoreState {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap { limit: engine.limits().memory_bytes, hit: false },
            stderr,
            log_budget: LogBudget::default(),
            host_state,
            services,
        };
        let mut store = Store::new(engine.engine(), state);
        store.limiter(|s| &mut s.memory);
        engine.arm(&mut store);
        store
    }
}
