//! The server: routes, the bounded queue in front of the node, readiness and shutdown.

use crate::auth::{self, Verifier};
use crate::connections::{self, Limits};
use crate::edge::Edge;
use crate::lattice::{self, NatsCore};
use crate::metrics::{self, Metrics, NodeReading};
use crate::pool::{NodeSpec, Pool, Role};
use crate::problem::Problem;
use crate::tls::Tls;
use crate::{api, nchf};
use axum::Router;
use axum::body::{BodyDataStream, Bytes};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tollgate_node::NodeError;
use tollgate_runtime::manifest::ManifestError;
use tollgate_runtime::{Journal, Manifest, Stats};

/// The largest request body taken, in bytes; a larger one is answered `413`.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// How a server runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Requests the node may hold at once, waiting or running. One more is answered `503`
    /// with `Retry-After` at once, so neither memory nor latency grows without bound.
    pub queue: usize,
    /// How long shutdown waits for in-flight requests before giving up on them.
    pub grace: Duration,
    /// HTTP connections open at once, at most; `None`: as many as the descriptor limit
    /// allows after the node's own headroom ([`connections::connection_cap`]).
    pub max_connections: Option<usize>,
    /// How long a request's head may take to arrive (and a new connection's first one).
    pub header_timeout: Duration,
    /// How long a connection that has served a request may wait for the next one.
    pub idle_timeout: Duration,
    /// Bytes of request bodies the node holds at once (HTTP and NATS, received or being
    /// received); beyond it a request is answered `503` with `Retry-After` at once.
    pub body_budget: usize,
    /// The access tokens the HTTP API takes (the manifest's `[auth]`); `None`: no token is
    /// asked for.
    pub auth: Option<Arc<Verifier>>,
    /// Serve beyond loopback without TLS and tokens (`--insecure`): said on stderr, and by the
    /// `tollgate_insecure` gauge.
    pub insecure: bool,
    /// HTTP over TLS (`--tls-cert`, `--tls-key`, `--tls-client-ca`); `None`: cleartext.
    pub tls: Option<Arc<Tls>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            queue: 1024,
            grace: Duration::from_secs(10),
            max_connections: None,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_budget: DEFAULT_BODY_BUDGET,
            auth: None,
            insecure: false,
            tls: None,
        }
    }
}

impl Config {
    /// Refuses to serve on `address` beyond loopback without tokens, naming what is missing,
    /// unless `insecure`: anyone who reaches such a port could otherwise mint money.
    pub fn refuse_exposure(&self, address: SocketAddr) -> Result<(), ServeError> {
        if address.ip().is_loopback() || self.insecure {
            return Ok(());
        }
        let mut missing = Vec::new();
        if self.tls.is_none() {
            missing.push("TLS (--tls-cert FILE --tls-key FILE)");
        }
        if self.auth.is_none() {
            missing.push("access tokens (the manifest's [auth])");
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(ServeError::Exposed { address, missing: missing.join(" and ") })
    }
}

/// The default node-wide budget for bytes of request bodies: 64 MiB, 64 bodies of the
/// largest size, hundreds of thousands of admissions.
pub const DEFAULT_BODY_BUDGET: usize = 64 << 20;

/// Why a server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The node did not open (manifest, actors, store or catch-up).
    #[error("opening the node: {0}")]
    Open(#[source] NodeError),
    /// Closing the node (recording its counters) failed.
    #[error("closing the node: {0}")]
    Close(#[source] NodeError),
    /// The HTTP server failed (its task panicked).
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
    /// NATS could not be used (`--nats`, `--core`, or the node's name on NATS).
    #[error("NATS: {0}")]
    Nats(String),
    /// The node would listen beyond loopback without TLS or tokens.
    #[error(
        "--listen {address} is beyond loopback, but the node has no {missing}: anyone who reaches it could \
         charge or credit any account; configure them, or pass --insecure to serve anyway"
    )]
    Exposed {
        /// Where it would listen.
        address: SocketAddr,
        /// What it lacks.
        missing: String,
    },
    /// Requests were still waiting for or running on the node when the grace period ended
    /// (they were dropped); the counters of the work finished were recorded all the same.
    #[error(
        "{in_flight} requests were still in flight {grace:?} after shutdown began (dropped); the counters of the work finished are recorded"
    )]
    Grace {
        /// The grace period.
        grace: Duration,
        /// Requests still holding a place of the queue then (waiting for or running on the
        /// node's runtimes).
        in_flight: usize,
    },
    /// The descriptor limit leaves too few connections, or `--max-connections` is over it.
    #[error("{0}")]
    Connections(String),
}

/// What answers a node's requests.
pub(crate) enum Backend {
    /// A core: the manifest's actors on a primary runtime and workers.
    Core(Arc<Pool>),
    /// An edge: admissions from grants held by a core.
    Edge(Arc<Edge>),
}

/// What every route shares.
pub(crate) struct AppState {
    backend: OnceLock<Backend>,
    queue: Arc<Semaphore>,
    queue_limit: usize,
    bodies: Arc<BodyBudget>,
    metrics: Arc<Metrics>,
    /// The subscriber of each Nchf session, so its steps are served where its account is.
    pub(crate) sessions: nchf::session::Subscribers,
    /// The access tokens taken, if any are asked for.
    pub(crate) auth: Option<Arc<Verifier>>,
}

/// The node-wide budget for bytes of request bodies held: counted as they are allocated,
/// given back when the request has been answered.
pub(crate) struct BodyBudget {
    limit: usize,
    held: AtomicUsize,
    /// The most held at once since the allocator was last asked to give memory back.
    high: AtomicUsize,
    metrics: Arc<Metrics>,
}

/// Bytes of the budget one request holds; given back when dropped.
pub(crate) struct BodyCharge {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl BodyBudget {
    /// An empty charge, to grow as a body arrives.
    fn charge(self: &Arc<Self>) -> BodyCharge {
        BodyCharge { budget: self.clone(), bytes: 0 }
    }

    /// Whether the bodies held went past [`FLOOD_BYTES`] since the last call and are back
    /// below a quarter of it now.
    fn flood_ended(&self) -> bool {
        let held = self.held.load(Ordering::SeqCst);
        held <= FLOOD_BYTES / 4 && self.high.swap(held, Ordering::SeqCst) >= FLOOD_BYTES
    }

    fn over(&self) -> Problem {
        Problem::unavailable(
            "NF_CONGESTION",
            format!("the node is receiving {} bytes of request bodies, its limit; retry later", self.limit),
        )
    }
}

impl BodyCharge {
    /// Adds `bytes` to the charge, or answers `503` when the budget has no room for them.
    fn take(&mut self, bytes: usize) -> Result<(), Problem> {
        let budget = &self.budget;
        let before = budget
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                held.checked_add(bytes).filter(|&after| after <= budget.limit)
            })
            .map_err(|_| budget.over())?;
        budget.high.fetch_max(before + bytes, Ordering::SeqCst);
        self.bytes += bytes;
        budget.metrics.body_bytes.inc_by(i64::try_from(bytes).unwrap_or(i64::MAX));
        Ok(())
    }
}

impl Drop for BodyCharge {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::SeqCst);
        self.budget.metrics.body_bytes.dec_by(i64::try_from(self.bytes).unwrap_or(i64::MAX));
    }
}

impl AppState {
    fn new(config: &Config) -> AppState {
        let metrics = Arc::new(Metrics::default());
        metrics.body_budget.set(i64::try_from(config.body_budget).unwrap_or(i64::MAX));
        let bodies = Arc::new(BodyBudget {
            limit: config.body_budget,
            held: AtomicUsize::new(0),
            high: AtomicUsize::new(0),
            metrics: metrics.clone(),
        });
        AppState {
            auth: config.auth.clone(),
            backend: OnceLock::new(),
            queue: Arc::new(Semaphore::new(config.queue)),
            queue_limit: config.queue,
            bodies,
            metrics,
            sessions: nchf::session::Subscribers::default(),
        }
    }

    /// Charges a whole body already received (a NATS payload) to the budget: `413` over
    /// [`MAX_BODY_BYTES`], `503` with `Retry-After` when the budget has no room for it.
    pub(crate) fn take_body(&self, bytes: usize) -> Result<BodyCharge, Problem> {
        if bytes > MAX_BODY_BYTES {
            return Err(too_large());
        }
        let mut charge = self.bodies.charge();
        charge.take(bytes)?;
        Ok(charge)
    }

    fn backend(&self) -> Result<&Backend, Problem> {
        self.backend
            .get()
            .ok_or_else(|| Problem::unavailable("NF_SERVICE_FAILURE", "the node is still catching up with its store"))
    }

    /// The node's runtimes; `503` while they are still catching up with the store, `404` on
    /// an edge (it holds no aggregates).
    pub(crate) fn pool(&self) -> Result<&Arc<Pool>, Problem> {
        match self.backend()? {
            Backend::Core(pool) => Ok(pool),
            Backend::Edge(_) => Err(Problem::new(
                StatusCode::NOT_FOUND,
                "RESOURCE_URI_STRUCTURE_NOT_FOUND",
                "an edge node answers admissions only; commands, streams and read models are its core's",
            )),
        }
    }

    /// The edge, when this node is one; `503` while it is still opening.
    pub(crate) fn edge(&self) -> Result<Option<&Edge>, Problem> {
        Ok(match self.backend()? {
            Backend::Edge(edge) => Some(edge),
            Backend::Core(_) => None,
        })
    }

    /// Places of the bounded queue taken now: requests waiting or running.
    fn places_taken(&self) -> usize {
        self.queue_limit - self.queue.available_permits()
    }

    /// Counts a request refused for its token, by `reason`.
    pub(crate) fn metrics_refused(&self, reason: &'static str) {
        self.metrics.refused(reason);
    }

    /// A place in the bounded queue for a request that writes, once a core's reactions are
    /// within their bound ([`Pool::caught_up`]): `503` with `Retry-After` when every place
    /// is taken or the reactions stay too far behind.
    pub(crate) async fn take_write_place(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Problem> {
        let place = self.take_place()?;
        if let Ok(Backend::Core(pool)) = self.backend() {
            pool.caught_up().await?;
        }
        Ok(place)
    }

    /// A place in the bounded queue for one request, or `503` with `Retry-After` when every
    /// place is taken.
    pub(crate) fn take_place(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Problem> {
        self.queue.try_acquire().map_err(|_| {
            Problem::unavailable(
                "NF_CONGESTION",
                format!("the node is holding {} requests, its limit; retry later", self.queue_limit),
            )
        })
    }
}

/// How long a request's body may take to arrive. Bodies are read before a request takes a
/// place in the queue, so a slow client holds its own connection, never a place of the node's.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// `413`: a body over [`MAX_BODY_BYTES`] (said before it is read, when its length is).
fn too_large() -> Problem {
    let detail = format!("the request body is over {MAX_BODY_BYTES} bytes or was cut off");
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "REQUEST_BODY_TOO_LARGE", detail)
}

/// The smallest buffer a body is read into; it doubles as the body arrives.
const FIRST_BODY_BUFFER: usize = 8 << 10;

/// Reads a body into one buffer, charging the budget for the buffer as it grows (so the
/// budget counts what is allocated: at most twice what has arrived, at most the declared
/// length); `413` past [`MAX_BODY_BYTES`], `503` past the budget.
async fn read_body(
    chunks: &mut BodyDataStream,
    declared: Option<usize>,
    charge: &mut BodyCharge,
) -> Result<Bytes, Problem> {
    let ceiling = declared.unwrap_or(MAX_BODY_BYTES).min(MAX_BODY_BYTES);
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|_| too_large())?;
        let wanted = buffer.len() + chunk.len();
        if wanted > MAX_BODY_BYTES {
            return Err(too_large());
        }
        if wanted > buffer.capacity() {
            let grown = wanted.max(2 * buffer.capacity()).max(FIRST_BODY_BUFFER).min(ceiling.max(wanted));
            charge.take(grown - buffer.capacity())?;
            buffer.reserve_exact(grown - buffer.len());
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buffer))
}

/// Bytes of a refused body read and thrown away after the answer: the client still sending
/// it then reads the answer instead of a reset connection (a lingering close), and a
/// connection kept alive serves its next request.
const LINGER_BYTES: usize = 2 * MAX_BODY_BYTES;

/// Reads and drops what is left of a refused body (at most [`LINGER_BYTES`], within
/// [`BODY_TIMEOUT`]) beside the answer; nothing of it is kept or charged.
fn linger(mut rest: BodyDataStream) {
    tokio::spawn(tokio::time::timeout(BODY_TIMEOUT, async move {
        let mut dropped = 0;
        while let Some(Ok(chunk)) = rest.next().await {
            dropped += chunk.len();
            if dropped > LINGER_BYTES {
                break;
            }
        }
    }));
}

/// Reads the body within the node's body budget, then holds a place in the bounded queue
/// for the rest of the request, or answers `503` with `Retry-After` at once when the budget
/// or every place is taken. The body's bytes stay charged until the request is answered.
async fn bounded(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let mut chunks = body.into_data_stream();
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES) {
        linger(chunks);
        return too_large().into_response();
    }
    let mut charge = state.bodies.charge();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, read_body(&mut chunks, declared, &mut charge)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(problem)) => {
            drop(charge);
            linger(chunks);
            return problem.into_response();
        }
        Err(_) => {
            let detail = format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs());
            return Problem::new(StatusCode::REQUEST_TIMEOUT, "REQUEST_TIMEOUT", detail).into_response();
        }
    };
    // Reads never wait for the primary; writes wait while it is far behind.
    let place =
        if parts.method == axum::http::Method::GET { state.take_place() } else { state.take_write_place().await };
    let response = match place {
        Ok(_place) => next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await,
        Err(refused) => refused.into_response(),
    };
    drop(charge);
    response
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Result<&'static str, Problem> {
    state.backend().map(|_| "ready\n")
}

/// Checks the request's access token before anything else runs (its body is not read): the
/// route's scope, or for commands only the token, whose scope the handler checks once it
/// knows the command. Refusals are counted by reason. A refused body is lingered over, not
/// dropped: dropping it would close the connection under a client about to reuse it.
async fn authorize(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let Some(verifier) = &state.auth else { return next.run(request).await };
    let matched = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_default();
    let checked = match auth::route_scope(&matched) {
        Some(needed) => verifier.require(request.headers(), needed),
        None => verifier.check(request.headers()),
    };
    match checked {
        Ok(scopes) => {
            request.extensions_mut().insert(scopes);
            next.run(request).await
        }
        Err(refusal) => {
            state.metrics.refused(refusal.reason());
            linger(request.into_body().into_data_stream());
            refusal.into_response()
        }
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(verifier) = state.auth.as_ref().filter(|v| v.protects_metrics())
        && let Err(refusal) = verifier.require(&headers, auth::scope::METRICS)
    {
        state.metrics.refused(refusal.reason());
        return refusal.into_response();
    }
    let reading = match state.backend() {
        Ok(Backend::Core(pool)) => pool.reading(),
        Ok(Backend::Edge(edge)) => NodeReading { edge: edge.report().await, ..NodeReading::default() },
        Err(_) => NodeReading::default(),
    };
    let mut response = state.metrics.render(reading).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

async fn not_found(request: Request) -> Problem {
    let detail = format!("no route {}", request.uri().path());
    linger(request.into_body().into_data_stream());
    Problem::new(StatusCode::NOT_FOUND, "RESOURCE_URI_STRUCTURE_NOT_FOUND", detail)
}

fn router(state: Arc<AppState>) -> Router {
    let work = Router::new()
        .route("/v1/admissions", post(api::admissions))
        .route("/v1/commands/{stream}/{key}", post(api::commands))
        .route("/v1/reports/{stream}/{key}", post(api::reports))
        .route("/v1/streams/{stream}/{key}", get(api::streams))
        .route("/v1/kv/{bucket}/{key}", get(api::kv))
        .nest(
            nchf::PREFIX,
            Router::new()
                .route("/chargingdata", post(nchf::routes::create_route))
                .route("/chargingdata/{reference}/update", post(nchf::routes::update_route))
                .route("/chargingdata/{reference}/release", post(nchf::routes::release_route)),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), bounded))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .merge(work)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.metrics.clone(), metrics::track))
        .with_state(state)
}

/// How often the primary runtime fires due timers and delivers what the workers wrote when no
/// request asks it to.
const TICK: Duration = Duration::from_millis(100);

/// Serves a node over HTTP on `listener` until `shutdown` completes.
///
/// The listener answers at once (`/healthz`); the node's runtimes are opened meanwhile (see
/// [`NodeSpec`]), and `/readyz` and every request route answer `503` until they have caught up
/// with the store. While serving, the primary runtime fires due timers every 100 ms. When
/// `shutdown` completes the server stops accepting connections, lets the requests in flight
/// finish (for at most [`Config::grace`]), delivers the last writes, records the node's
/// counters in the store and returns them. Requests still in flight after the grace period
/// are dropped (a runtime stuck on one is left to end with the process) and the counters of
/// the work finished are recorded all the same; the answer is then [`ServeError::Grace`].
/// Connections are bounded and timed out as [`crate::connections`] says.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tollgate_serve::{Config, NodeSpec, serve};
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let spec = NodeSpec {
///     manifest: "core.toml".into(),
///     store: "file:/var/lib/core".into(),
///     name: "core".into(),
///     workers: 2,
///     ..NodeSpec::default()
/// };
/// // Whatever should stop the server: a signal, a test's channel.
/// let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let stats = serve(listener, spec, Config::default(), async { let _ = stopped.await; }).await?;
/// println!("{} commands accepted", stats.accepted);
/// # Ok(()) }
/// ```
pub async fn serve(
    listener: TcpListener,
    spec: NodeSpec,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<Stats, ServeError> {
    // The name is a token of NATS subjects and a prefix of an edge's grants.
    if spec.nats.is_some() || spec.role != Role::Core {
        lattice::check_node_name(&spec.name).map_err(|e| ServeError::Nats(format!("--node: {e}")))?;
    }
    let limits = limits(&config, spec.workers + 1)?;
    tracing::info!(max_connections = limits.max_connections, "accepting connections");
    let state = Arc::new(AppState::new(&config));
    if config.insecure {
        state.metrics.insecure();
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut server = tokio::spawn(connections::serve_http(
        listener,
        router(state.clone()),
        limits,
        config.tls.clone(),
        state.metrics.clone(),
        stopped.clone(),
    ));

    // A signal while the node is still opening stops the server, but the node is still
    // opened (it cannot be interrupted) and then closed, so its counters are recorded.
    let opening = open(&spec);
    tokio::pin!(shutdown, opening);
    let mut signalled = false;
    let opened = loop {
        tokio::select! {
            opened = &mut opening => break opened,
            () = &mut shutdown, if !signalled => {
                signalled = true;
                let _ = stop.send(true);
            }
        }
    };
    let backend = match opened {
        Ok(backend) => backend,
        Err(error) => {
            let _ = stop.send(true);
            let _ = server.await;
            return Err(error);
        }
    };
    let service = match &spec.nats {
        None => None,
        Some(url) => match answer_nats(url, &spec, &backend, state.clone()).await {
            Ok(service) => Some(service),
            Err(error) => {
                let _ = stop.send(true);
                let _ = server.await;
                let _ = close(backend, tokio::time::Instant::now(), config.grace, 0).await;
                return Err(error);
            }
        },
    };
    let rerouting = match &backend {
        Backend::Core(pool) => pool.reroute_every().map(|every| (pool.clone(), every)),
        Backend::Edge(_) => None,
    };
    // Set before the ticker starts: it ticks what it finds there.
    let _ = state.backend.set(backend);
    let mut chores = vec![
        tokio::spawn(tick(state.clone(), stopped.clone())),
        tokio::spawn(give_back_memory(state.bodies.clone(), stopped.clone())),
    ];
    if let Some((pool, every)) = rerouting {
        chores.push(tokio::spawn(reroute(pool, every, stopped.clone())));
    }
    tracing::info!(role = spec.role.name(), "node ready");
    if !signalled {
        shutdown.await;
        let _ = stop.send(true);
    }
    tracing::info!("shutting down: finishing requests in flight");
    if let Some(service) = service {
        // No new requests over NATS; those in flight finish below with the HTTP ones.
        let _ = service.stop().await;
    }
    let deadline = tokio::time::Instant::now() + config.grace;
    let drained = tokio::time::timeout_at(deadline, &mut server).await;
    // Requests over NATS hold places of the queue too.
    while state.places_taken() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let in_flight = state.places_taken();
    match drained {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(ServeError::Io(std::io::Error::other("the HTTP server task panicked"))),
        // The connections still open are closed, their requests dropped; what ran is kept.
        Err(_) => {
            server.abort();
            let _ = server.await;
        }
    }
    // Ticks and reroutes stop at once, unless one waits for a stuck runtime.
    for mut chore in chores {
        if tokio::time::timeout_at(deadline, &mut chore).await.is_err() {
            chore.abort();
        }
    }
    if in_flight > 0 {
        tracing::warn!(in_flight, "requests still in flight after the grace period; recording what was done");
    }
    let backend = state.backend.get().map(Backend::clone_arc);
    drop(state);
    let Some(backend) = backend else { return Ok(Stats::default()) };
    let stats = close(backend, deadline, config.grace, in_flight).await?;
    match in_flight {
        0 => Ok(stats),
        in_flight => Err(ServeError::Grace { grace: config.grace, in_flight }),
    }
}

/// How long closing may take past the grace period, at least: delivering the last writes and
/// recording the counters.
const CLOSE_AT_LEAST: Duration = Duration::from_secs(1);

/// What closing keeps of the grace period after the primary's last delivery step: measuring
/// the backlog left, recording the counters and stopping the runtimes.
const CLOSE_RESERVE: Duration = Duration::from_secs(2);

/// The connection limits of `config` for a node of `runtimes` runtimes, checked against the
/// descriptor limit.
fn limits(config: &Config, runtimes: usize) -> Result<Limits, ServeError> {
    let nofile = connections::descriptor_limit();
    let cap = connections::connection_cap(nofile, runtimes).ok_or_else(|| {
        ServeError::Connections(format!(
            "the descriptor limit (`ulimit -n`) is {nofile}: too few for a node of {runtimes} runtimes and {} connections; raise it",
            connections::MIN_CONNECTIONS
        ))
    })?;
    let max_connections = match config.max_connections {
        Some(wanted) if wanted > cap => {
            return Err(ServeError::Connections(format!(
                "--max-connections {wanted} is over what the descriptor limit (`ulimit -n` {nofile}) leaves after the node's own headroom: {cap}; raise the limit or ask for fewer"
            )));
        }
        Some(wanted) => wanted,
        None => cap,
    };
    Ok(Limits { max_connections, header_timeout: config.header_timeout, idle_timeout: config.idle_timeout })
}

/// Every `every` until `stopped`: moves requests waiting for a stuck worker to free ones.
async fn reroute(pool: Arc<Pool>, every: Duration, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = connections::stopping(&mut stopped) => return,
            _ = interval.tick() => pool.reroute(),
        }
    }
}

/// Bodies held at once that make a flood: once it is over, the allocator is asked to give
/// the memory it freed back to the system.
const FLOOD_BYTES: usize = 16 << 20;

/// Every second until `stopped`: after a flood of bodies, gives freed memory back.
async fn give_back_memory(bodies: Arc<BodyBudget>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = connections::stopping(&mut stopped) => return,
            _ = every.tick() => if bodies.flood_ended() {
                let _ = tokio::task::spawn_blocking(trim_allocator).await;
            },
        }
    }
}

/// Hands the allocator's free pages back to the system. glibc keeps what a flood of bodies
/// freed: its mmap threshold rises to the largest block freed (so later body buffers come from
/// its arenas), and arenas only shrink from the top. Measured: 1,000 bodies of 1 MiB left a
/// node 100-120 MiB larger without this, a few MiB with it.
fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointer; it only returns free memory of the arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Closes the backend. A core records its counters even when requests are still in flight
/// (a runtime stuck on a call counts up to its last finished one), with at least a second
/// past `deadline` to deliver the last writes and append them; an edge settles its grants
/// once every request has let go of it (within the grace period, or the shutdown fails,
/// counting `in_flight` requests, at least the one holding it).
async fn close(
    backend: Backend,
    deadline: tokio::time::Instant,
    grace: Duration,
    in_flight: usize,
) -> Result<Stats, ServeError> {
    let edge = match backend {
        Backend::Core(pool) => {
            // The last delivery step ends a little before the deadline, so that measuring
            // and recording fit inside the grace period.
            let last_step = deadline.checked_sub(CLOSE_RESERVE).unwrap_or(deadline);
            let until = last_step.max(tokio::time::Instant::now() + CLOSE_AT_LEAST).into_std();
            return tokio::task::spawn_blocking(move || pool.close(until))
                .await
                .map_err(|_| ServeError::Close(NodeError::Stopped))?
                .map_err(ServeError::Close);
        }
        Backend::Edge(edge) => edge,
    };
    let mut shared = edge;
    let edge = loop {
        match Arc::try_unwrap(shared) {
            Ok(edge) => break edge,
            Err(_) if tokio::time::Instant::now() >= deadline => {
                return Err(ServeError::Grace { grace, in_flight: in_flight.max(1) });
            }
            Err(still) => {
                shared = still;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    // Stopping cleanly settles every grant, used or not, so the core's money is free at
    // once; what cannot reach the core now is settled after the restart.
    match edge.settle(true).await {
        Ok(s) if s.pending > 0 => tracing::warn!(pending = s.pending, "grants left to settle after a restart"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "settling on shutdown"),
    }
    tokio::task::spawn_blocking(move || edge.close()).await.map_err(|_| ServeError::Close(NodeError::Stopped))?;
    Ok(Stats::default())
}

impl Backend {
    fn clone_arc(&self) -> Backend {
        match self {
            Backend::Core(pool) => Backend::Core(pool.clone()),
            Backend::Edge(edge) => Backend::Edge(edge.clone()),
        }
    }
}

/// Opens what answers the node's requests: a core's runtimes, or an edge and its link to
/// the core. Blocks (on a blocking thread) until they have caught up with the store.
async fn open(spec: &NodeSpec) -> Result<Backend, ServeError> {
    let spec = spec.clone();
    match spec.role.clone() {
        Role::Core => tokio::task::spawn_blocking(move || Pool::open(&spec))
            .await
            .map_err(|_| NodeError::Stopped)
            .and_then(|r| r)
            .map(|pool| Backend::Core(Arc::new(pool)))
            .map_err(ServeError::Open),
        Role::Edge { url, core } => {
            let manifest =
                Manifest::load(&spec.manifest).map_err(|e| ServeError::Open(NodeError::Runtime(e.into())))?;
            let Some(policy) = manifest.quota.clone() else {
                return Err(ServeError::Open(NodeError::Runtime(
                    ManifestError::Invalid {
                        path: spec.manifest.clone(),
                        field: "quota".into(),
                        message: "is missing: an edge node (`--role edge`) sizes its grants by `[quota]`".into(),
                    }
                    .into(),
                )));
            };
            let client = lattice::connect(&url, &spec.name, &spec.access)
                .await
                .map_err(|e| ServeError::Nats(format!("--core {url}: {e}")))?;
            if tokio::time::timeout(NATS_READY, client.flush()).await.is_err() {
                tracing::warn!(url, "the core's NATS is not reachable yet; admitting from the grants held");
            }
            let link = NatsCore::new(client, &core, &spec.name, tokio::runtime::Handle::current());
            tokio::task::spawn_blocking(move || {
                let journal = Journal::open_for(&spec.store, &manifest.store, &spec.access)?;
                Edge::open(&spec.name, journal, link, policy)
            })
            .await
            .map_err(|_| NodeError::Stopped)
            .and_then(|r| r)
            .map(|edge| Backend::Edge(Arc::new(edge)))
            .map_err(ServeError::Open)
        }
    }
}

/// Registers the node's NATS endpoints; waits (a little) for the connection, so a node that
/// says it is ready answers over NATS too.
async fn answer_nats(
    url: &str,
    spec: &NodeSpec,
    backend: &Backend,
    state: Arc<AppState>,
) -> Result<async_nats::service::Service, ServeError> {
    let nats = |e: &dyn std::fmt::Display| ServeError::Nats(format!("--nats {url}: {e}"));
    let client = lattice::connect(url, &spec.name, &spec.access).await.map_err(|e| nats(&e))?;
    let (streams, reports) = match backend {
        Backend::Core(pool) => {
            let reports = pool.primary().with(|node| node.runtime().report_streams()).await.map_err(|e| nats(&e))?;
            (pool.streams().to_vec(), reports)
        }
        Backend::Edge(_) => (Vec::new(), Vec::new()),
    };
    let service = lattice::start(client.clone(), &spec.name, spec.role.name(), &streams, &reports, state)
        .await
        .map_err(|e| nats(&e))?;
    if tokio::time::timeout(NATS_READY, client.flush()).await.is_err() {
        tracing::warn!(url, "NATS is not reachable yet; the node answers there once it is");
    }
    Ok(service)
}

/// How long a starting node waits for NATS before it declares itself ready without it.
const NATS_READY: Duration = Duration::from_secs(5);

/// Every [`TICK`] until `stopped`: a core fires due timers, delivers the workers' writes,
/// folds the next page of the log into the grant exposure and expires grants past validity
/// and margin; an edge settles the grants it has finished with.
async fn tick(state: Arc<AppState>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let Ok(backend) = state.backend().map(Backend::clone_arc) else { return };
    drop(state);
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stopped.borrow_and_update() {
        tokio::select! {
            changed = stopped.changed() => if changed.is_err() { return },
            _ = every.tick() => match &backend {
                Backend::Core(pool) => tick_core(pool).await,
                Backend::Edge(edge) => {
                    if let Err(e) = edge.settle(false).await {
                        tracing::warn!(error = %e, "settling grants");
                    }
                }
            },
        }
    }
}

async fn tick_core(pool: &Arc<Pool>) {
    // A batch of due timers per turn of the primary's thread, their reactions delivered in
    // pages between them: neither a burst of timers nor their reactions hold up the tick
    // (the backlog measured below, the exposure folded, grants reaped).
    let mut fired = 0;
    loop {
        match pool.primary().with(move |node| node.fire_timers(fired)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => fired += n,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "firing timers");
                break;
            }
        }
        pool.deliver();
    }
    pool.deliver();
    let folding = pool.clone();
    let folded = tokio::task::spawn_blocking(move || folding.fold_exposure().and_then(|()| folding.measure_backlog()));
    if let Ok(Err(e)) = folded.await {
        tracing::warn!(error = %e, "folding the grant exposure and measuring the backlog");
    }
    if let Err(e) = pool.reap().await {
        tracing::warn!(error = %e, "expiring grants past validity");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    fn state(queue: usize) -> Arc<AppState> {
        Arc::new(AppState::new(&Config { queue, ..Config::default() }))
    }

    async fn call(
        state: &Arc<AppState>,
        method: &str,
        path: &str,
    ) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let request = Request::builder().method(method).uri(path).body(Body::from("{}")).unwrap();
        let response = router(state.clone()).oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    #[tokio::test]
    async fn a_full_queue_answers_503_with_retry_after_at_once() {
        let state = state(2);
        let _held = state.queue.clone().acquire_many_owned(2).await.unwrap();
        let (status, headers, body) = call(&state, "POST", "/v1/admissions").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!((body["status"].as_u64(), body["cause"].as_str()), (Some(503), Some("NF_CONGESTION")), "{body}");
        assert!(body["detail"].as_str().unwrap().contains("holding 2 requests"), "{body}");
        // Health and metrics are not behind the queue.
        assert_eq!(call(&state, "GET", "/healthz").await.0, StatusCode::OK);
        assert_eq!(call(&state, "GET", "/metrics").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn before_the_node_has_caught_up_requests_and_readiness_answer_503() {
        let state = state(8);
        let (status, headers, body) = call(&state, "GET", "/readyz").await;
        assert_eq!((status, &headers[header::RETRY_AFTER]), (StatusCode::SERVICE_UNAVAILABLE, &HeaderValue::from(1)));
        assert!(body["detail"].as_str().unwrap().contains("catching up"), "{body}");
        let (status, _, _) = call(&state, "GET", "/v1/streams/account/alice").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(call(&state, "GET", "/healthz").await.0, StatusCode::OK);
        // The places taken by those requests were given back.
        assert_eq!(state.queue.available_permits(), 8);
    }

    #[tokio::test]
    async fn an_unknown_route_is_problem_details_counted_as_unmatched() {
        let state = state(8);
        let (status, _, body) = call(&state, "GET", "/v2/nothing").await;
        assert_eq!((status, body["cause"].as_str()), (StatusCode::NOT_FOUND, Some("RESOURCE_URI_STRUCTURE_NOT_FOUND")));
        assert!(body["detail"].as_str().unwrap().contains("/v2/nothing"), "{body}");
        let text = state.metrics.render(NodeReading::default());
        assert!(
            text.contains(r#"tollgate_http_requests_total{route="unmatched",method="GET",status="404"} 1"#),
            "{text}"
        );
    }
}
