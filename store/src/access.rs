//! How a client proves who it is to a NATS server, and how it checks the server: a `.creds`
//! file (user JWT + nkey), an nkey seed, a user and password, or a token; TLS with a CA file
//! and a client certificate. One [`NatsAccess`] serves every connection the project makes (the
//! JetStream store, a node's service, an edge's link to its core), so they cannot disagree.
//!
//! Secrets are read from files or named environment variables when a connection is made and
//! are never kept in a printable form: [`NatsAccess`]'s `Debug` shows where a secret comes
//! from, never the secret.

use crate::{Result, StoreError};
use std::path::PathBuf;

/// Where a secret is read from: a file (its content, trailing newline removed) or an
/// environment variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Secret {
    /// A file holding the secret.
    File(PathBuf),
    /// An environment variable holding the secret.
    Env(String),
}

impl Secret {
    /// The secret; `what` names it in errors ("NATS password").
    ///
    /// ```
    /// use tollgate_store::access::Secret;
    /// let secret = Secret::Env("TOLLGATE_DOC_ABSENT".into());
    /// let error = secret.read("NATS token").unwrap_err().to_string();
    /// assert!(error.contains("TOLLGATE_DOC_ABSENT"));
    /// ```
    pub fn read(&self, what: &str) -> Result<String> {
        let value = match self {
            Secret::File(path) => std::fs::read_to_string(path).map_err(|e| {
                StoreError::InvalidArgument(format!("cannot read the {what} from {}: {e}", path.display()))
            })?,
            Secret::Env(name) => std::env::var(name).map_err(|_| {
                StoreError::InvalidArgument(format!("the {what} is to come from ${name}, which is not set"))
            })?,
        };
        let value = value.trim_end_matches(['\r', '\n']).to_string();
        if value.is_empty() {
            return Err(StoreError::InvalidArgument(format!("the {what} from {} is empty", self.origin())));
        }
        Ok(value)
    }

    fn origin(&self) -> String {
        match self {
            Secret::File(path) => path.display().to_string(),
            Secret::Env(name) => format!("${name}"),
        }
    }
}

/// The credentials and TLS settings of a NATS connection. The default is an anonymous
/// connection in the clear (a loopback development server).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsAccess {
    /// A `.creds` file: the user's JWT and nkey seed, as `nsc` writes it.
    pub creds_file: Option<PathBuf>,
    /// A file holding an nkey seed (`SU...`).
    pub nkey_seed: Option<Secret>,
    /// A user name, with [`NatsAccess::password`].
    pub user: Option<String>,
    /// The user's password.
    pub password: Option<Secret>,
    /// A token (the server's `authorization { token }`).
    pub token: Option<Secret>,
    /// A CA file (PEM) the server's certificate must chain to; implies TLS.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM), with [`NatsAccess::tls_key`], for servers that verify clients.
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    pub tls_key: Option<PathBuf>,
    /// The prefix of this client's reply subjects (`_INBOX` by default). A server can then
    /// let each user subscribe to its own inbox only, so no user reads another's replies.
    pub inbox_prefix: Option<String>,
}

impl NatsAccess {
    /// Refuses settings that cannot be meant: two ways of proving identity, a password
    /// without a user, a certificate without its key, an inbox prefix NATS cannot carry.
    ///
    /// ```
    /// use tollgate_store::access::{NatsAccess, Secret};
    /// let both = NatsAccess {
    ///     creds_file: Some("edge.creds".into()),
    ///     token: Some(Secret::Env("NATS_TOKEN".into())),
    ///     ..NatsAccess::default()
    /// };
    /// assert!(both.check().unwrap_err().contains("one of"));
    /// ```
    pub fn check(&self) -> std::result::Result<(), String> {
        let ways = [self.creds_file.is_some(), self.nkey_seed.is_some(), self.user.is_some(), self.token.is_some()];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Err("give one of a creds file, an nkey seed, a user and password, or a token".into());
        }
        if self.user.is_some() != self.password.is_some() {
            return Err("a NATS user needs a password and a password needs a user".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("a client certificate needs its key, and a key its certificate".into());
        }
        if let Some(prefix) = &self.inbox_prefix
            && (prefix.is_empty() || prefix.contains(['.', '*', '>', ' ']))
        {
            return Err(format!("inbox prefix {prefix:?} must be one subject token (no `.`, `*`, `>` or spaces)"));
        }
        Ok(())
    }

    /// `self`, with every setting `over` gives replacing this one's (flags over a manifest).
    pub fn overridden_by(mut self, over: NatsAccess) -> NatsAccess {
        // One identity: an identity given by `over` replaces the whole of this one's.
        if over.creds_file.is_some() || over.nkey_seed.is_some() || over.user.is_some() || over.token.is_some() {
            self.creds_file = None;
            self.nkey_seed = None;
            self.user = None;
            self.password = None;
            self.token = None;
        }
        NatsAccess {
            creds_file: over.creds_file.or(self.creds_file),
            nkey_seed: over.nkey_seed.or(self.nkey_seed),
            user: over.user.or(self.user),
            password: over.password.or(self.password),
            token: over.token.or(self.token),
            tls_ca: over.tls_ca.or(self.tls_ca),
            tls_cert: over.tls_cert.or(self.tls_cert),
            tls_key: over.tls_key.or(self.tls_key),
            inbox_prefix: over.inbox_prefix.or(self.inbox_prefix),
        }
    }

    /// Whether the connection must be TLS: a CA or a client certificate was given.
    pub fn requires_tls(&self) -> bool {
        self.tls_ca.is_some() || self.tls_cert.is_some()
    }

    /// Connect options carrying these credentials and TLS settings, secrets read now. A file
    /// that cannot be read, or an environment variable that is not set, is an error naming it.
    pub async fn options(&self) -> Result<async_nats::ConnectOptions> {
        self.check().map_err(StoreError::InvalidArgument)?;
        // The client's TLS takes the process's rustls provider, and with more than one backend
        // compiled in (another dependency may bring aws-lc) rustls picks none: name ring, the
        // one the client is built with. A provider already installed stays.
        let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
        let mut options = match &self.creds_file {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path).await.map_err(|e| {
                StoreError::InvalidArgument(format!("cannot read NATS credentials from {}: {e}", path.display()))
            })?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(seed) = &self.nkey_seed {
            let seed = seed.read("NATS nkey seed")?;
            if nkeys::KeyPair::from_seed(&seed).is_err() {
                return Err(StoreError::InvalidArgument(format!(
                    "the NATS nkey seed from {} is not an nkey seed",
                    self.nkey_seed.as_ref().map(Secret::origin).unwrap_or_default()
                )));
            }
            options = options.nkey(seed);
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.read("NATS password")?);
        }
        if let Some(token) = &self.token {
            options = options.token(token.read("NATS token")?);
        }
        for path in [&self.tls_ca, &self.tls_cert, &self.tls_key].into_iter().flatten() {
            if !path.is_file() {
                return Err(StoreError::InvalidArgument(format!("NATS TLS file {} does not exist", path.display())));
            }
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.requires_tls() {
            options = options.require_tls(true);
        }
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        Ok(options)
    }
}

/// Whether `url` names a NATS server: `nats://` or `tls://` (TLS required).
pub fn is_nats_url(url: &str) -> bool {
    url.starts_with("nats://") || url.starts_with("tls://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_read_without_its_newline_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(Secret::File(path.clone()).read("NATS password").unwrap(), "s3cret");
        std::fs::write(&path, "\n").unwrap();
        let error = Secret::File(path.clone()).read("NATS password").unwrap_err().to_string();
        assert!(error.contains("empty") && error.contains("password"), "{error}");
        let missing = dir.path().join("absent");
        let error = Secret::File(missing).read("NATS token").unwrap_err().to_string();
        assert!(error.contains("absent") && error.contains("NATS token"), "{error}");
    }

    #[test]
    fn flags_replace_the_whole_identity_and_keep_the_rest() {
        let manifest = NatsAccess {
            user: Some("core".into()),
            password: Some(Secret::Env("P".into())),
            tls_ca: Some("ca.pem".into()),
            ..NatsAccess::default()
        };
        let flags = NatsAccess { creds_file: Some("edge.creds".into()), ..NatsAccess::default() };
        let merged = manifest.overridden_by(flags);
        assert_eq!(merged.user, None);
        assert_eq!(merged.password, None);
        assert_eq!(merged.creds_file, Some("edge.creds".into()));
        assert_eq!(merged.tls_ca, Some("ca.pem".into()));
        merged.check().unwrap();
    }

    #[tokio::test]
    async fn a_bad_seed_and_a_missing_certificate_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("seed");
        std::fs::write(&seed, "not-a-seed").unwrap();
        let access = NatsAccess { nkey_seed: Some(Secret::File(seed.clone())), ..NatsAccess::default() };
        let error = access.options().await.err().unwrap().to_string();
        assert!(error.contains("not an nkey seed") && error.contains(&seed.display().to_string()), "{error}");
        assert!(!error.contains("not-a-seed"), "{error}");
        let access = NatsAccess { tls_ca: Some(dir.path().join("ca.pem")), ..NatsAccess::default() };
        let error = access.options().await.err().unwrap().to_string();
        assert!(error.contains("ca.pem") && error.contains("does not exist"), "{error}");
    }
}
