//! A tollgate edge node as a library: the requests a node answers, its replies, and the JSON
//! views of events and decisions, independent of how requests arrive.
//!
//! - [`Request`] and [`Reply`]: the node protocol, typed and serde-encoded. Every transport
//!   (JSON lines on stdin, HTTP, NATS) decodes a [`Request`], calls [`Node::handle`] and
//!   encodes the [`Reply`] or [`NodeError`].
//! - [`Node`]: a runtime over a store, with the clock following the wall clock and due timers
//!   fired before every request. Requests are checked before anything runs; an out-of-range
//!   field is an error naming it, never a panic.
//! - [`NodeHandle`]: a node on its own thread, taking requests over a channel. The runtime
//!   keeps its own tokio runtime and must not be called from inside another; an async server
//!   owns a node through the handle instead.
//! - [`view`]: the JSON shapes of events, commands and decisions that replies, `tollgate log`
//!   and scenario diffs print.
//!
//! ```no_run
//! use tollgate_node::{Node, Request};
//!
//! let mut node = Node::open("examples/edge.toml".as_ref(), "file:/tmp/edge", "edge").unwrap();
//! let request: Request = serde_json::from_str(r#"{"advance_ms": 1000}"#).unwrap();
//! let reply = node.handle(request).unwrap();
//! println!("{}", serde_json::to_string(&reply).unwrap());
//! node.close().unwrap();
//! ```

mod handle;
mod node;
pub mod protocol;
pub mod view;

pub use handle::NodeHandle;
pub use node::{Node, NodeError, read_kv, wall_ms};
pub use protocol::{Admission, Reply, Request};
