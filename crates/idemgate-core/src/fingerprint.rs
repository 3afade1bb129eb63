//! The request fingerprint: what makes a repeat "the same request".
//!
//! SHA-256 over the method, the path and query, the chosen headers (by default `Content-Type`, so
//! the same bytes sent as another media type differ) and the body. With `canonical_json`, a body
//! that parses as JSON is hashed in canonical form (sorted object keys, no insignificant
//! whitespace), so clients that re-serialise a payload between retries still match. This module
//! is the one place that defines what a fingerprint covers.

use http::{HeaderMap, HeaderName, Method, Uri};
use sha2::{Digest, Sha256};

/// A request's fingerprint.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Fingerprint(pub [u8; 32]);

/// What the fingerprint covers beyond method, path, query and body.
#[derive(Clone, Debug)]
pub struct FingerprintOptions {
    /// Request headers whose values are part of the fingerprint (all values, in order).
    pub headers: Vec<HeaderName>,
    /// Hash JSON bodies in canonical form.
    pub canonical_json: bool,
}

impl Default for FingerprintOptions {
    fn default() -> Self {
        Self {
            headers: vec![http::header::CONTENT_TYPE],
            canonical_json: false,
        }
    }
}

impl FingerprintOptions {
    /// The fingerprint of a request.
    pub fn fingerprint(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Fingerprint {
        let mut h = Sha256::new();
        field(&mut h, b'm', method.as_str().as_bytes());
        let pq = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
        field(&mut h, b'u', pq.as_bytes());
        for name in &self.headers {
            for value in headers.get_all(name) {
                field(&mut h, b'h', name.as_str().as_bytes());
                field(&mut h, b'v', value.as_bytes());
            }
        }
        match self.canonical_json.then(|| canonical_json(body)).flatten() {
            Some(canonical) => field(&mut h, b'j', &canonical),
            None => field(&mut h, b'b', body),
        }
        Fingerprint(h.finalize().into())
    }
}

/// Length-prefixed, tagged fields: no two different requests hash the same byte stream.
fn field(h: &mut Sha256, tag: u8, bytes: &[u8]) {
    h.update([tag]);
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// `Some(canonical bytes)` when `body` is JSON whose objects never repeat a key. serde_json's
/// default map is ordered by key. A repeated key is left to the raw bytes: parsers disagree on
/// which of its values counts, so `{"a":1,"a":2}` must not match `{"a":2}`.
fn canonical_json(body: &[u8]) -> Option<Vec<u8>> {
    serde_json::from_slice::<UniqueKeys>(body).ok()?;
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    serde_json::to_vec(&value).ok()
}

/// Deserializes any JSON and fails on an object that repeats a key (compared after unescaping),
/// or that uses a key serde_json keeps for itself.
struct UniqueKeys;

/// The start of the object keys serde_json uses for its own values.
const SERDE_JSON_PRIVATE: &str = "$serde_json::private::";

/// The key under which serde_json (`arbitrary_precision`) passes a number's digits.
const NUMBER_KEY: &str = "$serde_json::private::Number";

/// A number's digits as serde_json passes them: only an owned string is accepted.
struct NumberDigits;

impl<'de> serde::Deserialize<'de> for NumberDigits {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberDigits)
    }
}

impl serde::de::Visitor<'_> for NumberDigits {
    type Value = NumberDigits;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number's digits from serde_json")
    }

    fn visit_string<E>(self, _: String) -> Result<Self, E> {
        Ok(self)
    }

    /// A string from the body itself (the parser's borrowed or copied strings come here).
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self, E> {
        Err(E::invalid_type(serde::de::Unexpected::Str(s), &self))
    }
}

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueKeys {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON whose objects never repeat a key")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut keys = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if key.starts_with(SERDE_JSON_PRIVATE) {
                // With `arbitrary_precision`, serde_json hands a number over as a one-entry map
                // under its private key, the digits as an owned string; its parser gives a JSON
                // string as a borrowed or copied `str`, never owned. So a body that spells the
                // key out is refused here, or `Value` would read `{"$serde_json::private::Number":
                // "2"}` as the number 2 (and a `RawValue` key as embedded JSON).
                if key != NUMBER_KEY {
                    return Err(serde::de::Error::custom("reserved object key"));
                }
                map.next_value::<NumberDigits>()?;
                continue;
            }
            if !keys.insert(key) {
                return Err(serde::de::Error::custom("repeated object key"));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fp(opts: &FingerprintOptions, method: &str, uri: &str, ct: Option<&str>, body: &[u8]) -> Fingerprint {
        let mut headers = HeaderMap::new();
        if let Some(ct) = ct {
            headers.insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
        }
        opts.fingerprint(&method.parse().unwrap(), &uri.parse().unwrap(), &headers, body)
    }

    #[test]
    fn covers_method_path_query_media_type_and_body() {
        let o = FingerprintOptions::default();
        let base = fp(&o, "POST", "/pay?x=1", Some("application/json"), b"{}");
        assert_eq!(base, fp(&o, "POST", "/pay?x=1", Some("application/json"), b"{}"));
        assert_ne!(base, fp(&o, "PATCH", "/pay?x=1", Some("application/json"), b"{}"));
        assert_ne!(base, fp(&o, "POST", "/pay?x=2", Some("application/json"), b"{}"));
        assert_ne!(base, fp(&o, "POST", "/pay", Some("application/json"), b"{}"));
        assert_ne!(base, fp(&o, "POST", "/pay?x=1", Some("text/plain"), b"{}"));
        assert_ne!(base, fp(&o, "POST", "/pay?x=1", None, b"{}"));
        assert_ne!(base, fp(&o, "POST", "/pay?x=1", Some("application/json"), b"{ }"));
    }

    #[test]
    fn canonical_json_ignores_key_order_and_whitespace_only() {
        let o = FingerprintOptions {
            canonical_json: true,
            ..Default::default()
        };
        let a = fp(&o, "POST", "/p", None, br#"{"a":1,"b":[1,2]}"#);
        assert_eq!(a, fp(&o, "POST", "/p", None, b"{ \"b\" : [1, 2],\n \"a\": 1 }"));
        assert_ne!(a, fp(&o, "POST", "/p", None, br#"{"a":1,"b":[2,1]}"#));
        assert_ne!(a, fp(&o, "POST", "/p", None, br#"{"a":2,"b":[1,2]}"#));
        // Numbers are compared by their exact text, never rounded through f64.
        assert_ne!(
            fp(&o, "POST", "/p", None, br#"{"n":12345678901234567890123}"#),
            fp(&o, "POST", "/p", None, br#"{"n":12345678901234567890124}"#)
        );
        assert_ne!(
            fp(&o, "POST", "/p", None, br#"{"n":0.1000000000000000000001}"#),
            fp(&o, "POST", "/p", None, br#"{"n":0.1}"#)
        );
        // A repeated key is hashed raw: parsers differ on which value counts.
        let repeated = fp(&o, "POST", "/p", None, br#"{"a":1,"a":2}"#);
        assert_ne!(repeated, fp(&o, "POST", "/p", None, br#"{"a":2}"#));
        assert_ne!(repeated, fp(&o, "POST", "/p", None, br#"{"a":1}"#));
        assert_ne!(
            fp(&o, "POST", "/p", None, br#"{"x":[{"a":1,"\u0061":2}]}"#),
            fp(&o, "POST", "/p", None, br#"{"x":[{"a":2}]}"#)
        );
        // serde_json's private keys spelled out in a body are not numbers (nor raw JSON).
        for spelled in [
            &br#"{"a":{"$serde_json::private::Number":"2"}}"#[..],
            br#"{"a":{"\u0024serde_json::private::Number":"2"}}"#,
            br#"{"a":{"$serde_json::private::Number":2}}"#,
            br#"{"a":{"$serde_json::private::RawValue":"2"}}"#,
        ] {
            assert_ne!(
                fp(&o, "POST", "/p", None, spelled),
                fp(&o, "POST", "/p", None, br#"{"a":2}"#)
            );
            assert_eq!(canonical_json(spelled), None, "{}", String::from_utf8_lossy(spelled));
        }
        assert_eq!(canonical_json(br#"{"a":2.50}"#).as_deref(), Some(&br#"{"a":2.50}"#[..]));
        // Equal keys in different objects are not repeats; numbers still canonicalise.
        assert_eq!(
            fp(&o, "POST", "/p", None, br#"{"a":{"a":1.50},"b":{"a":[true,null,"s"]}}"#),
            fp(
                &o,
                "POST",
                "/p",
                None,
                br#"{ "b":{"a":[true, null, "s"]}, "a":{"a":1.50} }"#
            )
        );
        // Not JSON: hashed as raw bytes, still deterministic.
        assert_eq!(
            fp(&o, "POST", "/p", None, b"not json"),
            fp(&o, "POST", "/p", None, b"not json")
        );
    }

    proptest! {
        #[test]
        fn different_bodies_differ(a in proptest::collection::vec(any::<u8>(), 0..64), b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let o = FingerprintOptions::default();
            prop_assert_eq!(a == b, fp(&o, "POST", "/p", None, &a) == fp(&o, "POST", "/p", None, &b));
        }

        #[test]
        fn canonical_json_is_order_insensitive(entries in proptest::collection::btree_map("[a-z]{1,6}", any::<i32>(), 0..8)) {
            let o = FingerprintOptions { canonical_json: true, ..Default::default() };
            let forward: Vec<String> = entries.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
            let backward: Vec<String> = forward.iter().rev().cloned().collect();
            let a = format!("{{{}}}", forward.join(","));
            let b = format!("{{ {} }}", backward.join(" ,\n"));
            prop_assert_eq!(fp(&o, "POST", "/p", None, a.as_bytes()), fp(&o, "POST", "/p", None, b.as_bytes()));
        }

        #[test]
        fn path_and_body_boundaries_are_unambiguous(path in "/[a-z]{0,5}", body in "[a-z]{0,5}") {
            // Moving bytes between the query and the body must change the fingerprint.
            let o = FingerprintOptions::default();
            let moved = format!("{path}x");
            let shorter = body.get(1..).unwrap_or("").to_string();
            if !body.is_empty() {
                prop_assert_ne!(fp(&o, "POST", &path, None, body.as_bytes()), fp(&o, "POST", &moved, None, shorter.as_bytes()));
            }
        }
    }
}
