//! `--role edge`: the node admits from grants it holds, obtained from its core over NATS.
//!
//! The edge quota model is [`tollgate_runtime::quota::EdgeNode`]; here it runs on a thread of
//! its own (its log's store has its own tokio runtime and must not be driven from the
//! server's), reaching the core through [`NatsCore`]. Admissions, the tick's settlement and
//! the metrics' reading are queued to that thread in order, so a grant is never used by two
//! requests at once; the admissions waiting together are decided as a batch and logged in
//! one append (one fsync).

use crate::lattice::NatsCore;
use crate::problem::Problem;
use axum::http::StatusCode;
use std::sync::mpsc;
use std::thread::JoinHandle;
use tokio::sync::oneshot;
use tollgate_node::view::{DecisionView, GrantView, MoneyView, PriceLineView};
use tollgate_node::{Admission, NodeError, wall_ms};
use tollgate_runtime::quota::{EdgeDecision, EdgeNode, EdgeReport, EdgeRequest, QuotaPolicy, Settled};
use tollgate_runtime::{Journal, result_code_name};

/// Work for the edge's thread.
enum Job {
    /// An admission, answered once its use is durable.
    Admit(Admission, Answer),
    /// Any other call on the edge (settling, reading its figures).
    Call(Call),
}

/// A call on the edge, with the edge's clock.
type Call = Box<dyn FnOnce(&mut EdgeNode<NatsCore>, u64) + Send>;

/// An admission's answer, sent once its use is durable.
type Answer = oneshot::Sender<Result<DecisionView, Problem>>;

/// An edge node on its own thread.
pub(crate) struct Edge {
    jobs: mpsc::Sender<Job>,
    thread: JoinHandle<()>,
}

impl Edge {
    /// Opens the node's log in `journal` (replaying it) on a new thread; returns once open.
    pub(crate) fn open(name: &str, journal: Journal, core: NatsCore, policy: QuotaPolicy) -> Result<Edge, NodeError> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (opened, open_result) = mpsc::channel();
        let name = name.to_string();
        let thread = std::thread::Builder::new()
            .name("tollgate-edge".into())
            .spawn(move || {
                let mut edge = match EdgeNode::open(&name, core, journal, policy) {
                    Ok(edge) => {
                        let _ = opened.send(Ok(()));
                        edge
                    }
                    Err(e) => {
                        let _ = opened.send(Err(NodeError::CatchUp(e)));
                        return;
                    }
                };
                // The edge's clock follows the wall clock and never goes back.
                let mut now = 0;
                let mut batch = Vec::new();
                while let Ok(first) = inbox.recv() {
                    now = wall_ms().max(now);
                    // The admissions queued meanwhile are decided together and logged with
                    // one append: one fsync answers them all.
                    let mut next = Some(first);
                    while let Some(job) = next.take() {
                        match job {
                            Job::Admit(admission, answer) => batch.push((admission, answer)),
                            Job::Call(call) => {
                                admit_batch(&mut edge, &mut batch, now);
                                call(&mut edge, now);
                            }
                        }
                        if batch.len() < MAX_BATCH {
                            next = inbox.try_recv().ok();
                        }
                    }
                    admit_batch(&mut edge, &mut batch, now);
                }
            })
            .map_err(|_| NodeError::Stopped)?;
        match open_result.recv() {
            Ok(Ok(())) => Ok(Edge { jobs, thread }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(NodeError::Stopped),
        }
    }

    /// Runs `call` on the edge's thread, in turn, with the edge's clock.
    async fn with<R: Send + 'static>(
        &self,
        call: impl FnOnce(&mut EdgeNode<NatsCore>, u64) -> R + Send + 'static,
    ) -> Result<R, NodeError> {
        let (answer, reply) = oneshot::channel();
        let job = Job::Call(Box::new(move |edge, now| {
            let _ = answer.send(call(edge, now));
        }));
        self.jobs.send(job).map_err(|_| NodeError::Stopped)?;
        reply.await.map_err(|_| NodeError::Stopped)
    }

    /// Admits against a local grant, asking the core for one when none has room; a repeated
    /// request id gets the same answer.
    pub(crate) async fn admit(&self, admission: Admission) -> Result<DecisionView, Problem> {
        admission.check().map_err(NodeError::from)?;
        if admission.units == 0 {
            return Err(NodeError::from(tollgate_node::protocol::InvalidField {
                field: "units".into(),
                problem: "is 0; an edge admits at least one unit".into(),
            })
            .into());
        }
        let (answer, reply) = oneshot::channel();
        self.jobs.send(Job::Admit(admission, answer)).map_err(|_| NodeError::Stopped)?;
        reply.await.map_err(|_| NodeError::Stopped)?
    }

    /// Settles the grants that are used up or past validity; quick when the core is cut off.
    pub(crate) async fn settle(&self, all: bool) -> Result<Settled, NodeError> {
        Ok(self.with(move |edge, now| edge.settle(now, all)).await??)
    }

    /// What the edge holds and owes.
    pub(crate) async fn report(&self) -> Option<EdgeReport> {
        self.with(|edge, _| edge.report()).await.ok()
    }

    /// Stops the thread once every queued job has run.
    pub(crate) fn close(self) {
        drop(self.jobs);
        let _ = self.thread.join();
    }
}

/// Admissions decided together at most: bounds a batch's latency under a flood.
const MAX_BATCH: usize = 256;

/// Decides the queued admissions and answers each (every one with the error when the
/// batch's append failed: none of their uses counts).
fn admit_batch(edge: &mut EdgeNode<NatsCore>, batch: &mut Vec<(Admission, Answer)>, now: u64) {
    if batch.is_empty() {
        return;
    }
    let requests: Vec<EdgeRequest> = batch
        .iter()
        .map(|(a, _)| EdgeRequest { subscriber: a.subscriber.clone(), request_id: a.id.clone(), units: a.units })
        .collect();
    match edge.admit_many(&requests, now) {
        Ok(decisions) => {
            for ((admission, answer), decision) in batch.drain(..).zip(decisions) {
                let _ = answer.send(view(edge, &admission, decision));
            }
        }
        Err(e) => {
            let problem = Problem::from(NodeError::Runtime(e));
            for (_, answer) in batch.drain(..) {
                let _ = answer.send(Err(problem.clone()));
            }
        }
    }
}

/// The decision as the core's HTTP API answers it: one price line at the edge's unit price.
fn view(edge: &EdgeNode<NatsCore>, admission: &Admission, decision: EdgeDecision) -> Result<DecisionView, Problem> {
    let reservation_id = match decision {
        EdgeDecision::Denied { code, reason } => {
            return Ok(DecisionView::Denied { code: result_code_name(code).into(), message: reason });
        }
        EdgeDecision::Admitted { reservation_id } => reservation_id,
    };
    let grant = edge.grant(&reservation_id).ok_or_else(|| {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "SYSTEM_FAILURE", format!("grant `{reservation_id}` vanished"))
    })?;
    // The units are within the grant, whose whole price the core held: the product fits.
    let amount =
        i64::try_from(admission.units).ok().and_then(|u| u.checked_mul(grant.unit_price)).ok_or_else(|| {
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "SYSTEM_FAILURE", "the admitted usage's price overflows")
        })?;
    let money = MoneyView { minor_units: amount, currency: edge.policy().currency.clone() };
    Ok(DecisionView::Granted {
        grant: GrantView {
            reservation_id,
            granted_units: admission.units,
            price: money.clone(),
            counters: Vec::new(),
            held: money.clone(),
            expires_at: grant.expires_at,
            final_unit: None,
        },
        price: money.clone(),
        lines: vec![PriceLineView {
            offer: admission.offer.clone(),
            description: format!("{} units at {} from an edge grant", admission.units, grant.unit_price),
            units: admission.units,
            amount: money,
        }],
    })
}
