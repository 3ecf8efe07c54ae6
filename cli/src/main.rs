//! `tollgate`: the command line for billing actors.

mod demo;
mod inspect;
mod log;
mod nats_flags;
mod new;
mod node;
mod progress;
mod registry;
mod scenario;
mod serve;
mod store;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::sync::Arc;

/// Write, test, run and ship edge billing actors as WebAssembly components.
#[derive(Parser)]
#[command(name = "tollgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a component's world, kind, size, imports and exports, and whether this host can run it.
    Inspect(inspect::Args),
    /// Run scenario files (given / when / then) against compiled actors.
    Test(scenario::Args),
    /// Create a standalone actor crate with an example, a scenario file and a native test.
    New(new::Args),
    /// Run the edge demo: a prepaid account through the harness, step by step.
    Demo(demo::Args),
    /// Run a node over a durable store, reading JSON-lines requests (stdin or --input).
    Run(node::Args),
    /// Serve a node over HTTP (native JSON API, metrics, health) until SIGTERM or SIGINT.
    Serve(serve::Args),
    /// Rebuild aggregates and projections from the log; rewrite projections that differ.
    Replay(log::ReplayArgs),
    /// Show the events of one stream key.
    Events(log::EventsArgs),
    /// Show a projector's read model: one key of a bucket, or all of it.
    Kv(log::KvArgs),
    /// List a consumer's dead letters, or redrive them.
    DeadLetters(log::DeadLettersArgs),
    /// Counters recorded by runs, dead-letter depth, outstanding grant exposure.
    Stats(log::StatsArgs),
    /// Check the embedded log (`verify`) or cut it at a record boundary (`repair`).
    Store(store::Args),
    #[command(flatten)]
    Oci(registry::Command),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("TOLLGATE_LOG"))
        .with_writer(std::io::stderr)
        .init();
    // Actors the runtime pulls (`oci://` files) show a bar like `tollgate pull` does.
    tollgate_runtime::resolve::set_pull_progress(Some(Arc::new(progress::TerminalProgress)));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Test(args) => scenario::run(args),
        Command::New(args) => new::run(args),
        Command::Run(args) => node::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Replay(args) => log::replay(args),
        Command::Events(args) => log::events(args),
        Command::Kv(args) => log::kv(args),
        Command::DeadLetters(args) => log::dead_letters(args),
        Command::Stats(args) => log::stats(args),
        Command::Store(args) => store::run(args),
        Command::Oci(cmd) => registry::run(cmd).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
