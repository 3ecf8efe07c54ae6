//! `cargo xtask <task>`: build the actors once, then test or demo with them.
//!
//! Kept free of dependencies so it builds in seconds on a fresh machine.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Reference actors must stay small enough to ship to edge nodes.
const ACTOR_SIZE_LIMIT: u64 = 256 * 1024;
/// Component crates built by `build-actors`: (directory, whether the size limit applies).
const COMPONENTS: &[(&str, bool)] = &[
    ("actors/prepaid-account", true),
    ("actors/rater", true),
    ("actors/admission-policy", true),
    ("actors/balance-projector", true),
    ("actors/charging-session", true),
    ("host-test/fixtures/misbehaving", false),
];

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  build-actors   build every actor and fixture into target/wasm32-wasip2/release/*.wasm
  test [ARGS]    build the actors once, then run every test (ARGS go to cargo test)
  demo           build the actors, then run the edge demo";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("build-actors") => build_actors().map(|_| ()),
        Some("test") => test(&args[1..]),
        Some("demo") => demo(),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let status = cmd.status().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{cmd:?} failed with {status}")) }
}

fn ensure_wasm_target() -> Result<(), String> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("cannot run rustup (needed for the wasm32-wasip2 target): {e}"))?;
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == "wasm32-wasip2") {
        return Ok(());
    }
    eprintln!("xtask: adding the wasm32-wasip2 target");
    run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))
}

fn package_name(dir: &str) -> Result<String, String> {
    let manifest = root().join(dir).join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("name = \"").and_then(|r| r.strip_suffix('"')))
        .map(str::to_string)
        .ok_or_else(|| format!("{}: no `name = \"…\"` line", manifest.display()))
}

/// The directory the components land in.
fn actors_dir() -> PathBuf {
    root().join("target/wasm32-wasip2/release")
}

fn build_actors() -> Result<PathBuf, String> {
    ensure_wasm_target()?;
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--target", "wasm32-wasip2"]);
    // Size matters at the edge and these settings cost nothing at run time: one codegen unit
    // with LTO lets the optimiser see across serde and the actor; symbols are dead weight.
    for setting in [
        "profile.release.lto=true",
        "profile.release.codegen-units=1",
        "profile.release.strip=true",
        "profile.release.opt-level=\"s\"",
    ] {
        cmd.args(["--config", setting]);
    }
    let mut names = Vec::new();
    for (dir, _) in COMPONENTS {
        let name = package_name(dir)?;
        cmd.args(["-p", &name]);
        names.push(name);
    }
    run(&mut cmd)?;
    let dir = actors_dir();
    for ((_, limited), name) in COMPONENTS.iter().zip(&names) {
        let file = dir.join(format!("{}.wasm", name.replace('-', "_")));
        let size = std::fs::metadata(&file).map_err(|e| format!("{}: {e}", file.display()))?.len();
        println!("{:>8} bytes  {}", size, file.display());
        if *limited && size > ACTOR_SIZE_LIMIT {
            return Err(format!("{} is {size} bytes, over the {ACTOR_SIZE_LIMIT}-byte limit for actors", file.display()));
        }
    }
    Ok(dir)
}

fn test(extra: &[String]) -> Result<(), String> {
    let dir = build_actors()?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace"]).args(extra).env("TOLLGATE_ACTORS_DIR", &dir);
    run(&mut cmd)
}

fn demo() -> Result<(), String> {
    let dir = build_actors()?;
    let mut cmd = cargo();
    cmd.args(["run", "--quiet", "-p", "tollgate", "--", "demo", "--actors-dir"]).arg(&dir);
    run(&mut cmd)
}
