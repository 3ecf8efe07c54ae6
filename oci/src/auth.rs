//! Registry credentials: environment variables, then the docker config file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::error::{Error, Result};

/// Environment variable holding the registry user name (used together with
/// [`PASSWORD_ENV`]).
pub const USERNAME_ENV: &str = "TOLLGATE_REGISTRY_USERNAME";
/// Environment variable holding the registry password or token (used together with
/// [`USERNAME_ENV`]).
pub const PASSWORD_ENV: &str = "TOLLGATE_REGISTRY_PASSWORD";

/// Where registry credentials come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// [`USERNAME_ENV`] / [`PASSWORD_ENV`] if both are set, else the `auths` entry for the
    /// registry in the docker config file ([`docker_config_path`]), else anonymous.
    #[default]
    Auto,
    /// No credentials.
    Anonymous,
    /// These user name and password.
    Basic {
        /// The user name.
        username: String,
        /// The password or token.
        password: String,
    },
}

impl Credentials {
    /// The [`RegistryAuth`] to use for `registry` (a host, optionally with a port).
    pub fn to_auth(&self, registry: &str) -> Result<RegistryAuth> {
        match self {
            Credentials::Auto => load_credentials(registry),
            Credentials::Anonymous => Ok(RegistryAuth::Anonymous),
            Credentials::Basic { username, password } => Ok(RegistryAuth::Basic(username.clone(), password.clone())),
        }
    }
}

/// The docker config file: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
/// `None` when neither `DOCKER_CONFIG` nor `HOME` is set.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".docker").join("config.json"))
}

/// Loads the credentials for `registry` the way [`Credentials::Auto`] describes: the
/// environment variables first, then the docker config file, else anonymous.
///
/// Only inline `auths` entries are read; credential helpers (`credsStore`, `credHelpers`) are
/// not run.
pub fn load_credentials(registry: &str) -> Result<RegistryAuth> {
    let username = std::env::var(USERNAME_ENV).ok().filter(|v| !v.is_empty());
    let password = std::env::var(PASSWORD_ENV).ok().filter(|v| !v.is_empty());
    match (username, password) {
        (Some(username), Some(password)) => return Ok(RegistryAuth::Basic(username, password)),
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::Credentials {
                registry: registry.to_string(),
                reason: format!("set both {USERNAME_ENV} and {PASSWORD_ENV}, or neither"),
            });
        }
        (None, None) => {}
    }
    match docker_config_path() {
        Some(path) => credentials_from_docker_config(&path, registry),
        None => Ok(RegistryAuth::Anonymous),
    }
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

/// Reads the credentials for `registry` from the docker config file at `path`.
///
/// A missing file means anonymous access; an unreadable or malformed file, or an entry whose
/// `auth` is not base64 of `user:password`, is an error naming the file.
pub fn credentials_from_docker_config(path: &Path, registry: &str) -> Result<RegistryAuth> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RegistryAuth::Anonymous),
        Err(source) => {
            return Err(Error::Io { action: "reading docker config", path: path.to_path_buf(), source });
        }
    };
    let fail = |reason: String| Error::Credentials {
        registry: registry.to_string(),
        reason: format!("{}: {reason}", path.display()),
    };
    let config: DockerConfig = serde_json::from_str(&text).map_err(|e| fail(format!("not valid JSON: {e}")))?;
    let wanted = normalize_host(registry);
    let Some(entry) = config.auths.iter().find(|(key, _)| normalize_host(key) == wanted).map(|(_, entry)| entry) else {
        tracing::debug!(registry, path = %path.display(), "no docker config entry; anonymous");
        return Ok(RegistryAuth::Anonymous);
    };
    if let Some(encoded) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| fail(format!("`auth` is not valid base64: {e}")))?;
        let decoded = String::from_utf8(decoded).map_err(|_| fail("`auth` does not decode to UTF-8".to_string()))?;
        let (user, pass) =
            decoded.split_once(':').ok_or_else(|| fail("`auth` does not decode to `user:password`".to_string()))?;
        return Ok(RegistryAuth::Basic(user.to_string(), pass.to_string()));
    }
    if let (Some(user), Some(pass)) = (&entry.username, &entry.password) {
        return Ok(RegistryAuth::Basic(user.clone(), pass.clone()));
    }
    if entry.identity_token.is_some() {
        return Err(fail(
            "only an `identitytoken` is stored, which tollgate does not support; \
             use `auth` or the TOLLGATE_REGISTRY_* variables"
                .to_string(),
        ));
    }
    Ok(RegistryAuth::Anonymous)
}

/// Reduces a docker config key or registry name to a comparable host: no scheme, no path,
/// lower case, and Docker Hub's many names folded into one.
fn normalize_host(key: &str) -> String {
    let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_config(dir: &Path, json: &str) -> PathBuf {
        let path = dir.join("config.json");
        std::fs::write(&path, json).unwrap();
        path
    }

    #[test]
    fn reads_base64_auth_for_matching_registry() {
        let dir = tempfile::tempdir().unwrap();
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        let path = write_config(
            dir.path(),
            &format!(
                r#"{{"auths": {{
                    "other.example:5000": {{"auth": "Ym9iOnB3"}},
                    "https://127.0.0.1:5000/v2/": {{"auth": "{encoded}"}},
                    "https://index.docker.io/v1/": {{"username": "hub", "password": "pw"}}
                }}}}"#
            ),
        );
        assert_eq!(
            credentials_from_docker_config(&path, "127.0.0.1:5000").unwrap(),
            RegistryAuth::Basic("alice".into(), "s3cr:et".into())
        );
        assert_eq!(
            credentials_from_docker_config(&path, "other.example:5000").unwrap(),
            RegistryAuth::Basic("bob".into(), "pw".into())
        );
        assert_eq!(
            credentials_from_docker_config(&path, "docker.io").unwrap(),
            RegistryAuth::Basic("hub".into(), "pw".into())
        );
        assert_eq!(credentials_from_docker_config(&path, "127.0.0.1:5001").unwrap(), RegistryAuth::Anonymous);
    }

    #[test]
    fn missing_file_is_anonymous_and_bad_entries_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            credentials_from_docker_config(&dir.path().join("nope.json"), "r").unwrap(),
            RegistryAuth::Anonymous
        );
        let path = write_config(dir.path(), r#"{"auths": {"r:1": {"auth": "!!!"}}}"#);
        let err = credentials_from_docker_config(&path, "r:1").unwrap_err();
        assert!(err.to_string().contains("base64"), "{err}");
        assert!(err.to_string().contains("config.json"), "{err}");
        let path = write_config(dir.path(), "{not json");
        let err = credentials_from_docker_config(&path, "r:1").unwrap_err();
        assert!(err.to_string().contains("JSON"), "{err}");
        let path = write_config(dir.path(), r#"{"auths": {"r:1": {"identitytoken": "x"}}}"#);
        assert!(credentials_from_docker_config(&path, "r:1").is_err());
    }
}
