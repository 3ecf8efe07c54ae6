//! Reversible encoding of arbitrary strings into NATS subject tokens.
//!
//! ASCII letters, digits and `-` stay as they are; every other byte (UTF-8) becomes `_XX`
//! (two upper-case hex digits), so `_` itself is `_5F` and `.`, `*`, `>`, whitespace never
//! appear. The empty string becomes a lone `_`, which no other input produces. The output
//! is also a valid JetStream KV key token and consumer name.

/// Encodes `s` as one subject token.
pub fn encode_token(s: &str) -> String {
    if s.is_empty() {
        return "_".to_owned();
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            out.push('_');
            out.push_str(&format!("{b:02X}"));
        }
    }
    out
}

/// Decodes a token made by [`encode_token`]; `None` if it is not one.
pub fn decode_token(t: &str) -> Option<String> {
    if t == "_" {
        return Some(String::new());
    }
    if t.is_empty() {
        return None;
    }
    let bytes = t.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'_' {
            let hex = t.get(i + 1..i + 3)?;
            if !hex.bytes().all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c)) {
                return None;
            }
            let v = u8::from_str_radix(hex, 16).ok()?;
            if v.is_ascii_alphanumeric() || v == b'-' {
                return None; // not canonical
            }
            out.push(v);
            i += 3;
        } else if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_awkward_strings() {
        for s in ["", "_", "__", "a.b", "a b", "*", ">", "sha256:abc", "ünïcødé", "a_5F", "-", "x\0y"] {
            let t = encode_token(s);
            assert!(!t.is_empty());
            assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{t}");
            assert_eq!(decode_token(&t).as_deref(), Some(s), "{s:?} -> {t}");
        }
        assert_ne!(encode_token(""), encode_token("_"));
        assert_eq!(decode_token("a.b"), None);
        assert_eq!(decode_token("_41"), None, "non-canonical escape");
        assert_eq!(decode_token("_4"), None);
    }
}
