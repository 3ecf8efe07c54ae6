//! Projectors: events in, a read model out, kept in key-value storage.
//!
//! The host commits a batch's key-value writes together with the projector's checkpoint, so a
//! failed batch leaves nothing behind and is delivered again.

use crate::bindings::aggregate::tollgate::eventsourcing::types::EventBatch;
use crate::types::{Event, Rejection};
use serde::de::DeserializeOwned;
use std::marker::PhantomData;

/// A projector with typed events.
///
/// ```
/// use tollgate_sdk::{Event, Projector, Rejection};
///
/// #[derive(serde::Deserialize)]
/// #[serde(rename_all = "kebab-case")]
/// enum AccountEvent { ToppedUp { amount: i64 } }
///
/// struct TopUpCounter;
/// impl Projector for TopUpCounter {
///     const SUBSCRIPTIONS: &'static [&'static str] = &["account"];
///     type Event = AccountEvent;
///     fn project(event: AccountEvent, envelope: &Event) -> Result<(), Rejection> {
///         let bucket = tollgate_sdk::keyvalue::Bucket::open("top-ups")?;
///         let AccountEvent::ToppedUp { amount } = event;
///         let total: i64 = bucket.get_json(&envelope.key)?.unwrap_or(0);
///         bucket.set_json(&envelope.key, &(total + amount))
///     }
/// }
/// tollgate_sdk::export_projector!(TopUpCounter);
/// ```
pub trait Projector {
    /// Streams to receive events from.
    const SUBSCRIPTIONS: &'static [&'static str];
    /// Every event type of the subscribed streams, an externally tagged serde enum.
    type Event: DeserializeOwned;

    /// Updates the read model for one event.
    fn project(event: Self::Event, envelope: &Event) -> Result<(), Rejection>;
}

/// Decodes and projects a batch, stopping at the first failure.
pub fn project<P: Projector>(events: Vec<Event>) -> Result<(), Rejection> {
    for event in &events {
        P::project(crate::aggregate::decode_event(event)?, event)?;
    }
    Ok(())
}

/// Adapts a [`Projector`] to the generated `projection` export.
pub struct Adapter<P>(PhantomData<P>);

impl<P: Projector> crate::bindings::projector::exports::tollgate::eventsourcing::projection::Guest for Adapter<P> {
    fn subscriptions() -> Vec<String> {
        crate::log_undecodable::<P::Event>("projector");
        P::SUBSCRIPTIONS.iter().map(|s| s.to_string()).collect()
    }

    fn project(batch: EventBatch) -> Result<(), Rejection> {
        project::<P>(crate::batch::events(&batch)?)
    }
}

/// Exports a [`Projector`] as the component's `tollgate:eventsourcing/projection`.
#[macro_export]
macro_rules! export_projector {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type TollgateProjector = $crate::projector::Adapter<$ty>;
    $crate::bindings::projector::export!(TollgateProjector with_types_in $crate::bindings::projector);
        };
    };
}
