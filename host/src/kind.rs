//! The kinds of actor, as one table: what each is called, the world it targets, the interface
//! it exports, the imports a manifest links to other actors, and what a scenario may do to
//! it. Loading, manifest and scenario parsing, and their error messages derive from [`KINDS`];
//! adding a kind is one row here plus the kind's own files (see `ARCHITECTURE.md`).

use std::fmt;

/// The role of an actor, told by the `tollgate:` interface it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActorKind {
    /// Exports `tollgate:eventsourcing/command-handler`.
    Aggregate,
    /// Exports `tollgate:eventsourcing/projection`.
    Projector,
    /// Exports `tollgate:eventsourcing/process`.
    ProcessManager,
    /// Exports `tollgate:billing/rating`.
    Rater,
    /// Exports `tollgate:admission/admission`.
    Policy,
}

/// An import of a kind that a manifest (or a scenario) links to another actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// The link's name in `links = { NAME = "actor" }`.
    pub name: &'static str,
    /// The kind of actor that serves it.
    pub target: ActorKind,
}

/// One row of [`KINDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindSpec {
    /// The kind.
    pub kind: ActorKind,
    /// The kebab-case name used on the command line, in manifests and in scenario files.
    pub name: &'static str,
    /// The world a component of this kind targets.
    pub world: &'static str,
    /// The interface a component of this kind exports (how a loaded component's kind is told).
    pub export: &'static str,
    /// Older contracts this host still runs for the kind: (world, export) pairs.
    pub older: &'static [(&'static str, &'static str)],
    /// Released contracts of the kind this host refuses by name: (export, what changed since).
    pub retired: &'static [(&'static str, &'static str)],
    /// Imports linked to other actors; a manifest must link every one.
    pub links: &'static [Link],
    /// The scenario `when.*` verbs this kind answers.
    pub when: &'static [&'static str],
    /// Whether a scenario may give it events that already happened (`given.events`).
    pub given_events: bool,
    /// Whether a scenario may give it commands to run first (`given.commands`), to itself or
    /// to its linked account.
    pub given_commands: bool,
}

/// Every kind, in [`ActorKind`] order.
pub const KINDS: [KindSpec; 5] = [
    KindSpec {
        kind: ActorKind::Aggregate,
        name: "aggregate",
        world: "tollgate:eventsourcing/aggregate@0.2.0",
        export: "tollgate:eventsourcing/command-handler@0.2.0",
        older: &[("tollgate:eventsourcing/aggregate@0.1.0", "tollgate:eventsourcing/command-handler@0.1.0")],
        retired: &[],
        links: &[],
        when: &["command"],
        given_events: true,
        given_commands: true,
    },
    KindSpec {
        kind: ActorKind::Projector,
        name: "projector",
        world: "tollgate:eventsourcing/projector@0.2.0",
        export: "tollgate:eventsourcing/projection@0.2.0",
        older: &[],
        retired: &[(
            "tollgate:eventsourcing/projection@0.1.0",
            "projectors run on 0.2.0 only: they take event batches",
        )],
        links: &[],
        when: &["event", "events"],
        given_events: true,
        given_commands: false,
    },
    KindSpec {
        kind: ActorKind::ProcessManager,
        name: "process-manager",
        world: "tollgate:eventsourcing/process-manager@0.2.0",
        export: "tollgate:eventsourcing/process@0.2.0",
        older: &[],
        retired: &[(
            "tollgate:eventsourcing/process@0.1.0",
            "process managers run on 0.2.0 only: the package moved to 0.2.0 with the aggregate contract",
        )],
        links: &[],
        when: &["event", "events", "timer"],
        given_events: true,
        given_commands: false,
    },
    KindSpec {
        kind: ActorKind::Rater,
        name: "rater",
        world: "tollgate:billing/rater@0.2.0",
        export: "tollgate:billing/rating@0.2.0",
        older: &[],
        retired: &[("tollgate:billing/rating@0.1.0", "ratings answer a price plan instead of a unit price")],
        links: &[],
        when: &["rate"],
        given_events: false,
        given_commands: false,
    },
    KindSpec {
        kind: ActorKind::Policy,
        name: "policy",
        world: "tollgate:admission/policy@0.2.0",
        export: "tollgate:admission/admission@0.2.0",
        older: &[],
        retired: &[(
            "tollgate:admission/admission@0.1.0",
            "charging reserves with a price plan and a currency instead of a unit price, and grants carry their price and counters",
        )],
        links: &[
            Link { name: "charging", target: ActorKind::Aggregate },
            Link { name: "rating", target: ActorKind::Rater },
        ],
        when: &["admission"],
        given_events: false,
        given_commands: true,
    },
];

impl ActorKind {
    /// Every kind.
    pub const ALL: [ActorKind; KINDS.len()] = {
        let mut all = [ActorKind::Aggregate; KINDS.len()];
        let mut i = 0;
        while i < KINDS.len() {
            all[i] = KINDS[i].kind;
            i += 1;
        }
        all
    };

    /// This kind's row of [`KINDS`].
    pub fn spec(self) -> &'static KindSpec {
        &KINDS[self as usize]
    }

    /// The interface a component of this kind exports.
    pub fn export(self) -> &'static str {
        self.spec().export
    }

    /// The world a component of this kind targets.
    pub fn world(self) -> &'static str {
        self.spec().world
    }

    /// The kebab-case name used on the command line and in manifests.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The name with its indefinite article, for messages: "an aggregate", "a rater".
    ///
    /// ```
    /// use tollgate_host::ActorKind;
    ///
    /// assert_eq!(ActorKind::Aggregate.a(), "an aggregate");
    /// assert_eq!(ActorKind::ProcessManager.a(), "a process-manager");
    /// ```
    pub fn a(self) -> String {
        article(self.name())
    }

    /// Parses [`ActorKind::name`].
    ///
    /// ```
    /// use tollgate_host::ActorKind;
    ///
    /// assert_eq!(ActorKind::from_name("process-manager"), Some(ActorKind::ProcessManager));
    /// assert_eq!(ActorKind::from_name("projection"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Self> {
        KINDS.iter().find(|k| k.name == name).map(|k| k.kind)
    }

    /// The link of this kind named `name`.
    pub fn link(self, name: &str) -> Option<&'static Link> {
        self.spec().links.iter().find(|l| l.name == name)
    }

    /// Every kind's name, for messages: `aggregate, projector, ...`.
    pub fn names() -> String {
        KINDS.map(|k| k.name).join(", ")
    }

    /// The kinds a scenario's `when.VERB` goes to.
    pub fn answering(verb: &str) -> Vec<ActorKind> {
        KINDS.iter().filter(|k| k.when.contains(&verb)).map(|k| k.kind).collect()
    }

    /// Every scenario `when` verb, in table order without repeats.
    pub fn when_verbs() -> Vec<&'static str> {
        let mut verbs: Vec<&'static str> = Vec::new();
        for verb in KINDS.iter().flat_map(|k| k.when.iter().copied()) {
            if !verbs.contains(&verb) {
                verbs.push(verb);
            }
        }
        verbs
    }

    /// What links exist, for messages: "a policy links `charging` and `rating`".
    pub fn links_summary() -> String {
        let with_links: Vec<String> = KINDS
            .iter()
            .filter(|k| !k.links.is_empty())
            .map(|k| {
                let names: Vec<String> = k.links.iter().map(|l| format!("`{}`", l.name)).collect();
                format!("{} links {}", article(k.name), names.join(" and "))
            })
            .collect();
        if with_links.is_empty() { "no kind has links".into() } else { with_links.join("; ") }
    }
}

/// `name` after "a" or "an", by its first letter.
fn article(name: &str) -> String {
    let an = name.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {name}", if an { "an" } else { "a" })
}

impl fmt::Display for ActorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_kind_order_and_names_are_unique() {
        for (i, spec) in KINDS.iter().enumerate() {
            assert_eq!(spec.kind as usize, i, "{} is out of order", spec.name);
            assert_eq!(ActorKind::from_name(spec.name), Some(spec.kind));
        }
        assert_eq!(ActorKind::names(), "aggregate, projector, process-manager, rater, policy");
        assert_eq!(ActorKind::links_summary(), "a policy links `charging` and `rating`");
        assert_eq!(ActorKind::answering("events"), [ActorKind::Projector, ActorKind::ProcessManager]);
    }
}
