//! Released WIT packages never change under their version: `wit/released.toml` records the
//! sha256 of every released `package@version`, and `cargo xtask test` checks each package
//! folder under `wit/` against it before anything builds.
//!
//! A package's digest is the sha256 of its own `*.wit` files (not `deps/`, whose packages are
//! checked on their own), sorted by file name, each as `name NUL content NUL`. A change to
//! any of them, doc comments included (they are part of the published package), changes it.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// The file, relative to `wit/`.
pub const RELEASED: &str = "released.toml";

/// The digest of the package in `dir`, and its `namespace:name@version` (from its
/// `package ...;` line).
pub fn package_digest(dir: &Path) -> Result<(String, String), String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "wit"))
        .collect();
    files.sort();
    let mut hasher = Sha256::new();
    let mut package = None;
    for file in &files {
        let text = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let name = file.file_name().expect("a file has a name").to_string_lossy();
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(&text);
        hasher.update([0]);
        let declared = String::from_utf8_lossy(&text)
            .lines()
            .find_map(|l| l.trim().strip_prefix("package ").map(|r| r.trim_end_matches(';').trim().to_string()));
        package = package.or(declared);
    }
    let package = package.ok_or_else(|| format!("{}: no `package ...;` line in any .wit file", dir.display()))?;
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((package, digest))
}

/// The package folders directly under `wit_dir` (those holding `.wit` files), sorted.
fn package_dirs(wit_dir: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    let mut dirs: Vec<_> = std::fs::read_dir(wit_dir)
        .map_err(|e| format!("{}: {e}", wit_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && std::fs::read_dir(p)
                    .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "wit"))))
        })
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Reads `released.toml`: lines `"namespace:name@version" = "sha256 hex"`, comments and blank
/// lines (xtask stays free of a TOML parser; the file keeps to this one form).
fn read_released(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad =
            || format!("{}:{}: expected `\"package@version\" = \"sha256\"`, found `{line}`", path.display(), i + 1);
        let (key, value) = line.split_once('=').ok_or_else(bad)?;
        let unquote = |s: &str| s.trim().strip_prefix('"').and_then(|s| s.strip_suffix('"')).map(str::to_string);
        let (key, value) = (unquote(key).ok_or_else(bad)?, unquote(value).ok_or_else(bad)?);
        if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{}:{}: `{key}`: not a sha256 in hex", path.display(), i + 1));
        }
        if out.insert(key.clone(), value).is_some() {
            return Err(format!("{}:{}: `{key}` is listed twice", path.display(), i + 1));
        }
    }
    Ok(out)
}

/// Checks every package folder under `wit_dir` against `wit_dir/released.toml`: a released
/// package whose files changed, or a package not recorded at all, is an error naming it.
pub fn check(wit_dir: &Path) -> Result<(), String> {
    let released = read_released(&wit_dir.join(RELEASED))?;
    let mut problems = Vec::new();
    for dir in package_dirs(wit_dir)? {
        let (package, digest) = package_digest(&dir)?;
        match released.get(&package) {
            Some(recorded) if *recorded == digest => {}
            Some(recorded) => problems.push(format!(
                "`{package}` ({}) changed since it was released (sha256 {recorded}, now {digest}): a released \
                 package never changes; undo the change, or raise the package's version and list what changed in \
                 wit/README.md",
                dir.display()
            )),
            None => problems.push(format!(
                "`{package}` ({}) is not in {}: record it when it is released, as `\"{package}\" = \"{digest}\"`",
                dir.display(),
                wit_dir.join(RELEASED).display()
            )),
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n  ")) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            // `deps/` holds symlinks to sibling packages, which the digest does not read.
            if path.is_file() {
                std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
            } else if path.is_dir() && path.file_name().unwrap() != "deps" {
                copy_dir(&path, &to.join(path.file_name().unwrap()));
            }
        }
    }

    fn wit_copy() -> PathBuf {
        let to = std::env::temp_dir().join(format!(
            "xtask-released-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&to);
        copy_dir(&crate::root().join("wit"), &to);
        to
    }

    #[test]
    fn the_repository_matches_its_record() {
        check(&crate::root().join("wit")).unwrap();
    }

    #[test]
    fn a_changed_doc_comment_in_a_released_package_is_refused_by_name() {
        let wit = wit_copy();
        let types = wit.join("billing/types.wit");
        let text = std::fs::read_to_string(&types).unwrap();
        std::fs::write(&types, text.replacen("///", "/// (edited)", 1)).unwrap();
        let err = check(&wit).unwrap_err();
        assert!(err.contains("`tollgate:billing@0.2.0`"), "{err}");
        assert!(err.contains("changed since it was released"), "{err}");
        assert!(!err.contains("tollgate:admission"), "only the changed package is named: {err}");
        std::fs::remove_dir_all(&wit).unwrap();
    }

    #[test]
    fn an_unrecorded_version_is_refused_with_the_line_to_record() {
        let wit = wit_copy();
        let worlds = wit.join("admission/admission.wit");
        let text = std::fs::read_to_string(&worlds).unwrap();
        std::fs::write(&worlds, text.replacen("tollgate:admission@0.2.0;", "tollgate:admission@0.3.0;", 1)).unwrap();
        let err = check(&wit).unwrap_err();
        assert!(err.contains("`tollgate:admission@0.3.0`") && err.contains("is not in"), "{err}");
        std::fs::remove_dir_all(&wit).unwrap();
    }
}
