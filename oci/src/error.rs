//! The error type of this crate.

use std::path::PathBuf;

use oci_client::errors::OciDistributionError;

/// Everything that can go wrong while pushing, pulling, caching or building WIT packages.
///
/// Every variant names what it was working on (the reference, the path, the package) so the
/// message alone tells the user what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The reference is not a valid OCI reference.
    #[error("invalid OCI reference `{reference}`: {source}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why it did not parse.
        #[source]
        source: oci_client::ParseError,
    },

    /// The reference names the mutable `latest` tag (explicitly or by having no tag).
    #[error(
        "refusing `{reference}`: it resolves to the mutable `latest` tag; name a version tag \
         or a digest (`REF@sha256:...`), or allow it explicitly (--allow-latest)"
    )]
    LatestRefused {
        /// The reference as given.
        reference: String,
    },

    /// A push reference has no tag to push to.
    #[error("cannot push to `{reference}`: a push needs a tag (`REPO:TAG`), not only a digest")]
    PushNeedsTag {
        /// The reference as given.
        reference: String,
    },

    /// The bytes to push are not a WebAssembly component or a wasm-encoded WIT package.
    #[error("cannot push {what} to `{reference}`: not a WebAssembly component or WIT package: {source:#}")]
    InvalidComponent {
        /// What was being pushed (usually a file path).
        what: String,
        /// The reference it was pushed to.
        reference: String,
        /// What the component decoder said.
        #[source]
        source: anyhow::Error,
    },

    /// The registry (or the connection to it) failed.
    #[error("registry error while {action} `{reference}`: {source}")]
    Registry {
        /// What we were doing, e.g. "pulling the manifest of".
        action: &'static str,
        /// The reference involved.
        reference: String,
        /// The error reported by the OCI client.
        #[source]
        source: OciDistributionError,
    },

    /// The manifest served by the registry does not hash to the digest that was asked for.
    #[error("manifest digest mismatch for `{reference}`: expected {expected}, got {actual}")]
    ManifestDigestMismatch {
        /// The reference being pulled.
        reference: String,
        /// The digest that was asked for.
        expected: String,
        /// The digest of the bytes that were received.
        actual: String,
    },

    /// A blob (config or layer) does not hash to the digest its manifest names.
    #[error(
        "{blob} digest mismatch for `{reference}`: expected {expected}, got {actual}; \
         nothing was written"
    )]
    BlobDigestMismatch {
        /// The reference being pulled.
        reference: String,
        /// Which blob: `layer` or `config`.
        blob: &'static str,
        /// The digest named by the manifest.
        expected: String,
        /// The digest of the bytes that were received.
        actual: String,
    },

    /// A blob does not have the size its manifest names.
    #[error("{blob} size mismatch for `{reference}`: expected {expected} bytes, got {actual}")]
    BlobSizeMismatch {
        /// The reference being pulled.
        reference: String,
        /// Which blob: `layer` or `config`.
        blob: &'static str,
        /// The size named by the manifest.
        expected: i64,
        /// The number of bytes received.
        actual: u64,
    },

    /// A digest uses an algorithm other than sha256.
    #[error("unsupported digest `{digest}` in `{reference}`: only sha256 is supported")]
    UnsupportedDigest {
        /// The reference involved.
        reference: String,
        /// The digest.
        digest: String,
    },

    /// The artifact is not laid out as a CNCF Wasm OCI artifact.
    #[error("`{reference}` is not a Wasm OCI artifact: {reason}")]
    NotWasmArtifact {
        /// The reference being pulled.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A filesystem operation failed.
    #[error("{action} `{}`: {source}", path.display())]
    Io {
        /// What we were doing, e.g. "writing".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// Registry credentials could not be loaded.
    #[error("registry credentials for `{registry}`: {reason}")]
    Credentials {
        /// The registry host the credentials were for.
        registry: String,
        /// What is wrong.
        reason: String,
    },

    /// A WIT package could not be parsed, resolved or encoded.
    #[error("WIT package in `{}`: {source:#}", dir.display())]
    Wit {
        /// The package directory.
        dir: PathBuf,
        /// What wit-parser / wit-component said.
        #[source]
        source: anyhow::Error,
    },

    /// A WIT package has no version, so it cannot be published under a semver tag.
    #[error("WIT package `{package}` has no version (`package ns:name@x.y.z;`); it cannot be published")]
    WitPackageWithoutVersion {
        /// The package name.
        package: String,
    },

    /// The WIT directory holds no package.
    #[error("no WIT package found under `{}` (expected `<dir>/<name>/*.wit`)", dir.display())]
    NoWitPackages {
        /// The directory searched.
        dir: PathBuf,
    },

    /// A registry argument for `wit publish` is malformed.
    #[error("invalid registry `{registry}`: {reason}")]
    InvalidRegistry {
        /// The registry as given.
        registry: String,
        /// What is wrong with it.
        reason: String,
    },

    /// No cache directory could be determined.
    #[error("no cache directory: set TOLLGATE_CACHE_DIR, XDG_CACHE_HOME or HOME, or pass one explicitly")]
    NoCacheDir,

    /// A blocking helper was called from inside an async runtime.
    #[error("{0} cannot be called from inside a tokio runtime; use the async function instead")]
    InsideRuntime(&'static str),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
