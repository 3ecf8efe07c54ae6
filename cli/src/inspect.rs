//! `tollgate inspect FILE.wasm`.

use std::path::PathBuf;
use std::process::ExitCode;
use tollgate_host::actor::missing_imports;
use tollgate_host::{Actor, ActorKind, HostEngine, HostError};

/// Arguments of `inspect`.
#[derive(clap::Args)]
#[command(after_help = "Exits 1 when this host cannot run the component, after listing everything it lacks: \
    every import the harness does not provide, and a missing tollgate export.")]
pub struct Args {
    /// The component to inspect.
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Missing {
    import: String,
    reason: String,
}

#[derive(serde::Serialize)]
struct Report {
    file: String,
    size: u64,
    kind: Option<String>,
    world: Option<String>,
    /// The version of the tollgate contract the component targets, and whether it is current.
    contract: Option<String>,
    digest: Option<String>,
    imports: Vec<String>,
    exports: Vec<String>,
    runnable: bool,
    missing_imports: Vec<Missing>,
    problems: Vec<String>,
}

/// Prints the report; exits 1 when the harness cannot run the component.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let engine = HostEngine::shared()?.with_default_code_cache();
    let bytes = std::fs::read(&args.file).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            HostError::NotFound { path: args.file.clone() }
        } else {
            HostError::Read { path: args.file.clone(), source }
        }
    })?;
    let name = args.file.display().to_string();
    let mut report = Report {
        file: name.clone(),
        size: bytes.len() as u64,
        kind: None,
        world: None,
        contract: None,
        digest: None,
        imports: vec![],
        exports: vec![],
        runnable: false,
        missing_imports: vec![],
        problems: vec![],
    };
    match Actor::from_bytes(&engine, &name, &bytes) {
        Ok(actor) => {
            report.kind = Some(actor.kind().to_string());
            report.world = Some(actor.world().into());
            report.contract = Some(contract(actor.world(), actor.is_current()));
            report.digest = Some(format!("sha256:{}", actor.digest()));
            report.imports = actor.imports().to_vec();
            report.exports = actor.exports().to_vec();
            report.runnable = true;
        }
        Err(e @ (HostError::NotWasm { .. } | HostError::CoreModule { .. } | HostError::Invalid { .. })) => {
            report.problems.push(e.to_string());
        }
        Err(e) => {
            // It is a component: say everything it lacks, not just the first thing.
            if let Ok(component) = wasmtime_component(&engine, &bytes) {
                let ty = component.component_type();
                report.imports = ty.imports(engine.engine()).map(|(n, _)| n.to_string()).collect();
                report.exports = ty.exports(engine.engine()).map(|(n, _)| n.to_string()).collect();
            }
            if !ActorKind::ALL.iter().any(|k| report.exports.iter().any(|e| e == k.export())) {
                let expected = ActorKind::ALL.map(|k| format!("`{}`", k.export())).join(" or ");
                match report.exports.iter().find(|e| e.starts_with("tollgate:")) {
                    // A tollgate export of a version this host does not run (a 0.1 projector).
                    Some(other) => report.problems.push(format!(
                        "exports `{other}`, a contract version this host does not run (expected one of {expected}); \
                         rebuild it with the current tollgate-sdk"
                    )),
                    None => report.problems.push(format!("exports no tollgate interface (expected one of {expected})")),
                }
            }
            match missing_imports(&engine, &name, &bytes) {
                Ok(missing) => {
                    report.missing_imports =
                        missing.into_iter().map(|m| Missing { import: m.name, reason: m.reason }).collect()
                }
                Err(other) => report.problems.push(other.to_string()),
            }
            if report.problems.is_empty() && report.missing_imports.is_empty() {
                report.problems.push(e.to_string());
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("file:     {}", report.file);
        println!("size:     {} bytes ({:.1} KiB)", report.size, report.size as f64 / 1024.0);
        if let (Some(kind), Some(world)) = (&report.kind, &report.world) {
            println!("kind:     {kind}");
            println!("world:    {world}");
        }
        if let Some(contract) = &report.contract {
            println!("contract: {contract}");
        }
        if let Some(digest) = &report.digest {
            println!("digest:   {digest}");
        }
        for export in &report.exports {
            println!("export:   {export}");
        }
        for import in &report.imports {
            let missing = report.missing_imports.iter().any(|m| &m.import == import);
            println!("import:   {import}{}", if missing { "  (MISSING: not provided by this host)" } else { "" });
        }
        if report.runnable {
            println!("runnable: yes, every import is provided by this host");
        } else {
            println!("runnable: no");
            for m in &report.missing_imports {
                let reason = if m.reason.is_empty() { String::new() } else { format!(" ({})", m.reason) };
                println!("  missing import `{}`{reason}", m.import);
            }
            for p in &report.problems {
                println!("  {p}");
            }
        }
    }
    Ok(if report.runnable { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The contract a world belongs to, e.g. `tollgate:eventsourcing@0.1.0 (older: ...)`.
fn contract(world: &str, current: bool) -> String {
    let package = world.split_once('/').map_or(world, |(package, _)| package);
    let version = world.rsplit_once('@').map_or("", |(_, version)| version);
    if current {
        format!("{package}@{version} (current)")
    } else {
        format!("{package}@{version} (older: this host keeps its states and sends them with every call)")
    }
}

/// Compiles the bytes as a component, for listing its imports and exports.
fn wasmtime_component(engine: &HostEngine, bytes: &[u8]) -> wasmtime::Result<wasmtime::component::Component> {
    wasmtime::component::Component::new(engine.engine(), bytes)
}
