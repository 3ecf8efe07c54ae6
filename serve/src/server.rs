//! The server: routes, the bounded queue in front of the node, readiness and shutdown.

use crate::metrics::{self, Metrics, NodeReading};
use crate::pool::{NodeSpec, Pool};
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
use tollgate_runtime::Stats;

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
    /// In-flight requests were still running when the grace period ended.
    #[error("requests were still in flight {0:?} after shutdown began")]
    Grace(Duration),
}

/// What every route shares.
pub(crate) struct AppState {
    pool: OnceLock<Arc<Pool>>,
    queue: Arc<Semaphore>,
    queue_limit: usize,
    metrics: Arc<Metrics>,
}

impl AppState {
    /// The node's runtimes, or `503` while they are still catching up with the store.
    pub(crate) fn pool(&self) -> Result<&Pool, Problem> {
        self.pool
            .get()
            .map(|pool| pool.as_ref())
            .ok_or_else(|| Problem::unavailable("NF_SERVICE_FAILURE", "the node is still catching up with its store"))
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
    match state.queue.try_acquire() {
        Ok(_place) => next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await,
        Err(_) => Problem::unavailable(
            "NF_CONGESTION",
            format!("the node is holding {} requests, its limit; retry later", state.queue_limit),
        )
        .into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Result<&'static str, Problem> {
    state.pool().map(|_| "ready\n")
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let reading = match state.pool() {
        Ok(pool) => pool.reading().await,
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
/// let spec = NodeSpec { manifest: "edge.toml".into(), store: "file:/var/lib/edge".into(), name: "edge".into(), workers: 2 };
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
    let state = Arc::new(AppState {
        pool: OnceLock::new(),
        queue: Arc::new(Semaphore::new(config.queue)),
        queue_limit: config.queue,
        metrics: Arc::new(Metrics::default()),
    });
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
    let opening = tokio::task::spawn_blocking(move || Pool::open(&spec));
    tokio::pin!(shutdown, opening);
    let mut signalled = false;
    let opened = loop {
        tokio::select! {
            opened = &mut opening => break opened.map_err(|_| NodeError::Stopped).and_then(|r| r),
            () = &mut shutdown, if !signalled => {
                signalled = true;
                let _ = stop.send(true);
            }
        }
    };
    let pool = match opened {
        Ok(pool) => Arc::new(pool),
        Err(error) => {
            let _ = stop.send(true);
            let _ = server.await;
            return Err(ServeError::Open(error));
        }
    };
    let _ = state.pool.set(pool.clone());
    let ticker = tokio::spawn(tick(pool.clone(), stopped));
    tracing::info!("node ready");
    if !signalled {
        shutdown.await;
        let _ = stop.send(true);
    }
    tracing::info!("shutting down: finishing requests in flight");
    let _ = ticker.await;
    let deadline = tokio::time::Instant::now() + config.grace;
    match tokio::time::timeout_at(deadline, server).await {
        Ok(Ok(served)) => served?,
        Ok(Err(_)) => return Err(ServeError::Io(std::io::Error::other("the HTTP server task panicked"))),
        Err(_) => return Err(ServeError::Grace(config.grace)),
    }
    drop(state);
    // A connection's task may still be dropping its copy of the routes' state after the server
    // has returned; it lets go within the grace period or the shutdown fails.
    let mut pool = pool;
    let pool = loop {
        match Arc::try_unwrap(pool) {
            Ok(pool) => break pool,
            Err(_) if tokio::time::Instant::now() >= deadline => return Err(ServeError::Grace(config.grace)),
            Err(shared) => {
                pool = shared;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    tokio::task::spawn_blocking(move || pool.close())
        .await
        .map_err(|_| ServeError::Close(NodeError::Stopped))?
        .map_err(ServeError::Close)
}

/// Fires due timers, delivers the workers' writes and folds the next page of the log into
/// the grant exposure every [`TICK`] until `stopped`.
async fn tick(pool: Arc<Pool>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stopped.borrow_and_update() {
        tokio::select! {
            changed = stopped.changed() => if changed.is_err() { return },
            _ = every.tick() => {
                let ticked = pool.primary().with(|node| node.tick().and_then(|_| Ok(node.runtime().pump()?))).await;
                if let Ok(Err(e)) = ticked {
                    tracing::warn!(error = %e, "firing timers");
                }
                let folding = pool.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || folding.fold_exposure()).await {
                    tracing::warn!(error = %e, "folding the grant exposure");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    fn state(queue: usize) -> Arc<AppState> {
        Arc::new(AppState {
            pool: OnceLock::new(),
            queue: Arc::new(Semaphore::new(queue)),
            queue_limit: queue,
            metrics: Arc::new(Metrics::default()),
        })
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
