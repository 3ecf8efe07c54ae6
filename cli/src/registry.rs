//! `tollgate push`, `pull` and `wit build|publish`: the OCI registry commands, over
//! `tollgate-oci`.
//!
//! `main` flattens [`Command`] into the binary's own subcommands and hands the parsed value
//! to [`run`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use tollgate_oci::{Credentials, PushOptions, RegistryOptions};

use crate::progress::TerminalProgress;

/// The OCI subcommands of `tollgate`.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Push a WebAssembly component to an OCI registry as a Wasm artifact.
    ///
    /// The artifact uses the CNCF Wasm OCI layout (config
    /// `application/vnd.wasm.config.v0+json`, one `application/wasm` layer), which wkg and
    /// wasmCloud understand. Credentials come from TOLLGATE_REGISTRY_USERNAME /
    /// TOLLGATE_REGISTRY_PASSWORD, else from the docker config file.
    #[command(disable_version_flag = true)]
    Push(PushArgs),
    /// Pull a WebAssembly component from an OCI registry, verifying every digest.
    ///
    /// Nothing is written unless the manifest (when pulling by digest), config and layer
    /// digests all match.
    Pull(PullArgs),
    /// Build or publish the WIT packages of this project.
    #[command(subcommand)]
    Wit(WitCommand),
}

/// Connection flags shared by the registry commands.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Use plain HTTP instead of HTTPS (for a local development registry).
    #[arg(long)]
    pub plain_http: bool,
    /// Accept a reference that resolves to the mutable `latest` tag (or has no tag).
    #[arg(long)]
    pub allow_latest: bool,
}

impl RegistryArgs {
    fn options(&self) -> RegistryOptions {
        RegistryOptions {
            plain_http: self.plain_http,
            allow_latest: self.allow_latest,
            progress: Some(Arc::new(TerminalProgress)),
            credentials: Credentials::Auto,
        }
    }
}

/// Arguments of `tollgate push`.
#[derive(Debug, Clone, Args)]
pub struct PushArgs {
    /// Where to push: `REGISTRY/REPOSITORY:TAG`, e.g. `ghcr.io/acme/prepaid-account:0.1.0`.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// The component to push (a `.wasm` component or wasm-encoded WIT package).
    #[arg(value_name = "FILE.wasm")]
    pub file: PathBuf,
    /// Connection flags.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Extra manifest annotation `KEY=VALUE` (repeatable).
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = parse_annotation)]
    pub annotations: Vec<(String, String)>,
    /// Value of the `org.opencontainers.image.version` annotation.
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
    /// Value of the `org.opencontainers.image.source` annotation (URL of the source code).
    #[arg(long, value_name = "S")]
    pub source: Option<String>,
    /// Value of the `org.opencontainers.image.description` annotation.
    #[arg(long, value_name = "D")]
    pub description: Option<String>,
}

/// Arguments of `tollgate pull`.
#[derive(Debug, Clone, Args)]
pub struct PullArgs {
    /// What to pull: `REGISTRY/REPOSITORY:TAG` or `REGISTRY/REPOSITORY@sha256:DIGEST`.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Where to write the component.
    #[arg(short, long, value_name = "FILE.wasm")]
    pub output: PathBuf,
    /// Connection flags.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `tollgate wit` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum WitCommand {
    /// Encode every WIT package under the WIT directory as a wasm-encoded WIT package
    /// (`<namespace>_<name>@<version>.wasm`), like `wkg wit build`.
    Build(WitBuildArgs),
    /// Build every WIT package and push it to REGISTRY as `REGISTRY/<namespace>/<name>:<version>`,
    /// like `wkg publish`.
    Publish(WitPublishArgs),
}

/// Arguments of `tollgate wit build`.
#[derive(Debug, Clone, Args)]
pub struct WitBuildArgs {
    /// Directory holding one subdirectory per WIT package (each with its `deps/`).
    #[arg(long, value_name = "DIR", default_value = "wit")]
    pub wit_dir: PathBuf,
    /// Directory to write the encoded packages to.
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    pub output: PathBuf,
}

/// Arguments of `tollgate wit publish`.
#[derive(Debug, Clone, Args)]
pub struct WitPublishArgs {
    /// Registry host with optional port and namespace prefix, e.g. `ghcr.io/acme` or
    /// `127.0.0.1:5000`.
    #[arg(value_name = "REGISTRY")]
    pub registry: String,
    /// Directory holding one subdirectory per WIT package (each with its `deps/`).
    #[arg(long, value_name = "DIR", default_value = "wit")]
    pub wit_dir: PathBuf,
    /// Publish only this package (`namespace:name`; repeatable). Default: all of them.
    #[arg(long = "package", value_name = "NS:NAME")]
    pub packages: Vec<String>,
    /// Use plain HTTP instead of HTTPS (for a local development registry).
    #[arg(long)]
    pub plain_http: bool,
}

fn parse_annotation(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{text}`")),
    }
}

/// Runs `command` on a private tokio runtime.
pub fn run(command: Command) -> anyhow::Result<()> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(run_async(command))
}

/// Runs `command`; prints what it did on stdout.
async fn run_async(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Push(args) => {
            let options = PushOptions {
                registry: args.registry.options(),
                version: args.version,
                source: args.source,
                description: args.description,
                author: None,
                annotations: args.annotations.into_iter().collect::<BTreeMap<_, _>>(),
            };
            let pushed = tollgate_oci::push_file(&args.reference, &args.file, &options).await?;
            println!("pushed {} ({} bytes) as {}", args.file.display(), pushed.size, pushed.pinned);
        }
        Command::Pull(args) => {
            let pulled = tollgate_oci::pull(&args.reference, &args.output, &args.registry.options()).await?;
            println!(
                "pulled {} ({} bytes, layer {}) to {}",
                pulled.pinned,
                pulled.size,
                pulled.layer_digest,
                pulled.path.display()
            );
        }
        Command::Wit(WitCommand::Build(args)) => {
            let packages = tollgate_oci::wit_build(&args.wit_dir)?;
            std::fs::create_dir_all(&args.output).with_context(|| format!("creating `{}`", args.output.display()))?;
            for (name, bytes) in packages {
                let path = args.output.join(tollgate_oci::wit_file_name(&name));
                std::fs::write(&path, &bytes).with_context(|| format!("writing `{}`", path.display()))?;
                println!("built {name} -> {} ({} bytes)", path.display(), bytes.len());
            }
        }
        Command::Wit(WitCommand::Publish(args)) => {
            let mut packages = tollgate_oci::wit_build(&args.wit_dir)?;
            if !args.packages.is_empty() {
                for wanted in &args.packages {
                    anyhow::ensure!(
                        packages.iter().any(|(n, _)| package_matches(n, wanted)),
                        "no WIT package `{wanted}` under `{}`",
                        args.wit_dir.display()
                    );
                }
                packages.retain(|(n, _)| args.packages.iter().any(|w| package_matches(n, w)));
            }
            let options = PushOptions {
                registry: RegistryOptions {
                    plain_http: args.plain_http,
                    progress: Some(Arc::new(TerminalProgress)),
                    ..RegistryOptions::default()
                },
                ..PushOptions::default()
            };
            for pushed in tollgate_oci::wit_publish(&args.registry, &packages, &options).await? {
                println!("published {} as {}", pushed.reference, pushed.pinned);
            }
        }
    }
    Ok(())
}

/// Whether `name` is `wanted` (`ns:name`, or `ns:name@version`).
fn package_matches(name: &tollgate_oci::PackageName, wanted: &str) -> bool {
    wanted == name.to_string() || wanted == format!("{}:{}", name.namespace, name.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory as _, Parser};
    use tollgate_oci::testing::{Registry, tiny_component};

    #[derive(Parser)]
    #[command(name = "tollgate", version)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[test]
    fn parses_push_and_pull() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "tollgate",
            "push",
            "127.0.0.1:5000/a/b:1.0.0",
            "x.wasm",
            "--plain-http",
            "--annotation",
            "k=v=w",
            "--version",
            "1.0.0",
        ])
        .unwrap();
        let Command::Push(args) = cli.command else { panic!("not push") };
        assert!(args.registry.plain_http && !args.registry.allow_latest);
        assert_eq!(args.annotations, [("k".to_string(), "v=w".to_string())]);
        assert_eq!(args.version.as_deref(), Some("1.0.0"));

        let cli = Cli::try_parse_from(["tollgate", "pull", "r/a:1", "-o", "out.wasm"]).unwrap();
        assert!(
            matches!(cli.command, Command::Pull(PullArgs { ref output, .. }) if output == &PathBuf::from("out.wasm"))
        );
        assert!(Cli::try_parse_from(["tollgate", "pull", "r/a:1"]).is_err());
        assert!(Cli::try_parse_from(["tollgate", "push", "r/a:1", "x.wasm", "--annotation", "nokey"]).is_err());
        let cli = Cli::try_parse_from(["tollgate", "wit", "publish", "127.0.0.1:5000"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Wit(WitCommand::Publish(WitPublishArgs { ref wit_dir, .. })) if wit_dir == &PathBuf::from("wit")
        ));
    }

    #[test]
    fn cli_push_pull_and_wit_build() {
        let Some(registry) = Registry::start() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.wasm");
        let output = dir.path().join("out.wasm");
        std::fs::write(&input, tiny_component()).unwrap();
        let reference = format!("{}/tollgate-test/cli:0.2.0", registry.host());
        let run = |args: &[&str]| {
            let cli = Cli::try_parse_from(std::iter::once("tollgate").chain(args.iter().copied())).unwrap();
            super::run(cli.command)
        };
        run(&["push", &reference, input.to_str().unwrap(), "--plain-http", "--version", "0.2.0"]).unwrap();
        run(&["pull", &reference, "-o", output.to_str().unwrap(), "--plain-http"]).unwrap();
        assert_eq!(std::fs::read(&output).unwrap(), std::fs::read(&input).unwrap());
        let err = run(&["pull", &format!("{}/tollgate-test/cli", registry.host()), "-o", "x.wasm"]).unwrap_err();
        assert!(err.to_string().contains("latest"), "{err}");

        let wit = dir.path().join("wit/tiny");
        std::fs::create_dir_all(&wit).unwrap();
        std::fs::write(wit.join("tiny.wit"), "package test:tiny@0.1.0;\ninterface host { log: func(level: u32); }\n")
            .unwrap();
        let built = dir.path().join("built");
        run(&["wit", "build", "--wit-dir", dir.path().join("wit").to_str().unwrap(), "-o", built.to_str().unwrap()])
            .unwrap();
        assert!(built.join("test_tiny@0.1.0.wasm").is_file());
        run(&[
            "wit",
            "publish",
            &registry.host(),
            "--wit-dir",
            dir.path().join("wit").to_str().unwrap(),
            "--plain-http",
        ])
        .unwrap();
        let pulled = dir.path().join("tiny-wit.wasm");
        run(&["pull", &format!("{}/test/tiny:0.1.0", registry.host()), "-o", pulled.to_str().unwrap(), "--plain-http"])
            .unwrap();
        assert_eq!(std::fs::read(&pulled).unwrap(), std::fs::read(built.join("test_tiny@0.1.0.wasm")).unwrap());
    }
}
