//! Given / when / then on compiled components, comparing decoded values: the same DSL as the
//! SDK's native `tollgate_sdk::testing` (same names, same assertions), run on wasmtime. The
//! aggregate test runs on the scenario engine's aggregate runner, [`AggregateRun`], as
//! `tollgate test` does; [`ProcessManagerTest`] and [`ProjectorTest`] keep instance states and
//! key-value entries as the runtime does.
//!
//! ```no_run
//! use tollgate_billing_model::account::{AccountCommand, AccountEvent, Money};
//! use tollgate_host_test::testing::AggregateTest;
//!
//! AggregateTest::load(tollgate_host_test::fixtures::actor_path("prepaid_account"))
//!     .unwrap()
//!     .given([AccountEvent::Opened { currency: "EUR".into(), overdraft_limit: 0 }])
//!     .when(AccountCommand::TopUp { amount: Money::new(500, "EUR") })
//!     .then_expect_events([AccountEvent::ToppedUp { amount: 500 }]);
//! ```

use crate::Recorder;
use crate::scenario::aggregate::AggregateRun;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;
use tollgate_host::aggregate::{AggregateHost, Command, Event, EventDraft, Outcome, Rejection, Timer};
use tollgate_host::typed::Reaction;
use tollgate_host::{Actor, HostEngine, HostError, HostState, ProcessManagerActor, ProjectorActor};

/// The key every test command is sent to unless told otherwise.
pub const TEST_KEY: &str = "test-key";

/// A test of one aggregate key: set up with `given`, act with `when`.
pub struct AggregateTest {
    run: AggregateRun,
    key: String,
    commands_sent: u64,
}

/// Encodes a typed event into a draft with the given schema version.
pub fn draft<E: Serialize>(event: &E, schema_version: u32) -> EventDraft {
    let (event_type, payload) = tollgate_codec::encode(event).expect("event is an externally tagged enum");
    EventDraft { event_type, schema_version, content_type: tollgate_codec::JSON.into(), payload }
}

/// Decodes an event's payload into a typed event.
pub fn decode_event<E: DeserializeOwned>(event: &Event) -> E {
    tollgate_codec::decode(&event.event_type, &event.payload)
        .unwrap_or_else(|e| panic!("event `{}` #{} does not decode: {e}", event.event_type, event.sequence))
}

impl AggregateTest {
    /// Loads the aggregate at `path` on the shared engine, with a fresh host state.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, HostError> {
        let engine = HostEngine::shared()?;
        Self::from_actor(Actor::load(&engine, path)?)
    }

    /// Tests an already loaded actor, with a fresh host state.
    pub fn from_actor(actor: Actor) -> Result<Self, HostError> {
        let run = AggregateRun::new(actor, HostState::new())?;
        Ok(AggregateTest { run, key: TEST_KEY.into(), commands_sent: 0 })
    }

    /// Sends commands to `key` instead of [`TEST_KEY`].
    pub fn key(mut self, key: &str) -> Self {
        self.key = key.into();
        self
    }

    /// The host state (clock, config, key-value), to seed before `when`.
    pub fn host_state(&self) -> &HostState {
        &self.run.state
    }

    /// The aggregate's import calls and log lines so far.
    pub fn recorder(&self) -> &Recorder {
        &self.run.recorder
    }

    /// Events that already happened.
    pub fn given<E: Serialize>(mut self, events: impl IntoIterator<Item = E>) -> Self {
        let version = self.run.schema_version();
        let drafts = events.into_iter().map(|e| draft(&e, version)).collect();
        self.run.seed(&self.key, drafts).unwrap_or_else(|e| panic!("given events: {e}"));
        self
    }

    /// Sends a typed command with a fresh command id.
    pub fn when<C: Serialize>(mut self, command: C) -> Then {
        self.commands_sent += 1;
        let id = format!("cmd-{}", self.commands_sent);
        let command = self.command(&id, &command);
        self.when_command(command)
    }

    /// Sends a typed command with the given command id (to test idempotency).
    pub fn when_with_id<C: Serialize>(self, command_id: &str, command: C) -> Then {
        let command = self.command(command_id, &command);
        self.when_command(command)
    }

    /// Sends a raw command envelope.
    pub fn when_command(mut self, command: Command) -> Then {
        let when = self.run.when(&command);
        Then { test: self, outcome: when.outcome, appended: when.appended }
    }

    /// Builds a command envelope for this test's key, stamped with the virtual clock.
    pub fn command<C: Serialize>(&self, command_id: &str, command: &C) -> Command {
        self.run.command(&self.key, command_id, command).expect("command is an externally tagged enum")
    }
}

/// The result of `when`, to assert on.
pub struct Then {
    test: AggregateTest,
    outcome: Result<Outcome, HostError>,
    appended: Vec<Event>,
}

impl Then {
    /// Asserts the command was accepted with exactly these events (decoded and compared).
    #[track_caller]
    pub fn then_expect_events<E: DeserializeOwned + PartialEq + Debug>(
        self,
        expected: impl IntoIterator<Item = E>,
    ) -> Self {
        let expected: Vec<E> = expected.into_iter().collect();
        match &self.outcome {
            Ok(Outcome::Accepted(events)) => {
                let actual: Vec<E> = events.iter().map(decode_event).collect();
                assert_eq!(actual, expected, "events differ (left: actual, right: expected)");
            }
            other => panic!("expected events {expected:?}, got {}", describe(other)),
        }
        self
    }

    /// Asserts the command was rejected with this code, and appended nothing.
    #[track_caller]
    pub fn then_expect_rejection(self, code: &str) -> Self {
        match &self.outcome {
            Ok(Outcome::Rejected(r)) if r.code == code => {}
            other => panic!("expected rejection `{code}`, got {}", describe(other)),
        }
        assert!(self.appended.is_empty(), "a rejected command appended {:?}", self.appended);
        self
    }

    /// Asserts the call failed in the host (trap, cap) and appended nothing; returns the error.
    #[track_caller]
    pub fn then_expect_error(self) -> (Self, HostError) {
        assert!(self.appended.is_empty(), "a failed command appended {:?}", self.appended);
        match self.outcome {
            Err(e) => {
                let then = Then { test: self.test, outcome: Ok(Outcome::Accepted(vec![])), appended: vec![] };
                (then, e)
            }
            Ok(o) => panic!("expected a host error, got {}", describe(&Ok(o))),
        }
    }

    /// Sends another typed command to the same aggregate, with a fresh id.
    pub fn and_when<C: Serialize>(self, command: C) -> Then {
        self.test.when(command)
    }

    /// Sends another typed command with the given id.
    pub fn and_when_with_id<C: Serialize>(self, command_id: &str, command: C) -> Then {
        self.test.when_with_id(command_id, command)
    }

    /// The outcome.
    pub fn outcome(&self) -> &Result<Outcome, HostError> {
        &self.outcome
    }

    /// Every event of the key so far, decoded.
    pub fn stream<E: DeserializeOwned>(&self) -> Vec<E> {
        self.test.run.host.events(&self.test.key).iter().map(decode_event).collect()
    }

    /// The key's state, decoded.
    pub fn state<S: DeserializeOwned>(&mut self) -> S {
        let json = self.test.run.host.state_json(&self.test.key).expect("no trap").expect("the key has no state yet");
        serde_json::from_str(&json).expect("state decodes")
    }

    /// The test, to continue with.
    pub fn test(&mut self) -> &mut AggregateTest {
        &mut self.test
    }

    /// The test, to send a raw command next.
    pub fn into_test(self) -> AggregateTest {
        self.test
    }

    /// The host, to inspect.
    pub fn host(&mut self) -> &mut AggregateHost {
        &mut self.test.run.host
    }
}

fn describe(outcome: &Result<Outcome, HostError>) -> String {
    match outcome {
        Ok(Outcome::Accepted(events)) => {
            let names: Vec<String> =
                events.iter().map(|e| format!("{} {}", e.event_type, String::from_utf8_lossy(&e.payload))).collect();
            format!("events [{}]", names.join(", "))
        }
        Ok(Outcome::Rejected(r)) => format!("rejection `{}`: {}", r.code, r.message),
        Err(e) => format!("host error: {e}"),
    }
}

/// Panics unless `outcome` is a rejection with `code`; `what` names what was refused.
#[track_caller]
fn expect_rejection<T>(outcome: &Result<Result<T, Rejection>, HostError>, code: &str, what: &str) {
    match outcome {
        Ok(Err(r)) if r.code == code => {}
        Ok(Err(r)) => panic!("expected rejection `{code}`, got rejection `{}`: {}", r.code, r.message),
        Ok(Ok(_)) => panic!("expected rejection `{code}`, but the {what} was taken"),
        Err(e) => panic!("expected rejection `{code}`, got host error: {e}"),
    }
}

/// A JSON event envelope of a typed event (a serde enum): sequence 1, time 0, no ids; set other
/// fields with struct update syntax, as with the SDK's `Event::new`.
pub fn event<E: Serialize>(stream: &str, key: &str, event: &E) -> Event {
    tollgate_host::aggregate::json_event(stream, key, event).expect("event is an externally tagged enum")
}

fn load(path: &Path) -> Result<Actor, HostError> {
    Actor::load(&HostEngine::shared()?, path)
}

/// A compiled process manager: instances built up by `given` events, then one event or timer.
pub struct ProcessManagerTest {
    actor: ProcessManagerActor,
    /// instance -> encoded state, for live instances.
    instances: BTreeMap<String, Vec<u8>>,
}

/// What one input did: `None` when ignored, else the instance and its reaction.
type Reacted = Result<Result<Option<(String, Reaction)>, Rejection>, HostError>;

impl ProcessManagerTest {
    /// Loads the process manager at `path` on the shared engine, with a fresh host state.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, HostError> {
        let actor = ProcessManagerActor::new(load(path.as_ref())?, HostState::new())?;
        Ok(ProcessManagerTest { actor, instances: BTreeMap::new() })
    }

    /// Events that already happened; each must be ignored or reacted to without a rejection.
    #[track_caller]
    pub fn given(mut self, events: impl IntoIterator<Item = Event>) -> Self {
        for event in events {
            match self.deliver(&event) {
                Ok(Ok(_)) => {}
                Ok(Err(r)) => panic!("given event `{}` was refused: {}: {}", event.event_type, r.code, r.message),
                Err(e) => panic!("given event `{}`: {e}", event.event_type),
            }
        }
        self
    }

    /// Delivers one event.
    pub fn when(mut self, event: Event) -> ProcessThen {
        let outcome = self.deliver(&event);
        ProcessThen { test: self, outcome }
    }

    /// Fires `timer` of `instance` at `now`.
    pub fn when_timer(mut self, instance: &str, timer: Timer, now: u64) -> ProcessThen {
        let state = self.instances.get(instance).cloned();
        let outcome = self
            .actor
            .on_timer(state.as_deref(), &timer, now)
            .map(|r| r.map(|reaction| Some(self.keep(instance, reaction))));
        ProcessThen { test: self, outcome }
    }

    fn deliver(&mut self, event: &Event) -> Reacted {
        let Some(instance) = self.actor.correlate(event)? else { return Ok(Ok(None)) };
        let state = self.instances.get(&instance).cloned();
        Ok(self.actor.react(state.as_deref(), event)?.map(|reaction| Some(self.keep(&instance, reaction))))
    }

    /// Keeps an instance's new state, or drops it once finished (no state), as the runtime does.
    fn keep(&mut self, instance: &str, reaction: Reaction) -> (String, Reaction) {
        match &reaction.state {
            Some(state) => self.instances.insert(instance.into(), state.clone()),
            None => self.instances.remove(instance),
        };
        (instance.into(), reaction)
    }

    /// The state of a live instance, decoded.
    pub fn state<S: DeserializeOwned>(&self, instance: &str) -> Option<S> {
        self.instances.get(instance).map(|bytes| serde_json::from_slice(bytes).expect("instance state decodes"))
    }
}

/// What one input of a [`ProcessManagerTest`] did, to assert on.
pub struct ProcessThen {
    test: ProcessManagerTest,
    outcome: Reacted,
}

impl ProcessThen {
    #[track_caller]
    fn reaction(&self, expected: &str) -> &Reaction {
        match &self.outcome {
            Ok(Ok(Some((_, reaction)))) => reaction,
            Ok(Ok(None)) => panic!("expected {expected}, but the event was ignored (correlated to no instance)"),
            Ok(Err(r)) => panic!("expected {expected}, got rejection `{}`: {}", r.code, r.message),
            Err(e) => panic!("expected {expected}, got host error: {e}"),
        }
    }

    /// Asserts no instance took the event.
    #[track_caller]
    pub fn then_expect_ignored(self) -> Self {
        assert!(matches!(self.outcome, Ok(Ok(None))), "expected the event to be ignored");
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
                tollgate_codec::decode(&c.command_type, &c.payload)
                    .unwrap_or_else(|e| panic!("command `{}` does not decode: {e}", c.command_type))
            })
            .collect();
        assert_eq!(actual, expected, "commands differ (left: actual, right: expected)");
        self
    }

    /// Asserts the timers set, as (id, fire at), in order.
    #[track_caller]
    pub fn then_expect_timers<'a>(self, expected: impl IntoIterator<Item = (&'a str, u64)>) -> Self {
        let expected: Vec<(String, u64)> = expected.into_iter().map(|(id, at)| (id.into(), at)).collect();
        let actual: Vec<(String, u64)> =
            self.reaction("timers").set_timers.iter().map(|t| (t.id.clone(), t.fire_at)).collect();
        assert_eq!(actual, expected, "timers differ (left: actual, right: expected)");
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
        expect_rejection(&self.outcome, code, "input");
        self
    }

    /// The state of a live instance after the input.
    pub fn state<S: DeserializeOwned>(&self, instance: &str) -> Option<S> {
        self.test.state(instance)
    }

    /// Delivers another event.
    pub fn and_when(self, event: Event) -> ProcessThen {
        self.test.when(event)
    }

    /// Fires another timer.
    pub fn and_when_timer(self, instance: &str, timer: Timer, now: u64) -> ProcessThen {
        self.test.when_timer(instance, timer, now)
    }
}

/// A compiled projector: event batches in, key-value entries out (its host state's buckets).
pub struct ProjectorTest {
    actor: ProjectorActor,
    state: HostState,
}

impl ProjectorTest {
    /// Loads the projector at `path` on the shared engine, with empty buckets.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, HostError> {
        let state = HostState::new();
        let actor = ProjectorActor::new(load(path.as_ref())?, state.clone())?;
        Ok(ProjectorTest { actor, state })
    }

    /// Events already projected; the batch must be taken.
    #[track_caller]
    pub fn given(mut self, events: impl IntoIterator<Item = Event>) -> Self {
        let events: Vec<Event> = events.into_iter().collect();
        match self.actor.project(&events) {
            Ok(Ok(())) => {}
            Ok(Err(r)) => panic!("a given event was refused: {}: {}", r.code, r.message),
            Err(e) => panic!("given events: {e}"),
        }
        self
    }

    /// Projects a batch.
    pub fn when(mut self, events: impl IntoIterator<Item = Event>) -> ProjectorThen {
        let events: Vec<Event> = events.into_iter().collect();
        let outcome = self.actor.project(&events);
        ProjectorThen { test: self, outcome }
    }
}

/// What a batch of a [`ProjectorTest`] did, to assert on.
pub struct ProjectorThen {
    test: ProjectorTest,
    outcome: Result<Result<(), Rejection>, HostError>,
}

impl ProjectorThen {
    /// Asserts `bucket` holds `expected` at `key`, compared as JSON on the fields `expected`
    /// states only, as scenario files compare `then.kv` ([`tollgate_codec::stated`]).
    #[track_caller]
    pub fn then_expect_kv<T: Serialize>(self, bucket: &str, key: &str, expected: T) -> Self {
        assert!(matches!(self.outcome, Ok(Ok(()))), "expected `{bucket}/{key}`, but the batch failed");
        let expected = serde_json::to_value(expected).expect("the expected value encodes");
        let Some(actual) = self.test.state.kv_get(bucket, key).map(|bytes| {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .unwrap_or_else(|e| panic!("`{bucket}/{key}` is not JSON: {e}"))
        }) else {
            panic!("`{bucket}/{key}` has no entry (expected {expected})");
        };
        let actual = tollgate_codec::stated(&actual, &expected);
        assert_eq!(actual, expected, "`{bucket}/{key}` differs (left: actual, right: expected)");
        self
    }

    /// Asserts the batch was refused with this code.
    #[track_caller]
    pub fn then_expect_rejection(self, code: &str) -> Self {
        expect_rejection(&self.outcome, code, "batch");
        self
    }

    /// The value of `key` in `bucket`, decoded.
    pub fn kv<T: DeserializeOwned>(&self, bucket: &str, key: &str) -> Option<T> {
        self.test.state.kv_get(bucket, key).map(|bytes| serde_json::from_slice(&bytes).expect("the value decodes"))
    }

    /// Projects another batch.
    pub fn and_when(self, events: impl IntoIterator<Item = Event>) -> ProjectorThen {
        self.test.when(events)
    }
}
