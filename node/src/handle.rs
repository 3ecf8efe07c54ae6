//! A node on its own thread, taking requests over a channel.

use crate::node::{Node, NodeError};
use crate::protocol::{Reply, Request};
use std::sync::mpsc;
use std::thread::JoinHandle;
use tokio::sync::oneshot;
use tollgate_runtime::Stats;

/// Work for the node's thread: a request, or any other call on the node (reads, counters).
type Job = Box<dyn FnOnce(&mut Node) + Send>;

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
    jobs: mpsc::Sender<Job>,
    thread: JoinHandle<Result<Stats, NodeError>>,
}

impl NodeHandle {
    /// Opens a node with `open` on a new thread (so its runtime is created, used and dropped
    /// there) and returns once it is open, or with the error that kept it from opening.
    pub fn spawn(open: impl FnOnce() -> Result<Node, NodeError> + Send + 'static) -> Result<NodeHandle, NodeError> {
        let (jobs, inbox) = mpsc::channel::<Job>();
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
                for job in inbox {
                    job(&mut node);
                }
                node.close()
            })
            .map_err(|_| NodeError::Stopped)?;
        match open_result.recv() {
            Ok(Ok(())) => Ok(NodeHandle { jobs, thread }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(NodeError::Stopped),
        }
    }

    fn send<R: Send + 'static>(
        &self,
        call: impl FnOnce(&mut Node) -> R + Send + 'static,
    ) -> Result<oneshot::Receiver<R>, NodeError> {
        let (answer, reply) = oneshot::channel();
        let job: Job = Box::new(move |node| {
            // A caller that gave up waiting drops its receiver; the call still ran.
            let _ = answer.send(call(node));
        });
        self.jobs.send(job).map_err(|_| NodeError::Stopped)?;
        Ok(reply)
    }

    /// Answers a request; for async callers (any runtime).
    pub async fn request(&self, request: Request) -> Result<Reply, NodeError> {
        self.with(move |node| node.handle(request)).await?
    }

    /// Answers a request, blocking the calling thread; must not be called from async code.
    pub fn request_blocking(&self, request: Request) -> Result<Reply, NodeError> {
        self.send(move |node| node.handle(request))?.blocking_recv().map_err(|_| NodeError::Stopped)?
    }

    /// Runs `call` on the node's thread, in turn with the requests, and returns what it
    /// returns: reads of streams and read models, counters.
    ///
    /// ```no_run
    /// # async fn stats(node: &tollgate_node::NodeHandle) -> Result<(), tollgate_node::NodeError> {
    /// let accepted = node.with(|node| node.stats().accepted).await?;
    /// # Ok(()) }
    /// ```
    pub async fn with<R: Send + 'static>(
        &self,
        call: impl FnOnce(&mut Node) -> R + Send + 'static,
    ) -> Result<R, NodeError> {
        self.send(call)?.await.map_err(|_| NodeError::Stopped)
    }

    /// [`NodeHandle::with`], blocking the calling thread; must not be called from async code.
    pub fn with_blocking<R: Send + 'static>(
        &self,
        call: impl FnOnce(&mut Node) -> R + Send + 'static,
    ) -> Result<R, NodeError> {
        self.send(call)?.blocking_recv().map_err(|_| NodeError::Stopped)
    }

    /// Queues `call` on the node's thread without waiting for it (e.g. to deliver what other
    /// runtimes wrote); fails only when the node has stopped.
    pub fn post(&self, call: impl FnOnce(&mut Node) + Send + 'static) -> Result<(), NodeError> {
        self.jobs.send(Box::new(call)).map_err(|_| NodeError::Stopped)
    }

    /// Stops taking requests, lets the node finish those queued, records its counters and
    /// returns them. Blocks until the node's thread ends.
    pub fn close(self) -> Result<Stats, NodeError> {
        drop(self.jobs);
        self.thread.join().map_err(|_| NodeError::Stopped)?
    }
}
