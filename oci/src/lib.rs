//! Push and pull tollgate actors and WIT packages through OCI registries.
//!
//! Artifacts use the CNCF Wasm OCI layout that `wkg` and wasmCloud use (via the `oci-wasm`
//! crate): an OCI image manifest (`application/vnd.oci.image.manifest.v1+json`), a config
//! `application/vnd.wasm.config.v0+json` listing the component's imports and exports, and one
//! `application/wasm` layer holding the component bytes.
//!
//! - [`push`] / [`push_file`] and [`pull`] move one component; pulls verify every digest and
//!   write nothing unless all match.
//! - [`wit_build`] encodes the project's WIT packages; [`wit_publish`] pushes them the way
//!   `wkg publish` does (`tollgate:billing@0.1.0` -> `REGISTRY/tollgate/billing:0.1.0`).
//! - [`Cache`] / [`resolve`] turn `oci://REF` into a local file, pulled once per digest.
//! - [`TransferProgress`] hears how transfers progress, for callers that show it (the
//!   `tollgate` binary, which also holds the `push`/`pull`/`wit` commands, draws a bar).
//! - `testing` (cargo feature `testing`) starts a real registry for tests.
//!
//! References that resolve to `latest` are refused unless
//! [`RegistryOptions::allow_latest`]; credentials come from [`Credentials`].

mod auth;
mod cache;
mod error;
mod progress;
mod reference;
#[cfg(feature = "testing")]
pub mod testing;
mod transfer;
mod wit;

pub use auth::{
    Credentials, PASSWORD_ENV, USERNAME_ENV, credentials_from_docker_config, docker_config_path, load_credentials,
};
pub use cache::{CACHE_DIR_ENV, Cache, default_cache_dir, resolve};
pub use error::{Error, Result};
pub use oci_client::secrets::RegistryAuth;
pub use oci_wasm::{WASM_LAYER_MEDIA_TYPE, WASM_MANIFEST_CONFIG_MEDIA_TYPE, WASM_MANIFEST_MEDIA_TYPE, WasmConfig};
pub use progress::{TransferMeter, TransferProgress};
pub use reference::{OCI_SCHEME, is_latest, parse_reference};
pub use transfer::{Pulled, PushOptions, Pushed, RegistryOptions, manifest_digest, pull, push, push_file};
pub use wit::{wit_build, wit_build_package, wit_file_name, wit_package_dirs, wit_publish, wit_reference};
pub use wit_parser::PackageName;
