//! {{name}}: a projector keeping each subscriber's points in key-value bucket `points`.

use serde::Deserialize;
use tollgate_sdk::keyvalue::Bucket;
use tollgate_sdk::{Event, Projector, Rejection};

/// The bucket holding the read model: key = subscriber, value = points (JSON number).
pub const BUCKET: &str = "points";

/// The events of stream `loyalty`.
#[derive(Deserialize, Debug, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum PointsEvent {
    /// Points were added.
    Earned { points: u64 },
    /// Points were spent.
    Redeemed { points: u64 },
}

/// The balance after one event: the projector's logic, pure.
pub fn fold(balance: u64, event: &PointsEvent) -> u64 {
    match event {
        PointsEvent::Earned { points } => balance.saturating_add(*points),
        PointsEvent::Redeemed { points } => balance.saturating_sub(*points),
    }
}

/// The projector.
pub struct PointsView;

impl Projector for PointsView {
    const SUBSCRIPTIONS: &'static [&'static str] = &["loyalty"];
    type Event = PointsEvent;

    fn project(event: PointsEvent, envelope: &Event) -> Result<(), Rejection> {
        let bucket = Bucket::open(BUCKET)?;
        let balance: u64 = bucket.get_json(&envelope.key)?.unwrap_or(0);
        bucket.set_json(&envelope.key, &fold(balance, &event))
    }
}

// Exports `tollgate:eventsourcing/projection` (only on wasm32).
tollgate_sdk::export_projector!(PointsView);
