//! The `--nats-*` flags every command that reaches a NATS server takes: credentials and TLS,
//! over the manifest's `[nats]` where there is one. Secrets come from files or the
//! environment, never from the command line (where `ps` would show them).

use std::path::PathBuf;
use tollgate_store::access::{NatsAccess, Secret};

/// Credentials and TLS for NATS connections (`nats://` and `tls://` URLs).
#[derive(clap::Args, Clone, Debug, Default)]
#[command(next_help_heading = "NATS credentials and TLS")]
pub struct NatsFlags {
    /// A `.creds` file (user JWT and nkey seed) [env: TOLLGATE_NATS_CREDS].
    #[arg(long, value_name = "FILE", env = "TOLLGATE_NATS_CREDS", hide_env = true)]
    nats_creds: Option<PathBuf>,
    /// A file holding an nkey seed [env: TOLLGATE_NATS_NKEY_SEED_FILE].
    #[arg(long, value_name = "FILE", env = "TOLLGATE_NATS_NKEY_SEED_FILE", hide_env = true)]
    nats_nkey_seed_file: Option<PathBuf>,
    /// A NATS user; the password from --nats-password-file or $TOLLGATE_NATS_PASSWORD.
    #[arg(long, value_name = "NAME", env = "TOLLGATE_NATS_USER", hide_env = true)]
    nats_user: Option<String>,
    /// A file holding the NATS user's password.
    #[arg(long, value_name = "FILE")]
    nats_password_file: Option<PathBuf>,
    /// A file holding a NATS token (or $TOLLGATE_NATS_TOKEN).
    #[arg(long, value_name = "FILE")]
    nats_token_file: Option<PathBuf>,
    /// A CA file (PEM) the NATS server's certificate must chain to (TLS).
    #[arg(long, value_name = "FILE", env = "TOLLGATE_NATS_TLS_CA", hide_env = true)]
    nats_tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) for a NATS server that verifies clients.
    #[arg(long, value_name = "FILE", requires = "nats_tls_key")]
    nats_tls_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, value_name = "FILE", requires = "nats_tls_cert")]
    nats_tls_key: Option<PathBuf>,
    /// The prefix of this client's reply subjects, for a server that confines each user to its
    /// own inbox.
    #[arg(long, value_name = "PREFIX")]
    nats_inbox_prefix: Option<String>,
}

/// The environment variable a password may come from.
const PASSWORD_ENV: &str = "TOLLGATE_NATS_PASSWORD";
/// The environment variable a token may come from.
const TOKEN_ENV: &str = "TOLLGATE_NATS_TOKEN";

impl NatsFlags {
    /// The settings to connect with: `manifest` (its `[nats]`, or none) with the flags over it.
    pub fn access(&self, manifest: Option<&NatsAccess>) -> anyhow::Result<NatsAccess> {
        let env_set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        let password = match (&self.nats_password_file, &self.nats_user) {
            (Some(file), _) => Some(Secret::File(file.clone())),
            (None, Some(_)) if env_set(PASSWORD_ENV) => Some(Secret::Env(PASSWORD_ENV.into())),
            (None, Some(user)) => {
                anyhow::bail!("--nats-user {user} needs a password: --nats-password-file FILE or ${PASSWORD_ENV}")
            }
            (None, None) => None,
        };
        if password.is_some() && self.nats_user.is_none() {
            anyhow::bail!("--nats-password-file needs --nats-user");
        }
        let token = match &self.nats_token_file {
            Some(file) => Some(Secret::File(file.clone())),
            None if env_set(TOKEN_ENV) => Some(Secret::Env(TOKEN_ENV.into())),
            None => None,
        };
        let flags = NatsAccess {
            creds_file: self.nats_creds.clone(),
            nkey_seed: self.nats_nkey_seed_file.clone().map(Secret::File),
            user: self.nats_user.clone(),
            password,
            token,
            tls_ca: self.nats_tls_ca.clone(),
            tls_cert: self.nats_tls_cert.clone(),
            tls_key: self.nats_tls_key.clone(),
            inbox_prefix: self.nats_inbox_prefix.clone(),
        };
        let access = manifest.cloned().unwrap_or_default().overridden_by(flags);
        access.check().map_err(|e| anyhow::anyhow!("NATS credentials: {e}"))?;
        Ok(access)
    }
}
