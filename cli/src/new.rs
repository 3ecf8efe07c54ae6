//! `tollgate new NAME --kind KIND`: a standalone actor crate with a working example, a passing
//! scenario file and a native test of its logic.
//!
//! The crate is written to a temporary sibling directory and renamed into place at the end,
//! so a failure leaves nothing behind; an existing directory is never touched.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tollgate_host::ActorKind;

/// Arguments of `new`.
#[derive(clap::Args)]
#[command(
    after_help = "Then: cd NAME && cargo build --target wasm32-wasip2 --release && tollgate test scenarios/*.toml"
)]
pub struct Args {
    /// The crate's name (and directory, unless `--path`): lowercase letters, digits, `-`, `_`.
    name: String,
    /// What kind of actor.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(ActorKind::ALL.map(ActorKind::name)))]
    kind: String,
    /// Where to create the crate (default: ./NAME). Must not exist.
    #[arg(long)]
    path: Option<PathBuf>,
    /// Depend on the SDK at this path (default: this checkout's `sdk/`).
    #[arg(long, conflicts_with = "sdk_git")]
    sdk_path: Option<PathBuf>,
    /// Depend on the SDK from this git repository instead of a path.
    #[arg(long)]
    sdk_git: Option<String>,
}

/// The SDK of the checkout this binary was built from.
fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk")
}

fn template(kind: ActorKind) -> (&'static str, &'static str, &'static str) {
    match kind {
        ActorKind::Aggregate => (
            include_str!("templates/aggregate.rs"),
            include_str!("templates/aggregate_test.rs"),
            include_str!("templates/aggregate.toml"),
        ),
        ActorKind::Projector => (
            include_str!("templates/projector.rs"),
            include_str!("templates/projector_test.rs"),
            include_str!("templates/projector.toml"),
        ),
        ActorKind::ProcessManager => (
            include_str!("templates/process-manager.rs"),
            include_str!("templates/process-manager_test.rs"),
            include_str!("templates/process-manager.toml"),
        ),
        ActorKind::Rater => (
            include_str!("templates/rater.rs"),
            include_str!("templates/rater_test.rs"),
            include_str!("templates/rater.toml"),
        ),
        ActorKind::Policy => (
            include_str!("templates/policy.rs"),
            include_str!("templates/policy_test.rs"),
            include_str!("templates/policy.toml"),
        ),
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.into()).to_string()
}

/// Creates the crate.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let name = &args.name;
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!("`{name}` is not a crate name: use lowercase letters, digits, `-` and `_`, starting with a letter");
    }
    let kind = ActorKind::from_name(&args.kind).expect("clap checked the kind");
    let dir = args.path.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        bail!("{}: already exists; `tollgate new` does not overwrite anything", dir.display());
    }
    let sdk = match (&args.sdk_git, &args.sdk_path) {
        (Some(git), _) => format!("{{ git = {} }}", toml_string(git)),
        (None, path) => {
            let path = path.clone().unwrap_or_else(default_sdk);
            let path =
                std::fs::canonicalize(&path).with_context(|| format!("--sdk-path {}: no SDK there", path.display()))?;
            if !path.join("Cargo.toml").is_file() {
                bail!("--sdk-path {}: no Cargo.toml there", path.display());
            }
            format!("{{ path = {} }}", toml_string(&path.display().to_string()))
        }
    };
    let crate_name = name.replace('-', "_");
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
            .replace("{{sdk}}", &sdk)
            .replace("{{kind}}", kind.name())
    };
    let (lib, test, scenario) = template(kind);
    let files: [(&str, String); 6] = [
        ("Cargo.toml", fill(include_str!("templates/Cargo.toml.tpl"))),
        ("README.md", fill(include_str!("templates/README.md.tpl"))),
        (".gitignore", fill(include_str!("templates/gitignore.tpl"))),
        ("src/lib.rs", fill(lib)),
        ("tests/logic.rs", fill(test)),
        ("scenarios/example.toml", fill(scenario)),
    ];
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let staging = parent.join(format!(
        ".{}.tollgate-new-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or(name),
        std::process::id()
    ));
    let write = || -> anyhow::Result<()> {
        for (file, text) in &files {
            let path = staging.join(file);
            std::fs::create_dir_all(path.parent().expect("files are in the crate"))?;
            std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        }
        std::fs::rename(&staging, &dir).with_context(|| format!("move the crate to {}", dir.display()))
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    println!("created {} `{name}` in {}", kind, dir.display());
    println!("next:");
    println!("  cd {}", dir.display());
    println!("  cargo test                                     # the logic, natively");
    println!("  cargo build --target wasm32-wasip2 --release   # the component");
    println!("  tollgate test scenarios/*.toml                 # the component, given / when / then");
    Ok(ExitCode::SUCCESS)
}
