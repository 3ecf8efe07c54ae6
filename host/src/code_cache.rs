//! A cache of compiled actors on disk, so a component is compiled once per engine
//! configuration, not once per process.
//!
//! An entry is `<cache dir>/compiled/<key>.cwasm`, where the key is the sha256 of the component
//! bytes followed by a sha256 of the engine's
//! [`precompile_compatibility_hash`](wasmtime::Engine::precompile_compatibility_hash) (wasmtime
//! version, compiler and tunables). Next to it, `<key>.sha256` holds the sha256 of the `.cwasm`
//! bytes, checked before every reuse. Entries are written to a temporary file and renamed into
//! place, so a torn write is never read; an entry that does not match its checksum or does not
//! deserialize is deleted and the component compiled again. A cache that cannot be written only
//! costs the compile time: failures are logged, never returned.

use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Environment variable that overrides the cache directory (shared with `tollgate-oci`).
pub const CACHE_DIR_ENV: &str = "TOLLGATE_CACHE_DIR";

/// The default cache directory: `$TOLLGATE_CACHE_DIR`, else `$XDG_CACHE_HOME/tollgate`, else
/// `~/.cache/tollgate`; `None` when none of these is set. Empty variables count as unset.
///
/// The same directory `tollgate_oci::default_cache_dir` uses; compiled code lives under its
/// `compiled/` subdirectory.
pub fn cache_dir() -> Option<PathBuf> {
    cache_dir_from(|name| std::env::var_os(name))
}

fn cache_dir_from(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let var = |name| var(name).filter(|v| !v.is_empty());
    if let Some(dir) = var(CACHE_DIR_ENV) {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("tollgate"));
    }
    var("HOME").map(|home| PathBuf::from(home).join(".cache").join("tollgate"))
}

/// How a [`CodeCache`] has been used so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodeCacheStats {
    /// Loads served from a cached entry.
    pub hits: u64,
    /// Loads that found no entry and compiled.
    pub misses: u64,
    /// Loads that found a damaged entry (checksum or deserialization failed), deleted it and
    /// compiled.
    pub corrupt: u64,
}

/// Compiled components on disk under `<dir>/compiled/`. See the [module docs](self).
#[derive(Debug)]
pub struct CodeCache {
    dir: PathBuf,
    hits: AtomicU64,
    misses: AtomicU64,
    corrupt: AtomicU64,
}

impl CodeCache {
    /// A cache rooted at the cache directory `dir` (entries go to `dir/compiled/`, created on
    /// first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CodeCache {
            dir: dir.into().join("compiled"),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
        }
    }

    /// The directory holding the `.cwasm` entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Counts of hits, misses and damaged entries since this cache was created.
    pub fn stats(&self) -> CodeCacheStats {
        CodeCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
        }
    }

    /// The cache key of `bytes` compiled by `engine`: hex sha256 of the bytes, `-`, hex sha256
    /// of the engine's compatibility hash.
    pub fn key(engine: &Engine, bytes: &[u8]) -> String {
        use std::hash::Hash as _;
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        format!("{}-{}", hex(&Sha256::digest(bytes)), hex(&hasher.0.finalize()))
    }

    /// Where the compiled form of `bytes` for `engine` is (or would be) stored.
    pub fn entry_path(&self, engine: &Engine, bytes: &[u8]) -> PathBuf {
        self.dir.join(format!("{}.cwasm", Self::key(engine, bytes)))
    }

    /// The cached compilation of `bytes`, or what `compile` returns, stored for next time.
    pub(crate) fn load_or_compile<E>(
        &self,
        engine: &Engine,
        bytes: &[u8],
        compile: impl FnOnce() -> Result<Component, E>,
    ) -> Result<Component, E> {
        let path = self.entry_path(engine, bytes);
        let checksum_path = path.with_extension("sha256");
        match self.lookup(engine, &path, &checksum_path) {
            Some(component) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(component);
            }
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        let component = compile()?;
        if let Err(e) = self.store(&component, &path, &checksum_path) {
            tracing::warn!(path = %path.display(), "cannot write the compiled-code cache: {e:#}");
        }
        Ok(component)
    }

    fn lookup(&self, engine: &Engine, path: &Path, checksum_path: &Path) -> Option<Component> {
        let expected = match std::fs::read_to_string(checksum_path) {
            Ok(text) => text.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %checksum_path.display(), "cannot read the compiled-code cache: {e}");
                return None;
            }
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot read the compiled-code cache: {e}");
                return None;
            }
        };
        if hex(&Sha256::digest(&bytes)) != expected {
            self.discard(path, checksum_path, "its checksum does not match");
            return None;
        }
        // From the bytes just checked, not by mapping the file: a mapping would see whatever
        // another process later writes there (and a truncation would fault the host).
        // SAFETY: `bytes` are exactly what `Component::serialize` produced in `store` (checked
        // against the checksum written with it), for an engine with the same compatibility
        // hash (part of the key; wasmtime checks it again).
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(component) => Some(component),
            Err(e) => {
                self.discard(path, checksum_path, &format!("it does not deserialize: {e:#}"));
                None
            }
        }
    }

    fn discard(&self, path: &Path, checksum_path: &Path, why: &str) {
        self.corrupt.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(path = %path.display(), "discarding a compiled-code cache entry: {why}");
        let _ = std::fs::remove_file(checksum_path);
        let _ = std::fs::remove_file(path);
    }

    fn store(&self, component: &Component, path: &Path, checksum_path: &Path) -> anyhow::Result<()> {
        let bytes = component.serialize()?;
        std::fs::create_dir_all(&self.dir)?;
        // The code first, then its checksum: a reader sees either no checksum (a miss) or a
        // checksum of complete code.
        write_atomically(&self.dir, path, &bytes)?;
        write_atomically(&self.dir, checksum_path, hex(&Sha256::digest(&bytes)).as_bytes())
    }
}

/// Writes `bytes` to a temporary file in `dir`, flushes it to disk and renames it to `path`.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)?;
    Ok(())
}

/// Feeds what a `Hash` impl writes into sha256.
struct Sha256Hasher(Sha256);

impl std::hash::Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("sha256 has 32 bytes"))
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_precedence() {
        fn env(vars: &[(&str, &str)]) -> Option<PathBuf> {
            cache_dir_from(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| OsString::from(v)))
        }
        let all = [(CACHE_DIR_ENV, "/t"), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")];
        assert_eq!(env(&[]), None);
        assert_eq!(env(&all), Some(PathBuf::from("/t")));
        assert_eq!(env(&all[1..]), Some(PathBuf::from("/x/tollgate")));
        assert_eq!(env(&all[2..]), Some(PathBuf::from("/h/.cache/tollgate")));
        assert_eq!(env(&[(CACHE_DIR_ENV, ""), ("HOME", "/h")]), Some(PathBuf::from("/h/.cache/tollgate")));
    }
}
