//! Process managers: events and timers in, commands and timers out.

use crate::codec;
use crate::codec::refusal::{COMMAND_REFUSED, CommandRefused, REFUSALS_STREAM};
use crate::types::{Command, Event, Rejection, Timer, TimestampMs};
use serde::{Serialize, de::DeserializeOwned};
use std::marker::PhantomData;

pub use crate::bindings::process_manager::exports::tollgate::eventsourcing::process::Reaction as WitReaction;

/// What a process instance does in response to one input.
#[derive(Debug, Default, Clone)]
pub struct Reaction {
    /// Commands to send, in order.
    pub commands: Vec<Command>,
    /// Timers to set; an existing id is replaced.
    pub set_timers: Vec<Timer>,
    /// Ids of timers to cancel.
    pub cancel_timers: Vec<String>,
    /// The process has ended: the host drops its state.
    pub finished: bool,
}

impl Reaction {
    /// Adds a typed command for `stream`/`key`, caused by `cause`, whose correlation id it keeps.
    ///
    /// ```
    /// #[derive(serde::Serialize)]
    /// #[serde(rename_all = "kebab-case")]
    /// enum Cmd { Release { reservation_id: String } }
    /// #[derive(serde::Serialize)]
    /// #[serde(rename_all = "kebab-case")]
    /// enum Ev { Reserved { reservation_id: String } }
    /// let reserved = Ev::Reserved { reservation_id: "s1".into() };
    /// let cause = tollgate_sdk::Event {
    ///     command_id: "c1".into(),
    ///     correlation_id: "s1".into(),
    ///     ..tollgate_sdk::Event::new("account", "alice", &reserved).unwrap()
    /// };
    /// let mut r = tollgate_sdk::process_manager::Reaction::default();
    /// r.send("account", "alice", "s1/release", &Cmd::Release { reservation_id: "s1".into() }, &cause).unwrap();
    /// assert_eq!(r.commands[0].correlation_id, "s1");
    /// ```
    pub fn send<T: Serialize>(
        &mut self,
        stream: &str,
        key: &str,
        command_id: &str,
        command: &T,
        cause: &Event,
    ) -> Result<&mut Self, Rejection> {
        let mut command = Command::new(stream, key, command_id, command)?;
        command.correlation_id = cause.correlation_id.clone();
        command.causation_id = cause.command_id.clone();
        command.time = cause.time;
        self.commands.push(command);
        Ok(self)
    }
}

/// A process manager with typed state and events.
pub trait ProcessManager {
    /// Streams to receive events from.
    const SUBSCRIPTIONS: &'static [&'static str];
    /// State of one process instance.
    type State: Serialize + DeserializeOwned + Default;
    /// Every event type of the subscribed streams, an externally tagged serde enum.
    type Event: DeserializeOwned;

    /// The process instance an event belongs to, or `None` to ignore it.
    fn correlate(event: &Self::Event, envelope: &Event) -> Option<String>;

    /// Reacts to an event of the instance.
    fn react(state: &mut Self::State, event: Self::Event, envelope: &Event) -> Result<Reaction, Rejection>;

    /// Reacts to a timer of the instance firing at `now`.
    fn on_timer(state: &mut Self::State, timer: &Timer, now: TimestampMs) -> Result<Reaction, Rejection>;

    /// Reacts to a command of the instance that its aggregate refused (`envelope` is the
    /// refusal's event on [`REFUSALS_STREAM`]; its correlation id is the command's, its
    /// causation id the command's id). A compensating command, a timer to try again, or
    /// finishing the instance are all answers.
    ///
    /// The default refuses the refusal with `refusal-not-handled`, so the runtime
    /// dead-letters it (after `max_deliver` attempts): a manager that does not say what a
    /// refusal means never loses one silently.
    fn on_refused(state: &mut Self::State, refused: &CommandRefused, envelope: &Event) -> Result<Reaction, Rejection> {
        let _ = (state, envelope);
        Err(Rejection::business(
            "refusal-not-handled",
            format!(
                "this process manager does not handle refusals: `{}` {} on {}/{} was refused: {}: {}",
                refused.command_type, refused.command_id, refused.stream, refused.key, refused.code, refused.message
            ),
        ))
    }
}

fn decode_state<P: ProcessManager>(state: Option<&[u8]>) -> Result<P::State, Rejection> {
    match state {
        None => Ok(P::State::default()),
        Some(bytes) => codec::from_json(bytes)
            .map_err(|e| Rejection::malformed("malformed-state", format!("process state does not decode: {e}"))),
    }
}

fn finish<P: ProcessManager>(state: P::State, reaction: Reaction) -> Result<WitReaction, Rejection> {
    let state = if reaction.finished {
        None
    } else {
        Some(codec::to_json(&state).map_err(|e| Rejection::malformed("encode-state", e.to_string()))?)
    };
    Ok(WitReaction {
        state,
        commands: reaction.commands,
        set_timers: reaction.set_timers,
        cancel_timers: reaction.cancel_timers,
    })
}

/// Runs `P::correlate` on an encoded event.
///
/// An event of a type `P::Event` has no variant for is not one the process manager waits
/// for: `None`. One that does not decode otherwise (a payload of the wrong shape, an event
/// enum of a shape the codec cannot read, another content type) is never ignored silently: it
/// is logged, and correlated to its key so that [`react`] refuses it with `malformed-event`
/// and the reason, which the runtime dead-letters and `tollgate test` shows.
pub fn correlate<P: ProcessManager>(event: &Event) -> Option<String> {
    if let Err(r) = crate::aggregate::check_content_type(&event.content_type, "event", &event.event_type) {
        return refuse(event, &r.message);
    }
    match codec::decode::<P::Event>(&event.event_type, &event.payload) {
        Ok(typed) => P::correlate(&typed, event),
        Err(e) if codec::is_unknown_variant(&e) => None,
        Err(e) => refuse(event, &e.0),
    }
}

/// Logs why `event` does not decode and correlates it to its key, for `react` to refuse.
fn refuse(event: &Event, reason: &str) -> Option<String> {
    let message = format!(
        "event `{}` #{} of {}/{} does not decode, so it is refused rather than ignored: {reason}",
        event.event_type, event.sequence, event.stream, event.key
    );
    crate::log::error("process-manager", &message);
    Some(event.key.clone())
}

/// Runs `P::react` on encoded state and event; a refusal the runtime delivers (an event on
/// [`REFUSALS_STREAM`]) goes to `P::on_refused` instead.
pub fn react<P: ProcessManager>(state: Option<&[u8]>, event: &Event) -> Result<WitReaction, Rejection> {
    if event.stream == REFUSALS_STREAM {
        return on_refused::<P>(state, event);
    }
    let typed = crate::aggregate::decode_event::<P::Event>(event)?;
    let mut state = decode_state::<P>(state)?;
    let reaction = P::react(&mut state, typed, event)?;
    finish::<P>(state, reaction)
}

/// Runs `P::on_refused` on encoded state and a `command-refused` event.
pub fn on_refused<P: ProcessManager>(state: Option<&[u8]>, event: &Event) -> Result<WitReaction, Rejection> {
    if event.event_type != COMMAND_REFUSED {
        return Err(Rejection::malformed(
            "malformed-event",
            format!("event `{}` on {REFUSALS_STREAM} is not a `{COMMAND_REFUSED}`", event.event_type),
        ));
    }
    let refused: CommandRefused = codec::from_json(&event.payload).map_err(|e| {
        Rejection::malformed("malformed-event", format!("a `{COMMAND_REFUSED}` that does not decode: {e}"))
    })?;
    let mut state = decode_state::<P>(state)?;
    let reaction = P::on_refused(&mut state, &refused, event)?;
    finish::<P>(state, reaction)
}

/// Runs `P::on_timer` on encoded state.
pub fn on_timer<P: ProcessManager>(
    state: Option<&[u8]>,
    timer: &Timer,
    now: TimestampMs,
) -> Result<WitReaction, Rejection> {
    let mut state = decode_state::<P>(state)?;
    let reaction = P::on_timer(&mut state, timer, now)?;
    finish::<P>(state, reaction)
}

/// Adapts a [`ProcessManager`] to the generated `process` export.
pub struct Adapter<P>(PhantomData<P>);

impl<P: ProcessManager> crate::bindings::process_manager::exports::tollgate::eventsourcing::process::Guest
    for Adapter<P>
{
    fn subscriptions() -> Vec<String> {
        crate::log_undecodable::<P::Event>("process-manager");
        P::SUBSCRIPTIONS.iter().map(|s| s.to_string()).collect()
    }

    fn correlate(event: Event) -> Option<String> {
        correlate::<P>(&event)
    }

    fn react(state: Option<Vec<u8>>, event: Event) -> Result<WitReaction, Rejection> {
        react::<P>(state.as_deref(), &event)
    }

    fn on_timer(state: Option<Vec<u8>>, timer: Timer, now: TimestampMs) -> Result<WitReaction, Rejection> {
        on_timer::<P>(state.as_deref(), &timer, now)
    }
}

/// Exports a [`ProcessManager`] as the component's `tollgate:eventsourcing/process`.
#[macro_export]
macro_rules! export_process_manager {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type TollgateProcessManager = $crate::process_manager::Adapter<$ty>;
            $crate::bindings::process_manager::export!(TollgateProcessManager with_types_in $crate::bindings::process_manager);
        };
    };
}
