//! Given / when / then on a compiled aggregate, comparing decoded values. It runs on the
//! scenario engine's aggregate runner, [`AggregateRun`], as `tollgate test` does.
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
use std::fmt::Debug;
use std::path::Path;
use tollgate_host::aggregate::{AggregateHost, Command, Event, EventDraft, Outcome};
use tollgate_host::{Actor, HostEngine, HostError, HostState};

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
    pub fn state<S: DeserializeOwned>(&self) -> S {
        let bytes = self.test.run.host.state(&self.test.key).expect("the key has no state yet");
        serde_json::from_slice(bytes).expect("state decodes")
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
