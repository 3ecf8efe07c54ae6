//! The server: routes, the bounded queue in front of the node, readiness and shutdown.

use crate::edge::Edge;
use crate::lattice::{self, NatsCore};
use crate::metrics::{self, Metrics, NodeReading};
use crate::pool::{NodeSpec, Pool, Role};
use crate::problem::Problem;
use crate::{api, nchf};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::future::Future;
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
}

impl Default for Config {
    fn default() -> Self {
        Config { queue: 1024, grace: Duration::from_secs(10) }
    }
}

/// Why a server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The node did not open (manifest, actors, store or catch-up).
    #[error("opening the node: {0}")]
    Open(#[source] NodeError),
    /// Closing the node (recording its counters) failed.
    #[error("closing the node: {0}")]
    Close(#[source] NodeError),
    /// Listening or accepting failed.
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
    /// NATS could not be used (`--nats`, `--core`, or the node's name on NATS).
    #[error("NATS: {0}")]
    Nats(String),
    /// In-flight requests were still running when the grace period ended.
    #[error("requests were still in flight {0:?} after shutdown began")]
    Grace(Duration),
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
    metrics: Arc<Metrics>,
}

impl AppState {
    fn new(queue: usize) -> AppState {
        AppState {
            backend: OnceLock::new(),
            queue: Arc::new(Semaphore::new(queue)),
            queue_limit: queue,
            metrics: Arc::new(Metrics::default()),
        }
    }

    fn backend(&self) -> Result<&Backend, Problem> {
        self.backend
            .get()
            .ok_or_else(|| Problem::unavailable("NF_SERVICE_FAILURE", "the node is still catching up with its store"))
    }

    /// The node's runtimes; `503` while they are still catching up with the store, `404` on
    /// an edge (it holds no aggregates).
    pub(crate) fn pool(&self) -> Result<&Pool, Problem> {
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

/// Reads the body, then holds a place in the bounded queue for the rest of the request, or
/// answers `503` with `Retry-After` at once when every place is taken.
async fn bounded(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            let detail = format!("the request body is over {MAX_BODY_BYTES} bytes or was cut off");
            return Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "REQUEST_BODY_TOO_LARGE", detail).into_response();
        }
        Err(_) => {
            let detail = format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs());
            return Problem::new(StatusCode::REQUEST_TIMEOUT, "REQUEST_TIMEOUT", detail).into_response();
        }
    };
    match state.take_place() {
        Ok(_place) => next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await,
        Err(full) => full.into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Result<&'static str, Problem> {
    state.backend().map(|_| "ready\n")
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let reading = match state.backend() {
        Ok(Backend::Core(pool)) => pool.reading().await,
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
    Problem::new(
        StatusCode::NOT_FOUND,
        "RESOURCE_URI_STRUCTURE_NOT_FOUND",
        format!("no route {}", request.uri().path()),
    )
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
        .route_layer(middleware::from_fn_with_state(state.clone(), bounded));
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
/// counters in the store and returns them.
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
    let state = Arc::new(AppState::new(config.queue));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut server_stopped = stopped.clone();
    let server = tokio::spawn(
        axum::serve(listener, router(state.clone()))
            .with_graceful_shutdown(async move {
                let _ = server_stopped.wait_for(|stop| *stop).await;
            })
            .into_future(),
    );

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
                if let Ok(owned) = backend.try_unwrap() {
                    let _ = close_backend(owned).await;
                }
                return Err(error);
            }
        },
    };
    let _ = state.backend.set(backend);
    let ticker = tokio::spawn(tick(state.clone(), stopped));
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
    let _ = ticker.await;
    let deadline = tokio::time::Instant::now() + config.grace;
    match tokio::time::timeout_at(deadline, server).await {
        Ok(Ok(served)) => served?,
        Ok(Err(_)) => return Err(ServeError::Io(std::io::Error::other("the HTTP server task panicked"))),
        Err(_) => return Err(ServeError::Grace(config.grace)),
    }
    let backend = state.backend.get().map(Backend::clone_arc);
    drop(state);
    // A connection's task (or a NATS request's) may still be dropping its copy of the routes'
    // state after the server has returned; it lets go within the grace period or the
    // shutdown fails.
    let Some(mut backend) = backend else { return Ok(Stats::default()) };
    loop {
        match backend.try_unwrap() {
            Ok(owned) => return close_backend(owned).await,
            Err(_) if tokio::time::Instant::now() >= deadline => return Err(ServeError::Grace(config.grace)),
            Err(shared) => {
                backend = shared;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// A backend owned outright, once every request has let go of it.
enum Owned {
    Core(Pool),
    Edge(Edge),
}

impl Backend {
    fn clone_arc(&self) -> Backend {
        match self {
            Backend::Core(pool) => Backend::Core(pool.clone()),
            Backend::Edge(edge) => Backend::Edge(edge.clone()),
        }
    }

    fn try_unwrap(self) -> Result<Owned, Backend> {
        match self {
            Backend::Core(pool) => Arc::try_unwrap(pool).map(Owned::Core).map_err(Backend::Core),
            Backend::Edge(edge) => Arc::try_unwrap(edge).map(Owned::Edge).map_err(Backend::Edge),
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
            let client =
                lattice::connect(&url, &spec.name).await.map_err(|e| ServeError::Nats(format!("--core {url}: {e}")))?;
            if tokio::time::timeout(NATS_READY, client.flush()).await.is_err() {
                tracing::warn!(url, "the core's NATS is not reachable yet; admitting from the grants held");
            }
            let link = NatsCore::new(client, &core, tokio::runtime::Handle::current());
            tokio::task::spawn_blocking(move || {
                let journal = Journal::open_for(&spec.store, &manifest.store)?;
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
    let client = lattice::connect(url, &spec.name).await.map_err(|e| nats(&e))?;
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

/// Closes the backend: a core records its counters; an edge hands back what it can.
async fn close_backend(owned: Owned) -> Result<Stats, ServeError> {
    match owned {
        Owned::Core(pool) => tokio::task::spawn_blocking(move || pool.close())
            .await
            .map_err(|_| ServeError::Close(NodeError::Stopped))?
            .map_err(ServeError::Close),
        Owned::Edge(edge) => {
            // Stopping cleanly settles every grant, used or not, so the core's money is free
            // at once; what cannot reach the core now is settled after the restart.
            match edge.settle(true).await {
                Ok(s) if s.pending > 0 => tracing::warn!(pending = s.pending, "grants left to settle after a restart"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "settling on shutdown"),
            }
            tokio::task::spawn_blocking(move || edge.close())
                .await
                .map_err(|_| ServeError::Close(NodeError::Stopped))?;
            Ok(Stats::default())
        }
    }
}

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
    let ticked = pool.primary().with(|node| node.tick().and_then(|_| Ok(node.runtime().pump()?))).await;
    if let Ok(Err(e)) = ticked {
        tracing::warn!(error = %e, "firing timers");
    }
    let folding = pool.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || folding.fold_exposure()).await {
        tracing::warn!(error = %e, "folding the grant exposure");
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
        Arc::new(AppState::new(queue))
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
