//! {{name}}: a loyalty-points aggregate. Each key is a subscriber; commands earn and redeem
//! points, events record it.

use serde::{Deserialize, Serialize};
use tollgate_sdk::{Aggregate, Command, Rejection};

/// State: the points of one subscriber, rebuilt from its events.
#[derive(Default, Serialize, Deserialize)]
pub struct Points {
    /// Points available.
    pub balance: u64,
}

/// Commands: the variant name is the command type, its fields the JSON payload.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PointsCommand {
    /// Adds points.
    Earn { points: u64 },
    /// Spends points.
    Redeem { points: u64 },
}

/// Events.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum PointsEvent {
    /// Points were added.
    Earned { points: u64 },
    /// Points were spent.
    Redeemed { points: u64 },
}

/// The aggregate.
pub struct Loyalty;

impl Aggregate for Loyalty {
    const STREAM: &'static str = "loyalty";
    type State = Points;
    type Command = PointsCommand;
    type Event = PointsEvent;

    fn handle(state: &Points, command: PointsCommand, _: &Command) -> Result<Vec<PointsEvent>, Rejection> {
        match command {
            PointsCommand::Earn { points: 0 } | PointsCommand::Redeem { points: 0 } => {
                Err(Rejection::malformed("zero-amount", "`points` must be > 0"))
            }
            PointsCommand::Earn { points } if state.balance.checked_add(points).is_none() => Err(Rejection::malformed(
                "points-out-of-range",
                format!("{points} more would take the balance past {}", u64::MAX),
            )),
            PointsCommand::Earn { points } => Ok(vec![PointsEvent::Earned { points }]),
            PointsCommand::Redeem { points } if points > state.balance => Err(Rejection::business(
                "insufficient-points",
                format!("{points} asked, {} available", state.balance),
            )),
            PointsCommand::Redeem { points } => Ok(vec![PointsEvent::Redeemed { points }]),
        }
    }

    fn apply(state: &mut Points, event: PointsEvent) {
        match event {
            // `handle` refused what would overflow; events are facts, so fold without panicking.
            PointsEvent::Earned { points } => state.balance = state.balance.saturating_add(points),
            PointsEvent::Redeemed { points } => state.balance = state.balance.saturating_sub(points),
        }
    }
}

// Exports `tollgate:eventsourcing/command-handler` (only on wasm32; natively this is a library).
tollgate_sdk::export_aggregate!(Loyalty);
