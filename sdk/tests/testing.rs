//! The native test helpers (`tollgate_sdk::testing`) check what they say they check.

#![allow(clippy::unwrap_used)]

use serde::{Deserialize, Serialize};
use tollgate_sdk::keyvalue::Bucket;
use tollgate_sdk::testing::{AggregateTest, ProjectorTest};
use tollgate_sdk::{Aggregate, Command, Event, Projector, Rejection, RejectionKind};

#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
struct Points {
    balance: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum PointsCommand {
    Earn { points: u64 },
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum PointsEvent {
    Earned { points: u64 },
}

struct Loyalty;

impl Aggregate for Loyalty {
    const STREAM: &'static str = "loyalty";
    type State = Points;
    type Command = PointsCommand;
    type Event = PointsEvent;

    fn handle(_: &Points, command: PointsCommand, _: &Command) -> Result<Vec<PointsEvent>, Rejection> {
        match command {
            PointsCommand::Earn { points: 0 } => Err(Rejection::malformed("zero-points", "`points` must be > 0")),
            PointsCommand::Earn { points } => Ok(vec![PointsEvent::Earned { points }]),
        }
    }

    fn apply(state: &mut Points, event: PointsEvent) {
        let PointsEvent::Earned { points } = event;
        state.balance += points;
    }
}

/// Writes `{"balance": N, "events": M}` per member.
struct Board;

impl Projector for Board {
    const SUBSCRIPTIONS: &'static [&'static str] = &["loyalty"];
    type Event = PointsEvent;

    fn project(event: PointsEvent, envelope: &Event) -> Result<(), Rejection> {
        let bucket = Bucket::open("board")?;
        let mut entry: serde_json::Value =
            bucket.get_json(&envelope.key)?.unwrap_or_else(|| serde_json::json!({"balance": 0, "events": 0}));
        let PointsEvent::Earned { points } = event;
        entry["balance"] = (entry["balance"].as_u64().unwrap() + points).into();
        entry["events"] = (entry["events"].as_u64().unwrap() + 1).into();
        bucket.set_json(&envelope.key, &entry)
    }
}

#[test]
fn a_repeated_command_id_is_answered_as_the_host_answers_it() {
    AggregateTest::<Loyalty>::new()
        .when_with_id("c1", PointsCommand::Earn { points: 5 })
        .then_expect_events([PointsEvent::Earned { points: 5 }])
        // The same command again: its original events, applied once.
        .and_when_with_id("c1", PointsCommand::Earn { points: 5 })
        .then_expect_repeat()
        .then_expect_events([PointsEvent::Earned { points: 5 }])
        .then_expect_state(Points { balance: 5 })
        // Another command under that id: refused, nothing applied.
        .and_when_with_id("c1", PointsCommand::Earn { points: 7 })
        .then_expect_rejection_of(RejectionKind::Malformed, "command-id-conflict")
        .then_expect_state(Points { balance: 5 });
}

#[test]
#[should_panic(expected = "rejection `zero-points` is of another kind")]
fn a_rejections_kind_is_checked() {
    AggregateTest::<Loyalty>::new()
        .when(PointsCommand::Earn { points: 0 })
        .then_expect_rejection_of(RejectionKind::Business, "zero-points");
}

#[test]
#[should_panic(expected = "the command was decided, not answered as a repeat")]
fn a_first_command_is_not_a_repeat() {
    AggregateTest::<Loyalty>::new().when(PointsCommand::Earn { points: 1 }).then_expect_repeat();
}

#[test]
fn events_made_one_after_another_are_numbered_in_order_and_read_models_compare_stated_fields() {
    let first = Event::new("loyalty", "ada", &PointsEvent::Earned { points: 2 }).unwrap();
    let second = Event::new("loyalty", "ada", &PointsEvent::Earned { points: 3 }).unwrap();
    assert_eq!((first.sequence, second.sequence), (1, 2));
    let then = ProjectorTest::<Board>::new().when([first, second]);
    // Only the stated field is compared; `events` is not stated.
    let then = then.then_expect_kv("board", "ada", serde_json::json!({"balance": 5}));
    then.then_expect_kv("board", "ada", serde_json::json!({"balance": 5, "events": 2}));
}

#[test]
#[should_panic(expected = "differs")]
fn a_stated_field_that_differs_fails() {
    let earned = Event::new("loyalty", "bo", &PointsEvent::Earned { points: 2 }).unwrap();
    ProjectorTest::<Board>::new().when([earned]).then_expect_kv("board", "bo", serde_json::json!({"balance": 3}));
}
