//! The projector runner: given events as one batch, then the `when` batch.

use super::{Act, Actors, Outcome, Prepared, Sequencer, finish, host_error, host_for, rejection_json, wrong_act};
use tollgate_host::{ActorKind, ProjectorActor};

/// Runs a projector case.
pub(super) fn run(actors: &Actors, case: &Prepared) -> Result<Outcome, String> {
    let Act::Events(messages) = &case.act else { return Err(wrong_act(case, ActorKind::Projector)) };
    let (host_state, recorder) = host_for(case);
    let mut actor = ProjectorActor::new(actors.actor.clone(), host_state.clone()).map_err(|e| e.to_string())?;
    let subscriptions = actor.subscriptions().map_err(|e| e.to_string())?;
    let stream = case.stream.clone().or_else(|| subscriptions.first().cloned()).unwrap_or_default();
    let mut seq = Sequencer::default();
    let given = case
        .events
        .iter()
        .enumerate()
        .map(|(i, m)| seq.event(case, &stream, m, format!("given-{}", i + 1), case.clock_ms))
        .collect::<Result<Vec<_>, _>>()?;
    if !given.is_empty() {
        match actor.project(&given) {
            Ok(Ok(())) => {}
            Ok(Err(r)) => return Err(format!("given events were refused: {}: {}", r.code, r.message)),
            Err(e) => return Err(format!("given events: {e}")),
        }
    }
    recorder.reset();
    let batch = messages
        .iter()
        .enumerate()
        .map(|(i, m)| seq.event(case, &stream, m, format!("event-{}", i + 1), case.clock_ms))
        .collect::<Result<Vec<_>, _>>()?;
    let mut outcome = Outcome::default();
    match actor.project(&batch) {
        Ok(Ok(())) => {}
        Ok(Err(r)) => outcome.insert("rejection", rejection_json(&r)),
        Err(e) => host_error(&mut outcome, &e),
    }
    finish(&mut outcome, &host_state, &recorder);
    Ok(outcome)
}
