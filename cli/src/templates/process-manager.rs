//! {{name}}: a process manager granting a bonus a minute after a big earning: on `earned`
//! of at least [`THRESHOLD`] points it arms timer `bonus`; when it fires it sends `earn` with
//! a tenth of the points and finishes.

use serde::{Deserialize, Serialize};
use tollgate_sdk::process_manager::Reaction;
use tollgate_sdk::types::TimestampMs;
use tollgate_sdk::{Event, ProcessManager, Rejection, Timer};

/// Earnings from this many points on get a bonus.
pub const THRESHOLD: u64 = 100;
/// How long after the earning the bonus comes.
pub const DELAY_MS: u64 = 60_000;

/// The events of stream `loyalty`.
#[derive(Deserialize, Debug, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum PointsEvent {
    /// Points were added.
    Earned { points: u64 },
    /// Points were spent.
    Redeemed { points: u64 },
}

/// The command it sends.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PointsCommand {
    /// Adds points.
    Earn { points: u64 },
}

/// One subscriber's pending bonus.
#[derive(Default, Serialize, Deserialize)]
pub struct Pending {
    /// The subscriber.
    pub subscriber: String,
    /// Bonus points to grant.
    pub bonus: u64,
}

/// The bonus an earning deserves, if any: the logic, pure.
pub fn bonus(points: u64) -> Option<u64> {
    (points >= THRESHOLD).then_some(points / 10)
}

/// The process manager.
pub struct Bonus;

impl ProcessManager for Bonus {
    const SUBSCRIPTIONS: &'static [&'static str] = &["loyalty"];
    type State = Pending;
    type Event = PointsEvent;

    fn correlate(_event: &PointsEvent, envelope: &Event) -> Option<String> {
        Some(envelope.key.clone())
    }

    fn react(state: &mut Pending, event: PointsEvent, envelope: &Event) -> Result<Reaction, Rejection> {
        let mut reaction = Reaction::default();
        if let PointsEvent::Earned { points } = event
            && let Some(extra) = bonus(points)
        {
            state.subscriber = envelope.key.clone();
            state.bonus += extra;
            let fire_at = envelope.time + DELAY_MS;
            reaction.set_timers.push(Timer { id: "bonus".into(), fire_at, payload: vec![] });
        }
        Ok(reaction)
    }

    fn on_timer(state: &mut Pending, timer: &Timer, now: TimestampMs) -> Result<Reaction, Rejection> {
        let mut reaction = Reaction::default();
        let id = format!("{}/bonus/{}", state.subscriber, timer.fire_at);
        let mut command = tollgate_sdk::Command::new("loyalty", &state.subscriber, &id, &PointsCommand::Earn { points: state.bonus })?;
        command.time = now;
        reaction.commands.push(command);
        reaction.finished = true;
        Ok(reaction)
    }
}

// Exports `tollgate:eventsourcing/process` (only on wasm32).
tollgate_sdk::export_process_manager!(Bonus);
