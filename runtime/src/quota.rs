//! Edge quota: a node admits locally against grants it obtained from the core account, so it
//! keeps deciding while cut off from the core, and never spends money the core did not hold.
//!
//! - A grant is a reservation on the core account (`reserve`, command id = reservation id):
//!   its money is held at the core until the grant is settled or expired.
//! - The node records every grant and every admitted use in its own log (usually the embedded
//!   store, fsync'd), with the request id as command id, so a repeated request is answered the
//!   same and a restart loses nothing.
//! - [`EdgeNode::settle`] forwards the usage of finished grants (used up or past validity) to
//!   the core as one `debit` each (command id `<reservation>/debit`). While the core is
//!   unreachable the grants stay pending and are forwarded on a later call: on reconnect.
//! - The core releases a grant the node never settled only after its validity plus the clock
//!   skew margin ([`reap_expired_grants`]); the node stops using a grant at its validity by its
//!   own clock, so with skew below the margin no admitted use falls after the release.
//!   Usage forwarded after such a release (a partition longer than validity + margin) is
//!   charged late with `direct-debit`; what the balance cannot cover is reported as unpaid.
//!   That overspend is bounded by the grants outstanding when the node was cut off.

use crate::error::RuntimeError;
use crate::facade::{account_events, result_code};
use crate::journal::{Journal, json_event};
use crate::{ResultCode, Runtime};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use tollgate_billing_model::account::{AccountCommand, AccountEvent, Money, STREAM as ACCOUNT_STREAM};
use tollgate_billing_model::pricing::PriceTerm;
use tollgate_host::aggregate::{Outcome, Rejection, RejectionKind};
use tollgate_store::{ExpectedVersion, NewEvent};

/// Stream of an edge node's own log (key: the node's id).
pub const QUOTA_STREAM: &str = "edge.quota";

/// How a node asks for grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaPolicy {
    /// Units asked for per grant (more when one request needs more).
    pub grant_units: u64,
    /// Price of one unit, minor units of `currency`.
    pub unit_price: i64,
    /// The accounts' currency.
    pub currency: String,
    /// Validity of a grant, ms.
    pub validity_ms: u64,
    /// Largest clock difference between node and core the deployment tolerates, ms.
    pub clock_skew_ms: u64,
}

/// What happened on an edge node, as recorded in its log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuotaEvent {
    /// The core held money for a grant.
    GrantObtained {
        /// The subscriber (core account).
        subscriber: String,
        /// The reservation at the core.
        reservation_id: String,
        /// Units granted.
        units: u64,
        /// Price per unit.
        unit_price: i64,
        /// Validity end, by the core's command time.
        expires_at: u64,
    },
    /// A use was admitted against a grant (the event's command id is the request id).
    UsageAdmitted {
        /// The grant.
        reservation_id: String,
        /// Units used.
        units: u64,
    },
    /// The grant's usage reached the core.
    GrantSettled {
        /// The grant.
        reservation_id: String,
        /// Money the core took.
        charged: i64,
        /// Money of admitted usage the core could not take (the grant had been released and
        /// the balance no longer covered it).
        unpaid: i64,
    },
}

/// A grant as the node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalGrant {
    /// The subscriber.
    pub subscriber: String,
    /// The reservation at the core.
    pub reservation_id: String,
    /// Units granted.
    pub units: u64,
    /// Units admitted so far.
    pub used: u64,
    /// Price per unit.
    pub unit_price: i64,
    /// Validity end.
    pub expires_at: u64,
    /// `(charged, unpaid)` once settled.
    pub settled: Option<(i64, i64)>,
}

impl LocalGrant {
    /// Money for every granted unit (what the core held), saturating: the core held it, so it fits.
    fn price_of_units(&self) -> i64 {
        i64::try_from(self.units).ok().and_then(|u| u.checked_mul(self.unit_price)).unwrap_or(i64::MAX)
    }

    /// Money for the used units; `None` when it cannot be represented.
    fn price_of_used(&self) -> Option<i64> {
        if self.unit_price == 0 {
            return Some(0);
        }
        i64::try_from(self.used).ok()?.checked_mul(self.unit_price)
    }
}

/// The answer to a local admission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EdgeDecision {
    /// Admitted against this grant.
    Admitted {
        /// The grant used.
        reservation_id: String,
    },
    /// Refused.
    Denied {
        /// Why, as a charging result code.
        code: ResultCode,
        /// Details.
        reason: String,
    },
}

/// What one [`EdgeNode::settle`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Grants settled now.
    pub settled: usize,
    /// Finished grants still waiting for the core.
    pub pending: usize,
    /// The error that stopped forwarding, if the core was unreachable.
    pub unreachable: Option<String>,
}

/// An edge node: local admission against grants from the core account.
pub struct EdgeNode {
    node: String,
    core: Runtime,
    local: Journal,
    policy: QuotaPolicy,
    grants: BTreeMap<String, LocalGrant>,
    admitted: HashMap<String, String>,
    sequence: u64,
}

impl EdgeNode {
    /// A node named `node` that reaches the core account through `core` (a runtime over the
    /// core's store) and keeps its own log in `local`; replays that log first.
    pub fn open(node: &str, core: Runtime, local: Journal, policy: QuotaPolicy) -> Result<EdgeNode, RuntimeError> {
        let mut edge = EdgeNode {
            node: node.into(),
            core,
            local,
            policy,
            grants: BTreeMap::new(),
            admitted: HashMap::new(),
            sequence: 0,
        };
        let log = edge.local.run("read edge log", edge.local.store().read(QUOTA_STREAM, node, 1))?;
        for stored in log {
            edge.sequence = stored.sequence;
            let event =
                tollgate_codec::decode::<QuotaEvent>(&stored.event_type, &stored.payload).map_err(|source| {
                    RuntimeError::undecodable_event(
                        &stored.stream,
                        &stored.key,
                        stored.sequence,
                        &stored.event_type,
                        source,
                    )
                })?;
            edge.fold(&stored.command_id, event);
        }
        Ok(edge)
    }

    fn fold(&mut self, command_id: &str, event: QuotaEvent) {
        match event {
            QuotaEvent::GrantObtained { subscriber, reservation_id, units, unit_price, expires_at } => {
                let grant = LocalGrant {
                    subscriber,
                    reservation_id: reservation_id.clone(),
                    units,
                    used: 0,
                    unit_price,
                    expires_at,
                    settled: None,
                };
                self.grants.insert(reservation_id, grant);
            }
            QuotaEvent::UsageAdmitted { reservation_id, units } => {
                if let Some(g) = self.grants.get_mut(&reservation_id) {
                    // Admission checked `units <= g.units - g.used`; saturate for a damaged log.
                    g.used = g.used.saturating_add(units);
                }
                self.admitted.insert(command_id.into(), reservation_id);
            }
            QuotaEvent::GrantSettled { reservation_id, charged, unpaid } => {
                if let Some(g) = self.grants.get_mut(&reservation_id) {
                    g.settled = Some((charged, unpaid));
                }
            }
        }
    }

    /// Appends to the node's log (fsync'd by the embedded store), then folds.
    fn record(&mut self, command_id: &str, event: QuotaEvent, now: u64) -> Result<(), RuntimeError> {
        let (event_type, payload) = tollgate_codec::encode(&event)
            .expect("a QuotaEvent is an externally tagged enum of plain fields: it always encodes");
        let new = NewEvent { event_type, payload, ..json_event("", &(), command_id, now)? };
        let result = self
            .local
            .append(QUOTA_STREAM, &self.node, ExpectedVersion::Exact(self.sequence), vec![new])
            .map_err(|e| self.local.error("append to the edge log", e))?;
        self.sequence = result.last_sequence;
        self.fold(command_id, event);
        Ok(())
    }

    /// The node's grants by reservation id.
    pub fn grants(&self) -> &BTreeMap<String, LocalGrant> {
        &self.grants
    }

    /// Money held at the core for grants this node has not settled: what it could still owe.
    /// Each grant's money was held by the core, so it fits; the sum saturates rather than wrap.
    pub fn exposure(&self) -> i64 {
        self.grants
            .values()
            .filter(|g| g.settled.is_none())
            .map(LocalGrant::price_of_units)
            .fold(0, i64::saturating_add)
    }

    /// The runtime the node reaches the core through.
    pub fn core(&mut self) -> &mut Runtime {
        &mut self.core
    }

    /// Admits `units` for `subscriber` at `now` (the node's clock) against a local grant,
    /// asking the core for a new one when none has room. A repeated `request_id` gets the
    /// same answer and uses nothing twice.
    pub fn admit(
        &mut self,
        subscriber: &str,
        request_id: &str,
        units: u64,
        now: u64,
    ) -> Result<EdgeDecision, RuntimeError> {
        let span = tracing::info_span!("edge-admission", node = %self.node, subscriber, correlation_id = request_id);
        let _entered = span.enter();
        if let Some(reservation_id) = self.admitted.get(request_id) {
            return Ok(EdgeDecision::Admitted { reservation_id: reservation_id.clone() });
        }
        let usable = |g: &&LocalGrant| {
            g.subscriber == subscriber
                && g.settled.is_none()
                && now < g.expires_at
                && g.units.checked_sub(g.used).is_some_and(|left| left >= units)
        };
        let reservation_id = match self.grants.values().find(usable) {
            Some(g) => g.reservation_id.clone(),
            None => match self.obtain(subscriber, units.max(self.policy.grant_units), now)? {
                Ok((id, granted)) if granted >= units => id,
                Ok((_, granted)) => {
                    return Ok(EdgeDecision::Denied {
                        code: ResultCode::QuotaLimitReached,
                        reason: format!("the core granted {granted} of {units} units"),
                    });
                }
                Err(denied) => return Ok(denied),
            },
        };
        self.record(request_id, QuotaEvent::UsageAdmitted { reservation_id: reservation_id.clone(), units }, now)?;
        Ok(EdgeDecision::Admitted { reservation_id })
    }

    /// Asks the core for a grant: its reservation id and the units granted; `Err` is the
    /// decision when it cannot be had.
    fn obtain(
        &mut self,
        subscriber: &str,
        units: u64,
        now: u64,
    ) -> Result<Result<(String, u64), EdgeDecision>, RuntimeError> {
        let n = self.grants.values().filter(|g| g.subscriber == subscriber).count() + 1;
        let reservation_id = format!("{}/{subscriber}/{n}", self.node);
        let command = AccountCommand::Reserve {
            reservation_id: reservation_id.clone(),
            units,
            plan: vec![PriceTerm::PerUnit { offer: String::new(), unit_price: self.policy.unit_price }],
            currency: self.policy.currency.clone(),
            validity_ms: self.policy.validity_ms,
            offer: String::new(),
        };
        self.core.clock().set_ms(now);
        let envelope = self.core.command(ACCOUNT_STREAM, subscriber, &reservation_id, &command)?;
        let events = match self.core.execute(&envelope) {
            Err(e) => {
                tracing::warn!(error = %e, "core unreachable; no local quota left");
                return Ok(Err(EdgeDecision::Denied {
                    code: ResultCode::EndUserServiceDenied,
                    reason: format!("no local quota and the core is unreachable: {e}"),
                }));
            }
            Ok(Outcome::Rejected(r)) => {
                return Ok(Err(EdgeDecision::Denied { code: result_code(&r), reason: r.message }));
            }
            Ok(Outcome::Accepted(events)) => events,
        };
        match account_events(&events)?.as_slice() {
            [AccountEvent::Reserved { granted_units, expires_at, .. }] => {
                let event = QuotaEvent::GrantObtained {
                    subscriber: subscriber.into(),
                    reservation_id: reservation_id.clone(),
                    units: *granted_units,
                    unit_price: self.policy.unit_price,
                    expires_at: *expires_at,
                };
                self.record(&reservation_id, event, now)?;
                Ok(Ok((reservation_id, *granted_units)))
            }
            other => Err(RuntimeError::UnexpectedAnswer {
                command: format!("reserve `{reservation_id}` on account `{subscriber}`"),
                answer: format!("{other:?}"),
            }),
        }
    }

    /// Forwards the usage of every finished grant (used up, or past validity at `now`; every
    /// open grant when `all`) to the core. Stops at the first failure to reach the core.
    pub fn settle(&mut self, now: u64, all: bool) -> Result<Settled, RuntimeError> {
        let finished: Vec<LocalGrant> = self
            .grants
            .values()
            .filter(|g| g.settled.is_none() && (all || g.used == g.units || now >= g.expires_at))
            .cloned()
            .collect();
        let mut report = Settled::default();
        for (i, grant) in finished.iter().enumerate() {
            match self.forward(grant, now) {
                Ok((charged, unpaid)) => {
                    let event =
                        QuotaEvent::GrantSettled { reservation_id: grant.reservation_id.clone(), charged, unpaid };
                    self.record(&format!("{}/settled", grant.reservation_id), event, now)?;
                    report.settled += 1;
                }
                Err(e) => {
                    report.pending = finished.len() - i;
                    report.unreachable = Some(e.to_string());
                    break;
                }
            }
        }
        Ok(report)
    }

    /// Sends one grant's usage to the core: `(charged, unpaid)`.
    fn forward(&mut self, grant: &LocalGrant, now: u64) -> Result<(i64, i64), RuntimeError> {
        let id = &grant.reservation_id;
        let account = &grant.subscriber;
        self.core.clock().set_ms(now);
        let command = if grant.used == 0 {
            AccountCommand::Release { reservation_id: id.clone() }
        } else {
            AccountCommand::Debit { reservation_id: id.clone(), used_units: grant.used }
        };
        let envelope = self.core.command(ACCOUNT_STREAM, account, &format!("{id}/debit"), &command)?;
        let owed = grant.price_of_used().ok_or_else(|| {
            refused(
                id,
                &Rejection {
                    kind: RejectionKind::Business,
                    code: "amount-overflow".into(),
                    message: format!("{} units x {} overflows", grant.used, grant.unit_price),
                },
            )
        })?;
        let rejection = match self.core.execute(&envelope)? {
            Outcome::Accepted(events) => {
                // A debit answers `debited`; a release (nothing used) takes nothing.
                let charged = match account_events(&events)?.as_slice() {
                    [AccountEvent::Debited { charged, .. }] => *charged,
                    _ => 0,
                };
                return Ok((charged, 0));
            }
            Outcome::Rejected(r) => r,
        };
        if rejection.code != "unknown-reservation" {
            return Err(refused(id, &rejection));
        }
        if owed == 0 {
            return Ok((0, 0));
        }
        // The core released the grant (validity + skew margin passed while we were cut off):
        // charge the usage late, as far as the balance goes.
        let late = AccountCommand::DirectDebit {
            amount: Money::new(owed, &self.policy.currency),
            description: format!("late usage of grant {id}"),
        };
        let envelope = self.core.command(ACCOUNT_STREAM, account, &format!("{id}/late"), &late)?;
        match self.core.execute(&envelope)? {
            Outcome::Accepted(_) => Ok((owed, 0)),
            Outcome::Rejected(r) if r.code == "insufficient-funds" => {
                tracing::error!(grant = %id, owed, "late usage exceeds the balance: unpaid");
                Ok((0, owed))
            }
            Outcome::Rejected(r) => Err(refused(id, &r)),
        }
    }
}

fn refused(id: &str, r: &Rejection) -> RuntimeError {
    RuntimeError::SettlementRefused { reservation_id: id.into(), code: r.code.clone(), message: r.message.clone() }
}

/// Core side: expires every reservation of `accounts` whose validity plus `clock_skew_ms` has
/// passed by the core's clock (command id `<reservation>/expire`); returns the expired ids.
pub fn reap_expired_grants(
    core: &mut Runtime,
    accounts: &[&str],
    clock_skew_ms: u64,
) -> Result<Vec<String>, RuntimeError> {
    let now = core.clock().now_ms();
    let mut expired = Vec::new();
    for account in accounts {
        let Some(state) = core.reload_account(account)? else { continue };
        for (id, r) in &state.reservations {
            if r.expires_at.saturating_add(clock_skew_ms) > now {
                continue;
            }
            let command = AccountCommand::Expire { reservation_id: id.clone() };
            let envelope = core.command(ACCOUNT_STREAM, account, &format!("{id}/expire"), &command)?;
            if let Outcome::Accepted(_) = core.execute(&envelope)? {
                expired.push(id.clone());
            }
        }
    }
    Ok(expired)
}
