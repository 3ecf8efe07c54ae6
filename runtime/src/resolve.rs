//! Where an actor's component comes from: a file, or `oci://REGISTRY/REPO:TAG` (or
//! `...@sha256:DIGEST`) pulled through the digest-keyed cache of `tollgate-oci`.

use std::path::{Path, PathBuf};
use tollgate_oci::{Cache, Credentials, OCI_SCHEME, RegistryOptions};

/// Whether `file` is an OCI reference (`oci://...`) rather than a path.
pub fn is_oci(file: &str) -> bool {
    file.starts_with(OCI_SCHEME)
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
/// tokio runtime.
pub fn resolve_actor(reference: &str, base: &Path, plain_http: bool) -> tollgate_oci::Result<PathBuf> {
    if !is_oci(reference) {
        return Ok(base.join(reference));
    }
    resolve_actor_in(&Cache::from_env()?, reference, base, plain_http)
}

/// [`resolve_actor`] with an explicit cache.
pub fn resolve_actor_in(
    cache: &Cache,
    reference: &str,
    base: &Path,
    plain_http: bool,
) -> tollgate_oci::Result<PathBuf> {
    if !is_oci(reference) {
        return Ok(base.join(reference));
    }
    let options = RegistryOptions { plain_http, allow_latest: false, progress: true, credentials: Credentials::Auto };
    cache.resolve_blocking(reference, &options)
}

#[cfg(test)]
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
