//! Pushing and pulling Wasm OCI artifacts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::StreamExt as _;
use oci_client::annotations::{
    ORG_OPENCONTAINERS_IMAGE_CREATED, ORG_OPENCONTAINERS_IMAGE_DESCRIPTION, ORG_OPENCONTAINERS_IMAGE_SOURCE,
    ORG_OPENCONTAINERS_IMAGE_VERSION,
};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_wasm::{
    ToConfig as _, WASM_LAYER_MEDIA_TYPE, WASM_MANIFEST_CONFIG_MEDIA_TYPE, WASM_MANIFEST_MEDIA_TYPE, WasmClient,
    WasmConfig,
};
use sha2::Digest as _;
use tempfile::NamedTempFile;
use tokio::io::AsyncWrite;

use crate::auth::Credentials;
use crate::error::{Error, Result};
use crate::progress::{Meter, TransferProgress};
use crate::reference::{format_sha256, parse_checked, sha256_digest, sha256_hex};

/// Size of the pieces a layer is uploaded in (each one advances the progress meter).
const UPLOAD_CHUNK: usize = 1024 * 1024;

/// How to talk to a registry; shared by pushes and pulls.
#[derive(Clone)]
pub struct RegistryOptions {
    /// Talk plain HTTP instead of HTTPS (local development registries).
    pub plain_http: bool,
    /// Accept references that resolve to the mutable `latest` tag.
    pub allow_latest: bool,
    /// Who hears how each transfer progresses (the `tollgate` binary draws a bar on stderr);
    /// `None`: nobody.
    pub progress: Option<Arc<dyn TransferProgress>>,
    /// Where credentials come from.
    pub credentials: Credentials,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self { plain_http: false, allow_latest: false, progress: None, credentials: Credentials::Auto }
    }
}

impl std::fmt::Debug for RegistryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryOptions")
            .field("plain_http", &self.plain_http)
            .field("allow_latest", &self.allow_latest)
            .field("progress", &self.progress.is_some())
            .field("credentials", &self.credentials)
            .finish()
    }
}

/// Options of [`push`].
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// How to talk to the registry.
    pub registry: RegistryOptions,
    /// `org.opencontainers.image.version` annotation.
    pub version: Option<String>,
    /// `org.opencontainers.image.source` annotation (a URL of the source code).
    pub source: Option<String>,
    /// `org.opencontainers.image.description` annotation.
    pub description: Option<String>,
    /// The `author` field of the Wasm config.
    pub author: Option<String>,
    /// Further manifest annotations; they override the ones above on the same key.
    pub annotations: BTreeMap<String, String>,
}

/// What [`push`] stored.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The reference pushed to, as given.
    pub reference: String,
    /// The same artifact pinned by digest: `REGISTRY/REPO@sha256:...`.
    pub pinned: String,
    /// Digest of the manifest.
    pub manifest_digest: String,
    /// Digest of the Wasm config blob.
    pub config_digest: String,
    /// Digest of the `application/wasm` layer (the component bytes).
    pub layer_digest: String,
    /// Size of the layer in bytes.
    pub size: u64,
    /// The annotations written on the manifest.
    pub annotations: BTreeMap<String, String>,
}

/// What [`pull`] fetched and verified.
#[derive(Debug)]
pub struct Pulled {
    /// The reference pulled, as given.
    pub reference: String,
    /// The same artifact pinned by digest: `REGISTRY/REPO@sha256:...`.
    pub pinned: String,
    /// Digest of the manifest.
    pub manifest_digest: String,
    /// Digest of the `application/wasm` layer (the component bytes).
    pub layer_digest: String,
    /// Size of the layer in bytes.
    pub size: u64,
    /// The manifest annotations.
    pub annotations: BTreeMap<String, String>,
    /// The Wasm config (the component's imports and exports).
    pub config: WasmConfig,
    /// Where the component was written.
    pub path: PathBuf,
}

/// Builds a client for `options`.
fn client(options: &RegistryOptions) -> WasmClient {
    // reqwest speaks TLS through rustls without a provider of its own (see the workspace's
    // Cargo.toml): ring is this process's, unless the program installed another first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = ClientConfig {
        protocol: if options.plain_http { ClientProtocol::Http } else { ClientProtocol::Https },
        ..ClientConfig::default()
    };
    WasmClient::new(Client::new(config))
}

/// Resolves credentials for `reference` and stores them in `client`.
async fn authenticate(client: &WasmClient, reference: &Reference, options: &RegistryOptions) -> Result<RegistryAuth> {
    let auth = options.credentials.to_auth(reference.resolve_registry())?;
    client.store_auth_if_needed(reference.resolve_registry(), &auth).await;
    Ok(auth)
}

fn registry_error(action: &'static str, reference: &str) -> impl FnOnce(OciDistributionError) -> Error {
    let reference = reference.to_string();
    move |source| Error::Registry { action, reference, source }
}

fn pinned(reference: &Reference, digest: &str) -> String {
    format!("{}/{}@{}", reference.registry(), reference.repository(), digest)
}

/// Pushes `wasm` (a WebAssembly component or a wasm-encoded WIT package) to `reference`
/// (`REGISTRY/REPO:TAG`, optionally prefixed with `oci://`) as a CNCF Wasm OCI artifact: an OCI
/// image manifest whose config is `application/vnd.wasm.config.v0+json` (listing the
/// component's imports and exports) and whose single layer is `application/wasm`.
///
/// The manifest carries the `org.opencontainers.image.{version,source,description,created}`
/// annotations from `options`. References resolving to `latest` are refused unless
/// `options.registry.allow_latest`.
pub async fn push(reference: &str, wasm: Vec<u8>, options: &PushOptions) -> Result<Pushed> {
    push_described(reference, wasm, "component", options).await
}

/// Reads the component at `path` and [`push`]es it.
pub async fn push_file(reference: &str, path: &Path, options: &PushOptions) -> Result<Pushed> {
    let wasm = tokio::fs::read(path).await.map_err(|source| Error::Io {
        action: "reading",
        path: path.to_path_buf(),
        source,
    })?;
    push_described(reference, wasm, &path.display().to_string(), options).await
}

pub(crate) async fn push_described(
    reference: &str,
    wasm: Vec<u8>,
    what: &str,
    options: &PushOptions,
) -> Result<Pushed> {
    let parsed = parse_checked(reference, options.registry.allow_latest)?;
    if parsed.tag().is_none() {
        return Err(Error::PushNeedsTag { reference: reference.to_string() });
    }
    let size = wasm.len() as u64;
    let invalid = |source: anyhow::Error| Error::InvalidComponent {
        what: what.to_string(),
        reference: reference.to_string(),
        source,
    };
    if !wasmparser::Parser::is_component(&wasm) {
        let reason = if wasmparser::Parser::is_core_wasm(&wasm) {
            "it is a core wasm module (build actors with `--target wasm32-wasip2`)"
        } else {
            "it does not start with the wasm component header"
        };
        return Err(invalid(anyhow::anyhow!(reason)));
    }
    let (wasm_config, layer) = WasmConfig::from_raw_component(wasm, options.author.clone()).map_err(invalid)?;
    let config = wasm_config.to_config().map_err(invalid)?;

    let mut annotations = BTreeMap::new();
    annotations.insert(ORG_OPENCONTAINERS_IMAGE_CREATED.to_string(), wasm_config.created.to_rfc3339());
    for (key, value) in [
        (ORG_OPENCONTAINERS_IMAGE_VERSION, &options.version),
        (ORG_OPENCONTAINERS_IMAGE_SOURCE, &options.source),
        (ORG_OPENCONTAINERS_IMAGE_DESCRIPTION, &options.description),
    ] {
        if let Some(value) = value {
            annotations.insert(key.to_string(), value.clone());
        }
    }
    annotations.extend(options.annotations.clone());

    let mut manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, Some(annotations.clone()));
    manifest.media_type = Some(WASM_MANIFEST_MEDIA_TYPE.to_string());
    let layer_digest = manifest.layers[0].digest.clone();
    let config_digest = manifest.config.digest.clone();

    let client = client(&options.registry);
    // Stored in the client, which applies it to every blob and manifest request.
    authenticate(&client, &parsed, &options.registry).await?;
    let meter = Meter::start(options.registry.progress.as_ref(), size, || format!("pushing {reference}"));

    // The layer: skipped when the registry already has it, else uploaded in pieces so the
    // progress meter moves.
    let exists =
        client.blob_exists(&parsed, &layer_digest).await.map_err(registry_error("checking the layer of", reference))?;
    if exists {
        meter.advance(size);
    } else {
        let data = layer.data.clone();
        let chunks = (0..data.len())
            .step_by(UPLOAD_CHUNK)
            .map(move |start| Ok(data.slice(start..(start + UPLOAD_CHUNK).min(data.len()))));
        let chunk_meter = meter.clone();
        let stream =
            futures_util::stream::iter(chunks).inspect(move |chunk: &Result<bytes::Bytes, OciDistributionError>| {
                if let Ok(chunk) = chunk {
                    chunk_meter.advance(chunk.len() as u64);
                }
            });
        client
            .push_blob_stream(&parsed, stream, &layer_digest)
            .await
            .map_err(registry_error("pushing the layer of", reference))?;
    }
    client
        .push_blob(&parsed, config.data.clone(), &config_digest)
        .await
        .map_err(registry_error("pushing the config of", reference))?;

    // The manifest is serialized here so its digest is the digest of exactly these bytes.
    let body = serde_json::to_vec(&manifest).expect("an OCI manifest always serializes");
    let manifest_digest = sha256_digest(&body);
    client
        .push_manifest_raw(&parsed, body, http::HeaderValue::from_static(WASM_MANIFEST_MEDIA_TYPE))
        .await
        .map_err(registry_error("pushing the manifest of", reference))?;
    meter.finish();
    tracing::info!(reference, %manifest_digest, "pushed");

    Ok(Pushed {
        reference: reference.to_string(),
        pinned: pinned(&parsed, &manifest_digest),
        manifest_digest,
        config_digest,
        layer_digest,
        size,
        annotations,
    })
}

/// Pulls the component at `reference` (by tag, or by digest with `REPO@sha256:...`) and writes
/// it to `dest`.
///
/// The manifest digest is checked when pulling by digest, and the config and layer digests and
/// sizes are always checked. The layer is written to a temporary file beside `dest` and renamed
/// only once verified: on any error nothing is left at `dest` (an existing file there is kept).
pub async fn pull(reference: &str, dest: &Path, options: &RegistryOptions) -> Result<Pulled> {
    let dir = match dest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tmp, mut pulled) = pull_verified(reference, &dir, options).await?;
    persist(tmp, dest)?;
    pulled.path = dest.to_path_buf();
    Ok(pulled)
}

/// The manifest digest `reference` currently points to: the digest itself when pinned, else
/// asked from the registry (a `HEAD` request).
pub async fn manifest_digest(reference: &str, options: &RegistryOptions) -> Result<String> {
    let parsed = parse_checked(reference, options.allow_latest)?;
    if let Some(digest) = parsed.digest() {
        sha256_hex(reference, digest)?;
        return Ok(digest.to_string());
    }
    let client = client(options);
    let auth = authenticate(&client, &parsed, options).await?;
    let digest = client
        .fetch_manifest_digest(&parsed, &auth)
        .await
        .map_err(registry_error("resolving the digest of", reference))?;
    sha256_hex(reference, &digest)?;
    Ok(digest)
}

/// Moves a verified temporary file to `dest`, readable like any file the user writes.
pub(crate) fn persist(tmp: NamedTempFile, dest: &Path) -> Result<()> {
    let io = |action| move |source| Error::Io { action, path: dest.to_path_buf(), source };
    tmp.as_file().sync_all().map_err(io("syncing"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(io("setting permissions of"))?;
    }
    tmp.persist(dest).map_err(|e| io("writing")(e.error))?;
    Ok(())
}

/// Pulls and verifies `reference` into a temporary file in `dir`; the caller persists it.
pub(crate) async fn pull_verified(
    reference: &str,
    dir: &Path,
    options: &RegistryOptions,
) -> Result<(NamedTempFile, Pulled)> {
    let parsed = parse_checked(reference, options.allow_latest)?;
    let client = client(options);
    let auth = authenticate(&client, &parsed, options).await?;

    // Manifest.
    let (body, served_digest) =
        client.pull_manifest_raw(&parsed, &auth, &[WASM_MANIFEST_MEDIA_TYPE]).await.map_err(|source| match source {
            OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
                Error::ManifestDigestMismatch { reference: reference.to_string(), expected, actual }
            }
            source => registry_error("pulling the manifest of", reference)(source),
        })?;
    let actual = sha256_digest(&body);
    let manifest_digest = match parsed.digest() {
        Some(expected) => {
            sha256_hex(reference, expected)?;
            if expected != actual {
                return Err(Error::ManifestDigestMismatch {
                    reference: reference.to_string(),
                    expected: expected.to_string(),
                    actual,
                });
            }
            actual
        }
        None => {
            if served_digest.starts_with("sha256:") && served_digest != actual {
                return Err(Error::ManifestDigestMismatch {
                    reference: reference.to_string(),
                    expected: served_digest,
                    actual,
                });
            }
            actual
        }
    };
    let not_wasm = |reason: String| Error::NotWasmArtifact { reference: reference.to_string(), reason };
    let manifest: OciImageManifest = serde_json::from_slice(&body)
        .map_err(|e| not_wasm(format!("the manifest is not an OCI image manifest: {e}")))?;
    if let Some(media_type) = manifest.media_type.as_deref()
        && media_type != WASM_MANIFEST_MEDIA_TYPE
    {
        return Err(not_wasm(format!("manifest media type is `{media_type}`, expected `{WASM_MANIFEST_MEDIA_TYPE}`")));
    }
    if manifest.config.media_type != WASM_MANIFEST_CONFIG_MEDIA_TYPE {
        return Err(not_wasm(format!(
            "config media type is `{}`, expected `{WASM_MANIFEST_CONFIG_MEDIA_TYPE}`",
            manifest.config.media_type
        )));
    }
    let [layer] = manifest.layers.as_slice() else {
        return Err(not_wasm(format!("it has {} layers, expected exactly one", manifest.layers.len())));
    };
    if layer.media_type != WASM_LAYER_MEDIA_TYPE {
        return Err(not_wasm(format!(
            "layer media type is `{}`, expected `{WASM_LAYER_MEDIA_TYPE}`",
            layer.media_type
        )));
    }
    sha256_hex(reference, &manifest.config.digest)?;
    sha256_hex(reference, &layer.digest)?;

    // Config.
    let mut config_bytes = Vec::new();
    client.pull_blob(&parsed, &manifest.config, &mut config_bytes).await.map_err(blob_error("config", reference))?;
    check_blob(
        reference,
        "config",
        &manifest.config.digest,
        manifest.config.size,
        &sha256_digest(&config_bytes),
        config_bytes.len() as u64,
    )?;
    let config = WasmConfig::try_from(config_bytes.as_slice())
        .map_err(|e| not_wasm(format!("the config is not a Wasm config: {e}")))?;

    // Layer, into a temporary file beside the destination.
    let tmp = tempfile::Builder::new()
        .prefix(".tollgate-pull-")
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(|source| Error::Io { action: "creating a temporary file in", path: dir.to_path_buf(), source })?;
    let file = tmp.as_file().try_clone().map_err(|source| Error::Io {
        action: "opening",
        path: tmp.path().to_path_buf(),
        source,
    })?;
    let meter = Meter::start(options.progress.as_ref(), u64::try_from(layer.size).unwrap_or(0), || {
        format!("pulling {reference}")
    });
    let mut writer = HashingWriter {
        inner: tokio::fs::File::from_std(file),
        hasher: sha2::Sha256::new(),
        written: 0,
        meter: meter.clone(),
    };
    client.pull_blob(&parsed, layer, &mut writer).await.map_err(blob_error("layer", reference))?;
    meter.finish();
    let HashingWriter { inner, hasher, written, .. } = writer;
    drop(inner);
    let layer_digest = format_sha256(hasher.finalize().as_slice());
    check_blob(reference, "layer", &layer.digest, layer.size, &layer_digest, written)?;

    tracing::info!(reference, %manifest_digest, %layer_digest, "pulled and verified");
    let pulled = Pulled {
        reference: reference.to_string(),
        pinned: pinned(&parsed, &manifest_digest),
        manifest_digest,
        layer_digest,
        size: written,
        annotations: manifest.annotations.clone().unwrap_or_default(),
        config,
        path: tmp.path().to_path_buf(),
    };
    Ok((tmp, pulled))
}

fn blob_error(blob: &'static str, reference: &str) -> impl FnOnce(OciDistributionError) -> Error {
    let reference = reference.to_string();
    move |source| match source {
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            Error::BlobDigestMismatch { reference, blob, expected, actual }
        }
        source => Error::Registry {
            action: if blob == "layer" { "pulling the layer of" } else { "pulling the config of" },
            reference,
            source,
        },
    }
}

fn check_blob(
    reference: &str,
    blob: &'static str,
    expected: &str,
    expected_size: i64,
    actual: &str,
    actual_size: u64,
) -> Result<()> {
    if expected != actual {
        return Err(Error::BlobDigestMismatch {
            reference: reference.to_string(),
            blob,
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    if u64::try_from(expected_size).ok() != Some(actual_size) {
        return Err(Error::BlobSizeMismatch {
            reference: reference.to_string(),
            blob,
            expected: expected_size,
            actual: actual_size,
        });
    }
    Ok(())
}

/// Writes through to a file while hashing what was written and advancing a progress meter.
struct HashingWriter {
    inner: tokio::fs::File,
    hasher: sha2::Sha256,
    written: u64,
    meter: Meter,
}

impl AsyncWrite for HashingWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            this.hasher.update(&buf[..*n]);
            this.written += *n as u64;
            this.meter.advance(*n as u64);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tls_tests {
    /// HTTPS clients get a TLS configuration (the ring provider): building one must not panic
    /// for want of a crypto provider.
    #[test]
    fn an_https_client_builds_with_the_ring_provider() {
        let _client = super::client(&crate::RegistryOptions::default());
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
