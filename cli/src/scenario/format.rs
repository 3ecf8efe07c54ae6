//! The scenario file format (TOML or YAML) and its checks: every mistake names the file, and
//! the line and field when the parser knows them. The messages and requests a case states are
//! the engine's types (`tollgate_host_test::scenario`).

use anyhow::bail;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tollgate_host::ActorKind;
pub use tollgate_host_test::scenario::{AdmissionSpec, Message, RateSpec, TimerSpec, stored_text};

/// A scenario file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// The actor under test: a `.wasm` path relative to the file, or a name bound with `--actor`.
    pub actor: String,
    /// The kind the actor must be (optional; otherwise told by what the cases send it).
    #[serde(default)]
    pub kind: Option<String>,
    /// For a policy: the actors serving its imports, `charging` (an account aggregate) and
    /// `rating` (a rater).
    #[serde(default)]
    pub links: BTreeMap<String, String>,
    /// The key (aggregate instance, subscriber) cases use unless they say otherwise.
    #[serde(default)]
    pub key: Option<String>,
    /// The stream of events sent to projectors and process managers, unless an event says.
    #[serde(default)]
    pub stream: Option<String>,
    /// Setup shared by every case (a case's own `given` adds to it).
    #[serde(default)]
    pub given: Given,
    /// The cases.
    #[serde(rename = "case", default)]
    pub cases: Vec<Case>,
}

/// What is true before the case acts.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Given {
    /// The virtual clock, ms since the epoch.
    #[serde(default)]
    pub clock_ms: Option<u64>,
    /// `wasi:config` values of the actor under test; non-strings are stored as JSON.
    #[serde(default)]
    pub config: BTreeMap<String, Value>,
    /// `wasi:config` values of a linked actor, by link (`charging`, `rating`).
    #[serde(default)]
    pub link_config: BTreeMap<String, BTreeMap<String, Value>>,
    /// Key-value contents: bucket -> key -> value (strings as is, anything else as JSON).
    #[serde(default)]
    pub kv: BTreeMap<String, BTreeMap<String, Value>>,
    /// Events that already happened.
    #[serde(default)]
    pub events: Vec<Value>,
    /// Commands that already ran (aggregates and policies' accounts); each must be accepted.
    #[serde(default)]
    pub commands: Vec<Value>,
}

/// One case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Its name, printed with its result.
    pub name: String,
    /// The key, overriding the file's.
    #[serde(default)]
    pub key: Option<String>,
    /// Whether the file's `[given]` applies before this case's own (default true); `false`
    /// starts the case from nothing but its own `given`.
    #[serde(default = "yes")]
    pub inherit_given: bool,
    /// Setup.
    #[serde(default)]
    pub given: Given,
    /// The one thing the case does.
    pub when: When,
    /// What must come of it.
    #[serde(default)]
    pub then: Then,
}

/// What a case does: exactly one of these.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// A command to an aggregate.
    #[serde(default)]
    pub command: Option<Value>,
    /// An event to a projector or process manager.
    #[serde(default)]
    pub event: Option<Value>,
    /// Several events, delivered in order (one batch for a projector).
    #[serde(default)]
    pub events: Option<Vec<Value>>,
    /// A process manager's timer firing.
    #[serde(default)]
    pub timer: Option<TimerSpec>,
    /// An admission request to a policy.
    #[serde(default)]
    pub admission: Option<AdmissionSpec>,
    /// A rating request to a rater.
    #[serde(default)]
    pub rate: Option<RateSpec>,
}

/// What must come of the case; only what is stated is checked.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Then {
    /// Events appended (aggregate; a policy's account), compared by type and payload.
    #[serde(default)]
    pub events: Option<Vec<Value>>,
    /// A rejection: its code, or a table of `code`, `kind`, `message`.
    #[serde(default)]
    pub rejection: Option<Value>,
    /// A policy's decision: `granted`, `denied`, or a table compared on the fields stated.
    #[serde(default)]
    pub decision: Option<Value>,
    /// A rater's price, compared on the fields stated.
    #[serde(default)]
    pub rated: Option<Value>,
    /// A rater's error: its kind (`unknown-offer`, ...) or `{kind = detail}`.
    #[serde(default)]
    pub rating_error: Option<Value>,
    /// Commands a process manager sent, compared by type and payload.
    #[serde(default)]
    pub commands: Option<Vec<Value>>,
    /// Timers a process manager set, compared on the fields stated.
    #[serde(default)]
    pub timers: Option<Value>,
    /// Timer ids a process manager cancelled.
    #[serde(default)]
    pub cancelled_timers: Option<Vec<String>>,
    /// Whether the process instance finished.
    #[serde(default)]
    pub finished: Option<bool>,
    /// Whether a process manager ignored the event (it correlates to no instance).
    #[serde(default)]
    pub ignored: Option<bool>,
    /// Whether an aggregate answered the command as a repeat of one it ran before (same
    /// command id): the original outcome, nothing changed twice.
    #[serde(default)]
    pub duplicate: Option<bool>,
    /// The state afterwards (aggregate key, process instance), compared on the fields stated.
    #[serde(default)]
    pub state: Option<Value>,
    /// Key-value contents afterwards: bucket -> key -> value, compared on the fields stated.
    #[serde(default)]
    pub kv: Option<BTreeMap<String, BTreeMap<String, Value>>>,
    /// Host calls made while acting, in order: `interface function arg=value ...`.
    #[serde(default)]
    pub calls: Option<Vec<String>>,
    /// The host error the case must end in (trap, cap): a part of its message.
    #[serde(default)]
    pub error: Option<String>,
}

/// Parses a scenario file, TOML or (by extension `.yaml`/`.yml`) YAML.
pub fn load(path: &Path) -> anyhow::Result<(ScenarioFile, PathBuf)> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!("{}: no such scenario file", path.display())
        } else {
            anyhow::anyhow!("{}: cannot read: {e}", path.display())
        }
    })?;
    let yaml = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
    let file: ScenarioFile = if yaml {
        serde_norway::from_str(&text).map_err(|e| match e.location() {
            Some(l) => anyhow::anyhow!("{}:{}:{}: {e}", path.display(), l.line(), l.column()),
            None => anyhow::anyhow!("{}: {e}", path.display()),
        })?
    } else {
        toml::from_str(&text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(&text, s.start)).unwrap_or((0, 0));
            anyhow::anyhow!("{}:{line}:{column}: {}", path.display(), e.message().trim_end())
        })?
    };
    if file.cases.is_empty() {
        bail!("{}: no `[[case]]`: a scenario file needs at least one case", path.display());
    }
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((file, base))
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl When {
    /// The verbs this `when` states (a case must state exactly one).
    pub fn verbs(&self) -> Vec<&'static str> {
        let stated = [
            ("command", self.command.is_some()),
            ("event", self.event.is_some()),
            ("events", self.events.is_some()),
            ("timer", self.timer.is_some()),
            ("admission", self.admission.is_some()),
            ("rate", self.rate.is_some()),
        ];
        stated.into_iter().filter(|(_, set)| *set).map(|(verb, _)| verb).collect()
    }
}

/// The case's one `when` verb, and the kinds it can be sent to (from the table of kinds).
pub fn kinds_for(when: &When) -> anyhow::Result<(&'static str, Vec<ActorKind>)> {
    match when.verbs().as_slice() {
        [verb] => Ok((verb, ActorKind::answering(verb))),
        [] => bail!(
            "`when` needs one of {}",
            ActorKind::when_verbs().iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ")
        ),
        many => bail!(
            "`when` states {}: a case does one thing",
            many.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(" and ")
        ),
    }
}

fn yes() -> bool {
    true
}

/// Merges the file's `given` under a case's.
pub fn merge(file: &Given, case: &Given) -> Given {
    let mut given = file.clone();
    given.clock_ms = case.clock_ms.or(file.clock_ms);
    given.config.extend(case.config.clone());
    for (link, config) in &case.link_config {
        given.link_config.entry(link.clone()).or_default().extend(config.clone());
    }
    for (bucket, entries) in &case.kv {
        given.kv.entry(bucket.clone()).or_default().extend(entries.clone());
    }
    given.events.extend(case.events.clone());
    given.commands.extend(case.commands.clone());
    given
}
