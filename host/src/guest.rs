//! One live instance of an actor and the rules around calling it: a CPU cap (fuel) with a
//! wall-clock backstop (epoch), import budgets and a memory cap per call, stderr captured and
//! logs bounded per call, and a trap discards the instance (its store is poisoned); the next
//! call gets a fresh one.

use crate::actor::Actor;
use crate::budget::BudgetExceeded;
use crate::error::HostError;
use crate::host_state::HostState;
use crate::services::PolicyServices;
use crate::state::StoreState;
use std::sync::Arc;
use wasmtime::component::InstancePre;
use wasmtime::{Store, Trap};

/// How to make the typed bindings of one world from the linked component.
pub(crate) type Instantiate<B> = fn(&InstancePre<StoreState>, &mut Store<StoreState>) -> wasmtime::Result<B>;

/// An actor, its host state, and its current instance (if any).
pub struct Guest<B> {
    actor: Actor,
    host_state: HostState,
    services: Option<Arc<dyn PolicyServices>>,
    instantiate: Instantiate<B>,
    live: Option<(Store<StoreState>, B)>,
    instances_created: u64,
}

impl<B> Guest<B> {
    pub(crate) fn new(
        actor: Actor,
        host_state: HostState,
        services: Option<Arc<dyn PolicyServices>>,
        instantiate: Instantiate<B>,
    ) -> Self {
        Guest { actor, host_state, services, instantiate, live: None, instances_created: 0 }
    }

    /// The actor.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The host state its imports use.
    pub fn host_state(&self) -> &HostState {
        &self.host_state
    }

    /// How many instances were created so far (one more after every trap).
    pub fn instances_created(&self) -> u64 {
        self.instances_created
    }

    /// Calls `function` on the live instance, creating one if needed. Key-value writes staged
    /// during the call are committed only if `commit` approves the result.
    pub(crate) fn call<R>(
        &mut self,
        function: &str,
        f: impl FnOnce(&B, &mut Store<StoreState>) -> wasmtime::Result<R>,
        commit: impl FnOnce(&R) -> bool,
    ) -> Result<R, HostError> {
        self.call_times(function, 1, f, commit)
    }

    /// [`Guest::call`] for a call that does the work of `times` calls (several deliveries to a
    /// projector at once): its import budgets are `times` those of one call.
    pub(crate) fn call_times<R>(
        &mut self,
        function: &str,
        times: u64,
        f: impl FnOnce(&B, &mut Store<StoreState>) -> wasmtime::Result<R>,
        commit: impl FnOnce(&R) -> bool,
    ) -> Result<R, HostError> {
        if self.live.is_none() {
            // Instantiation (the guest's start functions) runs on the budget `new_store` arms.
            let mut store = StoreState::new_store(self.actor.engine(), self.host_state.clone(), self.services.clone());
            let bindings = match (self.instantiate)(self.actor.instance_pre(), &mut store) {
                Ok(b) => b,
                Err(e) => {
                    store.data_mut().log_budget.finish(&self.host_state, self.actor.name(), "instantiate");
                    return Err(self.classify("instantiate", e, &mut store));
                }
            };
            self.instances_created += 1;
            self.live = Some((store, bindings));
        }
        let (store, bindings) = self.live.as_mut().expect("instance created above");
        StoreState::arm(self.actor.engine(), store, times);
        let result = f(bindings, store);
        store.data_mut().log_budget.finish(&self.host_state, self.actor.name(), function);
        match result {
            Ok(value) => {
                // Output of a successful call is of no interest; drop it so it can't pile up.
                store.data().output.clear();
                if commit(&value) {
                    self.host_state.commit();
                } else {
                    self.host_state.discard();
                }
                Ok(value)
            }
            Err(error) => {
                let (mut store, _) = self.live.take().expect("live instance");
                self.host_state.discard();
                Err(self.classify(function, error, &mut store))
            }
        }
    }

    fn classify(&self, function: &str, error: wasmtime::Error, store: &mut Store<StoreState>) -> HostError {
        let actor = self.actor.name().to_string();
        let function = function.to_string();
        let stderr = store.data().output.take();
        if store.data().memory.hit {
            return HostError::MemoryCap { actor, function, limit_bytes: self.actor.engine().limits().memory_bytes };
        }
        if let Some(over) = error.chain().find_map(|e| e.downcast_ref::<BudgetExceeded>()) {
            return HostError::ImportBudget {
                actor,
                function,
                import: over.budget.import(),
                what: over.budget.what(),
                field: over.budget.field(),
                limit: over.limit,
            };
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => {
                return HostError::CpuCap { actor, function, limit_ms: self.actor.engine().limits().cpu_ms };
            }
            Some(Trap::Interrupt) => {
                return HostError::WallClockCap {
                    actor,
                    function,
                    limit_ms: self.actor.engine().limits().backstop_ms(),
                };
            }
            _ => {}
        }
        HostError::Trap { actor, function, message: error.root_cause().to_string(), stderr }
    }
}
