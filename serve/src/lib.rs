//! A tollgate edge node as a network service: `tollgate serve`.
//!
//! - [`serve`]: HTTP/1.1 and HTTP/2 (cleartext) over a node's runtimes ([`NodeSpec`]):
//!   requests for different keys run in parallel on worker runtimes, requests for one key on
//!   one worker in order; projectors, process managers and timers run once, on the primary.
//!   Graceful shutdown finishes requests in flight and records the node's counters.
//! - [`api`]: the native JSON API (`/v1/admissions`, `/v1/commands`, `/v1/streams`, `/v1/kv`).
//! - [`nchf`]: Nchf_ConvergedCharging (3GPP TS 32.291) create, update and release of
//!   charging data, idempotent by `invocationSequenceNumber`.
//! - [`metrics`]: `GET /metrics` in Prometheus text; `GET /healthz` answers while the process
//!   runs, `GET /readyz` once the node has caught up with its store.
//! - Back-pressure: at most [`Config::queue`] requests wait for or run on the node; one more is
//!   answered `503` with `Retry-After` at once.
//! - [`lattice`]: with `--nats`, the same admissions and commands as NATS request/reply
//!   (a NATS micro service); with `--role edge`, the node admits from grants it obtains from
//!   a core over NATS, and settles the usage with it.
//! - Every error is [`problem::Problem`]: `application/problem+json` with `status`, `cause`
//!   and `detail`.

pub mod api;
mod edge;
mod exposure;
pub mod lattice;
pub mod metrics;
pub mod nchf;
mod pool;
pub mod problem;
mod server;

pub use pool::{NodeSpec, Role};
pub use server::{Config, MAX_BODY_BYTES, ServeError, serve};
