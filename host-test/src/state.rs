//! What every store carries: WASI with nothing granted, the memory cap, the guest's captured
//! stderr, the fakes, and the services a policy's imports are served by.

use crate::engine::HostEngine;
use crate::fakes::Fakes;
use crate::services::PolicyServices;
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Most stderr kept per call: enough for a panic message and backtrace hint.
const STDERR_CAP: usize = 64 << 10;

/// The guest's stderr, drained after every call so a panic message reaches the error.
#[derive(Clone, Default)]
pub struct GuestStderr(Arc<Mutex<Vec<u8>>>);

impl GuestStderr {
    /// Takes what the guest wrote since the last call.
    pub fn take(&self) -> String {
        let bytes = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Drops what the guest wrote since the last call, without copying it.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn push(&self, bytes: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = STDERR_CAP.saturating_sub(buf.len());
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
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
        // Past the cap the rest is dropped, not refused: a chatty guest must not trap.
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
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
    pub(crate) fakes: Fakes,
    pub(crate) services: Option<Arc<dyn PolicyServices>>,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl StoreState {
    /// A new store: no preopens, no environment, no arguments, no network, stdin empty,
    /// stdout discarded, stderr captured, the fakes' virtual clock, deterministic randomness.
    pub fn new_store(
        engine: &HostEngine,
        fakes: Fakes,
        services: Option<Arc<dyn PolicyServices>>,
    ) -> Store<StoreState> {
        let stderr = GuestStderr::default();
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .wall_clock(fakes.clock().clone())
            .monotonic_clock(fakes.clock().clone())
            .secure_random(wasmtime_wasi::Deterministic::new(b"tollgate-seed".to_vec()))
            .insecure_random(wasmtime_wasi::Deterministic::new(b"tollgate-insecure".to_vec()))
            .insecure_random_seed(0x7011_6a7e)
            .build();
        let state = StoreState {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap { limit: engine.limits().memory_bytes, hit: false },
            stderr,
            fakes,
            services,
        };
        let mut store = Store::new(engine.engine(), state);
        store.limiter(|s| &mut s.memory);
        store
    }
}
