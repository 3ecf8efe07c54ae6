//! `tollgate demo`: an edge node charging one subscriber through the reference actors, each
//! step printed as a row of a table.

use std::path::PathBuf;
use std::process::ExitCode;
use tollgate_billing_model::account::{AccountCommand, Money};
use tollgate_billing_model::balance::{BUCKET, BalanceView};
use tollgate_billing_model::session::{STREAM as SESSION, SessionEvent};
use tollgate_host::aggregate::Outcome;
use tollgate_runtime::{AdmissionRequest, Decision, FinalUnitAction, Runtime};

/// Arguments of `demo`.
#[derive(clap::Args)]
pub struct Args {
    /// The manifest wiring the actors.
    #[arg(long, default_value = "examples/edge.toml")]
    manifest: PathBuf,
    /// The event store: `file:DIR` (embedded, durable) or `nats://HOST:PORT`; an ephemeral
    /// log when omitted. The store must not hold an earlier demo's subscriber.
    #[arg(long)]
    store: Option<String>,
}

const SUBSCRIBER: &str = "alice";

struct Demo {
    rt: Runtime,
    step: u32,
}

/// Renders minor units as `units.cents`; `unsigned_abs` keeps `i64::MIN` from overflowing.
fn eur(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

impl Demo {
    fn row(&mut self, action: &str, result: &str) -> anyhow::Result<()> {
        self.step += 1;
        let a = self.rt.account(SUBSCRIBER)?.unwrap_or_default();
        println!(
            "{:>3} | {:>7} | {:<40} | {:<48} | {:>8} | {:>7} | {:>9}",
            self.step,
            format!("{}s", self.rt.clock().now_ms() / 1000),
            action,
            result,
            eur(a.balance),
            eur(a.held),
            eur(a.available())
        );
        Ok(())
    }

    fn command(&mut self, id: &str, action: &str, command: AccountCommand) -> anyhow::Result<()> {
        let c = self.rt.command("account", SUBSCRIBER, id, &command)?;
        let result = match self.rt.execute(&c)? {
            Outcome::Accepted(events) => events.iter().map(|e| e.event_type.clone()).collect::<Vec<_>>().join(", "),
            Outcome::Rejected(r) => format!("rejected: {}", r.code),
        };
        self.row(action, &result)
    }

    fn admit(&mut self, id: &str, offer: &str, units: u64, country: Option<&str>) -> anyhow::Result<Decision> {
        let request = AdmissionRequest {
            request_id: id.into(),
            subscriber: SUBSCRIBER.into(),
            offer: offer.into(),
            rating_group: 1,
            requested_units: units,
            country: country.map(Into::into),
        };
        Ok(self.rt.admit(&request)?)
    }

    fn admission(&mut self, id: &str, offer: &str, units: u64, country: Option<&str>) -> anyhow::Result<Decision> {
        let decision = self.admit(id, offer, units, country)?;
        let place = country.map(|c| format!(" in {c}")).unwrap_or_default();
        let action = format!("admit {offer} x{units}{place}");
        let result = describe(&decision);
        self.row(&action, &result)?;
        Ok(decision)
    }

    fn report(&mut self, session: &str, id: &str, action: &str, event: SessionEvent) -> anyhow::Result<()> {
        self.rt.report(SESSION, session, session, id, &event)?;
        self.row(action, "process manager debits / re-reserves")
    }

    /// Admits one use and immediately reports it used (a one-shot service); returns the price.
    fn one_use(&mut self, id: &str, offer: &str) -> anyhow::Result<i64> {
        let decision = self.admit(id, offer, 1, None)?;
        let price = match &decision {
            Decision::Granted(g) => g.price.minor_units,
            Decision::Denied(d) => anyhow::bail!("{offer} use {id} denied: {}", d.message),
        };
        let done = SessionEvent::Terminated { account: SUBSCRIBER.into(), reservation_id: id.into(), used_units: 1 };
        self.rt.report(SESSION, id, id, &format!("{id}/terminated"), &done)?;
        Ok(price)
    }
}

fn describe(decision: &Decision) -> String {
    match decision {
        Decision::Granted(g) => {
            let fui = match &g.grant.final_unit {
                Some(FinalUnitAction::Terminate) => ", final unit: terminate".to_string(),
                Some(FinalUnitAction::Redirect(to)) => format!(", final unit: redirect {to}"),
                Some(FinalUnitAction::RestrictAccess(_)) => ", final unit: restrict".to_string(),
                None => String::new(),
            };
            format!("granted {} for {}{fui}", g.grant.granted_units, eur(g.price.minor_units))
        }
        Decision::Denied(d) => {
            format!("denied: {}", tollgate_runtime::result_code_name(d.code))
        }
    }
}

/// Runs the scenario.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut demo = Demo { rt: Runtime::load_with_store(&args.manifest, args.store.as_deref())?, step: 0 };
    anyhow::ensure!(
        demo.rt.account(SUBSCRIBER)?.is_none(),
        "the store {} already holds a demo subscriber `{SUBSCRIBER}`: use an empty store",
        demo.rt.journal().url()
    );
    let store = args.store.as_deref().unwrap_or("an ephemeral log");
    println!(
        "tollgate demo: subscriber `{SUBSCRIBER}` at an edge node ({}, events in {store})\n",
        args.manifest.display()
    );
    println!(
        "{:>3} | {:>7} | {:<40} | {:<48} | {:>8} | {:>7} | {:>9}",
        "#", "time", "what happens", "outcome", "balance", "held", "available"
    );
    println!("{}", "-".repeat(142));
    demo.command(
        "open",
        "open an account in EUR",
        AccountCommand::Open { currency: "EUR".into(), overdraft_limit: 0 },
    )?;
    demo.command("top-up-1", "top up 20.00 EUR", AccountCommand::TopUp { amount: Money::new(2_000, "EUR") })?;

    let started = SessionEvent::Started { account: SUBSCRIBER.into(), offer: "voice".into(), currency: "EUR".into() };
    demo.rt.report(SESSION, "call-1", "call-1", "call-1/started", &started)?;
    demo.admission("call-1", "voice", 60, None)?;
    demo.rt.clock().advance_ms(20_000);
    let update = SessionEvent::UsageReported {
        account: SUBSCRIBER.into(),
        reservation_id: "call-1".into(),
        used_units: 60,
        requested_units: 60,
        currency: None,
    };
    demo.report("call-1", "call-1/update-1", "call update: 60 s used, 60 s more", update)?;
    demo.rt.clock().advance_ms(20_000);
    let open = demo.rt.account(SUBSCRIBER)?.unwrap_or_default().reservations.into_keys().next().unwrap_or_default();
    let end = SessionEvent::Terminated { account: SUBSCRIBER.into(), reservation_id: open, used_units: 25 };
    demo.report("call-1", "call-1/terminated", "call ends: 25 s more used", end)?;

    let bundle: Vec<String> = (1..=4)
        .map(|i| demo.one_use(&format!("sms-{i}"), "sms-bundle"))
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .map(eur)
        .collect();
    demo.row("4 SMS on a bundle of 3 (refill 5.00)", &format!("prices {}", bundle.join(" ")))?;
    let coffee: Vec<i64> =
        (1..=11).map(|i| demo.one_use(&format!("coffee-{i}"), "coffee")).collect::<anyhow::Result<_>>()?;
    demo.row(
        "11 coffees at 1.00, every 11th 10% off",
        &format!("prices 10 x {} then {}", eur(coffee[0]), eur(coffee[10])),
    )?;
    demo.admission("vendor-1", "vendor", 10, None)?;
    demo.admission("roam-1", "roaming", 5, Some("FR"))?;
    demo.admission("roam-2", "roaming", 5, Some("AT"))?;
    demo.admission("video-1", "video", 1_000, None)?;
    demo.admission("video-2", "video", 10, None)?;
    demo.rt.clock().advance_ms(30_000);
    let fired = demo.rt.advance_ms(0)?;
    demo.row("30 s later: open grants lapse", &format!("{fired} expiry timers fired, holds released"))?;

    let view: BalanceView = demo
        .rt
        .host_state("balances")
        .and_then(|f| f.kv_get(BUCKET, SUBSCRIBER))
        .map(|b| serde_json::from_slice(&b))
        .transpose()?
        .unwrap_or_default();
    println!(
        "\nprojected balance (read model `balances`): balance {} EUR, held {}, available {}, {} ledger lines",
        eur(view.balance),
        eur(view.held),
        eur(view.available),
        view.ledger.len()
    );
    for line in view.ledger.iter().rev().take(4).rev() {
        println!(
            "  #{:<3} {:<14} {:>8}  -> available {:>8}",
            line.sequence,
            line.event_type,
            eur(line.amount),
            eur(line.effective_balance)
        );
    }
    let account = demo.rt.account(SUBSCRIBER)?.unwrap_or_default();
    anyhow::ensure!(view.available == account.available(), "read model and account disagree");
    println!("\n{} events in the log; the read model agrees with the account.", demo.rt.events()?.len());
    let stats = demo.rt.stats();
    println!(
        "counters: {} commands accepted, {} refused, {} repeats answered from the log, {} OCC conflicts, {} snapshots",
        stats.accepted,
        stats.rejected.values().sum::<u64>(),
        stats.duplicates,
        stats.occ_conflicts,
        stats.snapshots
    );
    demo.rt.record_stats("demo", "demo")?;
    Ok(ExitCode::SUCCESS)
}
