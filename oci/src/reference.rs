//! Parsing and checking OCI references.

use oci_client::Reference;

use crate::error::{Error, Result};

/// The scheme prefix of OCI references in tollgate configuration (`oci://REGISTRY/REPO:TAG`).
pub const OCI_SCHEME: &str = "oci://";

/// Parses an OCI reference, with or without a leading `oci://`.
///
/// References without a registry default to `docker.io`, and references without a tag or
/// digest get the tag `latest`, as every OCI client does.
pub fn parse_reference(reference: &str) -> Result<Reference> {
    let trimmed = reference.strip_prefix(OCI_SCHEME).unwrap_or(reference);
    trimmed.parse::<Reference>().map_err(|source| Error::InvalidReference { reference: reference.to_string(), source })
}

/// Whether `reference` resolves to the mutable `latest` tag: it names `latest` (explicitly, or by
/// naming no tag) and is not pinned by a digest.
pub fn is_latest(reference: &Reference) -> bool {
    reference.digest().is_none() && reference.tag().is_none_or(|tag| tag == "latest")
}

/// Parses `reference` and refuses it if it resolves to `latest` and `allow_latest` is false.
pub(crate) fn parse_checked(reference: &str, allow_latest: bool) -> Result<Reference> {
    let parsed = parse_reference(reference)?;
    if !allow_latest && is_latest(&parsed) {
        return Err(Error::LatestRefused { reference: reference.to_string() });
    }
    Ok(parsed)
}

/// Splits a `sha256:<hex>` digest into its hex part, refusing other algorithms and malformed
/// values (the hex part becomes a file name in the cache, so it must be exactly 64 hex digits).
pub(crate) fn sha256_hex<'a>(reference: &str, digest: &'a str) -> Result<&'a str> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
            Ok(hex)
        }
        _ => Err(Error::UnsupportedDigest { reference: reference.to_string(), digest: digest.to_string() }),
    }
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format_sha256(sha2::Sha256::digest(bytes).as_slice())
}

/// Formats a finished sha256 hash as `sha256:<hex>`.
pub(crate) fn format_sha256(hash: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in hash {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_detection() {
        let latest = |r: &str| is_latest(&parse_reference(r).unwrap());
        assert!(latest("127.0.0.1:5000/a/b"));
        assert!(latest("127.0.0.1:5000/a/b:latest"));
        assert!(latest("oci://ghcr.io/a/b:latest"));
        assert!(!latest("127.0.0.1:5000/a/b:0.1.0"));
        let digest = format!("sha256:{}", "a".repeat(64));
        assert!(!latest(&format!("127.0.0.1:5000/a/b@{digest}")));
        assert!(!latest(&format!("127.0.0.1:5000/a/b:latest@{digest}")));
    }

    #[test]
    fn latest_refused_unless_allowed() {
        let err = parse_checked("127.0.0.1:5000/a/b", false).unwrap_err();
        assert!(matches!(err, Error::LatestRefused { .. }), "{err}");
        assert!(err.to_string().contains("127.0.0.1:5000/a/b"));
        parse_checked("127.0.0.1:5000/a/b", true).unwrap();
        parse_checked("127.0.0.1:5000/a/b:1.0.0", false).unwrap();
    }

    #[test]
    fn oci_scheme_is_stripped() {
        let r = parse_reference("oci://127.0.0.1:5000/tollgate/billing:0.1.0").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "tollgate/billing");
        assert_eq!(r.tag(), Some("0.1.0"));
    }

    #[test]
    fn sha256_hex_validates() {
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(sha256_hex("r", &format!("sha256:{hex}")).unwrap(), hex);
        assert!(sha256_hex("r", &format!("sha512:{hex}")).is_err());
        assert!(sha256_hex("r", "sha256:../../etc").is_err());
        assert_eq!(sha256_digest(b""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
