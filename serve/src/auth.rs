//! Who may call the node over HTTP: OAuth2 bearer access tokens as 3GPP's service-based
//! interface uses them (TS 29.510 `AccessTokenClaims`: a JWT with `iss`, `sub`, `aud`, `scope`
//! and `exp`), checked against the public keys the manifest's `[auth]` names. Each route needs
//! a scope ([`scope`]); refusals are RFC 6750's: `401` with `WWW-Authenticate: Bearer
//! error="invalid_token"` (no error code when no token was sent), `403` with
//! `error="insufficient_scope"`, as ProblemDetails too. A token is never logged.
//!
//! Only asymmetric signatures are taken (ES256, ES384, RS256, RS384, RS512, PS256, PS384,
//! PS512, each with a key of its family): a token claiming `none`, or HMAC with a public key
//! as its secret, names no key that takes it.

use crate::problem::Problem;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use tollgate_runtime::access::AuthSpec;

/// The scopes routes need.
pub mod scope {
    /// The Nchf_ConvergedCharging routes: the 3GPP service's own name.
    pub const NCHF: &str = "nchf-convergedcharging";
    /// `POST /v1/admissions`.
    pub const ADMISSIONS: &str = "tollgate-admissions";
    /// `POST /v1/commands/{stream}/{key}` on any stream; `tollgate-commands:{stream}` grants
    /// one stream.
    pub const COMMANDS: &str = "tollgate-commands";
    /// `GET /v1/streams/...` and `GET /v1/kv/...`.
    pub const READ: &str = "tollgate-read";
    /// `POST /v1/reports/{stream}/{key}`: outside facts (a gateway's reports).
    pub const REPORTS: &str = "tollgate-reports";
    /// Everything of the native API, and the commands that create money (an account's
    /// `open`, `top-up`, `refund`), which nothing else grants.
    pub const ADMIN: &str = "tollgate-admin";
    /// `GET /metrics`, when `[auth] protect_metrics` is set.
    pub const METRICS: &str = "tollgate-metrics";
}

/// Algorithms taken from an EC key, and from an RSA key.
const EC: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];
const RSA: &[Algorithm] =
    &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512];

/// One public key of an issuer.
struct Key {
    /// Its id (`kid`), from a JWKS; PEM keys have none.
    id: Option<String>,
    key: DecodingKey,
    algorithms: &'static [Algorithm],
    /// Where it came from, for error messages.
    source: String,
}

/// Checks access tokens: signatures, issuer, audience, validity, scope.
pub struct Verifier {
    keys: Vec<Key>,
    validation: Validation,
    protect_metrics: bool,
    checked: Mutex<HashMap<String, Checked>>,
}

/// A token whose signature, issuer and audience held: what it grants and when it holds. A
/// client (an SMF) sends one access token with every request until it expires, so a token's
/// signature is checked once, not once per request; its validity is checked on every use.
struct Checked {
    scopes: Scopes,
    not_before: u64,
    expires: u64,
}

/// Tokens remembered at most; then the memory starts afresh (a client sending a new token
/// with every request costs a signature check each, as without it).
const CHECKED_TOKENS: usize = 4096;

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.keys.iter().map(|k| k.source.as_str()).collect();
        f.debug_struct("Verifier").field("keys", &keys).finish_non_exhaustive()
    }
}

/// The claims this node reads; `exp`, `nbf`, `iss` and `aud` are checked by the validation.
#[derive(Deserialize)]
struct Claims {
    /// Space-separated scopes (3GPP: NF service names).
    #[serde(default)]
    scope: String,
    /// Expiry, seconds since the epoch.
    exp: u64,
    /// Not before, seconds since the epoch.
    #[serde(default)]
    nbf: u64,
}

/// The scopes a checked token grants (a request extension for the handlers).
#[derive(Debug, Clone, Default)]
pub struct Scopes(HashSet<String>);

impl Scopes {
    /// Whether these scopes grant `scope` (the admin scope grants every native one).
    pub fn grant(&self, scope: &str) -> bool {
        self.0.contains(scope) || (scope != self::scope::NCHF && self.0.contains(self::scope::ADMIN))
    }

    /// Whether these scopes grant commands on `stream`.
    fn grant_commands(&self, stream: &str) -> bool {
        self.grant(scope::COMMANDS) || self.0.contains(&format!("{}:{stream}", scope::COMMANDS))
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header.
    Missing,
    /// A token that does not hold: `reason` (a metrics label) and what is wrong.
    Invalid {
        /// `malformed`, `unsupported_algorithm`, `unknown_key`, `bad_signature`, `expired`,
        /// `not_yet_valid`, `wrong_issuer`, `wrong_audience`, `missing_claim`.
        reason: &'static str,
        /// For people; never the token.
        detail: String,
    },
    /// A valid token without the scope the route needs.
    Scope {
        /// The scope needed.
        needed: String,
    },
}

impl Refusal {
    /// The label this refusal is counted under in `/metrics`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Invalid { reason, .. } => reason,
            Refusal::Scope { .. } => "insufficient_scope",
        }
    }

    fn invalid(reason: &'static str, detail: impl Into<String>) -> Refusal {
        Refusal::Invalid { reason, detail: detail.into() }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, cause, detail, challenge) = match &self {
            Refusal::Missing => (
                StatusCode::UNAUTHORIZED,
                "MISSING_TOKEN",
                "this route needs an OAuth2 bearer access token (Authorization: Bearer ...)".to_string(),
                r#"Bearer realm="tollgate""#.to_string(),
            ),
            Refusal::Invalid { detail, .. } => (
                StatusCode::UNAUTHORIZED,
                "INVALID_TOKEN",
                detail.clone(),
                format!(r#"Bearer realm="tollgate", error="invalid_token", error_description="{}""#, quoted(detail)),
            ),
            Refusal::Scope { needed } => (
                StatusCode::FORBIDDEN,
                "INSUFFICIENT_SCOPE",
                format!("the token does not grant scope `{needed}`"),
                format!(r#"Bearer realm="tollgate", error="insufficient_scope", scope="{needed}""#),
            ),
        };
        let mut response = Problem::new(status, cause, detail).into_response();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// `text` fit for a quoted-string of a header: printable ASCII without quotes or backslashes.
fn quoted(text: &str) -> String {
    text.chars().filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\' || *c == ' ').collect()
}

impl Verifier {
    /// Reads the keys `spec` names; an error names the file and what is wrong with it.
    pub fn load(spec: &AuthSpec) -> Result<Verifier, String> {
        install_crypto();
        let mut keys = Vec::new();
        for file in &spec.keys {
            keys.extend(read_keys(file)?);
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&spec.issuers);
        validation.set_audience(&spec.audience);
        validation.validate_nbf = true;
        validation.leeway = spec.leeway_secs;
        Ok(Verifier { keys, validation, protect_metrics: spec.protect_metrics, checked: Mutex::default() })
    }

    /// Whether `/metrics` needs a token.
    pub fn protects_metrics(&self) -> bool {
        self.protect_metrics
    }

    /// The scopes of the request's bearer token, or why it is refused.
    pub fn check(&self, headers: &HeaderMap) -> Result<Scopes, Refusal> {
        let Some(value) = headers.get(header::AUTHORIZATION) else { return Err(Refusal::Missing) };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| Refusal::invalid("malformed", "the Authorization header is not `Bearer <token>`"))?;
        if let Some(checked) = self.recall(token, jsonwebtoken::get_current_timestamp()) {
            return checked;
        }
        let head = decode_header(token)
            .map_err(|_| Refusal::invalid("malformed", "the token is not a signed JWT with a supported algorithm"))?;
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| head.kid.is_none() || k.id.is_none() || k.id == head.kid)
            .filter(|k| k.algorithms.contains(&head.alg))
            .collect();
        if candidates.is_empty() {
            let known = self.keys.iter().any(|k| k.algorithms.contains(&head.alg));
            return Err(if known {
                Refusal::invalid("unknown_key", "no key of the issuers has the token's `kid`")
            } else {
                Refusal::invalid("unsupported_algorithm", format!("tokens signed with {:?} are not taken", head.alg))
            });
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![head.alg];
        for key in candidates {
            use jsonwebtoken::errors::ErrorKind;
            let refusal = match decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return Ok(self.remember(token, data.claims)),
                // Another key of the issuers may have signed it.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => match e.kind() {
                    ErrorKind::ExpiredSignature => Refusal::invalid("expired", "the token has expired"),
                    ErrorKind::ImmatureSignature => {
                        Refusal::invalid("not_yet_valid", "the token is not valid yet (nbf)")
                    }
                    ErrorKind::InvalidIssuer => Refusal::invalid("wrong_issuer", "the token's issuer is not trusted"),
                    ErrorKind::InvalidAudience => {
                        Refusal::invalid("wrong_audience", "the token is not for this node (aud)")
                    }
                    ErrorKind::MissingRequiredClaim(claim) => {
                        Refusal::invalid("missing_claim", format!("the token has no `{claim}`"))
                    }
                    _ => Refusal::invalid("malformed", "the token's claims do not decode"),
                },
            };
            return Err(refusal);
        }
        Err(Refusal::invalid("bad_signature", "the token's signature does not verify with the issuers' keys"))
    }

    /// What a token checked before grants at `now`, if it was checked before.
    fn recall(&self, token: &str, now: u64) -> Option<Result<Scopes, Refusal>> {
        let checked = self.checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let hit = checked.get(token)?;
        let leeway = self.validation.leeway;
        Some(if now > hit.expires.saturating_add(leeway) {
            Err(Refusal::invalid("expired", "the token has expired"))
        } else if now.saturating_add(leeway) < hit.not_before {
            Err(Refusal::invalid("not_yet_valid", "the token is not valid yet (nbf)"))
        } else {
            Ok(hit.scopes.clone())
        })
    }

    fn remember(&self, token: &str, claims: Claims) -> Scopes {
        let scopes = Scopes(claims.scope.split_whitespace().map(str::to_string).collect());
        let mut checked = self.checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if checked.len() >= CHECKED_TOKENS {
            checked.clear();
        }
        let entry = Checked { scopes: scopes.clone(), not_before: claims.nbf, expires: claims.exp };
        checked.insert(token.to_string(), entry);
        scopes
    }

    /// Checks that the request's token grants `needed`.
    pub fn require(&self, headers: &HeaderMap, needed: &str) -> Result<Scopes, Refusal> {
        let scopes = self.check(headers)?;
        if scopes.grant(needed) { Ok(scopes) } else { Err(Refusal::Scope { needed: needed.into() }) }
    }
}

/// Whether `command` on `stream` creates money: only [`scope::ADMIN`] grants it.
pub fn creates_money(stream: &str, command: &serde_json::Value) -> bool {
    let kind = match command {
        serde_json::Value::String(kind) => Some(kind.as_str()),
        serde_json::Value::Object(map) if map.len() == 1 => map.keys().next().map(String::as_str),
        _ => None,
    };
    stream == tollgate_billing_model::account::STREAM && matches!(kind, Some("open" | "top-up" | "refund"))
}

/// What a command on `stream` needs of `scopes` (`command` decoded from its body).
pub fn allow_command(scopes: &Scopes, stream: &str, command: &serde_json::Value) -> Result<(), Refusal> {
    if creates_money(stream, command) {
        return if scopes.grant(scope::ADMIN) { Ok(()) } else { Err(Refusal::Scope { needed: scope::ADMIN.into() }) };
    }
    if scopes.grant_commands(stream) {
        Ok(())
    } else {
        Err(Refusal::Scope { needed: format!("{}:{stream}", scope::COMMANDS) })
    }
}

/// The scope a route needs before its body is read (`None`: the route decides after, or is
/// open). `path` is the request's path.
pub fn route_scope(matched: &str) -> Option<&'static str> {
    if matched.starts_with(crate::nchf::PREFIX) {
        Some(scope::NCHF)
    } else if matched == "/v1/admissions" {
        Some(scope::ADMISSIONS)
    } else if matched.starts_with("/v1/streams/") || matched.starts_with("/v1/kv/") {
        Some(scope::READ)
    } else if matched.starts_with("/v1/reports/") {
        Some(scope::REPORTS)
    } else {
        None
    }
}

/// The keys in `file`: a JWKS (JSON with `keys`) or PEM public keys.
fn read_keys(file: &Path) -> Result<Vec<Key>, String> {
    let name = file.display().to_string();
    let bytes = std::fs::read(file).map_err(|e| format!("{name}: {e}"))?;
    let text = String::from_utf8_lossy(&bytes);
    if text.trim_start().starts_with('{') {
        let set: JwkSet = serde_json::from_slice(&bytes).map_err(|e| format!("{name}: not a JWKS: {e}"))?;
        let mut keys = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            use jsonwebtoken::jwk::AlgorithmParameters;
            let algorithms = match &jwk.algorithm {
                AlgorithmParameters::EllipticCurve(_) => EC,
                AlgorithmParameters::RSA(_) => RSA,
                _ => {
                    return Err(format!(
                        "{name}: key {i} is neither EC nor RSA (HMAC secrets and others are not taken)"
                    ));
                }
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("{name}: key {i}: {e}"))?;
            keys.push(Key { id: jwk.common.key_id.clone(), key, algorithms, source: format!("{name}#{i}") });
        }
        if keys.is_empty() {
            return Err(format!("{name}: the JWKS holds no key"));
        }
        return Ok(keys);
    }
    if !text.contains("-----BEGIN") {
        return Err(format!("{name}: neither a JWKS nor PEM"));
    }
    if text.contains("PRIVATE KEY") {
        return Err(format!("{name}: holds a private key; name the issuer's public key"));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&bytes) {
        return Ok(vec![Key { id: None, key, algorithms: EC, source: name }]);
    }
    match DecodingKey::from_rsa_pem(&bytes) {
        Ok(key) => Ok(vec![Key { id: None, key, algorithms: RSA, source: name }]),
        Err(e) => Err(format!("{name}: not an EC or RSA public key: {e}")),
    }
}

/// Installs RustCrypto as jsonwebtoken's process-wide provider. Chosen by hand because another
/// dependency (the OCI client) may enable the library's other backend, and with both enabled
/// the library picks none. Installing twice is harmless.
pub fn install_crypto() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn a_token_checked_once_is_still_held_to_its_validity_on_every_use() {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.leeway = 5;
        let verifier = Verifier { keys: Vec::new(), validation, protect_metrics: false, checked: Mutex::default() };
        let claims = Claims { scope: "tollgate-read".into(), exp: 1_000, nbf: 500 };
        verifier.remember("token", claims);
        assert!(verifier.recall("another", 700).is_none(), "only the very token is remembered");
        assert!(verifier.recall("token", 700).unwrap().unwrap().grant(scope::READ));
        assert!(verifier.recall("token", 1_005).unwrap().is_ok(), "within the leeway");
        assert_eq!(verifier.recall("token", 1_006).unwrap().unwrap_err().reason(), "expired");
        assert_eq!(verifier.recall("token", 494).unwrap().unwrap_err().reason(), "not_yet_valid");
    }

    #[test]
    fn money_creating_commands_need_the_admin_scope() {
        let commands = Scopes([scope::COMMANDS.to_string()].into());
        let top_up = json!({"top-up": {"amount": {"minor_units": 1, "currency": "EUR"}}});
        assert_eq!(allow_command(&commands, "account", &top_up), Err(Refusal::Scope { needed: scope::ADMIN.into() }));
        assert!(allow_command(&commands, "account", &json!({"debit": {}})).is_ok());
        assert!(allow_command(&commands, "loyalty", &json!({"top-up": {}})).is_ok(), "money is the account's");
        let one_stream = Scopes(["tollgate-commands:loyalty".to_string()].into());
        assert!(allow_command(&one_stream, "loyalty", &json!("close")).is_ok());
        assert!(allow_command(&one_stream, "account", &json!({"debit": {}})).is_err());
        let admin = Scopes([scope::ADMIN.to_string()].into());
        assert!(allow_command(&admin, "account", &top_up).is_ok());
        assert!(admin.grant(scope::READ) && !admin.grant(scope::NCHF), "Nchf is granted by its own scope only");
    }

    #[test]
    fn a_refusal_is_rfc_6750_and_problem_details() {
        let response = Refusal::invalid("expired", "the token has expired").into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(challenge.starts_with(r#"Bearer realm="tollgate", error="invalid_token""#), "{challenge}");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
        let response = Refusal::Scope { needed: scope::NCHF.into() }.into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let challenge = response.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(challenge.contains(r#"error="insufficient_scope", scope="nchf-convergedcharging""#), "{challenge}");
        let response = Refusal::Missing.into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], r#"Bearer realm="tollgate""#);
    }

    #[test]
    fn key_files_that_cannot_verify_tokens_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let hmac = write("hmac.jwks", r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#);
        let private = write("private.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        let junk = write("junk.pem", "hello");
        for (file, says) in [(hmac, "neither EC nor RSA"), (private, "private key"), (junk, "neither a JWKS nor PEM")] {
            let spec = AuthSpec {
                issuers: vec!["nrf".into()],
                audience: vec!["CHF".into()],
                keys: vec![file.clone()],
                leeway_secs: 30,
                protect_metrics: false,
            };
            let err = Verifier::load(&spec).unwrap_err();
            assert!(err.contains(&file.display().to_string()) && err.contains(says), "{err}");
        }
    }
}
