//! The runtime manifest (TOML): which actors, from which files, linked how, with what limits.
//!
//! ```toml
//! [limits]
//! cpu_ms = 100      # guest CPU per call (fuel, host imports not counted), 1..=60000
//! memory_mib = 64   # linear memory per instance, 1..=4096
//! kv_writes = 10000 # and the other import budgets per call: see `docs/manifest.md`
//!
//! [actors.account]
//! kind = "aggregate"
//! file = "../target/wasm32-wasip2/release/prepaid_account.wasm"
//!
//! [actors.rater]
//! kind = "rater"
//! file = "../target/wasm32-wasip2/release/rater.wasm"
//! config = { "offer.voice" = '{"kind":"per-unit","currency":"EUR","unit_price":2}' }
//!
//! [actors.policy]
//! kind = "policy"
//! file = "../target/wasm32-wasip2/release/admission_policy.wasm"
//! links = { charging = "account", rating = "rater" }
//! ```
//!
//! An optional `[store]` section tunes how the event store is used (`snapshot_every = 100`,
//! `max_deliver = 5`, `replicas = 1`); which store is chosen when the runtime starts.
//!
//! An optional `[reactions]` section bounds the work process managers may cause (see
//! [`ReactionLimits`]; defaults shown):
//!
//! ```toml
//! [reactions]
//! max_cascade_depth = 16            # reactions in a chain from one outside input
//! max_cascade_effects = 4096        # commands + timers one outside input may cause in all
//! max_commands_per_reaction = 64
//! max_timers_per_reaction = 64
//! max_timers_per_tick = 4096        # the rest stay due until the next tick
//! timer_batch = 256                 # due timers recorded per store round trip
//! ```
//!
//! Relative `file`s are resolved against the manifest's directory. With the cargo feature
//! `oci`, a `file` may instead be an OCI reference, pulled (once per digest) through the cache
//! of `tollgate-oci` when loaded (without it such a manifest is refused,
//! [`ManifestError::OciDisabled`]):
//!
//! ```toml
//! [registry]
//! plain_http = true   # only for a local development registry; default: HTTPS
//!
//! [actors.account]
//! kind = "aggregate"
//! file = "oci://127.0.0.1:5000/tollgate/prepaid-account:0.1.0"
//! ```

use crate::quota::QuotaPolicy;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tollgate_host::engine::{MAX_CPU_MS, MAX_MEMORY_BYTES};
use tollgate_host::{ActorKind, ImportBudgets};

/// A parsed manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Per-call limits for every actor.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// How to reach the registries of `oci://` actor files.
    #[serde(default)]
    pub registry: RegistrySpec,
    /// How the runtime uses its event store.
    #[serde(default)]
    pub store: StoreSpec,
    /// How much work one delivery to a process manager may cause.
    #[serde(default)]
    pub reactions: ReactionLimits,
    /// How each charging rating group is charged, for network charging requests (`tollgate
    /// serve`'s Nchf routes): `[rating_groups]` with `100 = "voice"` (the offer) or
    /// `200 = { offer = "data", unit = "volume", quota = 1048576 }`. Keys are checked to be
    /// rating groups (`u32`) and values to be [`RatingGroup`]s; read them with
    /// [`Manifest::rating_groups`].
    #[serde(default)]
    pub rating_groups: BTreeMap<String, toml::Value>,
    /// The lattice's edge quota (`[quota]`): how an edge node (`tollgate serve --role edge`)
    /// sizes the grants it asks its core for, and the clock-skew margin after which a core
    /// expires a grant an edge never settled.
    #[serde(default)]
    pub quota: Option<QuotaPolicy>,
    /// OAuth2 bearer access tokens for `tollgate serve`'s HTTP API (`[auth]`); none: the API
    /// takes requests without tokens (a node listening beyond loopback then needs
    /// `--insecure`).
    #[serde(default)]
    pub auth: Option<crate::access::AuthSpec>,
    /// Credentials and TLS of the node's NATS connections (`[nats]`), as written; the
    /// resolved settings are [`Manifest::nats_access`].
    #[serde(default, rename = "nats")]
    pub nats_spec: crate::access::NatsSpec,
    /// [`Manifest::nats_spec`] with its files resolved against the manifest's directory.
    #[serde(skip)]
    pub nats_access: tollgate_store::NatsAccess,
    /// Streams a served node (`tollgate serve`) takes outside facts on, over HTTP
    /// (`POST /v1/reports/{stream}/{key}`) and NATS (`tollgate.<node>.report.<stream>`):
    /// `[reports] streams = ["session"]`. None by default; never the runtime's own
    /// `tollgate.*` streams.
    #[serde(default)]
    pub reports: ReportsSpec,
    /// Actors by name (an edge node's manifest may have none).
    #[serde(default)]
    pub actors: BTreeMap<String, ActorSpec>,
}

/// The kind of units a rating group is charged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RatingUnit {
    /// Seconds.
    Time,
    /// Octets.
    Volume,
    /// Units of the service's own.
    Service,
}

impl RatingUnit {
    /// Its name in a manifest: `time`, `volume` or `service`.
    pub fn name(self) -> &'static str {
        match self {
            RatingUnit::Time => "time",
            RatingUnit::Volume => "volume",
            RatingUnit::Service => "service",
        }
    }
}

/// How one rating group of `[rating_groups]` is charged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatingGroup {
    /// The offer its units are used under.
    pub offer: String,
    /// The kind of units it is granted and charged in; `None`: the kind a request asks for
    /// (time when it asks for none).
    pub unit: Option<RatingUnit>,
    /// Units granted when a request leaves the amount to the charging function
    /// (`requestedUnit: {}`), > 0; for time at most 4294967295 (the protocol's `Uint32`).
    pub quota: u64,
}

/// Units granted by default when a request names no amount: a minute of time.
pub const DEFAULT_RATING_QUOTA: u64 = 60;

impl RatingGroup {
    /// Reads `"offer"` or `{ offer = "...", unit = "...", quota = N }`; on failure the field
    /// (suffix of `rating_groups.<group>`) and what is wrong with it.
    fn from_toml(value: &toml::Value) -> Result<RatingGroup, (String, String)> {
        let offer = |o: &str| {
            if o.is_empty() { Err((String::new(), "names no offer".to_string())) } else { Ok(o.to_string()) }
        };
        let table = match value {
            toml::Value::String(o) => {
                return Ok(RatingGroup { offer: offer(o)?, unit: None, quota: DEFAULT_RATING_QUOTA });
            }
            toml::Value::Table(table) => table,
            other => {
                let message = format!("must be an offer name or a table with `offer`, not {}", other.type_str());
                return Err((String::new(), message));
            }
        };
        if let Some(field) = table.keys().find(|k| !["offer", "unit", "quota"].contains(&k.as_str())) {
            return Err((format!(".{field}"), "is not a field of a rating group (offer, unit, quota)".into()));
        }
        let offer = match table.get("offer") {
            Some(toml::Value::String(o)) => offer(o).map_err(|(_, m)| (".offer".to_string(), m))?,
            Some(_) => return Err((".offer".into(), "must be a string".into())),
            None => return Err((".offer".into(), "is missing".into())),
        };
        let unit = match table.get("unit") {
            None => None,
            Some(toml::Value::String(u)) => Some(match u.as_str() {
                "time" => RatingUnit::Time,
                "volume" => RatingUnit::Volume,
                "service" => RatingUnit::Service,
                other => return Err((".unit".into(), format!("`{other}` is not one of time, volume, service"))),
            }),
            Some(_) => return Err((".unit".into(), "must be one of time, volume, service".into())),
        };
        let quota = match table.get("quota") {
            None => DEFAULT_RATING_QUOTA,
            Some(toml::Value::Integer(q)) if *q > 0 => *q as u64,
            Some(_) => return Err((".quota".into(), "must be an integer > 0".into())),
        };
        if unit.unwrap_or(RatingUnit::Time) == RatingUnit::Time && quota > u64::from(u32::MAX) {
            return Err((".quota".into(), format!("is {quota} seconds, over the protocol's 4294967295")));
        }
        Ok(RatingGroup { offer, unit, quota })
    }
}

/// The `[reports]` section: which streams take outside facts on a served node.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportsSpec {
    /// The streams (none by default).
    #[serde(default)]
    pub streams: Vec<String>,
}

impl ReportsSpec {
    /// Whether facts may be reported on `stream`.
    pub fn allows(&self, stream: &str) -> bool {
        self.streams.iter().any(|s| s == stream)
    }
}

/// The `[store]` section. The store itself is chosen at run time (`--store`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSpec {
    /// Write an aggregate snapshot once a key has this many events past its last one (0: never).
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
    /// Deliveries of one commit to a failing projector or process manager before it goes to
    /// the dead letters.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: u32,
    /// Copies a JetStream store keeps of every stream and bucket it creates (1 to 5; 3 for a
    /// cluster of three servers). The embedded log keeps one copy and refuses more.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
}

fn default_replicas() -> usize {
    1
}

fn default_snapshot_every() -> u64 {
    100
}

fn default_max_deliver() -> u32 {
    5
}

impl Default for StoreSpec {
    fn default() -> Self {
        StoreSpec {
            snapshot_every: default_snapshot_every(),
            max_deliver: default_max_deliver(),
            replicas: default_replicas(),
        }
    }
}

/// The `[reactions]` section: bounds on the work process managers may cause, so a manager
/// whose commands lead back to itself, or whose timers set new due timers, cannot keep a node
/// busy for ever. A reaction over a bound has no effect; its delivery fails with a reason
/// naming the bound and, like any failing delivery, ends in the dead letters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactionLimits {
    /// Longest chain of reactions from one outside input (a client's command or report, or a
    /// timer restored from the store) to a command or timer: an input is depth 0, what a
    /// reaction to depth `d` sends or sets is depth `d + 1`.
    #[serde(default = "default_max_cascade_depth")]
    pub max_cascade_depth: u32,
    /// Commands plus timers one outside input may cause through all its reactions.
    #[serde(default = "default_max_cascade_effects")]
    pub max_cascade_effects: u64,
    /// Commands one reaction may send.
    #[serde(default = "default_max_per_reaction")]
    pub max_commands_per_reaction: u32,
    /// Timers one reaction may set.
    #[serde(default = "default_max_per_reaction")]
    pub max_timers_per_reaction: u32,
    /// Timers fired per clock tick; the rest stay due and fire on the next tick.
    #[serde(default = "default_max_timers_per_tick")]
    pub max_timers_per_tick: u32,
    /// Due timers recorded per store round trip (one group-committed fsync for the batch).
    #[serde(default = "default_timer_batch")]
    pub timer_batch: u32,
}

fn default_max_cascade_depth() -> u32 {
    16
}

fn default_max_cascade_effects() -> u64 {
    4096
}

fn default_max_per_reaction() -> u32 {
    64
}

fn default_max_timers_per_tick() -> u32 {
    4096
}

fn default_timer_batch() -> u32 {
    256
}

impl Default for ReactionLimits {
    fn default() -> Self {
        ReactionLimits {
            max_cascade_depth: default_max_cascade_depth(),
            max_cascade_effects: default_max_cascade_effects(),
            max_commands_per_reaction: default_max_per_reaction(),
            max_timers_per_reaction: default_max_per_reaction(),
            max_timers_per_tick: default_max_timers_per_tick(),
            timer_batch: default_timer_batch(),
        }
    }
}

impl ReactionLimits {
    /// The first field that is 0 (each bound must let at least one thing through).
    fn zero_field(&self) -> Option<&'static str> {
        [
            ("max_cascade_depth", self.max_cascade_depth == 0),
            ("max_cascade_effects", self.max_cascade_effects == 0),
            ("max_commands_per_reaction", self.max_commands_per_reaction == 0),
            ("max_timers_per_reaction", self.max_timers_per_reaction == 0),
            ("max_timers_per_tick", self.max_timers_per_tick == 0),
            ("timer_batch", self.timer_batch == 0),
        ]
        .into_iter()
        .find_map(|(field, zero)| zero.then_some(field))
    }
}

/// The `[registry]` section: how `oci://` actor files are pulled.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySpec {
    /// Talk plain HTTP instead of HTTPS (for a local development registry such as
    /// `127.0.0.1:5000`). Default: false.
    #[serde(default)]
    pub plain_http: bool,
}

/// The largest `limits.memory_mib`: 4 GiB, all a 32-bit guest can address.
pub const MAX_MEMORY_MIB: usize = MAX_MEMORY_BYTES >> 20;

/// Limits as written in a manifest (`[limits]`). Fields left out take their defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSpec {
    /// Guest CPU time per call, ms (counted in fuel: host imports do not count, machine load
    /// does not change the verdict), 1 to 60 000.
    pub cpu_ms: u64,
    /// Linear memory per instance, MiB, 1 to 4096.
    pub memory_mib: usize,
    /// `wasi:logging` calls per call of an actor.
    pub log_calls: u64,
    /// Bytes handed to `wasi:logging` per call.
    pub log_bytes: u64,
    /// Bytes written to stdout and stderr per call.
    pub output_bytes: u64,
    /// Bytes asked of `wasi:random` per call.
    pub random_bytes: u64,
    /// `wasi:clocks` calls per call.
    pub clock_calls: u64,
    /// `wasi:config` calls per call.
    pub config_calls: u64,
    /// `wasi:keyvalue` calls per call.
    pub kv_calls: u64,
    /// Bytes moved through `wasi:keyvalue` either way per call.
    pub kv_bytes: u64,
    /// Key-value writes (set, delete) per call: per delivery, for a projector.
    pub kv_writes: u64,
    /// Bytes of keys and values written per call: per delivery, for a projector.
    pub kv_write_bytes: u64,
    /// `tollgate:billing/rating` calls per call.
    pub rating_calls: u64,
    /// `tollgate:billing/charging` calls per call.
    pub charging_calls: u64,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        let ImportBudgets {
            log_calls,
            log_bytes,
            output_bytes,
            random_bytes,
            clock_calls,
            config_calls,
            kv_calls,
            kv_bytes,
            kv_writes,
            kv_write_bytes,
            rating_calls,
            charging_calls,
        } = ImportBudgets::default();
        LimitsSpec {
            cpu_ms: 100,
            memory_mib: 64,
            log_calls,
            log_bytes,
            output_bytes,
            random_bytes,
            clock_calls,
            config_calls,
            kv_calls,
            kv_bytes,
            kv_writes,
            kv_write_bytes,
            rating_calls,
            charging_calls,
        }
    }
}

impl LimitsSpec {
    /// The import budgets of every call ([`tollgate_host::budget`]).
    pub fn imports(&self) -> ImportBudgets {
        ImportBudgets {
            log_calls: self.log_calls,
            log_bytes: self.log_bytes,
            output_bytes: self.output_bytes,
            random_bytes: self.random_bytes,
            clock_calls: self.clock_calls,
            config_calls: self.config_calls,
            kv_calls: self.kv_calls,
            kv_bytes: self.kv_bytes,
            kv_writes: self.kv_writes,
            kv_write_bytes: self.kv_write_bytes,
            rating_calls: self.rating_calls,
            charging_calls: self.charging_calls,
        }
    }
}

/// One actor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorSpec {
    /// `aggregate`, `projector`, `process-manager`, `rater` or `policy`; checked on load.
    pub kind: String,
    /// The component file, or `oci://REGISTRY/REPO:TAG` (or `@sha256:DIGEST`).
    pub file: PathBuf,
    /// `wasi:config` values the actor reads.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// For a policy: which actors serve its imports (`charging` -> an aggregate, `rating` -> a rater).
    #[serde(default)]
    pub links: BTreeMap<String, String>,
}

/// A manifest that cannot be used, naming the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{path}: cannot read the manifest: {source}")]
    Read {
        /// The manifest.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax or a field of the wrong shape.
    #[error("{path}: {message}")]
    Parse {
        /// The manifest.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A field's value is not acceptable.
    #[error("{path}: `{field}`: {message}")]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// The dotted field, e.g. `actors.policy.links.rating`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// An actor's `file` is an `oci://` reference, but this runtime was built without its
    /// `oci` feature, so it cannot pull it.
    #[error(
        "{path}: `actors.{actor}.file`: `{reference}` is an OCI reference, but tollgate-runtime was built \
         without its `oci` feature (enable `tollgate-runtime/oci` to pull actors from registries)"
    )]
    OciDisabled {
        /// The manifest.
        path: PathBuf,
        /// The actor.
        actor: String,
        /// The reference, `oci://...`.
        reference: String,
    },
}

impl Manifest {
    /// Points every local actor file at the file of the same name in `dir` (actors built
    /// elsewhere, e.g. where `TOLLGATE_ACTORS_DIR` says); `oci://` files stay as they are.
    pub fn with_actors_dir(mut self, dir: &Path) -> Manifest {
        for spec in self.actors.values_mut() {
            if crate::resolve::is_oci(&spec.file.to_string_lossy()) {
                continue;
            }
            if let Some(name) = spec.file.file_name() {
                spec.file = dir.join(name);
            }
        }
        self
    }

    /// Reads and checks a manifest file; relative actor files become absolute.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read { path: path.into(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Manifest::parse(path, &text, base)
    }

    /// Parses and checks manifest text; `base` resolves relative actor files.
    pub fn parse(path: &Path, text: &str, base: &Path) -> Result<Manifest, ManifestError> {
        let mut manifest: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Parse { path: path.into(), message: e.to_string() })?;
        let invalid = |field: String, message: String| ManifestError::Invalid { path: path.into(), field, message };
        let cpu_ms = manifest.limits.cpu_ms;
        if !(1..=MAX_CPU_MS).contains(&cpu_ms) {
            return Err(invalid("limits.cpu_ms".into(), format!("is {cpu_ms}, must be between 1 and {MAX_CPU_MS}")));
        }
        let memory_mib = manifest.limits.memory_mib;
        if !(1..=MAX_MEMORY_MIB).contains(&memory_mib) {
            return Err(invalid(
                "limits.memory_mib".into(),
                format!(
                    "is {memory_mib}, must be between 1 and {MAX_MEMORY_MIB} (a 32-bit guest's whole address space)"
                ),
            ));
        }
        if let Some(budget) = manifest.limits.imports().zero() {
            return Err(invalid(format!("limits.{}", budget.field()), "must be > 0".into()));
        }
        let replicas = manifest.store.replicas;
        if !(1..=5).contains(&replicas) {
            return Err(invalid(
                "store.replicas".into(),
                format!("is {replicas}, must be between 1 and 5 (JetStream's limit)"),
            ));
        }
        if let Some(field) = manifest.reactions.zero_field() {
            return Err(invalid(format!("reactions.{field}"), "must be > 0".into()));
        }
        if let Some((field, message)) = manifest.quota.as_ref().and_then(QuotaPolicy::invalid_field) {
            return Err(invalid(format!("quota.{field}"), message));
        }
        if let Some(auth) = &mut manifest.auth {
            if let Some((field, message)) = auth.invalid_field() {
                return Err(invalid(format!("auth.{field}"), message));
            }
            auth.resolve(base);
        }
        manifest.nats_access = manifest.nats_spec.access(base).map_err(|(field, message)| {
            invalid(if field.is_empty() { "nats".into() } else { format!("nats.{field}") }, message)
        })?;
        for (group, spec) in &manifest.rating_groups {
            if group.parse::<u32>().is_err() {
                return Err(invalid(
                    format!("rating_groups.{group}"),
                    "is not a rating group (an integer from 0 to 4294967295)".into(),
                ));
            }
            RatingGroup::from_toml(spec)
                .map_err(|(field, message)| invalid(format!("rating_groups.{group}{field}"), message))?;
        }
        let kinds: BTreeMap<String, Option<ActorKind>> =
            manifest.actors.iter().map(|(n, a)| (n.clone(), ActorKind::from_name(&a.kind))).collect();
        for (name, actor) in &mut manifest.actors {
            let kind = kinds[name].ok_or_else(|| {
                invalid(format!("actors.{name}.kind"), format!("`{}` is not one of {}", actor.kind, ActorKind::names()))
            })?;
            if let Some(reference) = actor.file.to_str().filter(|f| crate::resolve::is_oci(f)) {
                #[cfg(feature = "oci")]
                {
                    let parsed = tollgate_oci::parse_reference(reference)
                        .map_err(|e| invalid(format!("actors.{name}.file"), e.to_string()))?;
                    if tollgate_oci::is_latest(&parsed) {
                        return Err(invalid(
                            format!("actors.{name}.file"),
                            format!(
                                "`{reference}` resolves to the mutable `latest` tag; name a version tag or a digest"
                            ),
                        ));
                    }
                }
                #[cfg(not(feature = "oci"))]
                return Err(ManifestError::OciDisabled {
                    path: path.into(),
                    actor: name.clone(),
                    reference: reference.to_string(),
                });
            } else if actor.file.is_relative() {
                actor.file = base.join(&actor.file);
            }
            for (link, target) in &actor.links {
                let Some(wanted) = kind.link(link).map(|l| l.target) else {
                    return Err(invalid(
                        format!("actors.{name}.links.{link}"),
                        format!("{} has no import `{link}` to link ({})", kind.a(), ActorKind::links_summary()),
                    ));
                };
                match kinds.get(target) {
                    None => {
                        return Err(invalid(
                            format!("actors.{name}.links.{link}"),
                            format!("no actor named `{target}`"),
                        ));
                    }
                    Some(k) if *k != Some(wanted) => {
                        return Err(invalid(
                            format!("actors.{name}.links.{link}"),
                            format!("`{target}` is not a {wanted}"),
                        ));
                    }
                    _ => {}
                }
            }
            for link in kind.spec().links {
                if !actor.links.contains_key(link.name) {
                    return Err(invalid(
                        format!("actors.{name}.links.{}", link.name),
                        format!("{} needs this link", kind.a()),
                    ));
                }
            }
        }
        for (i, stream) in manifest.reports.streams.iter().enumerate() {
            if crate::namespace::is_reserved(stream) {
                return Err(invalid(
                    format!("reports.streams[{i}]"),
                    format!(
                        "`{stream}` is the runtime's own (`{}*`): no one reports on it",
                        crate::namespace::RESERVED_PREFIX
                    ),
                ));
            }
        }
        Ok(manifest)
    }

    /// Each rating group of `[rating_groups]` (checked by [`Manifest::parse`]).
    pub fn rating_groups(&self) -> BTreeMap<u32, RatingGroup> {
        self.rating_groups
            .iter()
            .filter_map(|(g, spec)| Some((g.parse().ok()?, RatingGroup::from_toml(spec).ok()?)))
            .collect()
    }

    /// The kind of an actor (checked by [`Manifest::parse`]).
    pub fn kind(&self, name: &str) -> ActorKind {
        ActorKind::from_name(&self.actors[name].kind).expect("kinds are checked on parse")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("m.toml"), text, Path::new("/base"))
    }

    #[test]
    fn report_streams_default_to_none_and_never_name_the_runtimes_own() {
        let m = parse("[actors]\n").unwrap();
        assert!(!m.reports.allows("session"));
        let m = parse("[reports]\nstreams = [\"session\"]\n[actors]\n").unwrap();
        assert!(m.reports.allows("session") && !m.reports.allows("account"));
        let err = parse("[reports]\nstreams = [\"session\", \"tollgate.timers\"]\n[actors]\n").unwrap_err().to_string();
        assert!(
            err.contains("`reports.streams[1]`") && err.contains("`tollgate.timers` is the runtime's own"),
            "{err}"
        );
    }

    #[test]
    fn resolves_files_and_defaults_limits() {
        let m = parse("[actors.account]\nkind = \"aggregate\"\nfile = \"a.wasm\"\n").unwrap();
        assert_eq!(m.actors["account"].file, Path::new("/base/a.wasm"));
        assert_eq!(m.limits.cpu_ms, 100);
    }

    #[test]
    fn rating_groups_name_offers_and_must_be_integers() {
        let m = parse(
            "[rating_groups]\n100 = \"voice\"\n\"7\" = { offer = \"data\", unit = \"volume\", quota = 1048576 }\n[actors]\n",
        )
        .unwrap();
        let voice = RatingGroup { offer: "voice".into(), unit: None, quota: DEFAULT_RATING_QUOTA };
        let data = RatingGroup { offer: "data".into(), unit: Some(RatingUnit::Volume), quota: 1 << 20 };
        assert_eq!(m.rating_groups(), BTreeMap::from([(7, data), (100, voice)]));
        for (spec, field, message) in [
            ("\"\"", "rating_groups.1", "names no offer"),
            ("3", "rating_groups.1", "must be an offer name or a table with `offer`, not integer"),
            ("{ unit = \"time\" }", "rating_groups.1.offer", "is missing"),
            ("{ offer = \"v\", unit = \"bytes\" }", "rating_groups.1.unit", "`bytes` is not one of"),
            ("{ offer = \"v\", quota = 0 }", "rating_groups.1.quota", "must be an integer > 0"),
            ("{ offer = \"v\", quota = 4294967296 }", "rating_groups.1.quota", "is 4294967296 seconds, over"),
            ("{ offer = \"v\", price = 2 }", "rating_groups.1.price", "is not a field"),
        ] {
            let err = parse(&format!("[rating_groups]\n1 = {spec}\n[actors]\n")).unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`: {message}")), "{spec}: {err}");
        }
        let m = parse("[rating_groups]\n1 = { offer = \"v\", unit = \"volume\", quota = 4294967296 }\n[actors]\n");
        assert_eq!(m.unwrap().rating_groups()[&1].quota, 1 << 32, "volume may exceed Uint32");
        let err = parse("[rating_groups]\nvoice = \"voice\"\n[actors]\n").unwrap_err().to_string();
        assert_eq!(err, "m.toml: `rating_groups.voice`: is not a rating group (an integer from 0 to 4294967295)");
        let err = parse("[rating_groups]\n4294967296 = \"voice\"\n[actors]\n").unwrap_err().to_string();
        assert!(err.contains("`rating_groups.4294967296`"), "{err}");
    }

    #[test]
    fn names_the_bad_field() {
        let err =
            parse("[actors.p]\nkind = \"policy\"\nfile = \"p.wasm\"\nlinks = { charging = \"x\", rating = \"y\" }\n")
                .unwrap_err()
                .to_string();
        assert_eq!(err, "m.toml: `actors.p.links.charging`: no actor named `x`");
        let err = parse("[actors.a]\nkind = \"aggregator\"\nfile = \"a.wasm\"\n").unwrap_err().to_string();
        assert!(err.contains("`actors.a.kind`"), "{err}");
        let err = parse("[actors.a]\nkind = \"aggregate\"\n").unwrap_err().to_string();
        assert!(err.contains("missing field `file`") && err.contains("line"), "{err}");
        let err = parse("[actors.p]\nkind = \"policy\"\nfile = \"p.wasm\"\n").unwrap_err().to_string();
        assert!(err.contains("`actors.p.links.charging`: a policy needs this link"), "{err}");
    }

    #[test]
    fn reaction_limits_default_and_must_be_positive() {
        let m = parse("[actors]\n").unwrap();
        assert_eq!(m.reactions.max_cascade_depth, 16);
        assert_eq!(m.reactions.timer_batch, 256);
        let m = parse("[reactions]\nmax_cascade_depth = 3\n[actors]\n").unwrap();
        assert_eq!(m.reactions.max_cascade_depth, 3);
        let err = parse("[reactions]\nmax_timers_per_tick = 0\n[actors]\n").unwrap_err().to_string();
        assert_eq!(err, "m.toml: `reactions.max_timers_per_tick`: must be > 0");
        let err = parse("[reactions]\nmax_depth = 3\n[actors]\n").unwrap_err().to_string();
        assert!(err.contains("max_depth"), "{err}");
    }

    #[test]
    fn import_budgets_default_are_set_per_field_and_must_be_positive() {
        let actor = "[actors.a]\nkind = \"aggregate\"\nfile = \"a.wasm\"\n";
        let m = parse(actor).unwrap();
        assert_eq!(m.limits.imports(), ImportBudgets::default());
        let m = parse(&format!("[limits]\nkv_writes = 7\nlog_bytes = 1024\n{actor}")).unwrap();
        let imports = m.limits.imports();
        assert_eq!((imports.kv_writes, imports.log_bytes), (7, 1024));
        assert_eq!(imports.kv_write_bytes, ImportBudgets::default().kv_write_bytes, "the others keep their defaults");
        assert_eq!(m.limits.cpu_ms, 100);
        let err = parse(&format!("[limits]\ncharging_calls = 0\n{actor}")).unwrap_err().to_string();
        assert_eq!(err, "m.toml: `limits.charging_calls`: must be > 0");
        let err = parse(&format!("[limits]\nkv_write = 3\n{actor}")).unwrap_err().to_string();
        assert!(err.contains("kv_write") && err.contains("unknown field"), "{err}");
    }

    #[test]
    fn limits_out_of_range_name_the_field() {
        let actor = "[actors.a]\nkind = \"aggregate\"\nfile = \"a.wasm\"\n";
        for (limits, expected) in [
            ("cpu_ms = 0", "m.toml: `limits.cpu_ms`: is 0, must be between 1 and 60000"),
            ("cpu_ms = 60001", "m.toml: `limits.cpu_ms`: is 60001, must be between 1 and 60000"),
            ("cpu_ms = 9223372036854775807", "`limits.cpu_ms`: is 9223372036854775807"),
            ("memory_mib = 0", "m.toml: `limits.memory_mib`: is 0, must be between 1 and 4096"),
            ("memory_mib = 4097", "m.toml: `limits.memory_mib`: is 4097, must be between 1 and 4096"),
            ("memory_mib = 17592186044416", "`limits.memory_mib`: is 17592186044416"),
            ("cpu_ms = -1", "cpu_ms"),
            ("cpu_ms = 1.5", "cpu_ms"),
        ] {
            let err = parse(&format!("[limits]\n{limits}\n{actor}")).unwrap_err().to_string();
            assert!(err.contains(expected), "{limits}: {err}");
            assert!(err.starts_with("m.toml"), "{limits}: the error names the file: {err}");
        }
        for (limits, cpu_ms, memory_mib) in
            [("cpu_ms = 1\nmemory_mib = 1", 1, 1), ("cpu_ms = 60000\nmemory_mib = 4096", 60_000, 4096)]
        {
            let m = parse(&format!("[limits]\n{limits}\n{actor}")).unwrap();
            assert_eq!((m.limits.cpu_ms, m.limits.memory_mib), (cpu_ms, memory_mib));
        }
        let err = parse(&format!("[store]\nmax_deliver = 4294967296\n{actor}")).unwrap_err().to_string();
        assert!(err.starts_with("m.toml") && err.contains("max_deliver"), "{err}");
        for replicas in [0, 6] {
            let err = parse(&format!("[store]\nreplicas = {replicas}\n{actor}")).unwrap_err().to_string();
            assert!(err.contains("store.replicas") && err.contains("between 1 and 5"), "{err}");
        }
        assert_eq!(parse(&format!("[store]\nreplicas = 3\n{actor}")).unwrap().store.replicas, 3);
        assert_eq!(parse(actor).unwrap().store.replicas, 1);
    }

    #[test]
    #[cfg(feature = "oci")]
    fn oci_files_are_kept_and_checked() {
        let m = parse("[actors.a]\nkind = \"aggregate\"\nfile = \"oci://127.0.0.1:5000/t/a:0.1.0\"\n").unwrap();
        assert_eq!(m.actors["a"].file, Path::new("oci://127.0.0.1:5000/t/a:0.1.0"));
        assert!(!m.registry.plain_http);
        let m = parse("[registry]\nplain_http = true\n[actors.a]\nkind = \"aggregate\"\nfile = \"a.wasm\"\n").unwrap();
        assert!(m.registry.plain_http);
        let err =
            parse("[actors.a]\nkind = \"aggregate\"\nfile = \"oci://127.0.0.1:5000/t/a\"\n").unwrap_err().to_string();
        assert!(err.contains("`actors.a.file`") && err.contains("latest"), "{err}");
        let err = parse("[actors.a]\nkind = \"aggregate\"\nfile = \"oci://Bad Ref:1\"\n").unwrap_err().to_string();
        assert!(err.contains("`actors.a.file`") && err.contains("invalid OCI reference"), "{err}");
        let err = parse("[registry]\nplain-http = true\n[actors]\n").unwrap_err().to_string();
        assert!(err.contains("plain-http"), "{err}");
    }
}
