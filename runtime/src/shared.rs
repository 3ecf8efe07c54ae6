//! What a runtime's actors share: one event store, one clock, the counters, and the
//! bookkeeping of cascades and of the `decide` under way. Guarded by one mutex; a policy's
//! imports ([`crate::facade::ChargingFacade`]) lock it per call.
//!
//! Its work is split by what it does: [`crate::commands`] (commands on aggregates, reported
//! facts), [`crate::dispatch`] (commits delivered to projectors and process managers),
//! [`crate::cascade`] (bounds on what reactions cause), [`crate::timers`],
//! [`crate::undo`] (undoing a failed decision's charging calls) and [`crate::batch`]
//! (deciding several requests before one write).

use crate::batch::Batch;
use crate::cascade::Cascades;
use crate::commands::AggregateSlot;
use crate::dispatch::{ManagerSlot, ProjectorSlot, RefusedCommand};
use crate::error::RuntimeError;
use crate::journal::Journal;
use crate::manifest::{Manifest, ReactionLimits};
use crate::stats::Stats;
use crate::undo::InDecide;
use std::collections::BTreeMap;
use tollgate_host::RaterActor;
use tollgate_host::aggregate::{Command, Outcome};
use tollgate_host::host_state::VirtualClock;
use tollgate_host::typed::{Rated, RatingError, RatingRequest};

/// The actors of one runtime over one event store, and everything they share.
pub(crate) struct Shared {
    pub clock: VirtualClock,
    pub journal: Journal,
    pub aggregates: BTreeMap<String, AggregateSlot>,
    /// stream -> aggregate actor name.
    pub streams: BTreeMap<String, String>,
    pub raters: BTreeMap<String, RaterActor>,
    pub projectors: Vec<ProjectorSlot>,
    pub managers: Vec<ManagerSlot>,
    pub refused: Vec<RefusedCommand>,
    /// Streams a served node takes outside facts on (`[reports] streams`).
    pub report_streams: Vec<String>,
    pub stats: Stats,
    /// A snapshot is written once a key has this many events past its last one (0: never).
    pub snapshot_every: u64,
    /// Bounds on what reactions may cause.
    pub limits: ReactionLimits,
    pub cascades: Cascades,
    /// The `decide` call under way and what to undo if it fails (see
    /// [`crate::Runtime::admit_with`]).
    pub in_decide: InDecide,
    /// Appends held for one store call, while a batch of requests is decided (see
    /// [`crate::batch`]); `None`: every append is written at once.
    pub batch: Option<Batch>,
    /// The log's position up to which every commit has been delivered to the projectors and
    /// process managers (as of their last step; 0 before it).
    pub delivered_through: u64,
    /// Where the commands of process managers run, when not on this runtime (see
    /// [`crate::Runtime::run_commands_with`]).
    pub runner: Option<Box<dyn CommandRunner>>,
}

/// Runs the commands process managers send on other runtimes: a served core's workers, which
/// own their keys' state and write what they decide in batches. The primary then neither
/// reloads an account the workers changed nor waits for an fsync per command.
pub trait CommandRunner: Send {
    /// Executes `commands`, those of one key in the order given, and returns one outcome
    /// each (a refusal counted as a process manager's, see
    /// [`crate::Runtime::recount_as_reaction_refusal`]); `None` when it takes none of them
    /// (the node is stopping): they then run on the calling runtime.
    fn run(&self, commands: &[Command]) -> Option<Vec<Result<Outcome, String>>>;
}

impl Shared {
    /// No actors yet, over `journal`, with the store and reaction settings of `manifest`.
    pub fn new(clock: VirtualClock, journal: Journal, manifest: &Manifest) -> Shared {
        Shared {
            clock,
            journal,
            aggregates: BTreeMap::new(),
            streams: BTreeMap::new(),
            raters: BTreeMap::new(),
            projectors: Vec::new(),
            managers: Vec::new(),
            refused: Vec::new(),
            report_streams: manifest.reports.streams.clone(),
            stats: Stats::default(),
            snapshot_every: manifest.store.snapshot_every,
            limits: manifest.reactions.clone(),
            cascades: Cascades::default(),
            in_decide: InDecide::default(),
            batch: None,
            delivered_through: 0,
            runner: None,
        }
    }

    /// Rates with a named rater.
    pub fn rate_on(
        &mut self,
        actor: &str,
        request: &RatingRequest,
    ) -> Result<Result<Rated, RatingError>, RuntimeError> {
        let rater = self.raters.get_mut(actor).ok_or_else(|| RuntimeError::NoSuchActor(actor.into()))?;
        Ok(rater.rate(request)?)
    }
}
