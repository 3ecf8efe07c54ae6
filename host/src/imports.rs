//! The host side of every import: logging (to `tracing`, bounded per call), configuration and
//! key-value storage served by the host state; rating and charging served by
//! [`PolicyServices`](crate::services::PolicyServices); the monotonic clock's subscriptions
//! (sleeps) answered at once and the wall clock read, both from the virtual clock; randomness
//! as WASI makes it. Each counts what a call does against the call's budget for it
//! ([`crate::budget`]) and traps past it. Calls and log lines go to the host state's observer,
//! if any (a test harness).

use crate::bindings::aggregate::wasi::logging::logging::{self, Level};
use crate::bindings::policy::tollgate::billing::{charging, rating};
use crate::bindings::projector::wasi::keyvalue::store as kv;
use crate::bindings::rater::tollgate::billing::types::{AccountStatus, Grant, Money, ResultCode, Usage};
use crate::bindings::rater::wasi::config::store as config;
use crate::budget::Budget;
use crate::host_state::BucketHandle;
use crate::services::PolicyServices;
use crate::state::{MAX_RESOURCES, StoreState};
use std::sync::Arc;
use wasmtime::component::Resource;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::clocks::{monotonic_clock, wall_clock};
use wasmtime_wasi::p2::bindings::random;

impl logging::Host for StoreState {
    fn log(&mut self, level: Level, context: String, message: String) -> wasmtime::Result<()> {
        self.charge(Budget::LogCalls, 1)?;
        self.charge(Budget::LogBytes, context.len().saturating_add(message.len()))?;
        let level = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Critical => "critical",
        };
        self.host_state
            .record("wasi:logging/logging", "log", || vec![format!("level={level}"), format!("context={context}")]);
        let Some((context, message)) = self.log_budget.admit(context, message) else { return Ok(()) };
        tracing::debug!(target: "tollgate::guest", level, context = %context, "{message}");
        self.host_state.log(level, &context, &message);
        Ok(())
    }
}

/// `wasi:random` as WASI serves it (deterministic here, see [`StoreState::new_store`]), with
/// the bytes a call asks for counted against its `random_bytes` budget before any is made.
impl random::random::Host for StoreState {
    fn get_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        self.charge(Budget::RandomBytes, usize::try_from(len).unwrap_or(usize::MAX))?;
        random::random::Host::get_random_bytes(self.wasi_random(), len)
    }

    fn get_random_u64(&mut self) -> wasmtime::Result<u64> {
        self.charge(Budget::RandomBytes, 8)?;
        random::random::Host::get_random_u64(self.wasi_random())
    }
}

impl random::insecure::Host for StoreState {
    fn get_insecure_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        self.charge(Budget::RandomBytes, usize::try_from(len).unwrap_or(usize::MAX))?;
        random::insecure::Host::get_insecure_random_bytes(self.wasi_random(), len)
    }

    fn get_insecure_random_u64(&mut self) -> wasmtime::Result<u64> {
        self.charge(Budget::RandomBytes, 8)?;
        random::insecure::Host::get_insecure_random_u64(self.wasi_random())
    }
}

/// A sleep or a timed poll returns at once: the guest's clocks are the host's virtual clock,
/// which only the host moves, so waiting for it inside a call could never end. A guest that
/// polls the clock until time has passed therefore loops, and its budget of clock calls (or
/// its CPU cap, whichever comes first) stops it.
impl monotonic_clock::Host for StoreState {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        self.charge(Budget::ClockCalls, 1)?;
        Ok(wasmtime_wasi::HostMonotonicClock::now(self.host_state.clock()))
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        self.charge(Budget::ClockCalls, 1)?;
        Ok(wasmtime_wasi::HostMonotonicClock::resolution(self.host_state.clock()))
    }

    fn subscribe_instant(&mut self, _when: monotonic_clock::Instant) -> wasmtime::Result<Resource<DynPollable>> {
        self.charge(Budget::ClockCalls, 1)?;
        self.elapsed()
    }

    fn subscribe_duration(&mut self, _duration: monotonic_clock::Duration) -> wasmtime::Result<Resource<DynPollable>> {
        self.charge(Budget::ClockCalls, 1)?;
        self.elapsed()
    }
}

/// The wall clock is the host's virtual clock too, read against the same budget.
impl wall_clock::Host for StoreState {
    fn now(&mut self) -> wasmtime::Result<wall_clock::Datetime> {
        self.charge(Budget::ClockCalls, 1)?;
        let now = wasmtime_wasi::HostWallClock::now(self.host_state.clock());
        Ok(wall_clock::Datetime { seconds: now.as_secs(), nanoseconds: now.subsec_nanos() })
    }

    fn resolution(&mut self) -> wasmtime::Result<wall_clock::Datetime> {
        self.charge(Budget::ClockCalls, 1)?;
        let resolution = wasmtime_wasi::HostWallClock::resolution(self.host_state.clock());
        Ok(wall_clock::Datetime { seconds: resolution.as_secs(), nanoseconds: resolution.subsec_nanos() })
    }
}

/// A clock subscription that is always ready.
struct Elapsed;

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for Elapsed {
    async fn ready(&mut self) {}
}

impl StoreState {
    fn elapsed(&mut self) -> wasmtime::Result<Resource<DynPollable>> {
        let elapsed = self.table.push(Elapsed)?;
        wasmtime_wasi::p2::subscribe(&mut self.table, elapsed)
    }
}

impl crate::bindings::aggregate::tollgate::eventsourcing::types::Host for StoreState {}
impl crate::bindings::rater::tollgate::billing::types::Host for StoreState {}
impl crate::bindings::policy::tollgate::admission::types::Host for StoreState {}

impl config::Host for StoreState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, config::Error>> {
        self.charge(Budget::ConfigCalls, 1)?;
        self.host_state.record("wasi:config/store", "get", || vec![format!("key={key}")]);
        Ok(Ok(self.host_state.config(&key)))
    }

    fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, config::Error>> {
        self.charge(Budget::ConfigCalls, 1)?;
        self.host_state.record("wasi:config/store", "get-all", Vec::new);
        Ok(Ok(self.host_state.config_all()))
    }
}

impl StoreState {
    fn bucket_name(&self, bucket: &Resource<BucketHandle>) -> Result<String, kv::Error> {
        self.table.get(bucket).map(|b| b.name.clone()).map_err(|e| kv::Error::Other(format!("bad bucket handle: {e}")))
    }

    /// Counts one key-value call moving `bytes` either way.
    fn charge_kv(&mut self, bytes: usize) -> wasmtime::Result<()> {
        self.charge(Budget::KvCalls, 1)?;
        self.charge(Budget::KvBytes, bytes)
    }

    /// Counts one key-value write of `bytes`.
    fn charge_kv_write(&mut self, bytes: usize) -> wasmtime::Result<()> {
        self.charge_kv(bytes)?;
        self.charge(Budget::KvWrites, 1)?;
        self.charge(Budget::KvWriteBytes, bytes)
    }
}

impl kv::Host for StoreState {
    fn open(&mut self, identifier: String) -> wasmtime::Result<Result<Resource<BucketHandle>, kv::Error>> {
        self.charge_kv(identifier.len())?;
        self.host_state.record("wasi:keyvalue/store", "open", || vec![format!("bucket={identifier}")]);
        if identifier.is_empty() {
            return Ok(Err(kv::Error::NoSuchStore));
        }
        let refused = |e| {
            kv::Error::Other(format!(
                "cannot open a bucket: {e} (an instance holds at most {MAX_RESOURCES} host resources)"
            ))
        };
        Ok(self.table.push(BucketHandle { name: identifier }).map_err(refused))
    }
}

impl kv::HostBucket for StoreState {
    fn get(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, kv::Error>> {
        let name = match self.bucket_name(&bucket) {
            Ok(name) => name,
            Err(e) => return Ok(Err(e)),
        };
        self.charge_kv(name.len() + key.len())?;
        self.host_state
            .record("wasi:keyvalue/store", "bucket.get", || vec![format!("bucket={name}"), format!("key={key}")]);
        let value = self.host_state.staged_get(&name, &key);
        self.charge(Budget::KvBytes, value.as_ref().map_or(0, Vec::len))?;
        Ok(Ok(value))
    }

    fn set(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), kv::Error>> {
        let name = match self.bucket_name(&bucket) {
            Ok(name) => name,
            Err(e) => return Ok(Err(e)),
        };
        self.charge_kv_write(name.len() + key.len() + value.len())?;
        self.host_state
            .record("wasi:keyvalue/store", "bucket.set", || vec![format!("bucket={name}"), format!("key={key}")]);
        self.host_state.staged_put(&name, &key, Some(value));
        Ok(Ok(()))
    }

    fn delete(&mut self, bucket: Resource<BucketHandle>, key: String) -> wasmtime::Result<Result<(), kv::Error>> {
        let name = match self.bucket_name(&bucket) {
            Ok(name) => name,
            Err(e) => return Ok(Err(e)),
        };
        self.charge_kv_write(name.len() + key.len())?;
        self.host_state
            .record("wasi:keyvalue/store", "bucket.delete", || vec![format!("bucket={name}"), format!("key={key}")]);
        self.host_state.staged_put(&name, &key, None);
        Ok(Ok(()))
    }

    fn exists(&mut self, bucket: Resource<BucketHandle>, key: String) -> wasmtime::Result<Result<bool, kv::Error>> {
        let name = match self.bucket_name(&bucket) {
            Ok(name) => name,
            Err(e) => return Ok(Err(e)),
        };
        self.charge_kv(name.len() + key.len())?;
        self.host_state
            .record("wasi:keyvalue/store", "bucket.exists", || vec![format!("bucket={name}"), format!("key={key}")]);
        Ok(Ok(self.host_state.staged_get(&name, &key).is_some()))
    }

    fn list_keys(
        &mut self,
        bucket: Resource<BucketHandle>,
        cursor: Option<u64>,
    ) -> wasmtime::Result<Result<kv::KeyResponse, kv::Error>> {
        const PAGE: usize = 1000;
        let name = match self.bucket_name(&bucket) {
            Ok(name) => name,
            Err(e) => return Ok(Err(e)),
        };
        self.charge_kv(name.len())?;
        self.host_state.record("wasi:keyvalue/store", "bucket.list-keys", || vec![format!("bucket={name}")]);
        // Every page lists the whole bucket to find its place: that is the work counted.
        let keys = self.host_state.staged_keys(&name);
        self.charge(Budget::KvBytes, keys.iter().map(String::len).sum())?;
        let start = cursor.unwrap_or(0) as usize;
        let page: Vec<String> = keys.iter().skip(start).take(PAGE).cloned().collect();
        let next = start + page.len();
        Ok(Ok(kv::KeyResponse { keys: page, cursor: (next < keys.len()).then_some(next as u64) }))
    }

    fn drop(&mut self, bucket: Resource<BucketHandle>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

fn no_services(what: &str) -> charging::ChargingError {
    charging::ChargingError {
        code: ResultCode::EndUserServiceDenied,
        message: format!("this host serves no charging backend for `{what}`"),
    }
}

impl rating::Host for StoreState {
    fn rate(&mut self, request: rating::RatingRequest) -> wasmtime::Result<Result<rating::Rated, rating::RatingError>> {
        self.charge(Budget::RatingCalls, 1)?;
        self.host_state.record("tollgate:billing/rating", "rate", || {
            vec![format!("offer={}", request.usage.offer), format!("units={}", request.usage.units)]
        });
        Ok(match &self.services {
            Some(s) => s.rate(request),
            None => Err(rating::RatingError::InvalidTariff("this host serves no rater".into())),
        })
    }
}

impl StoreState {
    /// Counts one charging call and finds what serves it.
    fn charging(&mut self, what: &str) -> wasmtime::Result<Result<Arc<dyn PolicyServices>, charging::ChargingError>> {
        self.charge(Budget::ChargingCalls, 1)?;
        Ok(self.services.clone().ok_or_else(|| no_services(what)))
    }
}

impl charging::Host for StoreState {
    fn reserve(
        &mut self,
        request: charging::ReserveRequest,
    ) -> wasmtime::Result<Result<Grant, charging::ChargingError>> {
        self.host_state.record("tollgate:billing/charging", "reserve", || {
            vec![
                format!("request-id={}", request.request_id),
                format!("account={}", request.account),
                format!("units={}", request.units),
            ]
        });
        Ok(self.charging("reserve")?.and_then(|s| s.reserve(request)))
    }

    fn debit(
        &mut self,
        request_id: String,
        account: String,
        reservation_id: String,
        used_units: u64,
    ) -> wasmtime::Result<Result<charging::DebitOutcome, charging::ChargingError>> {
        self.host_state.record("tollgate:billing/charging", "debit", || {
            vec![format!("request-id={request_id}"), format!("account={account}"), format!("used-units={used_units}")]
        });
        Ok(self.charging("debit")?.and_then(|s| s.debit(&request_id, &account, &reservation_id, used_units)))
    }

    fn release(
        &mut self,
        request_id: String,
        account: String,
        reservation_id: String,
    ) -> wasmtime::Result<Result<Money, charging::ChargingError>> {
        self.host_state.record("tollgate:billing/charging", "release", || {
            vec![
                format!("request-id={request_id}"),
                format!("account={account}"),
                format!("reservation-id={reservation_id}"),
            ]
        });
        Ok(self.charging("release")?.and_then(|s| s.release(&request_id, &account, &reservation_id)))
    }

    fn direct_debit(
        &mut self,
        request_id: String,
        account: String,
        amount: Money,
        description: String,
    ) -> wasmtime::Result<Result<AccountStatus, charging::ChargingError>> {
        self.host_state.record("tollgate:billing/charging", "direct-debit", || {
            vec![
                format!("request-id={request_id}"),
                format!("account={account}"),
                format!("amount={}", amount.minor_units),
            ]
        });
        Ok(self.charging("direct-debit")?.and_then(|s| s.direct_debit(&request_id, &account, amount, &description)))
    }

    fn balance_check(&mut self, account: String) -> wasmtime::Result<Result<AccountStatus, charging::ChargingError>> {
        self.host_state.record("tollgate:billing/charging", "balance-check", || vec![format!("account={account}")]);
        Ok(self.charging("balance-check")?.and_then(|s| s.balance_check(&account)))
    }

    fn price_enquiry(
        &mut self,
        account: String,
        usage: Usage,
    ) -> wasmtime::Result<Result<rating::Rated, charging::ChargingError>> {
        self.host_state.record("tollgate:billing/charging", "price-enquiry", || {
            vec![format!("account={account}"), format!("offer={}", usage.offer)]
        });
        Ok(self.charging("price-enquiry")?.and_then(|s| s.price_enquiry(&account, usage)))
    }
}
