//! The native JSON API: the node protocol over HTTP.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /v1/admissions` | an [`Admission`] | `200` with the decision (`granted` or `denied`) |
//! | `POST /v1/commands/{stream}/{key}` | `{"id": ..., "command": ...}` | `200` with `{"accepted": [events]}` (a repeated id: `{"accepted": [the original events], "repeat": true}` and the header `Tollgate-Repeat: true`); an actor's refusal is ProblemDetails `422` with `cause` the rejection code and its `kind` |
//! | `POST /v1/reports/{stream}/{key}` | `{"id": ..., "event": ..., "correlation_id"?: ...}` | `200` with `{"recorded": event}`; `403` for a stream the manifest's `[reports] streams` does not list or a `tollgate.` stream |
//! | `GET /v1/streams/{stream}/{key}` | | `200` with the key's events, oldest first |
//! | `GET /v1/kv/{bucket}/{key}` | | `200` with the read model's value as committed, never waiting for the primary's backlog (the header `Tollgate-Backlog-Events` says how many events the read models had not yet seen); `?consistent=true` first waits for the writes answered so far to be delivered; `404` when there is none |

use crate::auth::{Scopes, allow_command};
use crate::problem::Problem;
use crate::server::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Arc;
use tollgate_node::view::to_value;
use tollgate_node::{Admission, Reply, Request};
use tollgate_runtime::{RESERVED_PREFIX, is_reserved};

/// The header that marks a command answered as a repeat of an id committed before (HTTP and
/// NATS): its original outcome, nothing ran again.
pub const REPEAT_HEADER: &str = "Tollgate-Repeat";

/// A JSON answer, and whether it repeats one given before.
pub(crate) struct Answer {
    /// The body.
    pub(crate) body: Value,
    /// The command's id was committed before: [`REPEAT_HEADER`] says so.
    pub(crate) repeat: bool,
}

impl From<Value> for Answer {
    fn from(body: Value) -> Answer {
        Answer { body, repeat: false }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = Json(self.body).into_response();
        if self.repeat {
            response.headers_mut().insert(REPEAT_HEADER, axum::http::HeaderValue::from_static("true"));
        }
        response
    }
}

/// The body of `POST /v1/reports/{stream}/{key}`, and of `tollgate.<node>.report.<stream>`
/// over NATS, where the key is in the body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReportBody {
    /// The key (over NATS; in the path over HTTP).
    #[serde(default)]
    pub(crate) key: Option<String>,
    /// The fact's id (its idempotency key).
    pub(crate) id: String,
    /// The event, externally tagged.
    pub(crate) event: Value,
    /// The request it belongs to (default: the key).
    #[serde(default)]
    pub(crate) correlation_id: Option<String>,
}

/// The body of `POST /v1/commands/{stream}/{key}`, and of `tollgate.<node>.command.<stream>`
/// over NATS, where the key is in the body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandBody {
    /// The aggregate's key (over NATS; in the path over HTTP).
    #[serde(default)]
    pub(crate) key: Option<String>,
    /// The command id (its idempotency key).
    pub(crate) id: String,
    /// The command, externally tagged.
    pub(crate) command: Value,
}

/// Decodes a JSON body, or says what is wrong with it (and where).
pub(crate) fn body<T: DeserializeOwned>(bytes: Result<Bytes, BytesRejection>) -> Result<T, Problem> {
    let bytes = bytes.map_err(|e| Problem::new(e.status(), "INVALID_MSG_FORMAT", e.body_text()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Problem::malformed(format!("the body is not the JSON this route takes: {e}")))
}

/// A node reply as the API answers it: an actor's refusal becomes ProblemDetails `422` (the
/// request was the JSON the route takes; the actor refused what it asked, whatever the
/// rejection's kind), anything else the reply's JSON.
fn outcome(reply: Reply) -> Result<Answer, Problem> {
    match reply {
        Reply::Rejected { kind, code, message } => {
            Err(Problem { kind: Some(kind), ..Problem::new(StatusCode::UNPROCESSABLE_ENTITY, &code, message) })
        }
        Reply::Decision(decision) => Ok(to_value(&decision).into()),
        Reply::Repeated(repeated) => Ok(Answer { body: to_value(&repeated), repeat: true }),
        other => Ok(to_value(&other).into()),
    }
}

/// Decides an admission: on a core by its policy, on an edge from the grants it holds.
pub(crate) async fn admit(state: &AppState, admission: Admission) -> Result<Value, Problem> {
    if let Some(edge) = state.edge()? {
        return Ok(to_value(&edge.admit(admission).await?));
    }
    let pool = state.pool()?;
    let reply = pool.for_key(&admission.subscriber).request(Request::Admit(admission)).await?;
    pool.wrote();
    outcome(reply).map(|answer| answer.body)
}

/// Runs a command on the aggregate owning `stream`.
pub(crate) async fn execute(
    state: &AppState,
    stream: String,
    key: String,
    id: String,
    command: Value,
) -> Result<Answer, Problem> {
    let pool = state.pool()?;
    // By key alone: an account's commands and its subscriber's admissions go to one runtime.
    let reply = pool.for_key(&key).request(Request::Execute { stream, key: key.clone(), id, command }).await?;
    pool.wrote();
    outcome(reply)
}

/// Records a fact from outside on `stream`, if the manifest's `[reports] streams` lists it.
pub(crate) async fn report(state: &AppState, stream: String, key: String, body: ReportBody) -> Result<Answer, Problem> {
    let ReportBody { id, event, correlation_id, .. } = body;
    let forbidden = |detail: String| Problem::new(StatusCode::FORBIDDEN, "REPORT_NOT_ALLOWED", detail);
    if is_reserved(&stream) {
        return Err(forbidden(format!(
            "stream `{stream}` is the runtime's own (`{RESERVED_PREFIX}*`): no one reports on it"
        )));
    }
    let pool = state.pool()?;
    let node = pool.for_key(&key);
    let request = Request::Report { stream: stream.clone(), key, id, event, correlation_id };
    let reply = node
        .with(move |node| {
            if !node.runtime().report_streams().contains(&stream) {
                return Ok(Err(stream));
            }
            node.handle(request).map(Ok)
        })
        .await??
        .map_err(|stream| {
            forbidden(format!(
                "stream `{stream}` takes no reports on this node: the manifest's `[reports] streams` does not list it"
            ))
        })?;
    pool.wrote();
    outcome(reply)
}

pub(crate) async fn reports(
    State(state): State<Arc<AppState>>,
    Path((stream, key)): Path<(String, String)>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Answer, Problem> {
    let body: ReportBody = body(bytes)?;
    if body.key.as_ref().is_some_and(|k| *k != key) {
        return Err(Problem::malformed(format!("`key` in the body differs from the path's `{key}`")));
    }
    report(&state, stream, key, body).await
}

pub(crate) async fn admissions(
    State(state): State<Arc<AppState>>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, Problem> {
    Ok(Json(admit(&state, body(bytes)?).await?))
}

pub(crate) async fn commands(
    State(state): State<Arc<AppState>>,
    Path((stream, key)): Path<(String, String)>,
    scopes: Option<Extension<Scopes>>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let CommandBody { key: in_body, id, command } = body(bytes)?;
    if in_body.as_ref().is_some_and(|k| *k != key) {
        return Err(Problem::malformed(format!("`key` in the body differs from the path's `{key}`")));
    }
    // With tokens asked for, the middleware checked the token; what it grants is checked
    // once the command is known (money-creating commands need the admin scope).
    if let Some(Extension(scopes)) = scopes
        && let Err(refusal) = allow_command(&scopes, &stream, &command)
    {
        state.metrics_refused(refusal.reason());
        return Ok(refusal.into_response());
    }
    Ok(execute(&state, stream, key, id, command).await?.into_response())
}

pub(crate) async fn streams(
    State(state): State<Arc<AppState>>,
    Path((stream, key)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let node = state.pool()?.for_key(&key);
    let events = node.with(move |node| node.stream(&stream, &key)).await??;
    Ok(Json(events).into_response())
}

pub(crate) async fn kv(
    State(state): State<Arc<AppState>>,
    Path((bucket, key)): Path<(String, String)>,
    Query(read): Query<KvRead>,
) -> Result<Response, Problem> {
    let pool = state.pool()?.clone();
    let (b, k) = (bucket.clone(), key.clone());
    let value = if read.consistent {
        // The primary delivers what the workers wrote first: the read follows the writes
        // answered, after whatever backlog the primary has.
        pool.primary()
            .with(move |node| {
                node.runtime().pump()?;
                node.kv(&b, &k)
            })
            .await??
    } else {
        let reading = pool.clone();
        tokio::task::spawn_blocking(move || reading.read_kv(&b, &k)).await.map_err(|e| {
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "SYSTEM_FAILURE", format!("reading the read model: {e}"))
        })??
    };
    let undelivered = pool.undelivered().to_string();
    match value {
        Some(value) => {
            let mut response = Json(value).into_response();
            response
                .headers_mut()
                .insert(BACKLOG_HEADER, HeaderValue::from_str(&undelivered).expect("a number is a valid header value"));
            Ok(response)
        }
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "DATA_NOT_FOUND",
            format!("read model `{bucket}` has no entry `{key}` (or no projector of this node writes it)"),
        )),
    }
}

/// How `/v1/kv` reads: `?consistent=true` waits for the primary to deliver the writes
/// answered so far; by default the read model is read as committed, at once.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct KvRead {
    /// Wait for the primary to deliver the writes answered so far.
    #[serde(default)]
    consistent: bool,
}

/// The header of a `/v1/kv` answer saying how many committed events the read models had not
/// yet seen when it was last measured (every 100 ms).
pub(crate) const BACKLOG_HEADER: &str = "tollgate-backlog-events";
