//! Where an actor's component comes from: a file, or `oci://REGISTRY/REPO:TAG` (or
//! `...@sha256:DIGEST`) pulled through the digest-keyed cache of `tollgate-oci`.
//!
//! Pulling needs the cargo feature `oci` (off by default: it brings in `tollgate-oci`, its OCI
//! client and TLS stack). Without it an `oci://` file is refused with
//! [`ManifestError::OciDisabled`](crate::manifest::ManifestError::OciDisabled) when the manifest
//! is parsed, or [`RuntimeError::OciDisabled`] when one reaches the [`Loader`](crate::Loader)
//! another way.

use crate::RuntimeError;
use std::path::{Path, PathBuf};
#[cfg(feature = "oci")]
use std::sync::{Arc, RwLock};
#[cfg(feature = "oci")]
use tollgate_oci::{Cache, Credentials, RegistryOptions, TransferProgress};

/// The scheme that marks an actor file as an OCI reference, the one `tollgate-oci` reads.
const OCI_SCHEME: &str = "oci://";
#[cfg(feature = "oci")]
const _: () = assert!(matches!(tollgate_oci::OCI_SCHEME.as_bytes(), b"oci://"), "tollgate-oci reads another scheme");

/// Whether `file` is an OCI reference (`oci://...`) rather than a path.
pub fn is_oci(file: &str) -> bool {
    file.starts_with(OCI_SCHEME)
}

/// The local file of `file`, an actor's file as a manifest names it (`actor` names the actor,
/// when known): a path as it is, or an `oci://` reference pulled as [`resolve_actor`] does.
/// Without the `oci` feature an `oci://` reference is refused.
pub(crate) fn actor_file(actor: Option<&str>, file: &Path, plain_http: bool) -> Result<PathBuf, RuntimeError> {
    let reference = file.to_string_lossy();
    if !is_oci(&reference) {
        return Ok(PathBuf::from(&*reference));
    }
    #[cfg(feature = "oci")]
    {
        let _ = actor;
        Ok(resolve_actor(&reference, Path::new(""), plain_http)?)
    }
    #[cfg(not(feature = "oci"))]
    {
        let _ = plain_http;
        Err(RuntimeError::OciDisabled { actor: actor.map(str::to_string), reference: reference.into_owned() })
    }
}

/// Who hears how the pulls of [`resolve_actor`] progress; set by [`set_pull_progress`].
#[cfg(feature = "oci")]
static PULL_PROGRESS: RwLock<Option<Arc<dyn TransferProgress>>> = RwLock::new(None);

/// Tells `progress` how every later pull of [`resolve_actor`] (and so of every `oci://` actor
/// the runtime loads) progresses; `None`, the default, tells nobody. Process-wide, like the
/// terminal a progress bar is drawn on: the `tollgate` binary sets its bar once at start.
#[cfg(feature = "oci")]
pub fn set_pull_progress(progress: Option<Arc<dyn TransferProgress>>) {
    *PULL_PROGRESS.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = progress;
}

/// The local file of the actor at `reference`.
///
/// - `oci://REGISTRY/REPO:TAG` or `oci://REGISTRY/REPO@sha256:DIGEST`: pulled into the cache
///   at `tollgate_oci::default_cache_dir()` (`$TOLLGATE_CACHE_DIR`, else
///   `$XDG_CACHE_HOME/tollgate`, else `~/.cache/tollgate`) unless that digest is already there,
///   and the cached file returned. Every digest is verified; a tag costs one `HEAD` request, a
///   cached digest none. References resolving to `latest` are refused. Credentials come from
///   `TOLLGATE_REGISTRY_USERNAME`/`_PASSWORD`, else the docker config file. The registry is
///   spoken to over HTTPS unless `plain_http` (for a local development registry).
/// - Anything else is a path; a relative one is joined to `base`.
///
/// Synchronous: fails with [`tollgate_oci::Error::InsideRuntime`] when called from inside a
/// tokio runtime. Pulls report their progress as [`set_pull_progress`] said. Needs the `oci`
/// feature.
#[cfg(feature = "oci")]
pub fn resolve_actor(reference: &str, base: &Path, plain_http: bool) -> tollgate_oci::Result<PathBuf> {
    if !is_oci(reference) {
        return Ok(base.join(reference));
    }
    resolve_actor_in(&Cache::from_env()?, reference, base, plain_http)
}

/// [`resolve_actor`] with an explicit cache.
#[cfg(feature = "oci")]
pub fn resolve_actor_in(
    cache: &Cache,
    reference: &str,
    base: &Path,
    plain_http: bool,
) -> tollgate_oci::Result<PathBuf> {
    if !is_oci(reference) {
        return Ok(base.join(reference));
    }
    let progress = PULL_PROGRESS.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    let options = RegistryOptions { plain_http, allow_latest: false, progress, credentials: Credentials::Auto };
    cache.resolve_blocking(reference, &options)
}

#[cfg(all(test, feature = "oci"))]
mod tests {
    use super::*;

    #[test]
    fn paths_are_joined_to_the_base() {
        let base = Path::new("/manifests");
        assert_eq!(resolve_actor("a.wasm", base, false).unwrap(), Path::new("/manifests/a.wasm"));
        assert_eq!(resolve_actor("/abs/a.wasm", base, true).unwrap(), Path::new("/abs/a.wasm"));
        assert!(!is_oci("oci.wasm") && is_oci("oci://ghcr.io/a/b:1"));
    }

    #[test]
    fn oci_references_are_checked_before_any_network() {
        let cache = Cache::new(std::env::temp_dir().join("tollgate-resolve-never-written"));
        let err = resolve_actor_in(&cache, "oci://127.0.0.1:1/a/b", Path::new("."), true).unwrap_err();
        assert!(matches!(err, tollgate_oci::Error::LatestRefused { .. }), "{err}");
        let err = resolve_actor_in(&cache, "oci://127.0.0.1:1/A B:1", Path::new("."), true).unwrap_err();
        assert!(matches!(err, tollgate_oci::Error::InvalidReference { .. }), "{err}");
    }
}
