//! `tollgate test SCENARIO...`: given / when / then scenario files run against compiled actors.
//!
//! Every file is read and checked, and every actor loaded, before the first case runs, so a
//! mistake in any of them stops the run with one error and no case output. Each case then runs
//! on fresh instances with a fresh host state, on the harness's given / when / then engine
//! (`tollgate_host_test::scenario`); this module parses, compares and prints.

pub mod compare;
pub mod format;

use anyhow::{Context, bail};
use format::{Message, ScenarioFile, stored_text};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tollgate_host::{Actor, ActorKind, HostEngine};
use tollgate_host_test::scenario::{self as engine, Act, Actors, Prepared};

/// Arguments of `test`.
#[derive(clap::Args)]
#[command(after_help = "Scenario files are TOML (or YAML with a .yaml/.yml extension); the README's \
    \"Scenario files\" section describes them. Prints one line per case and `N passed, N failed`; \
    exits 1 when a case fails, with a diff of expected vs actual.")]
pub struct Args {
    /// Scenario files to run.
    #[arg(required = true, value_name = "SCENARIO")]
    scenarios: Vec<PathBuf>,
    /// Binds an actor name to a component: a scenario's `actor = "NAME"` (or a path whose file
    /// is NAME.wasm, `-` and `_` alike) then runs FILE, which may be an `oci://REGISTRY/REPO:TAG` reference
    /// (pulled once into the digest-keyed cache). Repeatable.
    #[arg(long = "actor", value_name = "NAME=FILE", value_parser = parse_binding)]
    actors: Vec<(String, PathBuf)>,
    /// Use plain HTTP for `oci://` references (local registries only).
    #[arg(long)]
    plain_http: bool,
    /// CPU time per call, in milliseconds; a call running longer fails its case.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    cpu_ms: u64,
    /// Linear memory per instance, in MiB; growing past it fails the case.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    memory_mib: usize,
}

fn parse_binding(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => Ok((name.into(), file.into())),
        _ => Err(format!("`{s}` is not NAME=FILE.wasm")),
    }
}

/// A file's cases, ready to run.
struct Suite {
    file: PathBuf,
    actors: Actors,
    cases: Vec<(Prepared, format::Then, Vec<Message>, Vec<Message>)>,
}

/// Runs the scenarios; exits 1 when a case failed.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Pull `oci://` bindings once, before any case runs; scenario files may name `oci://` too.
    let mut bindings = BTreeMap::new();
    for (name, file) in args.actors {
        let file = match file.to_str() {
            Some(reference) if tollgate_runtime::resolve::is_oci(reference) => {
                tollgate_runtime::resolve_actor(reference, Path::new("."), args.plain_http)?
            }
            _ => file,
        };
        bindings.insert(name, file);
    }
    let plain_http = args.plain_http;
    let max_cpu_ms = tollgate_host::engine::MAX_CPU_MS;
    if !(1..=max_cpu_ms).contains(&args.cpu_ms) {
        bail!("--cpu-ms {}: must be between 1 and {max_cpu_ms}", args.cpu_ms);
    }
    let max_mib = tollgate_host::engine::MAX_MEMORY_BYTES >> 20;
    if !(1..=max_mib).contains(&args.memory_mib) {
        bail!("--memory-mib {}: must be between 1 and {max_mib}", args.memory_mib);
    }
    let limits =
        tollgate_host::Limits { cpu_ms: args.cpu_ms, memory_bytes: args.memory_mib << 20, ..Default::default() };
    // Compiled code is cached like the runtime's: a large (e.g. Python or JavaScript)
    // component compiles once, not on every run.
    let engine = HostEngine::new(limits)?.with_default_code_cache();
    let mut compiled: BTreeMap<PathBuf, Actor> = BTreeMap::new();
    let mut suites = Vec::new();
    for path in &args.scenarios {
        suites.push(prepare(path, &bindings, plain_http, &engine, &mut compiled)?);
    }
    let mut loader = tollgate_runtime::Loader::new(engine);
    let (mut passed, mut failed) = (0, 0);
    for suite in &suites {
        for (case, then, events, commands) in &suite.cases {
            let label = format!("{} :: {}", suite.file.display(), case.name);
            match engine::run(&suite.actors, case, &mut loader) {
                Err(setup) => {
                    failed += 1;
                    println!("FAILED {label}");
                    println!("{}", indent(&format!("given: {setup}")));
                }
                Ok(outcome) => {
                    let comparison = compare::compare(then, events, commands, &outcome);
                    if comparison.passed() {
                        passed += 1;
                        println!("ok     {label}");
                    } else {
                        failed += 1;
                        println!("FAILED {label}");
                        if let Some(serde_json::Value::String(error)) = outcome.0.get("error") {
                            println!("{}", indent(&format!("error: {error}")));
                        }
                        println!("{}", indent(&comparison.diff()));
                        if let Some(serde_json::Value::Array(lines)) = outcome.0.get("warnings") {
                            for line in lines.iter().filter_map(serde_json::Value::as_str) {
                                println!("{}", indent(&format!("actor log: {line}")));
                            }
                        }
                    }
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn indent(text: &str) -> String {
    text.trim_end().lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// Resolves an actor reference: a bound name, or a path relative to the scenario's folder
/// (replaced by a binding of its file stem, if any).
fn resolve(
    reference: &str,
    base: &Path,
    bindings: &BTreeMap<String, PathBuf>,
    plain_http: bool,
) -> anyhow::Result<PathBuf> {
    if let Some(file) = bindings.get(reference) {
        return Ok(file.clone());
    }
    if tollgate_runtime::resolve::is_oci(reference) {
        return Ok(tollgate_runtime::resolve_actor(reference, base, plain_http)?);
    }
    if !reference.ends_with(".wasm") {
        bail!("actor `{reference}` is not bound (pass `--actor {reference}=FILE.wasm`) and is not a .wasm path");
    }
    let path = base.join(reference);
    // A crate's component is `<crate_name>.wasm`; its package name may spell `_` as `-`.
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let bound = bindings.get(stem).or_else(|| bindings.get(&stem.replace('_', "-")));
    Ok(bound.cloned().unwrap_or_else(|| in_cargo_target_dir(&path).unwrap_or(path)))
}

/// Where a missing `CRATE/target/REST` path really is when cargo builds the crate elsewhere
/// (`CARGO_TARGET_DIR`, `build.target-dir`): `cargo metadata` names the crate's target
/// directory, and `REST` is looked for there. `None` when the path exists, has no `target`
/// folder, or is not there either.
fn in_cargo_target_dir(path: &Path) -> Option<PathBuf> {
    if path.exists() {
        return None;
    }
    let parts: Vec<_> = path.components().collect();
    let at = parts.iter().rposition(|c| c.as_os_str() == "target")?;
    let crate_dir: PathBuf = parts[..at].iter().collect();
    let rest: PathBuf = parts[at + 1..].iter().collect();
    let manifest = crate_dir.join("Cargo.toml");
    if !manifest.is_file() {
        return None;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline", "--manifest-path"])
        .arg(&manifest)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    #[derive(serde::Deserialize)]
    struct Metadata {
        target_directory: PathBuf,
    }
    let metadata: Metadata = serde_json::from_slice(&out.stdout).ok()?;
    Some(metadata.target_directory.join(rest)).filter(|p| p.is_file())
}

fn load(
    path: &Path,
    engine: &HostEngine,
    compiled: &mut BTreeMap<PathBuf, Actor>,
) -> Result<Actor, tollgate_host::HostError> {
    if let Some(actor) = compiled.get(path) {
        return Ok(actor.clone());
    }
    let actor = Actor::load(engine, path)?;
    compiled.insert(path.into(), actor.clone());
    Ok(actor)
}

fn wrong_kind(actor: &Actor, kinds: &[ActorKind], why: &str) -> anyhow::Error {
    let expected = kinds.iter().map(|k| format!("`{}`", k.export())).collect::<Vec<_>>().join(" or ");
    anyhow::anyhow!(
        "{why} needs {}, but {} is {}: it does not export {expected}",
        kinds_list(kinds),
        actor.name(),
        actor.kind().a()
    )
}

fn kinds_list(kinds: &[ActorKind]) -> String {
    kinds.iter().map(|k| k.a()).collect::<Vec<_>>().join(" or ")
}

fn prepare(
    path: &Path,
    bindings: &BTreeMap<String, PathBuf>,
    plain_http: bool,
    engine: &HostEngine,
    compiled: &mut BTreeMap<PathBuf, Actor>,
) -> anyhow::Result<Suite> {
    let (file, base) = format::load(path)?;
    let at = |what: String| format!("{}: {what}", path.display());
    let actor_file = resolve(&file.actor, &base, bindings, plain_http).with_context(|| at("`actor`".into()))?;
    let actor = load(&actor_file, engine, compiled).with_context(|| at(format!("actor `{}`", file.actor)))?;
    if let Some(kind) = &file.kind {
        let kind = ActorKind::from_name(kind)
            .with_context(|| at(format!("`kind`: `{kind}` is not one of {}", ActorKind::names())))?;
        actor.expect_kind(kind).with_context(|| at("`kind`".into()))?;
    }
    let kind = actor.kind();
    if !file.links.is_empty() && kind.spec().links.is_empty() {
        bail!(at(format!("`links`: {}, and {} is {}", ActorKind::links_summary(), actor.name(), kind.a())));
    }
    let mut links = BTreeMap::new();
    for (link, reference) in &file.links {
        let Some(wanted) = kind.link(link).map(|l| l.target) else {
            bail!(at(format!("`links.{link}`: {} only", ActorKind::links_summary())));
        };
        let file_path =
            resolve(reference, &base, bindings, plain_http).with_context(|| at(format!("`links.{link}`")))?;
        let linked = load(&file_path, engine, compiled).with_context(|| at(format!("`links.{link}`")))?;
        linked.expect_kind(wanted).with_context(|| at(format!("`links.{link}`")))?;
        links.insert(link.clone(), (file_path, linked));
    }
    if !links.is_empty() {
        for needed in kind.spec().links {
            if !links.contains_key(needed.name) {
                bail!(at(format!("`links.{}`: {} with links needs all of them", needed.name, kind.a())));
            }
        }
    }
    let actors = Actors { actor: actor.clone(), file: actor_file, links };
    let mut cases = Vec::new();
    for (index, case) in file.cases.iter().enumerate() {
        let at_case = |what: &str| format!("{}: case #{} `{}`: {what}", path.display(), index + 1, case.name);
        let prepared = prepare_case(&file, case, &actor).map_err(|e| anyhow::anyhow!(at_case(&format!("{e:#}"))))?;
        let events = parse_all(case.then.events.as_deref(), "then.events")
            .map_err(|e| anyhow::anyhow!(at_case(&e.to_string())))?;
        let commands = parse_all(case.then.commands.as_deref(), "then.commands")
            .map_err(|e| anyhow::anyhow!(at_case(&e.to_string())))?;
        cases.push((prepared, case.then.clone(), events, commands));
    }
    Ok(Suite { file: path.into(), actors, cases })
}

fn parse_all(values: Option<&[serde_json::Value]>, field: &str) -> anyhow::Result<Vec<Message>> {
    values
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, v)| Message::parse(v, &format!("{field}[{i}]")).map_err(anyhow::Error::msg))
        .collect()
}

fn prepare_case(file: &ScenarioFile, case: &format::Case, actor: &Actor) -> anyhow::Result<Prepared> {
    let (verb, kinds) = format::kinds_for(&case.when)?;
    if !kinds.contains(&actor.kind()) {
        return Err(wrong_kind(actor, &kinds, &format!("`when.{verb}`")));
    }
    let given = if case.inherit_given { format::merge(&file.given, &case.given) } else { case.given.clone() };
    let kind = actor.kind();
    let spec = kind.spec();
    if !given.events.is_empty() && !spec.given_events {
        bail!(
            "`given.events`: {} has no events; {}",
            kind.a(),
            if spec.given_commands { "set its account up with `given.commands`" } else { "use `given.config`" }
        );
    }
    if !given.commands.is_empty() && !spec.given_commands {
        let takers: Vec<String> =
            ActorKind::ALL.into_iter().filter(|k| k.spec().given_commands).map(ActorKind::a).collect();
        bail!("`given.commands`: only {} takes commands (a policy: its linked account)", takers.join(" or "));
    }
    for link in given.link_config.keys() {
        if kind.link(link).is_none() {
            bail!("`given.link_config.{link}`: only linked actors have config ({})", ActorKind::links_summary());
        }
    }
    let message = |v: &serde_json::Value, field: &str| Message::parse(v, field).map_err(anyhow::Error::msg);
    let when = &case.when;
    let act = if let Some(v) = &when.command {
        Act::Command(message(v, "when.command")?)
    } else if let Some(v) = &when.event {
        Act::Events(vec![message(v, "when.event")?])
    } else if let Some(events) = &when.events {
        Act::Events(parse_all(Some(events.as_slice()), "when.events")?)
    } else if let Some(timer) = &when.timer {
        Act::Timer(timer.clone())
    } else if let Some(admission) = &when.admission {
        Act::Admission(admission.clone())
    } else if let Some(rate) = &when.rate {
        Act::Rate(rate.clone())
    } else {
        bail!("`when` states nothing")
    };
    let config = |c: &BTreeMap<String, serde_json::Value>| c.iter().map(|(k, v)| (k.clone(), stored_text(v))).collect();
    Ok(Prepared {
        name: case.name.clone(),
        key: case
            .key
            .clone()
            .or_else(|| file.key.clone())
            .unwrap_or_else(|| tollgate_host_test::testing::TEST_KEY.into()),
        stream: file.stream.clone(),
        clock_ms: given.clock_ms.unwrap_or(0),
        config: config(&given.config),
        link_config: given.link_config.iter().map(|(k, c)| (k.clone(), config(c))).collect(),
        kv: given
            .kv
            .iter()
            .map(|(b, entries)| {
                (b.clone(), entries.iter().map(|(k, v)| (k.clone(), stored_text(v).into_bytes())).collect())
            })
            .collect(),
        events: parse_all(Some(&given.events), "given.events")?,
        commands: parse_all(Some(&given.commands), "given.commands")?,
        act,
    })
}
