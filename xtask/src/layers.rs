//! The dependency rule of `ARCHITECTURE.md`, checked: a library crate depends (normal
//! dependencies, features included) only on workspace crates of a lower layer.

use std::path::Path;

/// Workspace library crates by layer, lowest first. A crate not listed here (actors,
/// fixtures, binaries) is not checked.
pub const LAYERS: &[(&str, &str, u8)] = &[
    ("tollgate-codec", "codec", 0),
    ("tollgate-billing-model", "models/billing", 0),
    ("tollgate-store", "store", 0),
    ("tollgate-oci", "oci", 0),
    ("tollgate-sdk", "sdk", 1),
    ("tollgate-host", "host", 1),
    ("tollgate-runtime", "runtime", 2),
    ("tollgate-node", "node", 3),
    ("tollgate-host-test", "host-test", 4),
    ("tollgate-serve", "serve", 4),
];

fn layer(name: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _, _)| *n == name).map(|(_, _, l)| *l)
}

/// The workspace crates named in the `[dependencies]` section of `manifest` (dev- and
/// build-dependencies are other sections; optional dependencies count).
fn normal_dependencies(manifest: &str) -> Vec<String> {
    let mut in_dependencies = false;
    let mut found = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            continue;
        }
        if !in_dependencies {
            continue;
        }
        let name = line.split(['=', '.', ' ']).next().unwrap_or_default();
        if layer(name).is_some() {
            found.push(name.to_string());
        }
    }
    found
}

/// Every edge that breaks the rule, as `crate (layer) -> dependency (layer)`.
pub fn violations(root: &Path) -> Result<Vec<String>, String> {
    let mut bad = Vec::new();
    for (name, dir, own) in LAYERS {
        let path = root.join(dir).join("Cargo.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for dependency in normal_dependencies(&text) {
            let theirs = layer(&dependency).unwrap_or(u8::MAX);
            if theirs >= *own {
                bad.push(format!("{name} (layer {own}) -> {dependency} (layer {theirs})"));
            }
        }
    }
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_dependencies_section_counts() {
        let manifest = "[dependencies]\ntollgate-host.workspace = true\nserde = \"1\"\n[dev-dependencies]\ntollgate-node = { path = \"../node\" }\n";
        assert_eq!(normal_dependencies(manifest), ["tollgate-host"]);
    }

    #[test]
    fn the_workspace_keeps_the_rule() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        assert_eq!(violations(&root).unwrap(), Vec::<String>::new());
    }
}
