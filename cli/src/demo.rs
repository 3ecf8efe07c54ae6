//! `tollgate demo`: a short edge scenario through the harness, each step printed.

use std::path::PathBuf;
use std::process::ExitCode;
use tollgate_billing_model::account::{Account, AccountCommand, Money};
use tollgate_host::aggregate::Command;
use tollgate_host::{Actor, AggregateHost, Fakes, HostEngine, Outcome};

/// Arguments of `demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Directory holding the compiled actors (`cargo xtask build-actors` fills it).
    #[arg(long, default_value_os_t = tollgate_host::fixtures::actors_dir())]
    actors_dir: PathBuf,
}

struct Demo {
    host: AggregateHost,
    fakes: Fakes,
    step: u32,
}

impl Demo {
    fn send(&mut self, command_id: &str, what: &str, command: AccountCommand) -> anyhow::Result<()> {
        self.step += 1;
        let (command_type, payload) = tollgate_sdk::codec::encode(&command)?;
        let envelope = Command {
            stream: "account".into(),
            key: "alice".into(),
            command_type: command_type.clone(),
            content_type: tollgate_sdk::codec::JSON.into(),
            payload: payload.clone(),
            command_id: command_id.into(),
            correlation_id: command_id.into(),
            causation_id: String::new(),
            time: self.fakes.clock().now_ms(),
        };
        println!("{:>2}. t={:>6} ms  {what}", self.step, self.fakes.clock().now_ms());
        println!("      -> {command_type} {} (command id {command_id})", String::from_utf8_lossy(&payload));
        match self.host.execute(&envelope)? {
            Outcome::Accepted(events) => {
                for e in events {
                    println!("      <- #{} {} {}", e.sequence, e.event_type, String::from_utf8_lossy(&e.payload));
                }
            }
            Outcome::Rejected(r) => println!("      <- rejected `{}`: {}", r.code, r.message),
        }
        let account: Account = serde_json::from_slice(self.host.state("alice").unwrap_or(b"{}"))?;
        println!(
            "      balance {} {cur}, held {}, available {}, open reservations {}",
            account.balance,
            account.held,
            account.available(),
            account.reservations.len(),
            cur = account.currency
        );
        Ok(())
    }
}

/// Runs the scenario.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let engine = HostEngine::shared()?;
    let path = args.actors_dir.join("prepaid_account.wasm");
    let actor = Actor::load(&engine, &path)?;
    println!("tollgate demo: an edge node charging subscriber `alice` through {}", path.display());
    println!("actor: {} ({} bytes, sha256:{}…)\n", actor.kind(), actor.size(), &actor.digest()[..12]);
    let fakes = Fakes::new();
    fakes.clock().set_ms(1_000);
    let host = AggregateHost::new(actor, fakes.clone())?;
    let mut demo = Demo { host, fakes, step: 0 };
    let eur = |n| Money::new(n, "EUR");
    let reserve = |id: &str, units, price| AccountCommand::Reserve {
        reservation_id: id.into(),
        units,
        unit_price: eur(price),
        validity_ms: 30_000,
        offer: "voice".into(),
        counters: vec![],
    };

    demo.send("c1", "open the account in EUR", AccountCommand::Open { currency: "EUR".into(), overdraft_limit: 0 })?;
    demo.send("c2", "top up 10.00 EUR", AccountCommand::TopUp { amount: eur(1_000) })?;
    demo.send("c3", "a call starts: reserve 60 seconds at 2 cents", reserve("call-1", 60, 2))?;
    demo.fakes.clock().advance_ms(45_000);
    demo.send("c4", "the call ends after 45 seconds: debit them", AccountCommand::Debit { reservation_id: "call-1".into(), used_units: 45 })?;
    demo.send("c4", "the network retries the same debit: nothing changes twice", AccountCommand::Debit { reservation_id: "call-1".into(), used_units: 45 })?;
    demo.send("c5", "a video session asks for 100 units at 10 cents: only what the balance covers", reserve("video-1", 100, 10))?;
    demo.send("c6", "another session while the balance is held: denied", reserve("video-2", 10, 10))?;
    demo.fakes.clock().advance_ms(31_000);
    demo.send("c7", "the video grant lapsed without a report: expire it", AccountCommand::Expire { reservation_id: "video-1".into() })?;
    demo.send("c8", "a one-shot SMS charge of 0.09 EUR", AccountCommand::DirectDebit { amount: eur(9), description: "sms".into() })?;
    demo.send("c9", "a top-up in the wrong currency", AccountCommand::TopUp { amount: Money::new(500, "USD") })?;
    println!("\n{} events on stream account/alice", demo.host.events("alice").len());
    Ok(ExitCode::SUCCESS)
}
