//! Parsing the idempotency key header value.
//!
//! A key is 1–255 visible ASCII characters (`0x21..=0x7E`). It may be given bare (`abc`) or as an
//! RFC 8941 structured-field string (`"abc"`, with `\"` and `\\` escapes), as the IETF
//! idempotency-key draft specifies. Surrounding spaces and tabs are ignored.

use std::fmt;

/// The longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// A validated idempotency key. Its `Debug` output is redacted so keys never reach logs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key's characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey(<{} chars>)", self.0.len())
    }
}

/// Why a key header value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The value is empty (after trimming, or `""`).
    #[error("the idempotency key is empty")]
    Empty,
    /// More than [`MAX_KEY_LEN`] characters.
    #[error("the idempotency key is longer than {MAX_KEY_LEN} characters")]
    TooLong,
    /// A character outside visible ASCII.
    #[error("the idempotency key contains a character that is not visible ASCII (at byte {0})")]
    InvalidChar(usize),
    /// A quoted value that is not a valid RFC 8941 string.
    #[error("the idempotency key is not a valid structured-field string: {0}")]
    BadString(&'static str),
}

/// Parses one header value into a key.
pub fn parse_key(value: &[u8]) -> Result<IdempotencyKey, KeyError> {
    let value = trim_ows(value);
    let key = if value.first() == Some(&b'"') {
        unquote(value)?
    } else {
        value.to_vec()
    };
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    if let Some(pos) = key.iter().position(|b| !(0x21..=0x7e).contains(b)) {
        return Err(KeyError::InvalidChar(pos));
    }
    // Every byte is ASCII, so this cannot fail.
    String::from_utf8(key)
        .map(IdempotencyKey)
        .map_err(|_| KeyError::InvalidChar(0))
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// RFC 8941 §4.2.5: a string is `"` *(unescaped / `\"` / `\\`) `"`, printable ASCII only.
fn unquote(v: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 1;
    loop {
        match v.get(i) {
            None => return Err(KeyError::BadString("missing closing quote")),
            Some(b'"') => {
                if i + 1 != v.len() {
                    return Err(KeyError::BadString("characters after the closing quote"));
                }
                return Ok(out);
            }
            Some(b'\\') => match v.get(i + 1) {
                Some(c @ (b'"' | b'\\')) => {
                    out.push(*c);
                    i += 2;
                }
                _ => return Err(KeyError::BadString("bad escape")),
            },
            Some(c) if (0x20..=0x7e).contains(c) => {
                out.push(*c);
                i += 1;
            }
            Some(_) => return Err(KeyError::BadString("non-printable character")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bare_and_quoted() {
        assert_eq!(parse_key(b"abc").unwrap().as_str(), "abc");
        assert_eq!(parse_key(b"\"abc\"").unwrap().as_str(), "abc");
        assert_eq!(parse_key(b"  abc\t").unwrap().as_str(), "abc");
        assert_eq!(parse_key(br#""a\"b\\c""#).unwrap().as_str(), r#"a"b\c"#);
        let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(parse_key(uuid.as_bytes()).unwrap().as_str(), uuid);
    }

    #[test]
    fn refusals() {
        assert_eq!(parse_key(b""), Err(KeyError::Empty));
        assert_eq!(parse_key(b"   "), Err(KeyError::Empty));
        assert_eq!(parse_key(b"\"\""), Err(KeyError::Empty));
        assert_eq!(parse_key(b"a b"), Err(KeyError::InvalidChar(1)));
        assert_eq!(parse_key(b"\"a b\""), Err(KeyError::InvalidChar(1)));
        assert_eq!(parse_key("é".as_bytes()), Err(KeyError::InvalidChar(0)));
        assert!(matches!(parse_key(b"\"abc"), Err(KeyError::BadString(_))));
        assert!(matches!(parse_key(b"\"a\"b"), Err(KeyError::BadString(_))));
        assert!(matches!(parse_key(b"\"a\\x\""), Err(KeyError::BadString(_))));
        assert_eq!(parse_key(&[b'k'; 256]), Err(KeyError::TooLong));
        assert!(parse_key(&[b'k'; 255]).is_ok());
    }

    proptest! {
        #[test]
        // A bare value that starts with `"` is read as an RFC 8941 string, so bare keys start
        // with any other visible character.
        fn any_visible_ascii_key_round_trips(key in "[!#-~][!-~]{0,254}") {
            prop_assert_eq!(parse_key(key.as_bytes()).unwrap().as_str().to_string(), key.clone());
            // The same key as an RFC 8941 string parses to the same key.
            let quoted = format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""));
            prop_assert_eq!(parse_key(quoted.as_bytes()).unwrap().as_str().to_string(), key.clone());
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_accepted_keys_are_valid(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(k) = parse_key(&bytes) {
                prop_assert!(!k.as_str().is_empty() && k.as_str().len() <= MAX_KEY_LEN);
                prop_assert!(k.as_str().bytes().all(|b| (0x21..=0x7e).contains(&b)));
            }
        }

        #[test]
        fn keys_with_invisible_chars_are_refused(prefix in "[!-~]{1,10}", bad in prop_oneof![Just(' '), Just('\u{7f}'), Just('\u{1}'), Just('é')], suffix in "[!-~]{1,10}") {
            let key = format!("{prefix}{bad}{suffix}");
            prop_assert!(parse_key(key.as_bytes()).is_err());
        }
    }
}
