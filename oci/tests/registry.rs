//! Push and pull against a real registry (Debian's `docker-registry` on 127.0.0.1).

#![allow(clippy::unwrap_used)] // a test fails loudly on the first unexpected error

use std::path::{Path, PathBuf};

use tollgate_host_test::fixtures::REFERENCE_ACTORS;
use tollgate_oci::testing::{
    Registry, actor_reference, actors_dir, local, local_push, require_actors, require_tool, tiny_component,
    workspace_root,
};
use tollgate_oci::{
    Cache, Error, RegistryOptions, WASM_LAYER_MEDIA_TYPE, WASM_MANIFEST_CONFIG_MEDIA_TYPE, WASM_MANIFEST_MEDIA_TYPE,
    pull, push, wit_build, wit_publish,
};

/// Pulls `reference` into a fresh file and returns its bytes.
async fn pull_bytes(reference: &str, options: &RegistryOptions) -> (Vec<u8>, tollgate_oci::Pulled) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.wasm");
    let pulled = pull(reference, &dest, options).await.unwrap_or_else(|e| panic!("pulling {reference}: {e}"));
    assert_eq!(pulled.path, dest);
    (std::fs::read(&dest).unwrap(), pulled)
}

/// Files in `dir` (to check that a failed pull left nothing behind).
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    entries
}

#[tokio::test]
async fn tiny_component_round_trips_with_annotations_and_config() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let wasm = tiny_component();
    let reference = format!("{}/tollgate-test/tiny:0.1.0", registry.host());
    let mut options = local_push();
    options.version = Some("0.1.0".into());
    options.source = Some("https://example.invalid/tollgate".into());
    options.description = Some("a tiny test actor".into());
    options.annotations.insert("dev.tollgate.kind".into(), "aggregate".into());
    let pushed = push(&reference, wasm.clone(), &options).await.unwrap();
    assert!(pushed.pinned.ends_with(&pushed.manifest_digest));

    let (bytes, pulled) = pull_bytes(&reference, &local()).await;
    assert_eq!(bytes, wasm, "pulled bytes differ from pushed bytes");
    assert_eq!(pulled.manifest_digest, pushed.manifest_digest);
    assert_eq!(pulled.layer_digest, pushed.layer_digest);
    assert_eq!(pulled.size, wasm.len() as u64);
    let annotation = |key: &str| pulled.annotations.get(key).map(String::as_str);
    assert_eq!(annotation("org.opencontainers.image.version"), Some("0.1.0"));
    assert_eq!(annotation("org.opencontainers.image.source"), Some("https://example.invalid/tollgate"));
    assert_eq!(annotation("org.opencontainers.image.description"), Some("a tiny test actor"));
    assert_eq!(annotation("dev.tollgate.kind"), Some("aggregate"));
    assert!(annotation("org.opencontainers.image.created").is_some());

    assert_eq!(pulled.config.architecture, "wasm");
    assert_eq!(pulled.config.os, "wasip2");
    assert_eq!(pulled.config.layer_digests, std::slice::from_ref(&pushed.layer_digest));
    let component = pulled.config.component.as_ref().expect("component info");
    assert_eq!(component.imports, ["test:tiny/host@0.1.0"]);
    assert_eq!(component.exports, ["run"]);

    // By digest, too.
    let (bytes, by_digest) = pull_bytes(&pushed.pinned, &local()).await;
    assert_eq!(bytes, wasm);
    assert_eq!(by_digest.manifest_digest, pushed.manifest_digest);

    // Not a component: refused before anything reaches the registry.
    let err =
        push(&format!("{}/tollgate-test/junk:0.1.0", registry.host()), b"\0asm\x01\0\0\0".to_vec(), &local_push())
            .await
            .unwrap_err();
    assert!(matches!(err, Error::InvalidComponent { .. }), "{err}");
    assert!(err.to_string().contains("core wasm module"), "{err}");
    let err =
        push(&format!("{}/tollgate-test/junk:0.1.0", registry.host()), b"not wasm at all".to_vec(), &local_push())
            .await
            .unwrap_err();
    assert!(matches!(err, Error::InvalidComponent { .. }), "{err}");
}

#[tokio::test]
async fn latest_is_refused_unless_allowed() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let wasm = tiny_component();
    let repo = format!("{}/tollgate-test/latest", registry.host());
    for reference in [repo.clone(), format!("{repo}:latest")] {
        let err = push(&reference, wasm.clone(), &local_push()).await.unwrap_err();
        assert!(matches!(err, Error::LatestRefused { .. }), "{err}");
        assert!(err.to_string().contains(&reference), "{err}");
    }
    // Nothing was pushed: even an allowed pull finds no manifest.
    let mut allow = local();
    allow.allow_latest = true;
    let dir = tempfile::tempdir().unwrap();
    let err = pull(&repo, &dir.path().join("x.wasm"), &allow).await.unwrap_err();
    assert!(matches!(err, Error::Registry { .. }), "{err}");

    let mut options = local_push();
    options.registry.allow_latest = true;
    let pushed = push(&format!("{repo}:latest"), wasm.clone(), &options).await.unwrap();

    let err = pull(&repo, &dir.path().join("x.wasm"), &local()).await.unwrap_err();
    assert!(matches!(err, Error::LatestRefused { .. }), "{err}");
    assert!(entries(dir.path()).is_empty());

    let (bytes, _) = pull_bytes(&repo, &allow).await;
    assert_eq!(bytes, wasm);
    // A digest pins the artifact, so no opt-in is needed.
    let (bytes, _) = pull_bytes(&pushed.pinned, &local()).await;
    assert_eq!(bytes, wasm);
}

#[tokio::test]
async fn repository_wit_packages_round_trip() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let wit_dir = workspace_root().join("wit");
    let packages = wit_build(&wit_dir).unwrap_or_else(|e| panic!("wit build: {e}"));
    assert!(!packages.is_empty(), "no WIT package under {}", wit_dir.display());
    let pushed = wit_publish(&registry.host(), &packages, &local_push()).await.unwrap();
    assert_eq!(pushed.len(), packages.len());
    for ((name, bytes), pushed) in packages.iter().zip(&pushed) {
        let version = name.version.as_ref().expect("published packages have versions");
        assert_eq!(pushed.reference, format!("{}/{}/{}:{version}", registry.host(), name.namespace, name.name));
        let (pulled_bytes, pulled) = pull_bytes(&pushed.reference, &local()).await;
        assert!(pulled_bytes == *bytes, "{name}: pulled bytes differ");
        assert_eq!(pulled.annotations.get("org.opencontainers.image.version"), Some(&version.to_string()));
        let component = pulled.config.component.as_ref().expect("component info");
        assert!(!component.exports.is_empty(), "{name}: config lists no exports");
    }
}

#[tokio::test]
async fn built_actor_components_round_trip() {
    // The five reference actors must be there (under CI=true a missing one fails)...
    let Some(reference_actors) = require_actors(&REFERENCE_ACTORS) else {
        return;
    };
    // ...and every other component next to them (test fixtures) goes along.
    let mut components: Vec<PathBuf> = reference_actors.iter().map(|(_, p)| p.clone()).collect();
    for entry in std::fs::read_dir(actors_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wasm") && !components.contains(&path) {
            // Only components; core modules are not actors.
            if matches!(
                wit_component::decode(&std::fs::read(&path).unwrap()),
                Ok(wit_component::DecodedWasm::Component(..))
            ) {
                components.push(path);
            }
        }
    }
    let Some(registry) = Registry::start() else {
        return;
    };
    for path in components {
        let wasm = std::fs::read(&path).unwrap();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let reference = actor_reference(&registry.host(), &stem);
        let pushed = tollgate_oci::push_file(&reference, &path, &local_push())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (bytes, pulled) = pull_bytes(&reference, &local()).await;
        assert!(bytes == wasm, "{}: pulled bytes differ", path.display());
        assert!(pulled.config.component.is_some(), "{}: config lists no component", path.display());
        let (bytes, _) = pull_bytes(&pushed.pinned, &local()).await;
        assert!(bytes == wasm, "{}: pulled-by-digest bytes differ", path.display());
    }
}

#[tokio::test]
async fn skopeo_reads_the_wasm_artifact_layout() {
    let Some(skopeo) = require_tool("skopeo", "skopeo") else {
        return;
    };
    let Some(registry) = Registry::start() else {
        return;
    };
    let reference = format!("{}/tollgate-test/layout:1.2.3", registry.host());
    let mut options = local_push();
    options.version = Some("1.2.3".into());
    let pushed = push(&reference, tiny_component(), &options).await.unwrap();

    let inspect = |extra: &[&str]| {
        let output = std::process::Command::new(&skopeo)
            .args(["inspect", "--raw", "--tls-verify=false"])
            .args(extra)
            .arg(format!("docker://{reference}"))
            .output()
            .unwrap();
        assert!(output.status.success(), "skopeo failed: {}", String::from_utf8_lossy(&output.stderr));
        output.stdout
    };
    let raw = inspect(&[]);
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["mediaType"], WASM_MANIFEST_MEDIA_TYPE);
    assert_eq!(manifest["config"]["mediaType"], WASM_MANIFEST_CONFIG_MEDIA_TYPE);
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["mediaType"], WASM_LAYER_MEDIA_TYPE);
    assert_eq!(layers[0]["digest"], pushed.layer_digest.as_str());
    assert_eq!(manifest["annotations"]["org.opencontainers.image.version"], "1.2.3");
    {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(&raw);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(format!("sha256:{hex}"), pushed.manifest_digest);
    }

    let config: serde_json::Value = serde_json::from_slice(&inspect(&["--config"])).unwrap();
    assert_eq!(config["architecture"], "wasm");
    assert_eq!(config["os"], "wasip2");
    assert_eq!(config["component"]["exports"][0], "run");
    assert_eq!(config["component"]["imports"][0], "test:tiny/host@0.1.0");
}

#[tokio::test]
async fn tampered_blobs_are_refused_and_nothing_is_written() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let wasm = tiny_component();
    let reference = format!("{}/tollgate-test/tamper:0.1.0", registry.host());
    let mut options = local_push();
    options.description = Some("genuine".into());
    let pushed = push(&reference, wasm.clone(), &options).await.unwrap();

    // Flip the layer's bytes in the registry's storage (same length, so only the digest
    // can tell).
    let data = registry.blob_data_path(&pushed.layer_digest);
    let mut bytes = std::fs::read(&data).unwrap();
    assert_eq!(bytes, wasm);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("tampered.wasm");
    for reference in [reference.as_str(), pushed.pinned.as_str()] {
        let err = pull(reference, &dest, &local()).await.unwrap_err();
        match &err {
            Error::BlobDigestMismatch { blob, expected, actual, .. } => {
                assert_eq!(*blob, "layer");
                assert_eq!(expected, &pushed.layer_digest);
                assert_ne!(actual, &pushed.layer_digest);
            }
            other => panic!("expected a layer digest mismatch, got: {other}"),
        }
        let message = err.to_string();
        assert!(message.contains(&pushed.layer_digest), "{message}");
        assert!(message.contains(reference), "{message}");
        assert!(!dest.exists(), "a tampered pull wrote {}", dest.display());
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }

    // An existing destination is left as it was.
    std::fs::write(&dest, b"previous").unwrap();
    assert!(pull(&reference, &dest, &local()).await.is_err());
    assert_eq!(std::fs::read(&dest).unwrap(), b"previous");
    assert_eq!(entries(dir.path()), std::slice::from_ref(&dest));

    // The cache refuses it too and keeps nothing.
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(cache_dir.path());
    let err = cache.resolve(&format!("oci://{reference}"), &local()).await.unwrap_err();
    assert!(matches!(err, Error::BlobDigestMismatch { .. }), "{err}");
    let blobs = cache_dir.path().join("oci/blobs/sha256");
    assert!(!blobs.exists() || entries(&blobs).is_empty());

    // A tampered manifest is caught when pulling by digest.
    let manifest_data = registry.blob_data_path(&pushed.manifest_digest);
    let text = std::fs::read_to_string(&manifest_data).unwrap();
    assert!(text.contains("genuine"));
    std::fs::write(&manifest_data, text.replace("genuine", "GENUINE")).unwrap();
    let err = pull(&pushed.pinned, &dest, &local()).await.unwrap_err();
    match &err {
        Error::ManifestDigestMismatch { expected, actual, .. } => {
            assert_eq!(expected, &pushed.manifest_digest);
            assert_ne!(actual, &pushed.manifest_digest);
        }
        other => panic!("expected a manifest digest mismatch, got: {other}"),
    }
    assert_eq!(std::fs::read(&dest).unwrap(), b"previous");
}

#[tokio::test]
async fn cache_pulls_once_per_digest() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let wasm = tiny_component();
    let reference = format!("{}/tollgate-test/cached:0.1.0", registry.host());
    let pushed = push(&reference, wasm.clone(), &local_push()).await.unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(cache_dir.path());
    assert_eq!(cache.dir(), cache_dir.path());
    assert_eq!(cache.lookup(&pushed.manifest_digest).unwrap(), None);

    let path = cache.resolve(&format!("oci://{reference}"), &local()).await.unwrap();
    assert!(path.starts_with(cache_dir.path()));
    assert_eq!(std::fs::read(&path).unwrap(), wasm);
    assert_eq!(path, cache.blob_path(&pushed.layer_digest).unwrap());
    assert_eq!(cache.lookup(&pushed.manifest_digest).unwrap().as_deref(), Some(path.as_path()));

    // With the registry gone, a digest reference is served from the cache...
    drop(registry);
    let pinned = format!("oci://{}", pushed.pinned);
    assert_eq!(cache.resolve(&pinned, &local()).await.unwrap(), path);
    // ...unless the cached bytes were damaged, then it must go back to the (dead) registry.
    std::fs::write(&path, b"damaged").unwrap();
    assert!(cache.resolve(&pinned, &local()).await.is_err());
}
