//! `cargo xtask <task>`: build the actors once, then test, demo or benchmark with them.
//!
//! Its only dependencies are the two small crates that read and write wasm and `sha2` (for
//! the digests of released WIT packages), so it builds in seconds on a fresh machine.

mod guests;
mod layers;
mod released;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Reference actors must stay small enough to ship to edge nodes. 352 KiB, not the first
/// 256: exact price plans for every offer kind with checked arithmetic, and refunds, took the
/// prepaid account to 285 KiB at `opt-level = "s"`, and `opt-level = 3` to 329 KiB. Under the
/// 0.2 contract a warm command runs only the actor's own code (no state crosses), so its speed
/// is the optimiser's: `3` made it 1.45x faster than `"s"` (`cargo xtask bench --bench warm`:
/// 188k vs 130k commands/s), and the warm call is what an edge node pays for. (`"z"` had made
/// it 1.9x slower than `"s"`.) About 20 KiB is core's float formatting, linked by the messages
/// serde_json builds for wrong types.
const ACTOR_SIZE_LIMIT: u64 = 352 * 1024;
/// Where component crates live, and whether the size limit applies to them: every crate
/// directory under `actors/` is a reference actor, every one under `host-test/fixtures/` a test
/// fixture. The directories are the list; `tollgate_host_test::fixtures::REFERENCE_ACTORS`
/// names the same actors for tests, and a test there checks the two agree.
const COMPONENT_DIRS: &[(&str, bool)] = &[("actors", true), ("host-test/fixtures", false)];

/// The component crates `build-actors` builds: (directory, whether the size limit applies);
/// with `fixtures` false, the reference actors only (what the demo runs).
fn components(fixtures: bool) -> Result<Vec<(PathBuf, bool)>, String> {
    let mut found = Vec::new();
    for (parent, limited) in COMPONENT_DIRS.iter().filter(|(_, limited)| fixtures || *limited) {
        let parent = root().join(parent);
        let entries = std::fs::read_dir(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        let mut dirs = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| format!("{}: {e}", parent.display()))?.path();
            if path.join("Cargo.toml").is_file() {
                dirs.push((path, *limited));
            }
        }
        dirs.sort();
        found.extend(dirs);
    }
    Ok(found)
}

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  build-actors   build every actor and fixture into target/wasm32-wasip2/release/*.wasm
  test [ARGS]    build the actors (and the Python and JavaScript example guests, when their
                 toolchains are installed) once, then run every test (ARGS go to cargo test)
  demo           build the reference actors, then run the edge demo
  bench [ARGS]   build the actors, run the benchmarks (ARGS go to cargo bench), then write
                 target/bench-report.json and print it as a table";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("build-actors") => build_actors(true).map(|_| ()),
        Some("test") => test(&args[1..]),
        Some("demo") => demo(),
        Some("bench") => bench(&args[1..]),
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

fn package_name(dir: &Path) -> Result<String, String> {
    let manifest = dir.join("Cargo.toml");
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

/// Builds the reference actors and, with `fixtures`, the test fixtures.
fn build_actors(fixtures: bool) -> Result<PathBuf, String> {
    ensure_wasm_target()?;
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--target", "wasm32-wasip2"]);
    // Size matters at the edge: one codegen unit with LTO lets the optimiser see across serde
    // and the actor, and symbols are dead weight; speed matters more (see ACTOR_SIZE_LIMIT).
    for setting in [
        "profile.release.lto=true",
        "profile.release.codegen-units=1",
        "profile.release.strip=true",
        "profile.release.opt-level=3",
    ] {
        cmd.args(["--config", setting]);
    }
    let components = components(fixtures)?;
    let mut names = Vec::new();
    for (dir, _) in &components {
        let name = package_name(dir)?;
        cmd.args(["-p", &name]);
        names.push(name);
    }
    run(&mut cmd)?;
    let dir = actors_dir();
    for ((_, limited), name) in components.iter().zip(&names) {
        let file = dir.join(format!("{}.wasm", name.replace('-', "_")));
        strip_debug_sections(&file)?;
        let size = std::fs::metadata(&file).map_err(|e| format!("{}: {e}", file.display()))?.len();
        println!("{:>8} bytes  {}", size, file.display());
        if *limited && size > ACTOR_SIZE_LIMIT {
            return Err(format!(
                "{} is {size} bytes, over the {ACTOR_SIZE_LIMIT}-byte limit for actors",
                file.display()
            ));
        }
    }
    Ok(dir)
}

/// Custom sections of the outer component that only debuggers read. `strip = true` drops the
/// core module's symbols, but wasm-component-ld then writes names for the component's own
/// items: a few KiB that run nothing.
const DEBUG_SECTIONS: &[&str] = &["component-name", "producers"];

/// Rewrites `file` without its outer [`DEBUG_SECTIONS`]; every other section is copied byte
/// for byte, so what the component does is unchanged.
fn strip_debug_sections(file: &Path) -> Result<(), String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut stripped = wasm_encoder::Component::new();
    let mut dropped = false;
    // Nested modules' payloads come through too; only the outer component's sections are copied.
    let mut depth = 0;
    for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
        let payload = payload.map_err(|e| format!("{}: not a valid component: {e}", file.display()))?;
        match &payload {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth -= 1,
            wasmparser::Payload::CustomSection(c) if depth == 1 && DEBUG_SECTIONS.contains(&c.name()) => {
                dropped = true;
                continue;
            }
            _ => {}
        }
        if depth == 1
            && let Some((id, range)) = payload.as_section()
        {
            stripped.section(&wasm_encoder::RawSection { id, data: &bytes[range] });
        }
    }
    if !dropped {
        return Ok(());
    }
    std::fs::write(file, stripped.finish()).map_err(|e| format!("{}: {e}", file.display()))
}

fn test(extra: &[String]) -> Result<(), String> {
    released::check(&root().join("wit")).map_err(|e| format!("released WIT packages (wit/released.toml):\n  {e}"))?;
    let broken = layers::violations(&root())?;
    if !broken.is_empty() {
        return Err(format!("dependencies point up (see ARCHITECTURE.md):\n  {}", broken.join("\n  ")));
    }
    let dir = build_actors(true)?;
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    // Every test that skips itself writes a line here (`record_skip` in the store's and the
    // OCI crate's test support); the run ends with one line naming them.
    let skips = target_dir().join("test-skips.txt");
    match std::fs::remove_file(&skips) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", skips.display())),
    }
    guests::build(&root(), in_ci, &skips)?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace"]).args(extra).env("TOLLGATE_ACTORS_DIR", &dir).env("TOLLGATE_SKIPS", &skips);
    let tested = run(&mut cmd);
    let skipped = skipped(&skips)?;
    if !skipped.is_empty() {
        println!("\n{}", skipped);
    }
    tested?;
    if in_ci && !skipped.is_empty() {
        return Err("CI=true, so no test may be skipped (see the line above)".into());
    }
    Ok(())
}

/// One line naming every test recorded in `file` as skipped, grouped by why; empty when none
/// was.
fn skipped(file: &Path) -> Result<String, String> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(format!("{}: {e}", file.display())),
    };
    let mut by_reason: Vec<(String, Vec<String>)> = Vec::new();
    let mut count = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (test, why) = line.split_once('\t').unwrap_or(("?", line));
        count += 1;
        match by_reason.iter_mut().find(|(w, _)| w == why) {
            Some((_, tests)) => tests.push(test.to_string()),
            None => by_reason.push((why.to_string(), vec![test.to_string()])),
        }
    }
    if count == 0 {
        return Ok(String::new());
    }
    let groups: Vec<String> = by_reason.iter().map(|(why, tests)| format!("{} ({why})", tests.join(", "))).collect();
    Ok(format!("SKIPPED {count} (did not run, not passed): {}", groups.join("; ")))
}

fn demo() -> Result<(), String> {
    // The demo runs the reference actors only; the test fixtures wait for `test`.
    build_actors(false)?;
    // The demo's events go to the embedded log; each run starts from an empty one.
    let store = target_dir().join("demo-store");
    if store.exists() {
        std::fs::remove_dir_all(&store).map_err(|e| format!("{}: {e}", store.display()))?;
    }
    let mut cmd = cargo();
    cmd.args(["run", "--quiet", "-p", "tollgate", "--", "demo", "--manifest", "examples/edge.toml", "--store"]);
    cmd.arg(format!("file:{}", store.display()));
    run(&mut cmd)?;
    println!("\nThe log is kept: `cargo run -p tollgate -- events account alice --store file:{}`", store.display());
    Ok(())
}

/// The target directory (where `bench-results.jsonl` and `bench-report.json` go).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

/// Builds the actors and the release CLI, runs `cargo bench -p tollgate-benches` (each bench
/// appends one JSON line per scenario to `target/bench-results.jsonl`), then writes
/// `target/bench-report.json` (one object per scenario: `name`, `ops_per_sec`, `p50_ns`,
/// `p99_ns`, `native_ratio`, `op`, `target`, `meets_target`, then whatever further figures the
/// bench gave, such as the limits and the fractions of them) and prints it as a table.
///
/// The served benches start the CLI as a process of their own (`TOLLGATE_BIN`), measured
/// the way it is deployed, with `wrk` as the load generator when it is installed.
fn bench(extra: &[String]) -> Result<(), String> {
    let dir = build_actors(true)?;
    let target = target_dir();
    // The bench profile (same settings as release, same directory), so the crates the CLI and
    // the benches share are built once: built under `release`, their fingerprints differ in
    // the profile's name and the two builds rebuilt them in turn on every run.
    run(cargo().args(["build", "--profile", "bench", "-p", "tollgate"]))?;
    let cli = target.join("release").join("tollgate");
    let results = target.join("bench-results.jsonl");
    match std::fs::remove_file(&results) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", results.display())),
    }
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "tollgate-benches"])
        .args(extra)
        .env("TOLLGATE_ACTORS_DIR", &dir)
        .env("TOLLGATE_BENCH_RESULTS", &results)
        .env("TOLLGATE_BIN", &cli);
    run(&mut cmd)?;
    let text = std::fs::read_to_string(&results).map_err(|e| format!("{}: {e}", results.display()))?;
    // One object per scenario, in the order they ran; a later line for a name replaces an
    // earlier one.
    let mut scenarios: Vec<Vec<(String, Json)>> = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields = parse_flat_object(line).map_err(|e| format!("{}:{}: {e}", results.display(), i + 1))?;
        let name = field(&fields, "name")
            .and_then(Json::as_str)
            .ok_or_else(|| format!("{}:{}: no name", results.display(), i + 1))?;
        match scenarios.iter_mut().find(|s| field(s, "name").and_then(Json::as_str) == Some(name)) {
            Some(existing) => *existing = fields,
            None => scenarios.push(fields),
        }
    }
    let report = target.join("bench-report.json");
    let objects: Vec<String> = scenarios
        .iter()
        .map(|s| {
            let ordered = ["name", "ops_per_sec", "p50_ns", "p99_ns", "native_ratio", "op", "target", "meets_target"];
            let mut body: Vec<String> = ordered
                .iter()
                .map(|k| format!("    \"{k}\": {}", field(s, k).cloned().unwrap_or(Json::Null).render()))
                .collect();
            // Further figures (limits, fractions of them, a soak's windows), in the bench's order.
            body.extend(
                s.iter()
                    .filter(|(k, _)| !ordered.contains(&k.as_str()))
                    .map(|(k, v)| format!("    {}: {}", Json::Str(k.clone()).render(), v.render())),
            );
            format!("  {{\n{}\n  }}", body.join(",\n"))
        })
        .collect();
    std::fs::write(&report, format!("[\n{}\n]\n", objects.join(",\n")))
        .map_err(|e| format!("{}: {e}", report.display()))?;
    print_table(&scenarios);
    println!("\nwrote {}", report.display());
    Ok(())
}

fn field<'a>(fields: &'a [(String, Json)], key: &str) -> Option<&'a Json> {
    fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn print_table(scenarios: &[Vec<(String, Json)>]) {
    println!(
        "\n{:<24} {:>14} {:>12} {:>12} {:>7}  {:<30} status",
        "scenario", "ops/s", "p50", "p99", "native", "target"
    );
    for s in scenarios {
        let num = |k: &str| field(s, k).and_then(Json::as_f64);
        let text = |k: &str| field(s, k).and_then(Json::as_str).unwrap_or("").to_string();
        let status = match field(s, "meets_target") {
            Some(Json::Bool(true)) => "met",
            Some(Json::Bool(false)) => "SHORT",
            _ => "",
        };
        println!(
            "{:<24} {:>14} {:>12} {:>12} {:>7}  {:<30} {}",
            text("name"),
            num("ops_per_sec").map_or("-".into(), |v| group_thousands(v.round() as u64)),
            num("p50_ns").map_or("-".into(), duration),
            num("p99_ns").map_or("-".into(), duration),
            num("native_ratio").map_or("-".into(), |r| format!("{r:.2}x")),
            text("target"),
            status
        );
        // A served scenario's limits: what it makes of the transport's and the engine's.
        let limit = |k: &str, f: &str| {
            num(k).map(|v| {
                format!(
                    "{} {}/s (x{})",
                    k.split('_').next().unwrap_or(k),
                    group_thousands(v.round() as u64),
                    num(f).map_or("-".into(), |r| format!("{r:.2}"))
                )
            })
        };
        let limits: Vec<String> = [
            limit("transport_limit_ops_per_sec", "transport_fraction"),
            limit("engine_limit_ops_per_sec", "engine_fraction"),
            field(s, "records_per_fsync").map(|r| match r.as_f64() {
                Some(r) => format!("records/fsync {r:.1}"),
                None => "records/fsync n/a".into(),
            }),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !limits.is_empty() {
            println!("{:<24} limits: {}", "", limits.join(", "));
        }
    }
}

fn group_thousands(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn duration(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} us", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// A JSON scalar: what the bench lines hold (xtask stays free of dependencies).
#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
}

impl Json {
    fn as_str(&self) -> Option<&str> {
        if let Json::Str(s) = self { Some(s) } else { None }
    }

    fn as_f64(&self) -> Option<f64> {
        if let Json::Num(n) = self { n.parse().ok() } else { None }
    }

    fn render(&self) -> String {
        match self {
            Json::Null => "null".into(),
            Json::Bool(b) => b.to_string(),
            Json::Num(n) => n.clone(),
            Json::Str(s) => {
                let mut out = String::from("\"");
                for c in s.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                        c => out.push(c),
                    }
                }
                out.push('"');
                out
            }
        }
    }
}

/// Parses one flat JSON object whose values are strings, numbers, booleans or null.
fn parse_flat_object(line: &str) -> Result<Vec<(String, Json)>, String> {
    let mut chars = line.trim().chars().peekable();
    let mut fields = Vec::new();
    let skip_ws = |chars: &mut std::iter::Peekable<std::str::Chars>| {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
    };
    let expect = |chars: &mut std::iter::Peekable<std::str::Chars>, want: char| match chars.next() {
        Some(c) if c == want => Ok(()),
        other => Err(format!("expected `{want}`, found {other:?}")),
    };
    expect(&mut chars, '{')?;
    skip_ws(&mut chars);
    if chars.peek() == Some(&'}') {
        return Ok(fields);
    }
    loop {
        skip_ws(&mut chars);
        let key = parse_string(&mut chars)?;
        skip_ws(&mut chars);
        expect(&mut chars, ':')?;
        skip_ws(&mut chars);
        let value = match chars.peek() {
            Some('"') => Json::Str(parse_string(&mut chars)?),
            Some(_) => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' || c == '}' || c.is_whitespace() {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                match word.as_str() {
                    "null" => Json::Null,
                    "true" => Json::Bool(true),
                    "false" => Json::Bool(false),
                    n if n.parse::<f64>().is_ok() => Json::Num(n.to_string()),
                    other => return Err(format!("unsupported value `{other}` for `{key}`")),
                }
            }
            None => return Err("unexpected end of line".into()),
        };
        fields.push((key, value));
        skip_ws(&mut chars);
        match chars.next() {
            Some(',') => continue,
            Some('}') => return Ok(fields),
            other => return Err(format!("expected `,` or `}}`, found {other:?}")),
        }
    }
}

fn parse_string(chars: &mut std::iter::Peekable<std::str::Chars>) -> Result<String, String> {
    if chars.next() != Some('"') {
        return Err("expected a string".into());
    }
    let mut out = String::new();
    loop {
        match chars.next() {
            Some('"') => return Ok(out),
            Some('\\') => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('b') => out.push('\u{8}'),
                Some('f') => out.push('\u{c}'),
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    let code = u32::from_str_radix(&hex, 16).map_err(|_| format!("bad escape \\u{hex}"))?;
                    out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                }
                Some(c) => out.push(c),
                None => return Err("unterminated string".into()),
            },
            Some(c) => out.push(c),
            None => return Err("unterminated string".into()),
        }
    }
}

#[cfg(test)]
mod skip_tests {
    #[test]
    fn skips_are_summed_up_in_one_line_grouped_by_why() {
        let file = std::env::temp_dir().join(format!("xtask-skips-{}", std::process::id()));
        assert_eq!(super::skipped(&file).unwrap(), "", "no file: nothing skipped");
        std::fs::write(&file, "a::one\tno nats-server\nb::two\tno curl\na::three\tno nats-server\n").unwrap();
        assert_eq!(
            super::skipped(&file).unwrap(),
            "SKIPPED 3 (did not run, not passed): a::one, a::three (no nats-server); b::two (no curl)"
        );
        std::fs::remove_file(&file).unwrap();
    }
}
