//! The lattice: every node answers request/reply over NATS, and an edge reaches its core
//! the same way.
//!
//! | subject | body | reply |
//! |---|---|---|
//! | `tollgate.<node>.admit` | an [`Admission`] | the decision, as `POST /v1/admissions` answers it |
//! | `tollgate.<node>.command.<stream>` | `{"key": ..., "id": ..., "command": ...}` | `{"accepted": [events]}`, as `POST /v1/commands/{stream}/{key}` (a repeat with the header `Tollgate-Repeat: true`) |
//! | `tollgate.<node>.report.<stream>` | `{"key": ..., "id": ..., "event": ..., "correlation_id"?: ...}` | `{"recorded": event}`, as `POST /v1/reports/{stream}/{key}`; one per stream of the manifest's `[reports] streams` |
//! | `tollgate.<core>.edge.<edge>` | an account command of edge `<edge>`: `reserve`, `settle` or `release` of a grant named `<edge>/...` | as `command.account`; anything else `403` |
//!
//! The edge endpoint exists so a NATS server can give an edge's user the right to publish to
//! its own `edge.<edge>` subject and to nothing else: an edge cannot top up an account, touch
//! another edge's grants, or answer (or join the queue group of) the core's subjects.
//!
//! The endpoints belong to the NATS micro service `tollgate` (so `$SRV.PING`, `$SRV.STATS` and
//! `$SRV.INFO` answer, with the node and its role in the metadata) and listen in a queue
//! group: nodes started under one name share its requests. A refusal is the HTTP API's
//! ProblemDetails as the body, with the headers `Nats-Service-Error` (the cause) and
//! `Nats-Service-Error-Code` (the HTTP status). A payload is bounded as an HTTP body is: over
//! [`crate::MAX_BODY_BYTES`] it is refused `413`, and it counts against the node's body budget.

use crate::api::{self, Answer, CommandBody, REPEAT_HEADER, ReportBody};
use crate::problem::Problem;
use crate::server::AppState;
use async_nats::service::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE, ServiceExt};
use async_nats::{ConnectErrorKind, HeaderMap, connection::State};
use axum::body::Bytes;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tollgate_billing_model::account::{AccountCommand, AccountEvent, STREAM as ACCOUNT_STREAM};
use tollgate_host::aggregate::{Rejection, RejectionKind};
use tollgate_node::Admission;
use tollgate_node::view::EventView;
use tollgate_runtime::RuntimeError;
use tollgate_runtime::quota::{CoreAnswer, CoreLink};
use tollgate_store::NatsAccess;

/// The NATS micro service every node registers.
pub const SERVICE: &str = "tollgate";

/// How long an edge waits for its core's answer before it treats the core as unreachable.
pub const CORE_TIMEOUT: Duration = Duration::from_secs(2);

/// The subject of `operation` (`admit`, `command.account`) on node `node`.
///
/// ```
/// assert_eq!(tollgate_serve::lattice::subject("core", "admit"), "tollgate.core.admit");
/// ```
pub fn subject(node: &str, operation: &str) -> String {
    format!("{SERVICE}.{node}.{operation}")
}

/// Refuses a node name that cannot be one token of a NATS subject.
pub fn check_node_name(node: &str) -> Result<(), String> {
    if node.is_empty() {
        return Err("is empty".into());
    }
    match node.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        Some(c) => Err(format!("`{node}` contains {c:?}; a node on NATS is named with A-Z, a-z, 0-9, `-` and `_`")),
        None => Ok(()),
    }
}

/// Connects to NATS at `url` for a node, as `access` says: the first connection is retried
/// in the background (a node starts while NATS is away), and a lost one is re-made within a
/// second or two. Credentials the server refuses, or a TLS setup that fails, are an error at
/// once rather than retried for ever.
pub async fn connect(url: &str, name: &str, access: &NatsAccess) -> Result<async_nats::Client, String> {
    let options = || async {
        let options = access.options().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(
            options
                .name(name)
                .request_timeout(Some(CORE_TIMEOUT))
                .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 100).min(1_000))),
        )
    };
    match options().await?.connect(url).await {
        Ok(client) => Ok(client),
        Err(e) if matches!(e.kind(), ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation) => {
            Err(format!(
                "the server refused the node's credentials ({e}); see `[nats]` in the manifest or the --nats-* flags"
            ))
        }
        Err(e) if unreachable(&e) => {
            options().await?.retry_on_initial_connect().connect(url).await.map_err(|e| e.to_string())
        }
        // A certificate the node does not trust, a server without TLS where it is required:
        // retrying would not change them.
        Err(e) => Err(format!("TLS with the server failed: {e}: {}", source_of(&e))),
    }
}

/// Whether a first connection failed only because the server is not there (yet).
fn unreachable(e: &async_nats::ConnectError) -> bool {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectErrorKind::TimedOut | ConnectErrorKind::Dns => true,
        ConnectErrorKind::Io => {
            std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>()).is_none_or(|io| {
                matches!(
                    io.kind(),
                    ConnectionRefused
                        | ConnectionReset
                        | ConnectionAborted
                        | NotConnected
                        | TimedOut
                        | HostUnreachable
                        | NetworkUnreachable
                        | AddrNotAvailable
                        | UnexpectedEof
                )
            })
        }
        _ => false,
    }
}

fn source_of(e: &async_nats::ConnectError) -> String {
    std::error::Error::source(e).map(ToString::to_string).unwrap_or_default()
}

/// Registers the node's endpoints and answers them until the client closes or the returned
/// service is stopped.
pub(crate) async fn start(
    client: async_nats::Client,
    node: &str,
    role: &str,
    streams: &[String],
    reports: &[String],
    state: Arc<AppState>,
) -> Result<async_nats::service::Service, async_nats::Error> {
    let metadata = HashMap::from([("node".to_string(), node.to_string()), ("role".to_string(), role.to_string())]);
    let service = client
        .service_builder()
        .description("tollgate billing node: admissions and commands")
        .metadata(metadata)
        .start(SERVICE, env!("CARGO_PKG_VERSION"))
        .await?;
    let group = service.group(format!("{SERVICE}.{node}"));
    let admit = group.endpoint_builder().name("admit").add("admit").await?;
    tokio::spawn(answer_each(admit, state.clone(), |state, _, body| async move {
        let admission: Admission = decode(&body)?;
        api::admit(&state, admission).await.map(Answer::from)
    }));
    for stream in streams {
        let endpoint =
            group.endpoint_builder().name(format!("command-{stream}")).add(format!("command.{stream}")).await?;
        let stream = stream.clone();
        tokio::spawn(answer_each(endpoint, state.clone(), move |state, _, body| {
            let stream = stream.clone();
            async move {
                let CommandBody { key, id, command } = decode(&body)?;
                let key =
                    key.ok_or_else(|| Problem::malformed("`key` is missing: a command over NATS names its key"))?;
                api::execute(&state, stream, key, id, command).await
            }
        }));
    }
    if streams.iter().any(|s| s == ACCOUNT_STREAM) {
        let endpoint = group.endpoint_builder().name("edge").add("edge.*").await?;
        tokio::spawn(answer_each(endpoint, state.clone(), |state, subject, body| async move {
            let edge = subject.rsplit('.').next().unwrap_or_default().to_string();
            let CommandBody { key, id, command } = decode(&body)?;
            let key = key.ok_or_else(|| Problem::malformed("`key` is missing: an edge names the account"))?;
            edge_may(&edge, &id, &command)?;
            api::execute(&state, ACCOUNT_STREAM.into(), key, id, command).await
        }));
    }
    for stream in reports {
        let endpoint =
            group.endpoint_builder().name(format!("report-{stream}")).add(format!("report.{stream}")).await?;
        let stream = stream.clone();
        tokio::spawn(answer_each(endpoint, state.clone(), move |state, _, body| {
            let stream = stream.clone();
            async move {
                let body: ReportBody = decode(&body)?;
                let key = body
                    .key
                    .clone()
                    .ok_or_else(|| Problem::malformed("`key` is missing: a report over NATS names its key"))?;
                api::report(&state, stream, key, body).await
            }
        }));
    }
    Ok(service)
}

/// Whether edge `edge` may send `command` with id `id`: only what an edge does (reserve a
/// grant, settle or release one), and only for grants named by the edge, so one edge can
/// neither create money nor touch another edge's grants. The edge's name is the last token
/// of the subject it published to, which the NATS server's permissions tie to its user.
fn edge_may(edge: &str, id: &str, command: &serde_json::Value) -> Result<(), Problem> {
    let forbidden = |detail: String| Problem::new(axum::http::StatusCode::FORBIDDEN, "EDGE_NOT_PERMITTED", detail);
    let own = |name: &str| name.strip_prefix(edge).is_some_and(|rest| rest.starts_with('/'));
    let (kind, fields) = command
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.iter().next())
        .ok_or_else(|| Problem::malformed("`command` must be an object with one command"))?;
    if !EDGE_COMMANDS.contains(&kind.as_str()) {
        return Err(forbidden(format!(
            "edge `{edge}` may send {}, not `{kind}`",
            EDGE_COMMANDS.map(|c| format!("`{c}`")).join(", ")
        )));
    }
    let reservation = fields.get("reservation_id").and_then(serde_json::Value::as_str).unwrap_or_default();
    if !own(reservation) || !own(id) {
        return Err(forbidden(format!(
            "edge `{edge}` names its grants and commands `{edge}/...`; got reservation `{reservation}`, command id `{id}`"
        )));
    }
    Ok(())
}

/// The account commands an edge sends its core.
const EDGE_COMMANDS: [&str; 3] = ["reserve", "settle", "release"];

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(body)
        .map_err(|e| Problem::malformed(format!("the body is not the JSON this subject takes: {e}")))
}

/// Answers every request of `endpoint`, each on its own task, within the node's bounded queue
/// and body budget.
async fn answer_each<F, Fut>(mut endpoint: async_nats::service::endpoint::Endpoint, state: Arc<AppState>, handle: F)
where
    F: Fn(Arc<AppState>, async_nats::Subject, Bytes) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Answer, Problem>> + Send + 'static,
{
    let handle = Arc::new(handle);
    while let Some(request) = endpoint.next().await {
        let (state, handle) = (state.clone(), handle.clone());
        tokio::spawn(async move {
            // The HTTP API's bounds: a payload over `MAX_BODY_BYTES` is refused (`413`), and
            // it is held within the node's body budget (`503` beyond it) until answered.
            let payload = request.message.payload.clone();
            let answer = match state.take_body(payload.len()) {
                // Every subject writes: each waits while a core's reactions are far behind.
                Ok(_body) => match state.take_write_place().await {
                    Ok(_place) => handle(state.clone(), request.message.subject.clone(), payload).await,
                    Err(full) => Err(full),
                },
                Err(refused) => Err(refused),
            };
            let (body, headers) = match answer {
                Ok(answer) => {
                    let mut headers = HeaderMap::new();
                    if answer.repeat {
                        headers.insert(REPEAT_HEADER, "true");
                    }
                    (serde_json::to_vec(&answer.body).unwrap_or_default(), headers)
                }
                Err(problem) => {
                    let mut headers = HeaderMap::new();
                    headers.insert(NATS_SERVICE_ERROR, problem.cause.as_str());
                    headers.insert(NATS_SERVICE_ERROR_CODE, problem.status.to_string().as_str());
                    (serde_json::to_vec(&problem).unwrap_or_default(), headers)
                }
            };
            if let Err(e) = request.respond_with_headers(Ok(body.into()), headers).await {
                tracing::warn!(error = %e, "answering a NATS request");
            }
        });
    }
}

/// An edge's link to its core: account commands as requests to the core's edge endpoint,
/// `tollgate.<core>.edge.<edge>`, answered or given up on within [`CORE_TIMEOUT`].
pub struct NatsCore {
    client: async_nats::Client,
    subject: String,
    tokio: tokio::runtime::Handle,
}

impl NatsCore {
    /// A link to core `core` over `client`, whose futures are driven on `tokio` (the link is
    /// called from the edge's own thread).
    pub fn new(client: async_nats::Client, core: &str, edge: &str, tokio: tokio::runtime::Handle) -> NatsCore {
        NatsCore { client, subject: subject(core, &format!("edge.{edge}")), tokio }
    }

    fn unreachable(&self, reason: impl Into<String>) -> RuntimeError {
        RuntimeError::CoreUnreachable { subject: self.subject.clone(), reason: reason.into() }
    }
}

impl CoreLink for NatsCore {
    fn account(
        &mut self,
        account: &str,
        command_id: &str,
        command: &AccountCommand,
        _now: u64,
    ) -> Result<CoreAnswer, RuntimeError> {
        // Cut off: answer at once rather than hold the edge's admissions for a timeout (a
        // link still making its first connection is waited for, within the timeout).
        if self.client.connection_state() == State::Disconnected {
            return Err(self.unreachable("not connected to NATS"));
        }
        let body = serde_json::json!({ "key": account, "id": command_id, "command": command });
        let request = self.client.request(self.subject.clone(), body.to_string().into());
        // The timer is made inside `block_on`, where the server's runtime is the context.
        let reply = match self.tokio.block_on(async { tokio::time::timeout(CORE_TIMEOUT, request).await }) {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => return Err(self.unreachable(e.to_string())),
            Err(_) => return Err(self.unreachable(format!("no answer within {CORE_TIMEOUT:?}"))),
        };
        let refused = reply.headers.as_ref().is_some_and(|h| h.get(NATS_SERVICE_ERROR_CODE).is_some());
        let answer = |what: &str| RuntimeError::UnexpectedAnswer {
            command: format!("`{command_id}` on account `{account}` at {}", self.subject),
            answer: format!("{what}: {}", String::from_utf8_lossy(&reply.payload)),
        };
        if refused {
            let problem: Problem = serde_json::from_slice(&reply.payload).map_err(|_| answer("not ProblemDetails"))?;
            let Some(kind) = problem.kind.as_deref() else {
                // Not the account's refusal: the core could not run it now (congestion, store).
                return Err(self.unreachable(format!("{} {}: {}", problem.status, problem.cause, problem.detail)));
            };
            let kind = match kind {
                "business" => RejectionKind::Business,
                "malformed" => RejectionKind::Malformed,
                _ => RejectionKind::UnknownCommand,
            };
            return Ok(Err(Rejection { kind, code: problem.cause, message: problem.detail }));
        }
        #[derive(serde::Deserialize)]
        struct Accepted {
            accepted: Vec<EventView>,
        }
        let accepted: Accepted = serde_json::from_slice(&reply.payload).map_err(|_| answer("not accepted events"))?;
        let events = accepted.accepted.iter().map(|e| {
            let payload = serde_json::to_vec(&e.payload).unwrap_or_default();
            tollgate_codec::decode::<AccountEvent>(&e.event_type, &payload)
                .map_err(|source| RuntimeError::undecodable_event(&e.stream, &e.key, e.sequence, &e.event_type, source))
        });
        Ok(Ok(events.collect::<Result<_, _>>()?))
    }
}
