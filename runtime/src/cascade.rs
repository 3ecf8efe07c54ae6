//! Cascades: every command and timer a reaction causes is one step deeper than the input it
//! reacted to and counts against the outside input at the root of the chain; a reaction over
//! a bound of the manifest's `[reactions]` does nothing and fails its delivery.

use crate::error::RuntimeError;
use crate::shared::Shared;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tollgate_host::typed::Reaction;
use tollgate_store::StoredEvent;

/// Causes remembered (commands and timers by id, roots by effect count), oldest forgotten
/// first: an input whose cause was forgotten counts as a new root, so memory stays bounded
/// while every chain stays bounded by `max_cascade_depth` per run.
const CASCADE_MEMORY: usize = 1 << 16;

/// Where an input stands in a cascade of reactions.
#[derive(Clone)]
pub(crate) struct Cause {
    /// Reactions between the outside input at the root and this one (0: it is the root).
    pub depth: u32,
    /// Names the outside input at the root of the chain.
    pub root: Arc<str>,
}

impl Cause {
    /// Where what a reaction to this input causes stands: one step deeper, same root.
    pub fn next(&self) -> Cause {
        Cause { depth: self.depth.saturating_add(1), root: self.root.clone() }
    }
}

/// The causes of commands and timers process managers sent, and how much each root caused.
#[derive(Default)]
pub(crate) struct Cascades {
    /// (stream, key, command id) of a command, or (`""`, `""`, store id) of a timer.
    causes: HashMap<(String, String, String), Cause>,
    order: VecDeque<(String, String, String)>,
    /// Commands and timers caused so far per root.
    effects: HashMap<Arc<str>, u64>,
    roots: VecDeque<Arc<str>>,
}

impl Cascades {
    /// The cause remembered for a command (or, with empty stream and key, a timer).
    pub fn cause(&self, stream: &str, key: &str, id: &str) -> Option<Cause> {
        self.causes.get(&(stream.to_string(), key.to_string(), id.to_string())).cloned()
    }

    /// Remembers the cause of a command (or, with empty stream and key, a timer).
    pub fn remember(&mut self, stream: &str, key: &str, id: &str, cause: Cause) {
        let entry = (stream.to_string(), key.to_string(), id.to_string());
        if self.causes.insert(entry.clone(), cause).is_none() {
            self.order.push_back(entry);
            if self.order.len() > CASCADE_MEMORY
                && let Some(old) = self.order.pop_front()
            {
                self.causes.remove(&old);
            }
        }
    }

    fn effects(&self, root: &Arc<str>) -> u64 {
        self.effects.get(root).copied().unwrap_or(0)
    }

    /// Counts `n` more commands and timers caused by `root`.
    pub fn add_effects(&mut self, root: &Arc<str>, n: u64) {
        match self.effects.get_mut(root) {
            Some(count) => *count = count.saturating_add(n),
            None => {
                self.effects.insert(root.clone(), n);
                self.roots.push_back(root.clone());
                if self.roots.len() > CASCADE_MEMORY
                    && let Some(old) = self.roots.pop_front()
                {
                    self.effects.remove(&old);
                }
            }
        }
    }
}

impl Shared {
    /// The cascade an input belongs to: the one of the reaction that sent its command or set
    /// its timer, or a new chain rooted at it.
    pub(crate) fn cause_of(&self, input: &StoredEvent) -> Cause {
        self.cascades.cause(&input.stream, &input.key, &input.command_id).unwrap_or_else(|| Cause {
            depth: 0,
            root: format!("{}/{} #{}", input.stream, input.key, input.sequence).into(),
        })
    }

    /// Refuses a reaction (to an input at `cause`) that goes over a bound of `[reactions]`.
    pub(crate) fn check_bounds(&self, reaction: &Reaction, cause: &Cause, what: &str) -> Result<(), RuntimeError> {
        let limits = &self.limits;
        let (commands, timers) = (reaction.commands.len() as u64, reaction.set_timers.len() as u64);
        let over = |bound, limit: u64, message: String| {
            Err(RuntimeError::ReactionBound { bound, limit, message: format!("{what}: {message}") })
        };
        if commands > u64::from(limits.max_commands_per_reaction) {
            return over(
                "max_commands_per_reaction",
                limits.max_commands_per_reaction.into(),
                format!("sends {commands} commands"),
            );
        }
        if timers > u64::from(limits.max_timers_per_reaction) {
            return over(
                "max_timers_per_reaction",
                limits.max_timers_per_reaction.into(),
                format!("sets {timers} timers"),
            );
        }
        let effects = commands + timers;
        if effects == 0 {
            return Ok(());
        }
        let depth = cause.depth.saturating_add(1);
        if depth > limits.max_cascade_depth {
            return over(
                "max_cascade_depth",
                limits.max_cascade_depth.into(),
                format!(
                    "would send commands or set timers at cascade depth {depth} (the chain started at {})",
                    cause.root
                ),
            );
        }
        let total = self.cascades.effects(&cause.root).saturating_add(effects);
        if total > limits.max_cascade_effects {
            return over(
                "max_cascade_effects",
                limits.max_cascade_effects,
                format!("would bring the commands and timers caused by {} to {total}", cause.root),
            );
        }
        Ok(())
    }
}
