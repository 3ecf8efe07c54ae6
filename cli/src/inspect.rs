//! `tollgate inspect FILE.wasm`.

use std::path::PathBuf;
use std::process::ExitCode;
use tollgate_host::{Actor, HostEngine, HostError};

/// Arguments of `inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// The component to inspect.
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Report {
    file: String,
    size: u64,
    kind: Option<String>,
    world: Option<String>,
    digest: Option<String>,
    imports: Vec<String>,
    exports: Vec<String>,
    runnable: bool,
    problem: Option<String>,
}

/// Prints the report; exits 1 when the harness cannot run the component.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let size = std::fs::metadata(&args.file).map(|m| m.len()).unwrap_or(0);
    let engine = HostEngine::shared()?;
    let report = match Actor::load(&engine, &args.file) {
        Ok(actor) => Report {
            file: args.file.display().to_string(),
            size,
            kind: Some(actor.kind().to_string()),
            world: Some(actor.kind().world().into()),
            digest: Some(format!("sha256:{}", actor.digest())),
            imports: actor.imports().to_vec(),
            exports: actor.exports().to_vec(),
            runnable: true,
            problem: None,
        },
        Err(e @ (HostError::NotFound { .. } | HostError::Read { .. })) => return Err(e.into()),
        Err(e) => Report {
            file: args.file.display().to_string(),
            size,
            kind: None,
            world: None,
            digest: None,
            imports: vec![],
            exports: vec![],
            runnable: false,
            problem: Some(e.to_string()),
        },
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("file:     {}", report.file);
        println!("size:     {} bytes ({:.1} KiB)", report.size, report.size as f64 / 1024.0);
        if let (Some(kind), Some(world)) = (&report.kind, &report.world) {
            println!("kind:     {kind}");
            println!("world:    {world}");
        }
        if let Some(digest) = &report.digest {
            println!("digest:   {digest}");
        }
        for export in &report.exports {
            println!("export:   {export}");
        }
        for import in &report.imports {
            println!("import:   {import}");
        }
        match &report.problem {
            None => println!("runnable: yes, every import is provided by this host"),
            Some(problem) => println!("runnable: no: {problem}"),
        }
    }
    Ok(if report.runnable { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
