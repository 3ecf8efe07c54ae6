//! A tollgate edge node as a network service: `tollgate serve`.
//!
//! - [`serve`]: HTTP/1.1 and HTTP/2 (cleartext) over a node's runtimes ([`NodeSpec`]):
//!   requests for different keys run in parallel on worker runtimes, requests for one key on
//!   one worker at a time, in order (a worker stuck on one request holds no other key's);
//!   projectors, process managers and timers run once, on the primary. Graceful shutdown
//!   finishes requests in flight and records the node's counters, also those of the work
//!   done by a runtime still stuck when the grace period ends.
//! - [`api`]: the native JSON API (`/v1/admissions`, `/v1/commands`, `/v1/streams`, `/v1/kv`).
//! - [`nchf`]: Nchf_ConvergedCharging (3GPP TS 32.291) create, update and release of
//!   charging data, idempotent by `invocationSequenceNumber`.
//! - [`metrics`]: `GET /metrics` in Prometheus text; `GET /healthz` answers while the process
//!   runs, `GET /readyz` once the node has caught up with its store.
//! - Back-pressure: at most [`Config::queue`] requests wait for or run on the node; one more is
//!   answered `503` with `Retry-After` at once, and so is a request whose body would take the
//!   bytes of bodies held past [`Config::body_budget`].
//! - [`connections`]: the listener, bounding open connections by the descriptor limit
//!   (closing the oldest idle one at the cap) and timing out slow heads and idle connections.
//! - [`lattice`]: with `--nats`, the same admissions and commands as NATS request/reply
//!   (a NATS micro service); with `--role edge`, the node admits from grants it obtains from
//!   a core over NATS, and settles the usage with it.
//! - [`auth`]: with the manifest's `[auth]`, every route but the health checks (and
//!   `/metrics`, unless protected) needs an OAuth2 bearer access token with its scope.
//! - Every error is [`problem::Problem`]: `application/problem+json` with `status`, `cause`
//!   and `detail`.

pub mod api;
pub mod auth;
pub mod connections;
mod dispatch;
mod edge;
mod exposure;
pub mod lattice;
pub mod metrics;
pub mod nchf;
mod pool;
pub mod problem;
mod server;
pub mod tls;

pub use pool::{BACKLOG_WAIT, DEFAULT_MAX_BACKLOG_EVENTS, DEFAULT_REROUTE_AFTER, NodeSpec, Role};
pub use server::{Config, DEFAULT_BODY_BUDGET, MAX_BODY_BYTES, ServeError, serve};
