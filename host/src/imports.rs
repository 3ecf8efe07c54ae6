//! The host side of every import: logging (to `tracing`, bounded per call), configuration and
//! key-value storage served by the host state; rating and charging served by
//! [`PolicyServices`](crate::services::PolicyServices); the monotonic clock's subscriptions
//! (sleeps) answered at once. Calls and log lines go to the host state's observer, if any (a test harness).

use crate::bindings::aggregate::wasi::logging::logging::{self, Level};
use crate::bindings::policy::tollgate::billing::{charging, rating};
use crate::bindings::projector::wasi::keyvalue::store as kv;
use crate::bindings::rater::tollgate::billing::types::{AccountStatus, Grant, Money, ResultCode, Usage};
use crate::bindings::rater::wasi::config::store as config;
use crate::host_state::BucketHandle;
use crate::state::StoreState;
use wasmtime::component::Resource;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;

impl logging::Host for StoreState {
    fn log(&mut self, level: Level, context: String, message: String) {
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
        let Some((context, message)) = self.log_budget.admit(context, message) else { return };
        tracing::debug!(target: "tollgate::guest", level, context = %context, "{message}");
        self.host_state.log(level, &context, &message);
    }
}

/// A sleep or a timed poll returns at once: the guest's clocks are the host's virtual clock,
/// which only the host moves, so waiting for it inside a call could never end. A guest that
/// polls the clock until time has passed therefore spins, and its CPU cap stops it.
impl monotonic_clock::Host for StoreState {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        Ok(wasmtime_wasi::HostMonotonicClock::now(self.host_state.clock()))
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        Ok(wasmtime_wasi::HostMonotonicClock::resolution(self.host_state.clock()))
    }

    fn subscribe_instant(&mut self, _when: monotonic_clock::Instant) -> wasmtime::Result<Resource<DynPollable>> {
        self.elapsed()
    }

    fn subscribe_duration(&mut self, _duration: monotonic_clock::Duration) -> wasmtime::Result<Resource<DynPollable>> {
        self.elapsed()
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
    fn get(&mut self, key: String) -> Result<Option<String>, config::Error> {
        self.host_state.record("wasi:config/store", "get", || vec![format!("key={key}")]);
        Ok(self.host_state.config(&key))
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, config::Error> {
        self.host_state.record("wasi:config/store", "get-all", Vec::new);
        Ok(self.host_state.config_all())
    }
}

impl StoreState {
    fn bucket_name(&self, bucket: &Resource<BucketHandle>) -> Result<String, kv::Error> {
        self.table.get(bucket).map(|b| b.name.clone()).map_err(|e| kv::Error::Other(format!("bad bucket handle: {e}")))
    }
}

impl kv::Host for StoreState {
    fn open(&mut self, identifier: String) -> Result<Resource<BucketHandle>, kv::Error> {
        self.host_state.record("wasi:keyvalue/store", "open", || vec![format!("bucket={identifier}")]);
        if identifier.is_empty() {
            return Err(kv::Error::NoSuchStore);
        }
        self.table.push(BucketHandle { name: identifier }).map_err(|e| kv::Error::Other(e.to_string()))
    }
}

impl kv::HostBucket for StoreState {
    fn get(&mut self, bucket: Resource<BucketHandle>, key: String) -> Result<Option<Vec<u8>>, kv::Error> {
        let name = self.bucket_name(&bucket)?;
        self.host_state
            .record("wasi:keyvalue/store", "bucket.get", || vec![format!("bucket={name}"), format!("key={key}")]);
        Ok(self.host_state.staged_get(&name, &key))
    }

    fn set(&mut self, bucket: Resource<BucketHandle>, key: String, value: Vec<u8>) -> Result<(), kv::Error> {
        let name = self.bucket_name(&bucket)?;
        self.host_state
            .record("wasi:keyvalue/store", "bucket.set", || vec![format!("bucket={name}"), format!("key={key}")]);
        self.host_state.staged_put(&name, &key, Some(value));
        Ok(())
    }

    fn delete(&mut self, bucket: Resource<BucketHandle>, key: String) -> Result<(), kv::Error> {
        let name = self.bucket_name(&bucket)?;
        self.host_state
            .record("wasi:keyvalue/store", "bucket.delete", || vec![format!("bucket={name}"), format!("key={key}")]);
        self.host_state.staged_put(&name, &key, None);
        Ok(())
    }

    fn exists(&mut self, bucket: Resource<BucketHandle>, key: String) -> Result<bool, kv::Error> {
        let name = self.bucket_name(&bucket)?;
        self.host_state
            .record("wasi:keyvalue/store", "bucket.exists", || vec![format!("bucket={name}"), format!("key={key}")]);
        Ok(self.host_state.staged_get(&name, &key).is_some())
    }

    fn list_keys(&mut self, bucket: Resource<BucketHandle>, cursor: Option<u64>) -> Result<kv::KeyResponse, kv::Error> {
        const PAGE: usize = 1000;
        let name = self.bucket_name(&bucket)?;
        self.host_state.record("wasi:keyvalue/store", "bucket.list-keys", || vec![format!("bucket={name}")]);
        let keys = self.host_state.staged_keys(&name);
        let start = cursor.unwrap_or(0) as usize;
        let page: Vec<String> = keys.iter().skip(start).take(PAGE).cloned().collect();
        let next = start + page.len();
        Ok(kv::KeyResponse { keys: page, cursor: (next < keys.len()).then_some(next as u64) })
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
    fn rate(&mut self, request: rating::RatingRequest) -> Result<rating::Rated, rating::RatingError> {
        self.host_state.record("tollgate:billing/rating", "rate", || {
            vec![format!("offer={}", request.usage.offer), format!("units={}", request.usage.units)]
        });
        match &self.services {
            Some(s) => s.rate(request),
            None => Err(rating::RatingError::InvalidTariff("this host serves no rater".into())),
        }
    }
}

impl charging::Host for StoreState {
    fn reserve(&mut self, request: charging::ReserveRequest) -> Result<Grant, charging::ChargingError> {
        self.host_state.record("tollgate:billing/charging", "reserve", || {
            vec![
                format!("request-id={}", request.request_id),
                format!("account={}", request.account),
                format!("units={}", request.units),
            ]
        });
        self.services.clone().ok_or_else(|| no_services("reserve"))?.reserve(request)
    }

    fn debit(
        &mut self,
        request_id: String,
        account: String,
        reservation_id: String,
        used_units: u64,
    ) -> Result<charging::DebitOutcome, charging::ChargingError> {
        self.host_state.record("tollgate:billing/charging", "debit", || {
            vec![format!("request-id={request_id}"), format!("account={account}"), format!("used-units={used_units}")]
        });
        self.services.clone().ok_or_else(|| no_services("debit"))?.debit(
            &request_id,
            &account,
            &reservation_id,
            used_units,
        )
    }

    fn release(
        &mut self,
        request_id: String,
        account: String,
        reservation_id: String,
    ) -> Result<Money, charging::ChargingError> {
        self.host_state.record("tollgate:billing/charging", "release", || {
            vec![
                format!("request-id={request_id}"),
                format!("account={account}"),
                format!("reservation-id={reservation_id}"),
            ]
        });
        self.services.clone().ok_or_else(|| no_services("release"))?.release(&request_id, &account, &reservation_id)
    }

    fn direct_debit(
        &mut self,
        request_id: String,
        account: String,
        amount: Money,
        description: String,
    ) -> Result<AccountStatus, charging::ChargingError> {
        self.host_state.record("tollgate:billing/charging", "direct-debit", || {
            vec![
                format!("request-id={request_id}"),
                format!("account={account}"),
                format!("amount={}", amount.minor_units),
            ]
        });
        self.services.clone().ok_or_else(|| no_services("direct-debit"))?.direct_debit(
            &request_id,
            &account,
            amount,
            &description,
        )
    }

    fn balance_check(&mut self, account: String) -> Result<AccountStatus, charging::ChargingError> {
        self.host_state.record("tollgate:billing/charging", "balance-check", || vec![format!("account={account}")]);
        self.services.clone().ok_or_else(|| no_services("balance-check"))?.balance_check(&account)
    }

    fn price_enquiry(&mut self, account: String, usage: Usage) -> Result<rating::Rated, charging::ChargingError> {
        self.host_state.record("tollgate:billing/charging", "price-enquiry", || {
            vec![format!("account={account}"), format!("offer={}", usage.offer)]
        });
        self.services.clone().ok_or_else(|| no_services("price-enquiry"))?.price_enquiry(&account, usage)
    }
}
