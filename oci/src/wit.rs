//! Building and publishing wasm-encoded WIT packages.
//!
//! The layout follows `wkg wit build` + `wkg publish`: each package is encoded with
//! [`wit_component::encode`] and pushed as a Wasm OCI artifact to
//! `REGISTRY[/PREFIX]/<namespace>/<name>:<version>`, so `tollgate:billing@0.2.0` lands at
//! `REGISTRY/tollgate/billing:0.2.0`.

use std::path::{Path, PathBuf};

use wit_parser::{PackageName, Resolve};

use crate::error::{Error, Result};
use crate::reference::{OCI_SCHEME, parse_reference};
use crate::transfer::{PushOptions, Pushed, push_described};

/// Whether `dir` directly holds at least one `*.wit` file.
fn has_wit_files(dir: &Path) -> Result<bool> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        action: "reading directory",
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry =
            entry.map_err(|source| Error::Io { action: "reading directory", path: dir.to_path_buf(), source })?;
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "wit") && path.is_file() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The package directories under `dir`: `dir` itself when it holds `*.wit` files (a single
/// package with its `deps/`), else every subdirectory (other than `deps`) that does, sorted.
pub fn wit_package_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    if has_wit_files(dir)? {
        return Ok(vec![dir.to_path_buf()]);
    }
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        action: "reading directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let mut dirs = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|source| Error::Io { action: "reading directory", path: dir.to_path_buf(), source })?;
        let path = entry.path();
        if path.is_dir() && entry.file_name() != "deps" && has_wit_files(&path)? {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Parses one WIT package directory (with its `deps/`) and encodes it as a wasm-encoded WIT
/// package, the format `wkg wit build` produces.
pub fn wit_build_package(dir: &Path) -> Result<(PackageName, Vec<u8>)> {
    let wit_error = |source: anyhow::Error| Error::Wit { dir: dir.to_path_buf(), source };
    let mut resolve = Resolve::default();
    let (package, _sources) = resolve.push_dir(dir).map_err(wit_error)?;
    let bytes = wit_component::encode(&resolve, package).map_err(wit_error)?;
    Ok((resolve.packages[package].name.clone(), bytes))
}

/// The record of released packages a WIT folder may keep beside its packages.
pub const RELEASED_WIT: &str = "released.toml";

/// The digest `wit/released.toml` records for the package in `dir`: the sha256 of its own
/// `*.wit` files (not `deps/`), sorted by name, each as `name NUL content NUL`, in hex. The same
/// digest `cargo xtask test` checks before anything builds.
pub fn wit_digest(dir: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let io = |source| Error::Io { action: "reading WIT package", path: dir.to_path_buf(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_file() && path.extension().is_some_and(|x| x == "wit") {
            files.push(path);
        }
    }
    files.sort();
    let mut hasher = Sha256::new();
    for file in files {
        let text = std::fs::read(&file).map_err(io)?;
        hasher.update(file.file_name().unwrap_or_default().as_encoded_bytes());
        hasher.update([0]);
        hasher.update(&text);
        hasher.update([0]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Refuses a package whose files differ from what `dir/released.toml` (if there is one)
/// records for its `package@version`: a released package never changes under its version, so
/// publishing it again would hand `wkg` users another package under the same name.
fn check_released(dir: &Path, package_dir: &Path, name: &PackageName) -> Result<()> {
    let record = dir.join(RELEASED_WIT);
    let Ok(text) = std::fs::read_to_string(&record) else { return Ok(()) };
    let released: std::collections::BTreeMap<String, String> = toml::from_str(&text)
        .map_err(|e| Error::Wit { dir: record.clone(), source: anyhow::anyhow!("not a table of digests: {e}") })?;
    let Some(recorded) = released.get(&name.to_string()) else { return Ok(()) };
    let digest = wit_digest(package_dir)?;
    if *recorded != digest {
        return Err(Error::Wit {
            dir: package_dir.to_path_buf(),
            source: anyhow::anyhow!(
                "package `{name}` changed since it was released (sha256 {recorded} in {}, now {digest}): a released \
                 package is never published again with other contents; raise its version",
                record.display()
            ),
        });
    }
    Ok(())
}

/// Encodes every WIT package under `dir` (see [`wit_package_dirs`]), sorted by package
/// directory. Fails if there is none, if two directories define the same package, or if a
/// package differs from the digest `dir/released.toml` records for its version.
pub fn wit_build(dir: &Path) -> Result<Vec<(PackageName, Vec<u8>)>> {
    let dirs = wit_package_dirs(dir)?;
    if dirs.is_empty() {
        return Err(Error::NoWitPackages { dir: dir.to_path_buf() });
    }
    let mut packages: Vec<(PackageName, Vec<u8>)> = Vec::with_capacity(dirs.len());
    for package_dir in &dirs {
        let (name, bytes) = wit_build_package(package_dir)?;
        check_released(dir, package_dir, &name)?;
        if packages.iter().any(|(seen, _)| *seen == name) {
            return Err(Error::Wit {
                dir: package_dir.clone(),
                source: anyhow::anyhow!("package `{name}` is defined in two directories"),
            });
        }
        packages.push((name, bytes));
    }
    Ok(packages)
}

/// The file name `wit build` writes a package to: `<namespace>_<name>@<version>.wasm`
/// (no `:`, which some file systems refuse).
pub fn wit_file_name(name: &PackageName) -> String {
    match &name.version {
        Some(version) => format!("{}_{}@{version}.wasm", name.namespace, name.name),
        None => format!("{}_{}.wasm", name.namespace, name.name),
    }
}

/// The reference a package is published at: `REGISTRY/<namespace>/<name>:<version>`.
///
/// `registry` is a host with an optional port and an optional namespace prefix
/// (`ghcr.io/acme` gives `ghcr.io/acme/tollgate/billing:0.1.0`), optionally prefixed with
/// `oci://`. Packages without a version cannot be published.
pub fn wit_reference(registry: &str, name: &PackageName) -> Result<String> {
    let base = registry.strip_prefix(OCI_SCHEME).unwrap_or(registry).trim_end_matches('/');
    let invalid = |reason: &str| Error::InvalidRegistry { registry: registry.to_string(), reason: reason.to_string() };
    if base.is_empty() {
        return Err(invalid("it is empty"));
    }
    if base.contains('@') || base.contains("://") {
        return Err(invalid("expected `HOST[:PORT][/PREFIX]`, without scheme, tag or digest"));
    }
    let version = name.version.as_ref().ok_or_else(|| Error::WitPackageWithoutVersion { package: name.to_string() })?;
    let reference = format!("{base}/{}/{}:{version}", name.namespace, name.name);
    // Let the reference grammar judge the result (and the registry part of it).
    let parsed = parse_reference(&reference)?;
    if parsed.tag() != Some(version.to_string().as_str()) || !reference.starts_with(parsed.registry()) {
        return Err(invalid("expected `HOST[:PORT][/PREFIX]`, without scheme, tag or digest"));
    }
    Ok(reference)
}

/// Publishes wasm-encoded WIT `packages` (from [`wit_build`]) to `registry` the way
/// `wkg publish` lays them out (see [`wit_reference`]). Each manifest gets the package version
/// as its `org.opencontainers.image.version` annotation (overriding `options.version`).
pub async fn wit_publish(
    registry: &str,
    packages: &[(PackageName, Vec<u8>)],
    options: &PushOptions,
) -> Result<Vec<Pushed>> {
    let mut pushed = Vec::with_capacity(packages.len());
    for (name, bytes) in packages {
        let reference = wit_reference(registry, name)?;
        let mut options = options.clone();
        options.version = name.version.as_ref().map(ToString::to_string);
        let what = format!("WIT package `{name}`");
        pushed.push(push_described(&reference, bytes.clone(), &what, &options).await?);
    }
    Ok(pushed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> PackageName {
        let mut resolve = Resolve::default();
        let id = resolve.push_str("a.wit", &format!("package {text};\ninterface i {{}}\n")).unwrap();
        resolve.packages[id].name.clone()
    }

    #[test]
    fn references_follow_wkg_layout() {
        let billing = name("tollgate:billing@0.1.0");
        assert_eq!(wit_reference("127.0.0.1:5000", &billing).unwrap(), "127.0.0.1:5000/tollgate/billing:0.1.0");
        assert_eq!(wit_reference("oci://ghcr.io/acme/", &billing).unwrap(), "ghcr.io/acme/tollgate/billing:0.1.0");
        assert!(wit_reference("https://ghcr.io", &billing).is_err());
        assert!(wit_reference("ghcr.io:tag", &billing).is_err());
        let err = wit_reference("ghcr.io", &name("tollgate:billing")).unwrap_err();
        assert!(err.to_string().contains("tollgate:billing"), "{err}");
        assert_eq!(wit_file_name(&billing), "tollgate_billing@0.1.0.wasm");
    }

    #[test]
    fn builds_packages_with_deps() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("types.wit"), "package test:base@0.2.0;\ninterface types { type money = s64; }\n")
            .unwrap();
        let app = dir.path().join("app");
        std::fs::create_dir_all(app.join("deps")).unwrap();
        std::fs::write(
            app.join("app.wit"),
            "package test:app@1.0.0;\ninterface api { use test:base/types@0.2.0.{money}; \
             total: func() -> money; }\nworld actor { export api; }\n",
        )
        .unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&base, app.join("deps").join("base")).unwrap();
        #[cfg(not(unix))]
        {
            std::fs::create_dir_all(app.join("deps").join("base")).unwrap();
            std::fs::copy(base.join("types.wit"), app.join("deps/base/types.wit")).unwrap();
        }

        let packages = wit_build(dir.path()).unwrap();
        let names: Vec<String> = packages.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, ["test:app@1.0.0", "test:base@0.2.0"]);
        for (name, bytes) in &packages {
            match wit_component::decode(bytes).unwrap() {
                wit_component::DecodedWasm::WitPackage(resolve, id) => {
                    assert_eq!(resolve.packages[id].name, *name);
                }
                wit_component::DecodedWasm::Component(..) => panic!("{name} is not a package"),
            }
        }

        let broken = dir.path().join("broken");
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(broken.join("x.wit"), "package test:broken;\ninterface {").unwrap();
        let err = wit_build(dir.path()).unwrap_err();
        assert!(err.to_string().contains("broken"), "{err}");

        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(wit_build(empty.path()), Err(Error::NoWitPackages { .. })));
    }
}

#[cfg(test)]
mod released_tests {
    use super::*;

    #[test]
    fn the_repositorys_packages_build_as_released() {
        let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let names: Vec<String> = wit_build(&wit).unwrap().iter().map(|(n, _)| n.to_string()).collect();
        for expected in ["tollgate:billing@0.2.0", "tollgate:admission@0.2.0", "tollgate:eventsourcing@0.2.0"] {
            assert!(names.iter().any(|n| n == expected), "{expected} not built: {names:?}");
        }
        assert!(
            !names.iter().any(|n| n == "tollgate:billing@0.1.0"),
            "the retired billing 0.1.0 is never published again"
        );
    }

    #[test]
    fn a_package_that_differs_from_its_released_digest_is_not_built() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("types.wit"), "package test:base@0.2.0;\ninterface types { type money = s64; }\n")
            .unwrap();
        let digest = wit_digest(&base).unwrap();
        std::fs::write(dir.path().join(RELEASED_WIT), format!("\"test:base@0.2.0\" = \"{digest}\"\n")).unwrap();
        wit_build(dir.path()).unwrap();

        std::fs::write(base.join("types.wit"), "package test:base@0.2.0;\ninterface types { type money = u64; }\n")
            .unwrap();
        let err = wit_build(dir.path()).unwrap_err().to_string();
        assert!(err.contains("package `test:base@0.2.0` changed since it was released"), "{err}");
    }
}
