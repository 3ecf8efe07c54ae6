//! The lattice: every node answers request/reply over NATS, and an edge reaches its core
//! the same way.
//!
//! | subject | body | reply |
//! |---|---|---|
//! | `tollgate.<node>.admit` | an [`Admission`] | the decision, as `POST /v1/admissions` answers it |
//! | `tollgate.<node>.command.<stream>` | `{"key": ..., "id": ..., "command": ...}` | `{"accepted": [events]}`, as `POST /v1/commands/{stream}/{key}` (a repeat with the header `Tollgate-Repeat: true`) |
//! | `tollgate.<node>.report.<stream>` | `{"key": ..., "id": ..., "event": ..., "correlation_id"?: ...}` | `{"recorded": event}`, as `POST /v1/reports/{stream}/{key}`; one per stream of the manifest's `[reports] streams` |
//!
//! The endpoints belong to the NATS micro service `tollgate` (so `$SRV.PING`, `$SRV.STATS` and
//! `$SRV.INFO` answer, with the node and its role in the metadata) and listen in a queue
//! group: nodes started under one name share its requests. A refusal is the HTTP API's
//! ProblemDetails as the body, with the headers `Nats-Service-Error` (the cause) and
//! `Nats-Service-Error-Code` (the HTTP status).

use crate::api::{self, Answer, CommandBody, REPEAT_HEADER, ReportBody};
use crate::problem::Problem;
use crate::server::AppState;
use async_nats::service::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE, ServiceExt};
use async_nats::{HeaderMap, connection::State};
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

/// Connects to NATS at `url` for a node: the first connection is retried in the background
/// (a node starts while NATS is away), and a lost one is re-made within a second or two.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .request_timeout(Some(CORE_TIMEOUT))
        .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 100).min(1_000)))
        .connect(url)
        .await
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
    tokio::spawn(answer_each(admit, state.clone(), |state, body| async move {
        let admission: Admission = decode(&body)?;
        api::admit(&state, admission).await.map(Answer::from)
    }));
    for stream in streams {
        let endpoint =
            group.endpoint_builder().name(format!("command-{stream}")).add(format!("command.{stream}")).await?;
        let stream = stream.clone();
        tokio::spawn(answer_each(endpoint, state.clone(), move |state, body| {
            let stream = stream.clone();
            async move {
                let CommandBody { key, id, command } = decode(&body)?;
                let key =
                    key.ok_or_else(|| Problem::malformed("`key` is missing: a command over NATS names its key"))?;
                api::execute(&state, stream, key, id, command).await
            }
        }));
    }
    for stream in reports {
        let endpoint =
            group.endpoint_builder().name(format!("report-{stream}")).add(format!("report.{stream}")).await?;
        let stream = stream.clone();
        tokio::spawn(answer_each(endpoint, state.clone(), move |state, body| {
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

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(body)
        .map_err(|e| Problem::malformed(format!("the body is not the JSON this subject takes: {e}")))
}

/// Answers every request of `endpoint`, each on its own task, within the node's bounded queue.
async fn answer_each<F, Fut>(mut endpoint: async_nats::service::endpoint::Endpoint, state: Arc<AppState>, handle: F)
where
    F: Fn(Arc<AppState>, Bytes) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Answer, Problem>> + Send + 'static,
{
    let handle = Arc::new(handle);
    while let Some(request) = endpoint.next().await {
        let (state, handle) = (state.clone(), handle.clone());
        tokio::spawn(async move {
            let answer = match state.take_place() {
                Ok(_place) => handle(state.clone(), request.message.payload.clone()).await,
                Err(full) => Err(full),
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

/// An edge's link to its core: account commands as requests to
/// `tollgate.<core>.command.account`, answered or given up on within [`CORE_TIMEOUT`].
pub struct NatsCore {
    client: async_nats::Client,
    subject: String,
    tokio: tokio::runtime::Handle,
}

impl NatsCore {
    /// A link to core `core` over `client`, whose futures are driven on `tokio` (the link is
    /// called from the edge's own thread).
    pub fn new(client: async_nats::Client, core: &str, tokio: tokio::runtime::Handle) -> NatsCore {
        NatsCore { client, subject: subject(core, &format!("command.{ACCOUNT_STREAM}")), tokio }
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
