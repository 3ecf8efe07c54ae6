//! Edge quota: a node admits locally against grants it obtained from the core account, so it
//! keeps deciding while cut off from the core, and never spends money the core did not hold.
//!
//! - A grant is a reservation on the core account (`reserve`, command id = reservation id):
//!   its money is held at the core until the grant is settled or expired.
//! - The node records every grant and every admitted use in its own log (usually the embedded
//!   store, fsync'd), with the request id as command id, so a repeated request is answered the
//!   same and a restart loses nothing.
//! - [`EdgeNode::settle`] forwards the usage of finished grants (used up or past validity) to
//!   the core as one `settle` each (command id `<reservation>/settle`). While the core is
//!   unreachable the grants stay pending and are forwarded on a later call: on reconnect.
//! - The core releases a grant the node never settled only after its validity plus the clock
//!   skew margin ([`reap_expired_grants`]); the node stops using a grant at its validity by its
//!   own clock, so with skew below the margin no admitted use falls after the release.
//!   Usage forwarded after such a release (a partition longer than validity + margin) is
//!   charged late by the same `settle` (the account charges a lapsed grant's usage for an
//!   hour); what the balance cannot cover, or usage later than that, is reported as unpaid.
//!   That overspend is bounded by the grants outstanding when the node was cut off.
//! - The node reaches the core through a [`CoreLink`]: a [`Runtime`] over the core's store (one
//!   process, or several sharing JetStream), or a request/reply link over NATS to a core node
//!   (`tollgate serve --role edge`).

use crate::error::RuntimeError;
use crate::facade::{account_events, result_code};
use crate::journal::{Journal, json_event};
use crate::{ResultCode, Runtime};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use tollgate_billing_model::account::{AccountCommand, AccountEvent, STREAM as ACCOUNT_STREAM};
use tollgate_billing_model::pricing::PriceTerm;
use tollgate_host::aggregate::{Outcome, Rejection, RejectionKind};
use tollgate_store::{ExpectedVersion, NewEvent};

/// Stream of an edge node's own log (key: the node's id).
pub const QUOTA_STREAM: &str = "edge.quota";

/// How a node asks for grants (the manifest's `[quota]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

impl QuotaPolicy {
    /// The first field that cannot work, and why: `None` when every field can.
    pub fn invalid_field(&self) -> Option<(&'static str, String)> {
        if self.grant_units == 0 {
            return Some(("grant_units", "must be > 0".into()));
        }
        if self.unit_price < 0 {
            return Some(("unit_price", format!("is {}, must not be negative", self.unit_price)));
        }
        if i64::try_from(self.grant_units).ok().and_then(|u| u.checked_mul(self.unit_price)).is_none() {
            return Some((
                "unit_price",
                format!("{} x grant_units {} is past the largest amount of money", self.unit_price, self.grant_units),
            ));
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Some(("currency", format!("`{}` is not an ISO 4217 code such as EUR", self.currency)));
        }
        if self.validity_ms == 0 {
            return Some(("validity_ms", "must be > 0".into()));
        }
        None
    }
}

/// What happened on an edge node, as recorded in its log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuotaEvent {
    /// The node's log was started: the first event of every log. Its grants are named after
    /// `instance` as well as the node, so two nodes given one name (a mistake, or a node
    /// whose log was lost) never share a reservation at the core.
    Started {
        /// Random, chosen when the log was started.
        instance: String,
    },
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
    /// A use was admitted against a grant (the event's command id is the request id); logs
    /// written before uses were batched.
    UsageAdmitted {
        /// The grant.
        reservation_id: String,
        /// Units used.
        units: u64,
    },
    /// Uses were admitted against grants, decided together and logged in one append.
    UsesAdmitted {
        /// Each use, in the order decided.
        uses: Vec<AdmittedUse>,
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

/// One admitted use, as [`QuotaEvent::UsesAdmitted`] logs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmittedUse {
    /// The request (its idempotency key).
    pub request_id: String,
    /// The grant used.
    pub reservation_id: String,
    /// Units used.
    pub units: u64,
}

/// One admission asked of an edge node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeRequest {
    /// The subscriber (core account).
    pub subscriber: String,
    /// The request id (its idempotency key).
    pub request_id: String,
    /// Units requested.
    pub units: u64,
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

/// What an edge node holds and owes, folded from its log: `tollgate stats` and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EdgeReport {
    /// The node (the key of its log).
    pub node: String,
    /// The currency of its money (empty when read from the log alone).
    pub currency: String,
    /// Grants not yet settled with the core.
    pub grants_held: usize,
    /// Money the core holds for those grants ([`EdgeNode::exposure`]).
    pub exposure: i64,
    /// Units admitted on those grants: usage the core has not been told of.
    pub unsettled_units: u64,
    /// Money of those units, saturating.
    pub unsettled_usage: i64,
    /// Money of admitted usage the core could not take (settled late, past the balance).
    pub unpaid: i64,
    /// When the core last answered this node (its clock, ms since the epoch); `None`: never.
    pub last_contact: Option<u64>,
}

/// An edge node's log folded: its grants and the requests it admitted.
#[derive(Clone, Debug, Default)]
pub struct EdgeLog {
    instance: Option<String>,
    grants: BTreeMap<String, LocalGrant>,
    /// The reservation ids of each subscriber's grants not yet settled, oldest first: an
    /// admission and the tick's settlement look only at these, never at the whole history.
    open: BTreeMap<String, Vec<String>>,
    /// Grants each subscriber has had, settled or not: the next grant's number.
    obtained: HashMap<String, usize>,
    admitted: HashMap<String, String>,
    sequence: u64,
    last_contact: Option<u64>,
}

impl EdgeLog {
    /// Reads and folds the log of node `node` from `journal`.
    pub fn read(journal: &Journal, node: &str) -> Result<EdgeLog, RuntimeError> {
        let mut log = EdgeLog::default();
        for stored in journal.run("read edge log", journal.store().read(QUOTA_STREAM, node, 1))? {
            log.fold_stored(&stored)?;
        }
        Ok(log)
    }

    /// Folds one event of the log; an event that does not decode is an error naming it.
    pub fn fold_stored(&mut self, stored: &tollgate_store::StoredEvent) -> Result<(), RuntimeError> {
        let event = tollgate_codec::decode::<QuotaEvent>(&stored.event_type, &stored.payload).map_err(|source| {
            RuntimeError::undecodable_event(&stored.stream, &stored.key, stored.sequence, &stored.event_type, source)
        })?;
        self.sequence = stored.sequence;
        self.fold(&stored.command_id, event, stored.time_ms);
        Ok(())
    }

    fn fold(&mut self, command_id: &str, event: QuotaEvent, time: u64) {
        match event {
            QuotaEvent::Started { instance } => self.instance = Some(instance),
            QuotaEvent::GrantObtained { subscriber, reservation_id, units, unit_price, expires_at } => {
                self.last_contact = Some(time);
                *self.obtained.entry(subscriber.clone()).or_default() += 1;
                self.open.entry(subscriber.clone()).or_default().push(reservation_id.clone());
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
                self.use_grant(&AdmittedUse { request_id: command_id.into(), reservation_id, units });
            }
            QuotaEvent::UsesAdmitted { uses } => {
                for used in &uses {
                    self.use_grant(used);
                }
            }
            QuotaEvent::GrantSettled { reservation_id, charged, unpaid } => {
                self.last_contact = Some(time);
                if let Some(g) = self.grants.get_mut(&reservation_id) {
                    g.settled = Some((charged, unpaid));
                    if let Some(open) = self.open.get_mut(&g.subscriber) {
                        open.retain(|id| *id != reservation_id);
                        if open.is_empty() {
                            self.open.remove(&g.subscriber);
                        }
                    }
                }
            }
        }
    }

    fn use_grant(&mut self, used: &AdmittedUse) {
        if let Some(g) = self.grants.get_mut(&used.reservation_id) {
            // Admission checked `units <= g.units - g.used`; saturate for a damaged log.
            g.used = g.used.saturating_add(used.units);
        }
        self.admitted.insert(used.request_id.clone(), used.reservation_id.clone());
    }

    /// The grants by reservation id.
    pub fn grants(&self) -> &BTreeMap<String, LocalGrant> {
        &self.grants
    }

    /// Money held at the core for grants not settled. Each grant's money was held by the
    /// core, so it fits; the sum saturates rather than wrap.
    pub fn exposure(&self) -> i64 {
        self.open().map(LocalGrant::price_of_units).fold(0, i64::saturating_add)
    }

    /// The grants not yet settled.
    fn open(&self) -> impl Iterator<Item = &LocalGrant> {
        self.open.values().flatten().filter_map(|id| self.grants.get(id))
    }

    /// `subscriber`'s grants not yet settled, oldest first.
    fn open_of(&self, subscriber: &str) -> impl Iterator<Item = &LocalGrant> {
        self.open.get(subscriber).into_iter().flatten().filter_map(|id| self.grants.get(id))
    }

    /// The figures of node `node`.
    pub fn report(&self, node: &str) -> EdgeReport {
        EdgeReport {
            node: node.into(),
            currency: String::new(),
            grants_held: self.open().count(),
            exposure: self.exposure(),
            unsettled_units: self.open().map(|g| g.used).fold(0, u64::saturating_add),
            unsettled_usage: self.open().map(|g| g.price_of_used().unwrap_or(i64::MAX)).fold(0, i64::saturating_add),
            unpaid: self
                .grants
                .values()
                .filter_map(|g| g.settled)
                .map(|(_, unpaid)| unpaid)
                .fold(0, i64::saturating_add),
            last_contact: self.last_contact,
        }
    }
}

/// The core's answer to an account command: its events, or its refusal.
pub type CoreAnswer = Result<Vec<AccountEvent>, Rejection>;

/// How an edge node reaches the core's accounts.
pub trait CoreLink {
    /// Runs `command` with id `command_id` on account `account` at the core, at `now` by the
    /// node's clock (a core with a clock of its own may use that). `Ok(Ok(events))`: accepted
    /// (a repeated id answers the original events); `Ok(Err(_))`: the core refused;
    /// `Err(_)`: the core could not be reached or its answer was not understood, and the
    /// command may or may not have run (so a retry must use the same id).
    fn account(
        &mut self,
        account: &str,
        command_id: &str,
        command: &AccountCommand,
        now: u64,
    ) -> Result<CoreAnswer, RuntimeError>;
}

/// A runtime over the core's store is the core: the command runs here.
impl CoreLink for Runtime {
    fn account(
        &mut self,
        account: &str,
        command_id: &str,
        command: &AccountCommand,
        now: u64,
    ) -> Result<CoreAnswer, RuntimeError> {
        self.clock().set_ms(now);
        let envelope = self.command(ACCOUNT_STREAM, account, command_id, command)?;
        match self.execute(&envelope)? {
            Outcome::Accepted(events) => Ok(Ok(account_events(&events)?)),
            Outcome::Rejected(r) => Ok(Err(r)),
        }
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

/// An edge node: local admission against grants from the core account, which it reaches
/// through `C`.
pub struct EdgeNode<C: CoreLink = Runtime> {
    node: String,
    core: C,
    local: Journal,
    policy: QuotaPolicy,
    log: EdgeLog,
    /// When the core last answered (accepted or refused), by the node's clock.
    answered: Option<u64>,
}

impl<C: CoreLink> EdgeNode<C> {
    /// A node named `node` that reaches the core account through `core` and keeps its own log
    /// in `local`; replays that log first.
    pub fn open(node: &str, core: C, local: Journal, policy: QuotaPolicy) -> Result<EdgeNode<C>, RuntimeError> {
        let log = EdgeLog::read(&local, node)?;
        let mut edge = EdgeNode { node: node.into(), core, local, policy, log, answered: None };
        if edge.log.instance.is_none() {
            let nanos = wall_clock_nanos();
            let instance = format!("{:016x}", RandomState::new().hash_one(nanos));
            let now = u64::try_from(nanos / 1_000_000).unwrap_or(u64::MAX);
            edge.record(&format!("{node}/started"), QuotaEvent::Started { instance }, now)?;
        }
        Ok(edge)
    }

    /// Runs an account command at the core, noting when the core answered.
    fn ask(
        &mut self,
        account: &str,
        command_id: &str,
        command: &AccountCommand,
        now: u64,
    ) -> Result<CoreAnswer, RuntimeError> {
        let answer = self.core.account(account, command_id, command, now)?;
        self.answered = Some(now);
        Ok(answer)
    }

    /// Appends to the node's log (fsync'd by the embedded store), then folds.
    fn record(&mut self, command_id: &str, event: QuotaEvent, now: u64) -> Result<(), RuntimeError> {
        self.append(command_id, &event, now)?;
        self.log.fold(command_id, event, now);
        Ok(())
    }

    /// Appends one event to the node's log, without folding it.
    fn append(&mut self, command_id: &str, event: &QuotaEvent, now: u64) -> Result<(), RuntimeError> {
        let (event_type, payload) = tollgate_codec::encode(event)
            .expect("a QuotaEvent is an externally tagged enum of plain fields: it always encodes");
        let new = NewEvent { event_type, payload, ..json_event("", &(), command_id, now)? };
        let result = self
            .local
            .append(QUOTA_STREAM, &self.node, ExpectedVersion::Exact(self.log.sequence), vec![new])
            .map_err(|e| self.local.error("append to the edge log", e))?;
        self.log.sequence = result.last_sequence;
        Ok(())
    }

    /// The node's grants by reservation id.
    pub fn grants(&self) -> &BTreeMap<String, LocalGrant> {
        self.log.grants()
    }

    /// Money held at the core for grants this node has not settled: what it could still owe.
    pub fn exposure(&self) -> i64 {
        self.log.exposure()
    }

    /// What the node holds and owes, and when the core last answered it.
    pub fn report(&self) -> EdgeReport {
        let mut report = self.log.report(&self.node);
        report.last_contact = report.last_contact.max(self.answered);
        report.currency = self.policy.currency.clone();
        report
    }

    /// The grant `reservation_id`, if the node holds it.
    pub fn grant(&self, reservation_id: &str) -> Option<&LocalGrant> {
        self.log.grants.get(reservation_id)
    }

    /// The policy grants are asked for with.
    pub fn policy(&self) -> &QuotaPolicy {
        &self.policy
    }

    /// The link the node reaches the core through.
    pub fn core(&mut self) -> &mut C {
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
        let request = EdgeRequest { subscriber: subscriber.into(), request_id: request_id.into(), units };
        let mut decisions = self.admit_many(std::slice::from_ref(&request), now)?;
        Ok(decisions.pop().expect("one decision per request"))
    }

    /// Decides `requests` in order, as [`EdgeNode::admit`] would one by one, and logs every
    /// admitted use in one append: one fsync for the lot. Nothing is answered before that
    /// append is durable; when it fails, no use of the batch counts (the node re-reads its
    /// log) and the error is returned.
    pub fn admit_many(&mut self, requests: &[EdgeRequest], now: u64) -> Result<Vec<EdgeDecision>, RuntimeError> {
        let mut decisions = Vec::with_capacity(requests.len());
        let mut uses = Vec::new();
        for request in requests {
            let decided = self.decide(request, now);
            let decision = match decided {
                Ok(decision) => decision,
                Err(e) => {
                    self.log = EdgeLog::read(&self.local, &self.node)?;
                    return Err(e);
                }
            };
            if let (EdgeDecision::Admitted { reservation_id }, false) =
                (&decision, self.log.admitted.contains_key(&request.request_id))
            {
                let used = AdmittedUse {
                    request_id: request.request_id.clone(),
                    reservation_id: reservation_id.clone(),
                    units: request.units,
                };
                self.log.use_grant(&used);
                uses.push(used);
            }
            decisions.push(decision);
        }
        let Some(first) = uses.first() else { return Ok(decisions) };
        // One command id per append; a request id is logged once, so the first is unique.
        let command_id = first.request_id.clone();
        if let Err(e) = self.append(&command_id, &QuotaEvent::UsesAdmitted { uses }, now) {
            self.log = EdgeLog::read(&self.local, &self.node)?;
            return Err(e);
        }
        Ok(decisions)
    }

    /// One request's decision against the grants as they stand (uses decided earlier in the
    /// batch included), obtaining a grant from the core when none has room.
    fn decide(&mut self, request: &EdgeRequest, now: u64) -> Result<EdgeDecision, RuntimeError> {
        let EdgeRequest { subscriber, request_id, units } = request;
        let span = tracing::info_span!("edge-admission", node = %self.node, %subscriber, correlation_id = %request_id);
        let _entered = span.enter();
        if let Some(reservation_id) = self.log.admitted.get(request_id) {
            return Ok(EdgeDecision::Admitted { reservation_id: reservation_id.clone() });
        }
        let usable =
            |g: &&LocalGrant| now < g.expires_at && g.units.checked_sub(g.used).is_some_and(|left| left >= *units);
        let room = self.log.open_of(subscriber).find(usable).map(|g| g.reservation_id.clone());
        let reservation_id = match room {
            Some(id) => id,
            None => match self.obtain(subscriber, (*units).max(self.policy.grant_units), now)? {
                Ok((id, granted)) if granted >= *units => id,
                Ok((_, granted)) => {
                    return Ok(EdgeDecision::Denied {
                        code: ResultCode::QuotaLimitReached,
                        reason: format!("the core granted {granted} of {units} units"),
                    });
                }
                Err(denied) => return Ok(denied),
            },
        };
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
        let n = self.log.obtained.get(subscriber).copied().unwrap_or_default() + 1;
        let instance = self.log.instance.as_deref().unwrap_or_default();
        // Deterministic given the log, so a reserve whose answer was lost is retried with the
        // same id and answered from the core's log rather than held twice.
        let reservation_id = format!("{}/{instance}/{subscriber}/{n}", self.node);
        let command = AccountCommand::Reserve {
            reservation_id: reservation_id.clone(),
            units,
            plan: vec![PriceTerm::PerUnit { offer: String::new(), unit_price: self.policy.unit_price }],
            currency: self.policy.currency.clone(),
            validity_ms: self.policy.validity_ms,
            offer: String::new(),
        };
        let events = match self.ask(subscriber, &reservation_id, &command, now) {
            Err(e) => {
                tracing::warn!(error = %e, "core unreachable; no local quota left");
                return Ok(Err(EdgeDecision::Denied {
                    code: ResultCode::EndUserServiceDenied,
                    reason: format!("no local quota and the core is unreachable: {e}"),
                }));
            }
            Ok(Err(r)) => {
                return Ok(Err(EdgeDecision::Denied { code: result_code(&r), reason: r.message }));
            }
            Ok(Ok(events)) => events,
        };
        match events.as_slice() {
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
        let finished: Vec<LocalGrant> =
            self.log.open().filter(|g| all || g.used == g.units || now >= g.expires_at).cloned().collect();
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

    /// Sends one grant's usage to the core: `(charged, unpaid)`. A used grant is settled:
    /// the core debits the grant and charges usage beyond it, or usage of a grant it already
    /// expired (validity + skew margin passed while the edge was cut off) as far as the
    /// balance goes, the rest unpaid. A grant the core no longer knows at all (past its
    /// late-usage window) leaves its whole price unpaid.
    fn forward(&mut self, grant: &LocalGrant, now: u64) -> Result<(i64, i64), RuntimeError> {
        let id = &grant.reservation_id;
        let account = &grant.subscriber;
        let command = if grant.used == 0 {
            AccountCommand::Release { reservation_id: id.clone() }
        } else {
            AccountCommand::Settle { reservation_id: id.clone(), used_units: grant.used }
        };
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
        match self.ask(account, &format!("{id}/settle"), &command, now)? {
            Ok(events) => Ok(events.iter().fold((0, 0), |(charged, unpaid), event| match event {
                AccountEvent::Debited { charged: c, .. } => (charged.saturating_add(*c), unpaid),
                AccountEvent::UsageCharged { charged: c, unpaid: u, .. } => {
                    (charged.saturating_add(*c), unpaid.saturating_add(*u))
                }
                _ => (charged, unpaid),
            })),
            Err(r) if owed == 0 && r.code == "unknown-reservation" => Ok((0, 0)),
            Err(r) if r.code == "unknown-reservation" || r.code == "late-usage-window-passed" => {
                tracing::error!(grant = %id, owed, code = %r.code, "usage the core can no longer charge: unpaid");
                Ok((0, owed))
            }
            Err(r) => Err(refused(id, &r)),
        }
    }
}

/// The wall clock in ns, mixed into a node's instance with the process's random hash keys.
fn wall_clock_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

fn refused(id: &str, r: &Rejection) -> RuntimeError {
    RuntimeError::SettlementRefused { reservation_id: id.into(), code: r.code.clone(), message: r.message.clone() }
}

/// Whether a grant valid until `expires_at` is past its validity plus `margin_ms` at `now`, so
/// no edge within the clock-skew margin can still be using it: the core may expire it.
pub fn past_margin(expires_at: u64, margin_ms: u64, now: u64) -> bool {
    expires_at.saturating_add(margin_ms) <= now
}

/// The command that expires grant `reservation_id`, with its command id (one per grant, so a
/// repeat changes nothing).
pub fn expiry(reservation_id: &str) -> (String, AccountCommand) {
    (format!("{reservation_id}/expire"), AccountCommand::Expire { reservation_id: reservation_id.into() })
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
            if !past_margin(r.expires_at, clock_skew_ms, now) {
                continue;
            }
            let (command_id, command) = expiry(id);
            let envelope = core.command(ACCOUNT_STREAM, account, &command_id, &command)?;
            if let Outcome::Accepted(_) = core.execute(&envelope)? {
                expired.push(id.clone());
            }
        }
    }
    Ok(expired)
}
