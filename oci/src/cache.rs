//! A local, content-addressed cache of pulled components for `oci://REF` references.
//!
//! Layout under the cache directory:
//! - `oci/blobs/sha256/<hex>.wasm`: a component, named by the digest of its bytes (the layer
//!   digest); re-hashed before every reuse.
//! - `oci/manifests/sha256/<hex>`: the layer digest a manifest digest points to.
//!
//! The rest of the cache directory is free for other caches (e.g. compiled code).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::reference::{parse_checked, sha256_digest, sha256_hex};
use crate::transfer::{RegistryOptions, manifest_digest, persist, pull_verified};

/// Environment variable that overrides the cache directory.
pub const CACHE_DIR_ENV: &str = "TOLLGATE_CACHE_DIR";

/// The default cache directory: `$TOLLGATE_CACHE_DIR`, else `$XDG_CACHE_HOME/tollgate`, else
/// `~/.cache/tollgate`.
pub fn default_cache_dir() -> Result<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var(CACHE_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("tollgate"));
    }
    var("HOME").map(|home| PathBuf::from(home).join(".cache").join("tollgate")).ok_or(Error::NoCacheDir)
}

/// A cache of components pulled from OCI registries, keyed by digest.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// A cache rooted at `dir` (created on first use).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// A cache rooted at [`default_cache_dir`].
    pub fn from_env() -> Result<Self> {
        default_cache_dir().map(Self::new)
    }

    /// The cache's root directory (shared with other caches, such as compiled code).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blobs_dir(&self) -> PathBuf {
        self.dir.join("oci").join("blobs").join("sha256")
    }

    fn manifests_dir(&self) -> PathBuf {
        self.dir.join("oci").join("manifests").join("sha256")
    }

    /// Where the component with layer digest `layer_digest` is (or would be) cached.
    pub fn blob_path(&self, layer_digest: &str) -> Result<PathBuf> {
        let hex = sha256_hex(layer_digest, layer_digest)?;
        Ok(self.blobs_dir().join(format!("{hex}.wasm")))
    }

    /// The cached component for manifest digest `manifest_digest`, if it is present and its
    /// bytes still hash to its name.
    pub fn lookup(&self, manifest_digest: &str) -> Result<Option<PathBuf>> {
        let hex = sha256_hex(manifest_digest, manifest_digest)?;
        let index = self.manifests_dir().join(hex);
        let layer_digest = match std::fs::read_to_string(&index) {
            Ok(text) => text.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io { action: "reading cache entry", path: index, source });
            }
        };
        let Ok(path) = self.blob_path(&layer_digest) else {
            tracing::warn!(index = %index.display(), "ignoring malformed cache entry");
            return Ok(None);
        };
        match std::fs::read(&path) {
            Ok(bytes) if sha256_digest(&bytes) == layer_digest => Ok(Some(path)),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "cached component is corrupt; pulling again");
                Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { action: "reading cached component", path, source }),
        }
    }

    /// Returns the local path of the component at `reference` (`oci://REGISTRY/REPO:TAG` or
    /// `...@sha256:...`; the `oci://` is optional), pulling it into the cache unless the
    /// manifest digest is already cached.
    ///
    /// A digest reference that is cached needs no network; a tag is first resolved to its
    /// current digest with one `HEAD` request, then pulled by that digest.
    pub async fn resolve(&self, reference: &str, options: &RegistryOptions) -> Result<PathBuf> {
        let digest = manifest_digest(reference, options).await?;
        if let Some(path) = self.lookup(&digest)? {
            tracing::debug!(reference, %digest, path = %path.display(), "cache hit");
            return Ok(path);
        }
        let parsed = parse_checked(reference, options.allow_latest)?;
        let pinned = format!("{}/{}@{digest}", parsed.registry(), parsed.repository());
        for dir in [self.blobs_dir(), self.manifests_dir()] {
            std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
                action: "creating cache directory",
                path: dir.clone(),
                source,
            })?;
        }
        let (tmp, pulled) = pull_verified(&pinned, &self.blobs_dir(), options).await?;
        let path = self.blob_path(&pulled.layer_digest)?;
        persist(tmp, &path)?;

        let index = self.manifests_dir().join(sha256_hex(&digest, &digest)?);
        let mut entry = tempfile::NamedTempFile::new_in(self.manifests_dir()).map_err(|source| Error::Io {
            action: "creating a temporary file in",
            path: self.manifests_dir(),
            source,
        })?;
        std::io::Write::write_all(&mut entry, pulled.layer_digest.as_bytes()).map_err(|source| Error::Io {
            action: "writing",
            path: entry.path().to_path_buf(),
            source,
        })?;
        persist(entry, &index)?;
        Ok(path)
    }

    /// [`Cache::resolve`] for synchronous callers: runs it on a private single-threaded
    /// runtime. Fails with [`Error::InsideRuntime`] when called from inside a tokio runtime.
    pub fn resolve_blocking(&self, reference: &str, options: &RegistryOptions) -> Result<PathBuf> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::InsideRuntime("Cache::resolve_blocking"));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Io { action: "starting an async runtime for", path: self.dir.clone(), source })?;
        runtime.block_on(self.resolve(reference, options))
    }
}

/// [`Cache::resolve`] on the default cache ([`default_cache_dir`]).
pub async fn resolve(reference: &str, options: &RegistryOptions) -> Result<PathBuf> {
    Cache::from_env()?.resolve(reference, options).await
}
