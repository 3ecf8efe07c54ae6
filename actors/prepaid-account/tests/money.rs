//! The money properties on the actor's logic compiled natively (the runtime's
//! `properties` test runs the same core on the compiled component).

#[path = "money/core.rs"]
mod core;

use core::{Ledger, check_run, run};
use prepaid_account::PrepaidAccount;
use proptest::prelude::*;
use tollgate_billing_model::account::{Account, AccountCommand, AccountEvent, STREAM};
use tollgate_sdk::{Aggregate, Command, codec};

/// The account's `handle` and `apply`, natively; commands go through the JSON codec like the
/// component's do.
#[derive(Default)]
struct Native(Account);

impl Ledger for Native {
    fn execute(&mut self, id: &str, command: &AccountCommand, now: u64) -> Result<Vec<AccountEvent>, String> {
        let (command_type, payload) = codec::encode(command).map_err(|e| e.0)?;
        let envelope = Command {
            stream: STREAM.into(),
            key: "acct".into(),
            command_type,
            content_type: codec::JSON.into(),
            payload,
            command_id: id.into(),
            correlation_id: id.into(),
            causation_id: String::new(),
            time: now,
        };
        let typed: AccountCommand = codec::decode(&envelope.command_type, &envelope.payload).map_err(|e| e.0)?;
        let events = PrepaidAccount::handle(&self.0, typed, &envelope).map_err(|r| r.code)?;
        for event in &events {
            self.0.apply(event.clone());
        }
        Ok(events)
    }

    fn state(&mut self) -> Account {
        self.0.clone()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// 256 generated runs of up to 40 steps each.
    #[test]
    fn money_stays_right_natively((overdraft_limit, ops) in run()) {
        check_run(&mut Native::default(), overdraft_limit, &ops);
    }
}
