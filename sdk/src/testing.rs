//! Given / when / then natively, without wasmtime (feature `testing`): an actor's logic runs
//! through the same adapters its component exports (encoding, decoding and the codec's shape
//! checks included), so a test here fails where the component would.
//!
//! ```
//! # #[derive(serde::Serialize, serde::Deserialize, Default, Debug, PartialEq)]
//! # pub struct Points { balance: u64 }
//! # #[derive(serde::Serialize, serde::Deserialize)]
//! # #[serde(rename_all = "kebab-case")]
//! # pub enum PointsCommand { Redeem { points: u64 } }
//! # #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
//! # #[serde(rename_all = "kebab-case")]
//! # pub enum PointsEvent { Earned { points: u64 }, Redeemed { points: u64 } }
//! # pub struct Loyalty;
//! # impl tollgate_sdk::Aggregate for Loyalty {
//! #     const STREAM: &'static str = "loyalty";
//! #     type State = Points;
//! #     type Command = PointsCommand;
//! #     type Event = PointsEvent;
//! #     fn handle(s: &Points, c: PointsCommand, _: &tollgate_sdk::Command) -> Result<Vec<PointsEvent>, tollgate_sdk::Rejection> {
//! #         let PointsCommand::Redeem { points } = c;
//! #         if points > s.balance { return Err(tollgate_sdk::Rejection::business("insufficient-points", "")); }
//! #         Ok(vec![PointsEvent::Redeemed { points }])
//! #     }
//! #     fn apply(s: &mut Points, e: PointsEvent) {
//! #         match e { PointsEvent::Earned { points } => s.balance += points, PointsEvent::Redeemed { points } => s.balance -= points }
//! #     }
//! # }
//! use tollgate_sdk::testing::AggregateTest;
//!
//! AggregateTest::<Loyalty>::new()
//!     .given([PointsEvent::Earned { points: 10 }])
//!     .when(PointsCommand::Redeem { points: 4 })
//!     .then_expect_events([PointsEvent::Redeemed { points: 4 }])
//!     .then_expect_state(Points { balance: 6 })
//!     .and_when(PointsCommand::Redeem { points: 7 })
//!     .then_expect_rejection("insufficient-points");
//! ```

use crate::aggregate::{self, Aggregate};
use crate::codec::refusal::{COMMAND_REFUSED, CommandRefused, REFUSALS_STREAM};
use crate::process_manager::{self, ProcessManager, WitReaction};
use crate::projector::{self, Projector};
use crate::types::{Command, Event, EventDraft, Rejection, RejectionKind, Timer, TimestampMs};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::marker::PhantomData;

/// What a repeated command id is compared on: the command's type, content type and payload.
type CommandContent = (String, String, Vec<u8>);

/// The key commands and events go to unless a test says otherwise.
pub const TEST_KEY: &str = "test-key";

/// A test of one aggregate key: `given` events, `when` a command, `then` what came of it.
pub struct AggregateTest<A: Aggregate> {
    key: String,
    time: TimestampMs,
    state: Option<Vec<u8>>,
    events: Vec<Event>,
    sent: u64,
    /// command id -> (command type, content type, payload) and the drafts it was accepted with,
    /// to answer a repeated id as the host does.
    committed: BTreeMap<String, (CommandContent, Vec<EventDraft>)>,
    aggregate: PhantomData<A>,
}

impl<A: Aggregate> Default for AggregateTest<A> {
    fn default() -> Self {
        AggregateTest {
            key: TEST_KEY.into(),
            time: 0,
            state: None,
            events: Vec::new(),
            sent: 0,
            committed: BTreeMap::new(),
            aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> AggregateTest<A> {
    /// A key with no events, at time 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `key` instead of [`TEST_KEY`].
    pub fn key(mut self, key: &str) -> Self {
        self.key = key.into();
        self
    }

    /// Stamps later commands and given events with `time` (ms since the epoch).
    pub fn at(mut self, time: TimestampMs) -> Self {
        self.time = time;
        self
    }

    /// Events that already happened to the key, folded into its state.
    #[track_caller]
    pub fn given(mut self, events: impl IntoIterator<Item = A::Event>) -> Self {
        let drafts: Vec<EventDraft> = events
            .into_iter()
            .map(|e| {
                let (event_type, payload) =
                    crate::codec::encode(&e).unwrap_or_else(|e| panic!("given event does not encode: {e}"));
                EventDraft {
                    event_type,
                    schema_version: A::EVENT_SCHEMA_VERSION,
                    content_type: crate::codec::JSON.into(),
                    payload,
                }
            })
            .collect();
        self.append(drafts, "given", "given");
        self
    }

    /// Sends a typed command with a fresh command id.
    #[track_caller]
    pub fn when<C: Serialize>(mut self, command: C) -> AggregateThen<A> {
        self.sent += 1;
        let id = format!("cmd-{}", self.sent);
        self.when_with_id(&id, command)
    }

    /// Sends a typed command with the given command id.
    #[track_caller]
    pub fn when_with_id<C: Serialize>(self, command_id: &str, command: C) -> AggregateThen<A> {
        let mut envelope = Command::new(A::STREAM, &self.key, command_id, &command)
            .unwrap_or_else(|r| panic!("the command does not encode: {}", r.message));
        envelope.time = self.time;
        self.when_command(envelope)
    }

    /// Sends a command envelope as it is (a payload of the wrong shape, another content type).
    ///
    /// A command id accepted before is answered as the host answers it: the same command gets
    /// its original events again and changes nothing ([`AggregateThen::then_expect_repeat`]);
    /// another command under that id is refused with `command-id-conflict` (kind `malformed`).
    #[track_caller]
    pub fn when_command(mut self, command: Command) -> AggregateThen<A> {
        let content = (command.command_type.clone(), command.content_type.clone(), command.payload.clone());
        if let Some((original, drafts)) = self.committed.get(&command.command_id) {
            let outcome = if *original == content {
                Ok(drafts.clone())
            } else {
                Err(Rejection::malformed(
                    "command-id-conflict",
                    format!(
                        "command id `{}` on {}/{} was already used for another command; a retry must repeat the \
                         command exactly, a new command needs a new id",
                        command.command_id, command.stream, command.key
                    ),
                ))
            };
            return AggregateThen { test: self, outcome, repeat: true };
        }
        let outcome = aggregate::handle::<A>(self.state.as_deref(), &command);
        if let Ok(drafts) = &outcome {
            self.append(drafts.clone(), &command.command_id, &command.correlation_id);
            if !command.command_id.is_empty() {
                self.committed.insert(command.command_id.clone(), (content, drafts.clone()));
            }
        }
        AggregateThen { test: self, outcome, repeat: false }
    }

    /// Appends drafts as the host would (next sequences, the clock's time) and folds them.
    #[track_caller]
    fn append(&mut self, drafts: Vec<EventDraft>, command_id: &str, correlation_id: &str) {
        let first = self.events.len() as u64 + 1;
        let events: Vec<Event> = drafts
            .into_iter()
            .zip(first..)
            .map(|(d, sequence)| Event {
                stream: A::STREAM.into(),
                key: self.key.clone(),
                event_type: d.event_type,
                schema_version: d.schema_version,
                content_type: d.content_type,
                payload: d.payload,
                sequence,
                time: self.time,
                command_id: command_id.into(),
                correlation_id: correlation_id.into(),
                causation_id: String::new(),
            })
            .collect();
        let state = aggregate::apply::<A>(self.state.as_deref(), events.clone())
            .unwrap_or_else(|r| panic!("folding the events failed: {}: {}", r.code, r.message));
        self.state = Some(state);
        self.events.extend(events);
    }

    /// Every event of the key so far.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The key's state (the default before its first event).
    #[track_caller]
    pub fn state(&self) -> A::State {
        aggregate::decode_state::<A>(self.state.as_deref())
            .unwrap_or_else(|r| panic!("the state does not decode: {}", r.message))
    }
}

/// What one command of an [`AggregateTest`] did, to assert on.
pub struct AggregateThen<A: Aggregate> {
    test: AggregateTest<A>,
    outcome: Result<Vec<EventDraft>, Rejection>,
    /// The command's id was committed before: answered from what was committed.
    repeat: bool,
}

impl<A: Aggregate> AggregateThen<A> {
    /// Asserts the command was accepted with exactly these events.
    #[track_caller]
    pub fn then_expect_events(self, expected: impl IntoIterator<Item = A::Event>) -> Self
    where
        A::Event: PartialEq + Debug,
    {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match &self.outcome {
            Ok(drafts) => {
                let actual: Vec<A::Event> = drafts.iter().map(decode_draft::<A::Event>).collect();
                assert_eq!(actual, expected, "events differ (left: actual, right: expected)");
            }
            Err(r) => panic!("expected events {expected:?}, got rejection `{}` ({:?}): {}", r.code, r.kind, r.message),
        }
        self
    }

    /// Asserts the command was rejected with this code (and so changed nothing).
    #[track_caller]
    pub fn then_expect_rejection(self, code: &str) -> Self {
        expect_rejection(&self.outcome, code, |drafts| format!("{} events: {}", drafts.len(), types(drafts)));
        self
    }

    /// Asserts the command was rejected with this kind and code.
    #[track_caller]
    pub fn then_expect_rejection_of(self, kind: RejectionKind, code: &str) -> Self {
        expect_rejection_of(&self.outcome, kind, code, |drafts| format!("{} events: {}", drafts.len(), types(drafts)));
        self
    }

    /// Asserts the command repeated an id committed before with the same command, and was
    /// answered with the original events, changing nothing again (the host's `duplicate`).
    #[track_caller]
    pub fn then_expect_repeat(self) -> Self {
        assert!(self.repeat, "the command was decided, not answered as a repeat of an id committed before");
        if let Err(r) = &self.outcome {
            panic!("expected a repeat answered with its original events, got rejection `{}`: {}", r.code, r.message);
        }
        self
    }

    /// Asserts the key's state after the command.
    #[track_caller]
    pub fn then_expect_state(self, expected: A::State) -> Self
    where
        A::State: PartialEq + Debug,
    {
        assert_eq!(self.test.state(), expected, "states differ (left: actual, right: expected)");
        self
    }

    /// The command's outcome: the event drafts, or the rejection.
    pub fn outcome(&self) -> &Result<Vec<EventDraft>, Rejection> {
        &self.outcome
    }

    /// The key's state after the command.
    #[track_caller]
    pub fn state(&self) -> A::State {
        self.test.state()
    }

    /// Sends another command to the same key, with a fresh id.
    #[track_caller]
    pub fn and_when<C: Serialize>(self, command: C) -> AggregateThen<A> {
        self.test.when(command)
    }

    /// Sends another command to the same key with the given id (an id used before is answered
    /// as the host answers it: see [`AggregateTest::when_command`]).
    #[track_caller]
    pub fn and_when_with_id<C: Serialize>(self, command_id: &str, command: C) -> AggregateThen<A> {
        self.test.when_with_id(command_id, command)
    }

    /// The test, to go on with (e.g. at a later time).
    pub fn into_test(self) -> AggregateTest<A> {
        self.test
    }
}

/// A test of a process manager: instances built up by `given` events, then one event or timer.
pub struct ProcessManagerTest<P: ProcessManager> {
    /// instance -> encoded state, for live instances.
    instances: BTreeMap<String, Vec<u8>>,
    manager: PhantomData<P>,
}

impl<P: ProcessManager> Default for ProcessManagerTest<P> {
    fn default() -> Self {
        ProcessManagerTest { instances: BTreeMap::new(), manager: PhantomData }
    }
}

impl<P: ProcessManager> ProcessManagerTest<P> {
    /// No instances yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Events that already happened; each must be ignored or reacted to without a rejection.
    #[track_caller]
    pub fn given(mut self, events: impl IntoIterator<Item = Event>) -> Self {
        for event in events {
            if let Err(r) = self.deliver(&event) {
                panic!("given event `{}` was refused: {}: {}", event.event_type, r.code, r.message);
            }
        }
        self
    }

    /// Delivers one event: what its instance did, or that it was ignored.
    pub fn when(mut self, event: Event) -> ProcessThen<P> {
        let outcome = self.deliver(&event);
        ProcessThen { test: self, outcome }
    }

    /// Fires `timer` of `instance` at `now`.
    pub fn when_timer(mut self, instance: &str, timer: Timer, now: TimestampMs) -> ProcessThen<P> {
        let state = self.instances.get(instance).cloned();
        let outcome = process_manager::on_timer::<P>(state.as_deref(), &timer, now)
            .map(|reaction| Some(self.keep(instance, reaction)));
        ProcessThen { test: self, outcome }
    }

    /// Tells `instance` that the aggregate refused `command` (one it sent) with `rejection`, as
    /// the runtime does (an event on `tollgate.refusals`, to `ProcessManager::on_refused`).
    pub fn when_refused(mut self, instance: &str, command: &Command, rejection: Rejection) -> ProcessThen<P> {
        let event = refusal_event(instance, command, &rejection);
        let state = self.instances.get(instance).cloned();
        let outcome =
            process_manager::react::<P>(state.as_deref(), &event).map(|reaction| Some(self.keep(instance, reaction)));
        ProcessThen { test: self, outcome }
    }

    fn deliver(&mut self, event: &Event) -> Result<Option<(String, WitReaction)>, Rejection> {
        let Some(instance) = process_manager::correlate::<P>(event) else { return Ok(None) };
        let state = self.instances.get(&instance).cloned();
        let reaction = process_manager::react::<P>(state.as_deref(), event)?;
        Ok(Some(self.keep(&instance, reaction)))
    }

    /// Keeps an instance's new state, or drops it once finished, as the host does.
    fn keep(&mut self, instance: &str, reaction: WitReaction) -> (String, WitReaction) {
        // A reaction without a state is a finished instance.
        match &reaction.state {
            Some(state) => {
                self.instances.insert(instance.into(), state.clone());
            }
            None => {
                self.instances.remove(instance);
            }
        }
        (instance.into(), reaction)
    }

    /// The state of a live instance.
    #[track_caller]
    pub fn state(&self, instance: &str) -> Option<P::State> {
        self.instances.get(instance).map(|bytes| {
            crate::codec::from_json(bytes).unwrap_or_else(|e| panic!("the state of `{instance}` does not decode: {e}"))
        })
    }
}

/// What one event or timer of a [`ProcessManagerTest`] did, to assert on.
pub struct ProcessThen<P: ProcessManager> {
    test: ProcessManagerTest<P>,
    /// `None`: ignored; otherwise the instance and its reaction.
    outcome: Result<Option<(String, WitReaction)>, Rejection>,
}

impl<P: ProcessManager> ProcessThen<P> {
    #[track_caller]
    fn reaction(&self, expected: &str) -> &WitReaction {
        match &self.outcome {
            Ok(Some((_, reaction))) => reaction,
            Ok(None) => panic!("expected {expected}, but the event was ignored (correlated to no instance)"),
            Err(r) => panic!("expected {expected}, got rejection `{}`: {}", r.code, r.message),
        }
    }

    /// Asserts no instance took the event.
    #[track_caller]
    pub fn then_expect_ignored(self) -> Self {
        match &self.outcome {
            Ok(None) => {}
            Ok(Some((instance, _))) => panic!("expected the event to be ignored, but instance `{instance}` reacted"),
            Err(r) => panic!("expected the event to be ignored, got rejection `{}`: {}", r.code, r.message),
        }
        self
    }

    /// Asserts the instance sent exactly these commands (decoded), in order.
    #[track_caller]
    pub fn then_expect_commands<C: DeserializeOwned + PartialEq + Debug>(
        self,
        expected: impl IntoIterator<Item = C>,
    ) -> Self {
        let expected: Vec<C> = expected.into_iter().collect();
        let actual: Vec<C> = self
            .reaction("commands")
            .commands
            .iter()
            .map(|c| {
                crate::codec::decode(&c.command_type, &c.payload)
                    .unwrap_or_else(|e| panic!("command `{}` does not decode: {e}", c.command_type))
            })
            .collect();
        assert_eq!(actual, expected, "commands differ (left: actual, right: expected)");
        self
    }

    /// Asserts the timers set, as (id, fire at), in order.
    #[track_caller]
    pub fn then_expect_timers<'a>(self, expected: impl IntoIterator<Item = (&'a str, TimestampMs)>) -> Self {
        let expected: Vec<(String, TimestampMs)> = expected.into_iter().map(|(id, at)| (id.into(), at)).collect();
        let actual: Vec<(String, TimestampMs)> =
            self.reaction("timers").set_timers.iter().map(|t| (t.id.clone(), t.fire_at)).collect();
        assert_eq!(actual, expected, "timers differ (left: actual, right: expected)");
        self
    }

    /// Asserts the ids of the commands the instance sent, in order.
    #[track_caller]
    pub fn then_expect_command_ids<'a>(self, expected: impl IntoIterator<Item = &'a str>) -> Self {
        let expected: Vec<&str> = expected.into_iter().collect();
        let actual: Vec<&str> = self.reaction("command ids").commands.iter().map(|c| c.command_id.as_str()).collect();
        assert_eq!(actual, expected, "command ids differ (left: actual, right: expected)");
        self
    }

    /// Asserts the ids of the timers the instance cancelled, in order.
    #[track_caller]
    pub fn then_expect_cancelled_timers<'a>(self, expected: impl IntoIterator<Item = &'a str>) -> Self {
        let expected: Vec<&str> = expected.into_iter().collect();
        let actual: Vec<&str> = self.reaction("cancelled timers").cancel_timers.iter().map(String::as_str).collect();
        assert_eq!(actual, expected, "cancelled timers differ (left: actual, right: expected)");
        self
    }

    /// Asserts the input was refused with this kind and code.
    #[track_caller]
    pub fn then_expect_rejection_of(self, kind: RejectionKind, code: &str) -> Self {
        expect_rejection_of(&self.outcome, kind, code, |_| "the input taken".into());
        self
    }

    /// Asserts the instance finished (its state is dropped).
    #[track_caller]
    pub fn then_expect_finished(self) -> Self {
        assert!(self.reaction("a finished instance").state.is_none(), "the instance did not finish");
        self
    }

    /// Asserts the input was refused with this code.
    #[track_caller]
    pub fn then_expect_rejection(self, code: &str) -> Self {
        expect_rejection(&self.outcome, code, |_| "the input taken".into());
        self
    }

    /// The instance that reacted and its reaction (`None`: ignored), or the rejection.
    pub fn outcome(&self) -> &Result<Option<(String, WitReaction)>, Rejection> {
        &self.outcome
    }

    /// The state of a live instance after the input.
    #[track_caller]
    pub fn state(&self, instance: &str) -> Option<P::State> {
        self.test.state(instance)
    }

    /// Delivers another event.
    pub fn and_when(self, event: Event) -> ProcessThen<P> {
        self.test.when(event)
    }

    /// Fires another timer.
    pub fn and_when_timer(self, instance: &str, timer: Timer, now: TimestampMs) -> ProcessThen<P> {
        self.test.when_timer(instance, timer, now)
    }

    /// Tells another refusal.
    pub fn and_when_refused(self, instance: &str, command: &Command, rejection: Rejection) -> ProcessThen<P> {
        self.test.when_refused(instance, command, rejection)
    }
}

/// A test of a projector: events in, key-value entries out. Its buckets are this thread's
/// native buckets ([`crate::keyvalue`]), emptied when the test starts.
pub struct ProjectorTest<P: Projector> {
    projector: PhantomData<P>,
}

impl<P: Projector> Default for ProjectorTest<P> {
    fn default() -> Self {
        crate::keyvalue::clear_native();
        ProjectorTest { projector: PhantomData }
    }
}

impl<P: Projector> ProjectorTest<P> {
    /// Empty buckets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Events already projected; each must be taken.
    #[track_caller]
    pub fn given(self, events: impl IntoIterator<Item = Event>) -> Self {
        if let Err(r) = projector::project::<P>(events.into_iter().collect()) {
            panic!("a given event was refused: {}: {}", r.code, r.message);
        }
        self
    }

    /// Projects a batch of events (the host delivers them in batches, stopping at a failure).
    pub fn when(self, events: impl IntoIterator<Item = Event>) -> ProjectorThen<P> {
        let outcome = projector::project::<P>(events.into_iter().collect());
        ProjectorThen { test: self, outcome }
    }
}

/// What a batch of a [`ProjectorTest`] did, to assert on.
pub struct ProjectorThen<P: Projector> {
    test: ProjectorTest<P>,
    outcome: Result<(), Rejection>,
}

impl<P: Projector> ProjectorThen<P> {
    /// Asserts `bucket` holds `expected` at `key`, compared as JSON on the fields `expected`
    /// states only, as scenario files compare `then.kv`: an object's unstated fields are not
    /// compared (recursively); arrays and other values compare whole.
    #[track_caller]
    pub fn then_expect_kv<T: Serialize>(self, bucket: &str, key: &str, expected: T) -> Self {
        if let Err(r) = &self.outcome {
            panic!("expected `{bucket}/{key}`, got rejection `{}`: {}", r.code, r.message);
        }
        let expected = serde_json::to_value(expected).unwrap_or_else(|e| panic!("the expected value: {e}"));
        let Some(actual) = crate::keyvalue::native_entries(bucket).get(key).map(|bytes| {
            serde_json::from_slice::<serde_json::Value>(bytes)
                .unwrap_or_else(|e| panic!("`{bucket}/{key}` is not JSON: {e}"))
        }) else {
            panic!("`{bucket}/{key}` has no entry (expected {expected})");
        };
        assert_eq!(
            crate::codec::stated(&actual, &expected),
            expected,
            "`{bucket}/{key}` differs (left: actual, right: expected)"
        );
        self
    }

    /// Asserts the batch was refused with this kind and code.
    #[track_caller]
    pub fn then_expect_rejection_of(self, kind: RejectionKind, code: &str) -> Self {
        expect_rejection_of(&self.outcome, kind, code, |()| "the batch taken".into());
        self
    }

    /// Asserts the batch was refused with this code.
    #[track_caller]
    pub fn then_expect_rejection(self, code: &str) -> Self {
        expect_rejection(&self.outcome, code, |()| "the batch taken".into());
        self
    }

    /// The batch's outcome.
    pub fn outcome(&self) -> &Result<(), Rejection> {
        &self.outcome
    }

    /// Every entry of `bucket`, decoded.
    #[track_caller]
    pub fn kv<T: DeserializeOwned>(&self, bucket: &str) -> BTreeMap<String, T> {
        crate::keyvalue::native_entries(bucket)
            .into_iter()
            .map(|(k, v)| {
                let value =
                    crate::codec::from_json(&v).unwrap_or_else(|e| panic!("`{bucket}/{k}` does not decode: {e}"));
                (k, value)
            })
            .collect()
    }

    /// Projects another batch.
    pub fn and_when(self, events: impl IntoIterator<Item = Event>) -> ProjectorThen<P> {
        self.test.when(events)
    }
}

/// Panics unless `outcome` is a rejection with `code`; `taken` says what came instead.
#[track_caller]
fn expect_rejection<T>(outcome: &Result<T, Rejection>, code: &str, taken: impl FnOnce(&T) -> String) {
    match outcome {
        Err(r) if r.code == code => {}
        Err(r) => panic!("expected rejection `{code}`, got rejection `{}`: {}", r.code, r.message),
        Ok(value) => panic!("expected rejection `{code}`, got {}", taken(value)),
    }
}

/// Panics unless `outcome` is a rejection of `kind` with `code`.
#[track_caller]
fn expect_rejection_of<T>(
    outcome: &Result<T, Rejection>,
    kind: RejectionKind,
    code: &str,
    taken: impl FnOnce(&T) -> String,
) {
    expect_rejection(outcome, code, taken);
    if let Err(r) = outcome {
        assert_eq!(r.kind, kind, "rejection `{code}` is of another kind (left: actual, right: expected)");
    }
}

/// The event the runtime delivers to `instance` when the aggregate refused its `command`.
pub fn refusal_event(instance: &str, command: &Command, rejection: &Rejection) -> Event {
    let refused = CommandRefused {
        manager: "test".into(),
        instance: instance.into(),
        stream: command.stream.clone(),
        key: command.key.clone(),
        command_id: command.command_id.clone(),
        command_type: command.command_type.clone(),
        payload: String::from_utf8(command.payload.clone()).unwrap_or_default(),
        kind: match rejection.kind {
            RejectionKind::Business => "business",
            RejectionKind::Malformed => "malformed",
            RejectionKind::UnknownCommand => "unknown-command",
        }
        .into(),
        code: rejection.code.clone(),
        message: rejection.message.clone(),
    };
    Event {
        stream: REFUSALS_STREAM.into(),
        key: format!("test/{instance}"),
        event_type: COMMAND_REFUSED.into(),
        schema_version: 1,
        content_type: crate::codec::JSON.into(),
        payload: crate::codec::to_json(&refused).expect("a struct of strings always encodes as JSON"),
        sequence: 1,
        time: command.time,
        command_id: format!("refused/{}", command.command_id),
        correlation_id: command.correlation_id.clone(),
        causation_id: command.command_id.clone(),
    }
}

fn decode_draft<T: DeserializeOwned>(draft: &EventDraft) -> T {
    crate::codec::decode(&draft.event_type, &draft.payload)
        .unwrap_or_else(|e| panic!("event `{}` does not decode: {e}", draft.event_type))
}

fn types(drafts: &[EventDraft]) -> String {
    drafts.iter().map(|d| d.event_type.as_str()).collect::<Vec<_>>().join(", ")
}
