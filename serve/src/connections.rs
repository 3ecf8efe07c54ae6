//! The HTTP listener: accepts connections and serves each with hyper (HTTP/1.1, or HTTP/2
//! when the client opens with its preface), bounding how many are open and how long one may
//! wait without a request.
//!
//! - **A cap** on open connections ([`Limits::max_connections`], derived from the descriptor
//!   limit by [`connection_cap`]). At the cap, the connection idle the longest (no request in
//!   flight) is closed to admit the new one; when none is idle the new one is closed at once.
//!   So silent connections cannot starve `/healthz` or a new client, and the node's own
//!   files and sockets always find a descriptor.
//! - **Timeouts.** A new connection must bring its first request's head within
//!   [`Limits::header_timeout`]; an HTTP/1.1 request's head must arrive within it too, also
//!   the next one's on a kept-alive connection (hyper's header-read timer runs from the end of
//!   the previous response). A connection with no request in flight that has served one is
//!   closed after [`Limits::idle_timeout`] (HTTP/2's idle connections, and HTTP/1.1's when
//!   that is the shorter).
//! - **Protocol bounds.** HTTP/1.1 heads are read into at most [`H1_MAX_BUF`] bytes;
//!   HTTP/2 allows [`H2_MAX_STREAMS`] concurrent streams and [`H2_MAX_HEADER_LIST`] bytes of
//!   headers per request.
//! - **Graceful shutdown.** Once stopped, no connection is accepted; each open one finishes
//!   the requests it has in flight and closes (HTTP/2 with `GOAWAY`).
//!
//! [`serve_connection`] is generic over the stream, so a TLS acceptor can wrap each accepted
//! stream before it is served.

use crate::metrics::Metrics;
use crate::tls::Tls;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The largest HTTP/1.1 read buffer, bytes: bounds a request's head (a longer one is
/// answered `431`) and what a connection buffers.
pub const H1_MAX_BUF: usize = 16 << 10;

/// HTTP/2 streams one connection may have open at once.
pub const H2_MAX_STREAMS: u32 = 128;

/// The largest HTTP/2 header list of one request, bytes.
pub const H2_MAX_HEADER_LIST: u32 = 16 << 10;

/// Descriptors kept for the node itself whatever the workers: standard streams, the
/// listener, the tokio and store files, NATS connections, compiled-code and log files.
pub const BASE_HEADROOM: u64 = 64;

/// Descriptors kept per runtime (each has its own event loop, store handles and guest I/O).
pub const HEADROOM_PER_RUNTIME: u64 = 8;

/// The fewest connections a node serves with; a descriptor limit leaving fewer is refused.
pub const MIN_CONNECTIONS: usize = 16;

/// How a listener bounds its connections.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once, at most.
    pub max_connections: usize,
    /// How long a request's head may take to arrive (and a new connection's first one).
    pub header_timeout: Duration,
    /// How long a connection that has served a request may wait for the next one.
    pub idle_timeout: Duration,
}

/// The connection cap under a descriptor limit of `nofile` with `runtimes` runtimes: the
/// limit minus the node's own headroom, `BASE_HEADROOM + HEADROOM_PER_RUNTIME x runtimes`
/// (for 1,024 descriptors and 17 runtimes: 1,024 - 200 = 824), or `None` when that leaves
/// fewer than [`MIN_CONNECTIONS`].
///
/// ```
/// use tollgate_serve::connections::connection_cap;
/// assert_eq!(connection_cap(1024, 17), Some(824));
/// assert_eq!(connection_cap(128, 17), None);
/// ```
pub fn connection_cap(nofile: u64, runtimes: usize) -> Option<usize> {
    let headroom = BASE_HEADROOM.saturating_add(HEADROOM_PER_RUNTIME.saturating_mul(runtimes as u64));
    let cap = usize::try_from(nofile.saturating_sub(headroom)).unwrap_or(usize::MAX);
    (cap >= MIN_CONNECTIONS).then_some(cap)
}

/// The process's soft limit on open descriptors (`ulimit -n`); `u64::MAX` when unlimited.
pub fn descriptor_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Why the listener closed a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// The oldest idle one, to admit a new one at the cap.
    Evicted,
    /// At the cap with none idle: closed as it was accepted.
    Refused,
    /// No complete request head within the header timeout.
    HeaderTimeout,
    /// No request within the idle timeout after the last one.
    IdleTimeout,
    /// The TLS handshake failed (e.g. no client certificate where one is required).
    TlsHandshake,
}

impl Closed {
    /// The `reason` label of `tollgate_http_connections_closed_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Closed::Evicted => "evicted",
            Closed::Refused => "refused",
            Closed::HeaderTimeout => "header-timeout",
            Closed::IdleTimeout => "idle-timeout",
            Closed::TlsHandshake => "tls-handshake",
        }
    }
}

/// One open connection as the table sees it.
struct Entry {
    in_flight: u32,
    /// When it last became idle (or was accepted), while `in_flight` is 0.
    idle_since: Instant,
    /// Whether it has served a request (then it idles under the idle timeout, else the
    /// header timeout).
    served: bool,
    /// Told to close (evicted or timed out); no longer counted against the cap.
    closing: Option<Closed>,
    close: Arc<Notify>,
}

/// Every open connection, with the idle ones ordered by when they became idle.
#[derive(Default)]
struct Table {
    entries: HashMap<u64, Entry>,
    /// Idle connections that have not served a request yet: `(idle since, id)`.
    fresh: BTreeSet<(Instant, u64)>,
    /// Idle connections that have served one.
    kept: BTreeSet<(Instant, u64)>,
    /// Connections not closing: what the cap counts.
    live: usize,
    next_id: u64,
}

impl Table {
    fn idle_index(&mut self, served: bool) -> &mut BTreeSet<(Instant, u64)> {
        if served { &mut self.kept } else { &mut self.fresh }
    }

    /// Tells connection `id` (idle) to close.
    fn close(&mut self, id: u64, why: Closed) {
        if let Some(entry) = self.entries.get_mut(&id)
            && entry.closing.is_none()
        {
            entry.closing = Some(why);
            entry.close.notify_one();
            let (since, served) = (entry.idle_since, entry.served);
            if entry.in_flight == 0 {
                self.idle_index(served).remove(&(since, id));
            }
            self.live -= 1;
        }
    }

    fn oldest_idle(&self) -> Option<u64> {
        match (self.fresh.first(), self.kept.first()) {
            (Some(a), Some(b)) => Some(if a <= b { a.1 } else { b.1 }),
            (a, b) => a.or(b).map(|(_, id)| *id),
        }
    }
}

/// The table of open connections and the limits it keeps.
pub(crate) struct Connections {
    table: Mutex<Table>,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl Connections {
    pub(crate) fn new(limits: Limits, metrics: Arc<Metrics>) -> Connections {
        metrics.connections_limit.set(i64::try_from(limits.max_connections).unwrap_or(i64::MAX));
        Connections { table: Mutex::default(), limits, metrics }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a new connection in, closing the oldest idle one at the cap (then `true`
    /// beside it); `None` when the cap is reached and none is idle.
    fn admit(self: &Arc<Self>, now: Instant) -> Option<(Connection, bool)> {
        let mut table = self.table();
        let evicted = table.live >= self.limits.max_connections;
        if evicted {
            let oldest = table.oldest_idle()?;
            table.close(oldest, Closed::Evicted);
            self.metrics.connection_closed(Closed::Evicted);
        }
        let id = table.next_id;
        table.next_id += 1;
        let close = Arc::new(Notify::new());
        let entry = Entry { in_flight: 0, idle_since: now, served: false, closing: None, close: close.clone() };
        table.entries.insert(id, entry);
        table.fresh.insert((now, id));
        table.live += 1;
        self.metrics.connections.inc();
        Some((Connection { id, close, connections: self.clone() }, evicted))
    }

    /// Closes every idle connection past its timeout; returns when the next may be due.
    fn expire(&self, now: Instant) -> Instant {
        let mut table = self.table();
        let (header, idle) = (self.limits.header_timeout, self.limits.idle_timeout);
        while let Some(&(_, id)) = table.fresh.first().filter(|(since, _)| *since + header <= now) {
            table.close(id, Closed::HeaderTimeout);
            self.metrics.connection_closed(Closed::HeaderTimeout);
        }
        while let Some(&(_, id)) = table.kept.first().filter(|(since, _)| *since + idle <= now) {
            table.close(id, Closed::IdleTimeout);
            self.metrics.connection_closed(Closed::IdleTimeout);
        }
        let due = [table.fresh.first().map(|(s, _)| *s + header), table.kept.first().map(|(s, _)| *s + idle)];
        // A connection idle from now on is due no sooner than the shorter timeout.
        due.into_iter().flatten().fold(now + header.min(idle), Instant::min)
    }

    /// Frees a descriptor (the process ran out): none when connections told to close have
    /// yet to give theirs back, else by closing the oldest idle one. `false` when there is
    /// nothing to close.
    fn shed(&self) -> bool {
        let mut table = self.table();
        if table.entries.len() > table.live {
            return true;
        }
        let Some(oldest) = table.oldest_idle() else { return false };
        table.close(oldest, Closed::Evicted);
        self.metrics.connection_closed(Closed::Evicted);
        true
    }
}

/// A connection's place in the table; leaving it (when the connection's task ends) frees it.
pub(crate) struct Connection {
    id: u64,
    close: Arc<Notify>,
    connections: Arc<Connections>,
}

impl Connection {
    /// A request has started on this connection.
    fn busy(&self) {
        let mut table = self.connections.table();
        let Some(entry) = table.entries.get_mut(&self.id) else { return };
        entry.in_flight += 1;
        if entry.in_flight == 1 && entry.closing.is_none() {
            let (since, served) = (entry.idle_since, entry.served);
            table.idle_index(served).remove(&(since, self.id));
        }
    }

    /// A request on this connection has been answered.
    fn done(&self) {
        let mut table = self.connections.table();
        let Some(entry) = table.entries.get_mut(&self.id) else { return };
        entry.in_flight = entry.in_flight.saturating_sub(1);
        entry.served = true;
        if entry.in_flight == 0 && entry.closing.is_none() {
            entry.idle_since = Instant::now();
            let since = entry.idle_since;
            table.kept.insert((since, self.id));
        }
    }

    /// Whether the connection has no request in flight.
    fn idle(&self) -> bool {
        self.connections.table().entries.get(&self.id).is_none_or(|e| e.in_flight == 0)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut table = self.connections.table();
        if let Some(entry) = table.entries.remove(&self.id) {
            if entry.closing.is_none() {
                table.live -= 1;
                if entry.in_flight == 0 {
                    let key = (entry.idle_since, self.id);
                    table.idle_index(entry.served).remove(&key);
                }
            }
            self.connections.metrics.connections.dec();
        }
    }
}

/// Marks its connection busy while a request is answered.
struct InFlight(Arc<Connection>);

impl InFlight {
    fn new(connection: &Arc<Connection>) -> InFlight {
        connection.busy();
        InFlight(connection.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.done();
    }
}

/// The router as a hyper service that tells the table when its connection is busy.
#[derive(Clone)]
struct Tracked {
    router: TowerToHyperService<Router>,
    connection: Arc<Connection>,
}

type Answer = Pin<Box<dyn Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send>>;

impl hyper::service::Service<hyper::Request<Incoming>> for Tracked {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = Answer;

    fn call(&self, request: hyper::Request<Incoming>) -> Answer {
        let in_flight = InFlight::new(&self.connection);
        let answer = self.router.call(request);
        Box::pin(async move {
            let response = answer.await;
            drop(in_flight);
            response
        })
    }
}

/// The HTTP/1.1 and HTTP/2 settings every connection is served with.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(H1_MAX_BUF)
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST);
    builder
}

/// Accepts connections on `listener` and serves `router` on each until `stop` turns true;
/// then accepts no more and returns once every open connection has finished its requests
/// and closed. Dropping the returned future closes every connection at once.
pub(crate) async fn serve_http(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<Arc<Tls>>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = Arc::new(builder(&limits));
    let handshake_timeout = limits.header_timeout;
    let connections = Arc::new(Connections::new(limits, metrics.clone()));
    let (shutdown, shutting_down) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut expiry = Instant::now();
    loop {
        tokio::select! {
            () = stopping(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Some((connection, evicted)) = connections.admit(Instant::now()) else {
                        metrics.connection_closed(Closed::Refused);
                        continue;
                    };
                    // Answers are small and latency matters: no Nagle delay.
                    let _ = stream.set_nodelay(true);
                    let (builder, router, shutting_down) = (builder.clone(), router.clone(), shutting_down.clone());
                    match &tls {
                        None => {
                            tasks.spawn(serve_connection(TokioIo::new(stream), builder, router, connection, shutting_down));
                        }
                        Some(tls) => {
                            // The handshake runs in the connection's own task, bounded like a
                            // request's head: a client that never finishes it holds nothing else.
                            let (acceptor, timeout, metrics) = (tls.acceptor(), handshake_timeout, metrics.clone());
                            tasks.spawn(async move {
                                match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                                    Ok(Ok(stream)) => {
                                        serve_connection(TokioIo::new(stream), builder, router, connection, shutting_down).await
                                    }
                                    Ok(Err(e)) => {
                                        metrics.connection_closed(Closed::TlsHandshake);
                                        tracing::debug!(error = %e, "TLS handshake failed");
                                    }
                                    Err(_) => metrics.connection_closed(Closed::HeaderTimeout),
                                }
                            });
                        }
                    }
                    if evicted {
                        // The evicted connection's task gives its descriptor back when it runs.
                        tokio::task::yield_now().await;
                    }
                }
                // The client went away between connecting and being accepted.
                Err(e) if went_away(&e) => tracing::debug!(error = %e, "accepting a connection"),
                Err(e) => {
                    if !out_of_descriptors(&e) {
                        tracing::warn!(error = %e, "accepting a connection");
                    } else if !connections.shed() {
                        tracing::warn!(error = %e, "no descriptor for a new connection, and no idle connection to close");
                    }
                    // Out of descriptors: those of connections being closed come back in a
                    // moment, or the node's own files took the headroom and the oldest idle
                    // connection was closed. Any other failure: not retried in a hot loop.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            },
            () = tokio::time::sleep_until(expiry) => expiry = connections.expire(Instant::now()),
            Some(_) = tasks.join_next() => {}
        }
    }
    drop(listener);
    let _ = shutdown.send(true);
    while tasks.join_next().await.is_some() {}
}

/// Completes once `stop` turns true (or its sender is gone).
pub(crate) async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

fn went_away(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset)
}

fn out_of_descriptors(e: &std::io::Error) -> bool {
    let raw = e.raw_os_error();
    raw == Some(rustix::io::Errno::MFILE.raw_os_error()) || raw == Some(rustix::io::Errno::NFILE.raw_os_error())
}

/// Serves one connection until it closes, the table closes it (it idled too long, or was
/// the oldest idle one at the cap), or the server shuts down (then it finishes the requests
/// in flight first). Generic over the stream: a TLS acceptor wraps a TCP stream before it
/// comes here.
pub(crate) async fn serve_connection<Io>(
    io: Io,
    builder: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    connection: Connection,
    mut shutdown: watch::Receiver<bool>,
) where
    Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let connection = Arc::new(connection);
    let close = connection.close.clone();
    let service = Tracked { router: TowerToHyperService::new(router), connection: connection.clone() };
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    let mut graceful = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    let timed_out = e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout);
                    if timed_out {
                        connection.connections.metrics.connection_closed(Closed::HeaderTimeout);
                    }
                    tracing::debug!(error = %e, "connection ended");
                }
                break;
            }
            () = close.notified() => {
                // Idle when told: dropped at once. A request that started meanwhile is
                // finished first.
                if connection.idle() {
                    break;
                }
                if !graceful {
                    graceful = true;
                    served.as_mut().graceful_shutdown();
                }
            }
            () = stopping(&mut shutdown), if !graceful => {
                graceful = true;
                served.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn connections(max: usize) -> Arc<Connections> {
        let limits = Limits {
            max_connections: max,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        };
        Arc::new(Connections::new(limits, Arc::new(Metrics::default())))
    }

    #[test]
    fn the_cap_leaves_headroom_for_the_node() {
        assert_eq!(connection_cap(1024, 17), Some(1024 - 64 - 8 * 17));
        assert_eq!(connection_cap(65_536, 1), Some(65_536 - 72));
        assert_eq!(connection_cap(u64::MAX, 1025).map(|c| c > 1 << 40), Some(true));
        assert_eq!(connection_cap(200, 17), None, "fewer than {MIN_CONNECTIONS} left");
        assert!(descriptor_limit() > 0);
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_idle_connection_goes_first_and_busy_ones_stay() {
        let connections = connections(3);
        let closing = |c: &Connection| connections.table().entries[&c.id].closing;
        let a = Arc::new(connections.admit(Instant::now()).unwrap().0);
        let b = connections.admit(Instant::now()).unwrap().0;
        let c = Arc::new(connections.admit(Instant::now()).unwrap().0);
        // `a` is answering a request; `b` is the oldest idle one.
        let a_busy = InFlight::new(&a);
        let d = connections.admit(Instant::now()).unwrap().0;
        assert_eq!((closing(&b), closing(&a)), (Some(Closed::Evicted), None));
        // `c` has served a request since: `d`, idle since it came, is older.
        drop(InFlight::new(&c));
        let e = Arc::new(connections.admit(Instant::now()).unwrap().0);
        assert_eq!(closing(&d), Some(Closed::Evicted));
        let f = Arc::new(connections.admit(Instant::now()).unwrap().0);
        assert_eq!(closing(&c), Some(Closed::Evicted));
        // Every connection counted is answering a request: a new one is refused.
        let (_e_busy, _f_busy) = (InFlight::new(&e), InFlight::new(&f));
        assert!(connections.admit(Instant::now()).is_none(), "all busy: refused");
        drop(a_busy);
        let g = connections.admit(Instant::now());
        assert!(g.is_some(), "`a` is idle again: it goes");
        assert_eq!(closing(&a), Some(Closed::Evicted));
        assert_eq!(connections.table().live, 3);
    }

    #[tokio::test]
    async fn idle_connections_close_after_their_timeout() {
        let connections = connections(10);
        let t0 = Instant::now();
        let fresh = connections.admit(t0).unwrap().0;
        let kept = Arc::new(connections.admit(t0).unwrap().0);
        drop(InFlight::new(&kept));
        let busy = Arc::new(connections.admit(t0).unwrap().0);
        let _in_flight = InFlight::new(&busy);
        connections.expire(t0 + Duration::from_secs(9));
        assert!(connections.table().entries.values().all(|e| e.closing.is_none()));
        connections.expire(t0 + Duration::from_secs(11));
        assert_eq!(connections.table().entries[&fresh.id].closing, Some(Closed::HeaderTimeout));
        assert!(connections.table().entries[&kept.id].closing.is_none());
        connections.expire(Instant::now() + Duration::from_secs(61));
        assert_eq!(connections.table().entries[&kept.id].closing, Some(Closed::IdleTimeout));
        assert!(connections.table().entries[&busy.id].closing.is_none(), "a busy one never times out here");
        drop(fresh);
        assert_eq!(connections.table().entries.len(), 2);
        assert_eq!(connections.table().live, 1);
    }
}
