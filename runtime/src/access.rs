//! Who a node lets in and how it proves who it is, as its manifest says: `[nats]`, the
//! credentials and TLS of its NATS connections, and `[auth]`, the OAuth2 bearer access tokens `tollgate
//! serve`'s HTTP API takes (3GPP's service-based interface: JWT access tokens issued by an NRF
//! or any OAuth2 server). The keys are public keys in files the manifest names; nothing secret
//! is written in a manifest.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use tollgate_store::access::{NatsAccess, Secret};

/// The `[auth]` section: whose tokens the node takes, for whom.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    /// Accepted `iss`: the NRF (or OAuth2 server) instances that issue tokens for this node.
    pub issuers: Vec<String>,
    /// Accepted `aud`: the node's NF type (`CHF`) and/or its NF instance ids; a token must
    /// name one of them.
    pub audience: Vec<String>,
    /// The issuers' public keys: PEM files (EC P-256/P-384 or RSA) or JWKS files (JSON with
    /// `keys`), relative to the manifest.
    pub keys: Vec<PathBuf>,
    /// Seconds of clock difference tolerated on `exp` and `nbf`; at most [`MAX_LEEWAY_SECS`].
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Whether `/metrics` needs a token with scope `tollgate-metrics` (default: open, as
    /// `/healthz` and `/readyz` always are).
    #[serde(default)]
    pub protect_metrics: bool,
}

/// The most clock difference `[auth] leeway_secs` may allow: five minutes.
pub const MAX_LEEWAY_SECS: u64 = 300;

fn default_leeway() -> u64 {
    30
}

impl AuthSpec {
    /// The first field that cannot work, and why.
    pub fn invalid_field(&self) -> Option<(&'static str, String)> {
        if self.issuers.is_empty() || self.issuers.iter().any(String::is_empty) {
            return Some(("issuers", "must name at least one issuer, none empty".into()));
        }
        if self.audience.is_empty() || self.audience.iter().any(String::is_empty) {
            return Some(("audience", "must name at least one audience, none empty".into()));
        }
        if self.keys.is_empty() {
            return Some(("keys", "must name at least one file of public keys (PEM or JWKS)".into()));
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Some(("leeway_secs", format!("is {}, at most {MAX_LEEWAY_SECS}", self.leeway_secs)));
        }
        None
    }

    /// Resolves the key files relative to the manifest's directory.
    pub(crate) fn resolve(&mut self, base: &Path) {
        for key in &mut self.keys {
            if key.is_relative() {
                *key = base.join(&*key);
            }
        }
    }
}

/// The `[nats]` section: how the node proves who it is to NATS and checks the server, for
/// every connection it makes (the JetStream store, the service, an edge's link to its core).
/// Files are relative to the manifest; secrets come from files or environment variables, so a
/// manifest holds none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSpec {
    /// A `.creds` file (user JWT and nkey seed).
    pub creds: Option<PathBuf>,
    /// A file holding an nkey seed.
    pub nkey_seed_file: Option<PathBuf>,
    /// A user name; its password from `password_file` or `password_env`.
    pub user: Option<String>,
    /// A file holding the user's password.
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the user's password.
    pub password_env: Option<String>,
    /// A file holding a token.
    pub token_file: Option<PathBuf>,
    /// An environment variable holding a token.
    pub token_env: Option<String>,
    /// A CA file (PEM) the server's certificate must chain to (TLS).
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM), for servers that verify clients.
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    pub tls_key: Option<PathBuf>,
    /// The prefix of the node's reply subjects (a server can then confine each user to its
    /// own inbox).
    pub inbox_prefix: Option<String>,
}

impl NatsSpec {
    /// The connection settings, files resolved against `base`; a field that cannot work is
    /// named with why.
    pub(crate) fn access(&self, base: &Path) -> Result<NatsAccess, (&'static str, String)> {
        let file =
            |path: &Option<PathBuf>| path.as_ref().map(|p| if p.is_relative() { base.join(p) } else { p.clone() });
        let secret = |field_file: &'static str, path: &Option<PathBuf>, env: &Option<String>| match (file(path), env) {
            (Some(_), Some(_)) => {
                Err((field_file, "give the secret in a file or an environment variable, not both".into()))
            }
            (Some(path), None) => Ok(Some(Secret::File(path))),
            (None, Some(name)) => Ok(Some(Secret::Env(name.clone()))),
            (None, None) => Ok(None),
        };
        let access = NatsAccess {
            creds_file: file(&self.creds),
            nkey_seed: file(&self.nkey_seed_file).map(Secret::File),
            user: self.user.clone(),
            password: secret("password_file", &self.password_file, &self.password_env)?,
            token: secret("token_file", &self.token_file, &self.token_env)?,
            tls_ca: file(&self.tls_ca),
            tls_cert: file(&self.tls_cert),
            tls_key: file(&self.tls_key),
            inbox_prefix: self.inbox_prefix.clone(),
        };
        access.check().map_err(|message| ("", message))?;
        Ok(access)
    }
}
