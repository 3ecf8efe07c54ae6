//! The native JSON API: the node protocol over HTTP.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /v1/admissions` | an [`Admission`] | `200` with the decision (`granted` or `denied`) |
//! | `POST /v1/commands/{stream}/{key}` | `{"id": ..., "command": ...}` | `200` with `{"accepted": [events]}`; a refusal is ProblemDetails: `422` (business) or `400` with `cause` the rejection code |
//! | `GET /v1/streams/{stream}/{key}` | | `200` with the key's events, oldest first |
//! | `GET /v1/kv/{bucket}/{key}` | | `200` with the read model's value; `404` when there is none |

use crate::auth::{Scopes, allow_command};
use crate::problem::Problem;
use crate::server::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Arc;
use tollgate_node::view::to_value;
use tollgate_node::{Admission, Reply, Request};

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

/// A node reply as the API answers it: a refusal becomes ProblemDetails, anything else the
/// reply's JSON.
fn outcome(reply: Reply) -> Result<Value, Problem> {
    match reply {
        Reply::Rejected { kind, code, message } => {
            let status = if kind == "business" { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::BAD_REQUEST };
            Err(Problem { kind: Some(kind), ..Problem::new(status, &code, message) })
        }
        Reply::Decision(decision) => Ok(to_value(&decision)),
        other => Ok(to_value(&other)),
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
    outcome(reply)
}

/// Runs a command on the aggregate owning `stream`.
pub(crate) async fn execute(
    state: &AppState,
    stream: String,
    key: String,
    id: String,
    command: Value,
) -> Result<Value, Problem> {
    let pool = state.pool()?;
    // By key alone: an account's commands and its subscriber's admissions go to one runtime.
    let reply = pool.for_key(&key).request(Request::Execute { stream, key: key.clone(), id, command }).await?;
    pool.wrote();
    outcome(reply)
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
    Ok(Json(execute(&state, stream, key, id, command).await?).into_response())
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
) -> Result<Response, Problem> {
    let (b, k) = (bucket.clone(), key.clone());
    // The primary delivers what the workers wrote first: a read follows the writes answered.
    let read = state.pool()?.primary().with(move |node| {
        node.runtime().pump()?;
        node.kv(&b, &k)
    });
    match read.await?? {
        Some(value) => Ok(Json(value).into_response()),
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "DATA_NOT_FOUND",
            format!("read model `{bucket}` has no entry `{key}` (or no projector of this node writes it)"),
        )),
    }
}
