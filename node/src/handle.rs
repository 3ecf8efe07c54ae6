//! A node on its own thread, taking requests over a channel.

use crate::node::{Node, NodeError};
use crate::protocol::{Reply, Request};
use std::sync::mpsc;
use std::thread::JoinHandle;
use tokio::sync::oneshot;
use tollgate_runtime::Stats;

type Answer = oneshot::Sender<Result<Reply, NodeError>>;

/// A [`Node`] running on a thread of its own. The runtime inside keeps its own tokio runtime
/// and must not be called from another, so an async server cannot hold a `Node` directly; it
/// holds this handle, which is `Send + Sync` and queues requests in order. Requests are
/// answered one at a time, in the order they arrive.
///
/// ```no_run
/// # async fn serve() -> Result<(), tollgate_node::NodeError> {
/// use tollgate_node::{Node, NodeHandle, Request};
///
/// let node = NodeHandle::spawn(|| Node::open("edge.toml".as_ref(), "file:/var/lib/edge", "edge"))?;
/// let reply = node.request(Request::AdvanceMs(0)).await?;
/// let stats = node.close()?;
/// # Ok(()) }
/// ```
pub struct NodeHandle {
    requests: mpsc::Sender<(Request, Answer)>,
    thread: JoinHandle<Result<Stats, NodeError>>,
}

impl NodeHandle {
    /// Opens a node with `open` on a new thread (so its runtime is created, used and dropped
    /// there) and returns once it is open, or with the error that kept it from opening.
    pub fn spawn(open: impl FnOnce() -> Result<Node, NodeError> + Send + 'static) -> Result<NodeHandle, NodeError> {
        let (requests, inbox) = mpsc::channel::<(Request, Answer)>();
        let (opened, open_result) = mpsc::channel::<Result<(), NodeError>>();
        let thread = std::thread::Builder::new()
            .name("tollgate-node".into())
            .spawn(move || {
                let mut node = match open() {
                    Ok(node) => {
                        let _ = opened.send(Ok(()));
                        node
                    }
                    Err(e) => {
                        let _ = opened.send(Err(e));
                        return Err(NodeError::Stopped);
                    }
                };
                for (request, answer) in inbox {
                    // A caller that gave up waiting drops its receiver; the request still ran.
                    let _ = answer.send(node.handle(request));
                }
                node.close()
            })
            .map_err(|_| NodeError::Stopped)?;
        match open_result.recv() {
            Ok(Ok(())) => Ok(NodeHandle { requests, thread }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(NodeError::Stopped),
        }
    }

    fn send(&self, request: Request) -> Result<oneshot::Receiver<Result<Reply, NodeError>>, NodeError> {
        let (answer, reply) = oneshot::channel();
        self.requests.send((request, answer)).map_err(|_| NodeError::Stopped)?;
        Ok(reply)
    }

    /// Answers a request; for async callers (any runtime).
    pub async fn request(&self, request: Request) -> Result<Reply, NodeError> {
        self.send(request)?.await.map_err(|_| NodeError::Stopped)?
    }

    /// Answers a request, blocking the calling thread; must not be called from async code.
    pub fn request_blocking(&self, request: Request) -> Result<Reply, NodeError> {
        self.send(request)?.blocking_recv().map_err(|_| NodeError::Stopped)?
    }

    /// Stops taking requests, lets the node finish those queued, records its counters and
    /// returns them. Blocks until the node's thread ends.
    pub fn close(self) -> Result<Stats, NodeError> {
        drop(self.requests);
        self.thread.join().map_err(|_| NodeError::Stopped)?
    }
}
