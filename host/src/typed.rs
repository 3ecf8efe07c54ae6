//! The raw calls of the other actor kinds: projector, process manager, rater and policy.

use crate::actor::Actor;
use crate::aggregate::{Event, Rejection};
use crate::bindings::policy::Policy;
use crate::bindings::policy::tollgate::admission::types::{AdmissionRequest, Decision};
use crate::bindings::process_manager::ProcessManager;
pub use crate::bindings::process_manager::exports::tollgate::eventsourcing::process::Reaction;
use crate::bindings::projector::Projector;
use crate::bindings::rater::Rater;
pub use crate::bindings::rater::exports::tollgate::billing::rating::{Rated, RatingError, RatingRequest};
use crate::error::HostError;
use crate::guest::Guest;
use crate::host_state::HostState;
use crate::kind::ActorKind;
use crate::services::PolicyServices;
use std::sync::Arc;

/// A projector component's exports. Its key-value writes are committed only when `project`
/// succeeds.
pub struct ProjectorActor {
    guest: Guest<Projector>,
}

impl ProjectorActor {
    /// Wraps a loaded actor; fails unless it is a projector.
    pub fn new(actor: Actor, host_state: HostState) -> Result<Self, HostError> {
        actor.expect_kind(ActorKind::Projector)?;
        Ok(ProjectorActor {
            guest: Guest::new(actor, host_state, None, |pre, store| {
                let instance = pre.instantiate(&mut *store)?;
                Projector::new(&mut *store, &instance)
            }),
        })
    }

    /// The instance lifecycle.
    pub fn guest(&self) -> &Guest<Projector> {
        &self.guest
    }

    /// Calls `subscriptions`.
    pub fn subscriptions(&mut self) -> Result<Vec<String>, HostError> {
        self.guest.call("subscriptions", |b, s| b.tollgate_eventsourcing_projection().call_subscriptions(s), |_| true)
    }

    /// Calls `project` with the events of one delivery.
    pub fn project(&mut self, events: &[Event]) -> Result<Result<(), Rejection>, HostError> {
        self.project_deliveries(events, 1)
    }

    /// Calls `project` with the events of `deliveries` deliveries at once (as `tollgate
    /// replay` does): the call's import budgets are `deliveries` times those of one delivery.
    pub fn project_deliveries(
        &mut self,
        events: &[Event],
        deliveries: u64,
    ) -> Result<Result<(), Rejection>, HostError> {
        let batch = crate::aggregate::pack(events);
        self.guest.call_times(
            "project",
            deliveries,
            |b, s| b.tollgate_eventsourcing_projection().call_project(s, &batch),
            |r| r.is_ok(),
        )
    }
}

/// A process manager component's exports.
pub struct ProcessManagerActor {
    guest: Guest<ProcessManager>,
}

impl ProcessManagerActor {
    /// Wraps a loaded actor; fails unless it is a process manager.
    pub fn new(actor: Actor, host_state: HostState) -> Result<Self, HostError> {
        actor.expect_kind(ActorKind::ProcessManager)?;
        Ok(ProcessManagerActor {
            guest: Guest::new(actor, host_state, None, |pre, store| {
                let instance = pre.instantiate(&mut *store)?;
                ProcessManager::new(&mut *store, &instance)
            }),
        })
    }

    /// The instance lifecycle.
    pub fn guest(&self) -> &Guest<ProcessManager> {
        &self.guest
    }

    /// Calls `subscriptions`.
    pub fn subscriptions(&mut self) -> Result<Vec<String>, HostError> {
        self.guest.call("subscriptions", |b, s| b.tollgate_eventsourcing_process().call_subscriptions(s), |_| true)
    }

    /// Calls `correlate`.
    pub fn correlate(&mut self, event: &Event) -> Result<Option<String>, HostError> {
        self.guest.call("correlate", |b, s| b.tollgate_eventsourcing_process().call_correlate(s, event), |_| true)
    }

    /// Calls `react`.
    pub fn react(&mut self, state: Option<&[u8]>, event: &Event) -> Result<Result<Reaction, Rejection>, HostError> {
        self.guest.call("react", |b, s| b.tollgate_eventsourcing_process().call_react(s, state, event), |_| true)
    }

    /// Calls `on-timer`.
    pub fn on_timer(
        &mut self,
        state: Option<&[u8]>,
        timer: &crate::aggregate::Timer,
        now: u64,
    ) -> Result<Result<Reaction, Rejection>, HostError> {
        self.guest.call(
            "on-timer",
            |b, s| b.tollgate_eventsourcing_process().call_on_timer(s, state, timer, now),
            |_| true,
        )
    }
}

/// A rater component's exports.
pub struct RaterActor {
    guest: Guest<Rater>,
}

impl RaterActor {
    /// Wraps a loaded actor; fails unless it is a rater. Tariffs come from the host state's config.
    pub fn new(actor: Actor, host_state: HostState) -> Result<Self, HostError> {
        actor.expect_kind(ActorKind::Rater)?;
        Ok(RaterActor {
            guest: Guest::new(actor, host_state, None, |pre, store| {
                let instance = pre.instantiate(&mut *store)?;
                Rater::new(&mut *store, &instance)
            }),
        })
    }

    /// The instance lifecycle.
    pub fn guest(&self) -> &Guest<Rater> {
        &self.guest
    }

    /// Calls `rate`.
    pub fn rate(&mut self, request: &RatingRequest) -> Result<Result<Rated, RatingError>, HostError> {
        self.guest.call("rate", |b, s| b.tollgate_billing_rating().call_rate(s, request), |_| true)
    }
}

/// A policy component's exports; its charging and rating imports are served by `services`.
pub struct PolicyActor {
    guest: Guest<Policy>,
}

impl PolicyActor {
    /// Wraps a loaded actor; fails unless it is a policy.
    pub fn new(actor: Actor, host_state: HostState, services: Arc<dyn PolicyServices>) -> Result<Self, HostError> {
        actor.expect_kind(ActorKind::Policy)?;
        Ok(PolicyActor {
            guest: Guest::new(actor, host_state, Some(services), |pre, store| {
                let instance = pre.instantiate(&mut *store)?;
                Policy::new(&mut *store, &instance)
            }),
        })
    }

    /// The instance lifecycle.
    pub fn guest(&self) -> &Guest<Policy> {
        &self.guest
    }

    /// Calls `decide`.
    pub fn decide(&mut self, request: &AdmissionRequest) -> Result<Decision, HostError> {
        self.guest.call("decide", |b, s| b.tollgate_admission_admission().call_decide(s, request), |_| true)
    }
}
