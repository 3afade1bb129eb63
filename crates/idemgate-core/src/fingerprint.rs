//! The request fingerprint: what makes a repeat "the same request".
//!
//! SHA-256 over the method, the path and query, the chosen headers (by default `Content-Type`, so
//! the same bytes sent as another media type differ) and the body. With `canonical_json`, a body
//! that parses as JSON is hashed in canonical form (sorted object keys, no insignificant
//! whitespace), so clients that re-serialise a payload between retries still match. A body of
//! [`BODY_DIGEST_MIN`] bytes or more enters the SHA-256 as its BLAKE3 digest, which is three to
//! four times cheaper to compute on large bodies; fingerprints made before that rule (the whole
//! body in the SHA-256) still match ([`FingerprintOptions::matches`]). This module is the one
//! place that defines what a fingerprint covers.

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

/// Bodies (raw or canonical) of at least this many bytes enter the fingerprint as their BLAKE3
/// digest. Below it SHA-256 over the bytes themselves is as fast, and fingerprints stay what they
/// always were.
pub const BODY_DIGEST_MIN: usize = 4096;

/// How the body enters the SHA-256.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyRule {
    /// From [`BODY_DIGEST_MIN`] bytes on, as its BLAKE3 digest (tags `B`, `J`).
    Digest,
    /// Always the bytes themselves (the rule before [`BODY_DIGEST_MIN`] existed).
    Legacy,
}

impl FingerprintOptions {
    /// The fingerprint of a request.
    pub fn fingerprint(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Fingerprint {
        self.compute(method, uri, headers, body, BodyRule::Digest)
    }

    /// The fingerprint as versions before [`BODY_DIGEST_MIN`] computed it: every body byte in the
    /// SHA-256. Equal to [`fingerprint`](Self::fingerprint) for smaller bodies.
    pub fn legacy_fingerprint(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Fingerprint {
        self.compute(method, uri, headers, body, BodyRule::Legacy)
    }

    /// Whether `stored` (a record's fingerprint) was made for the request whose fingerprint is
    /// `current`. A record written before large bodies were digested holds the legacy form; it is
    /// computed only then, on a mismatch for a large body, so the common paths pay nothing.
    pub fn matches(
        &self,
        stored: Fingerprint,
        current: Fingerprint,
        (method, uri, headers, body): (&Method, &Uri, &HeaderMap, &[u8]),
    ) -> bool {
        // A shorter body gives the same form both ways (its canonical form is never longer).
        stored == current
            || (body.len() >= BODY_DIGEST_MIN && stored == self.legacy_fingerprint(method, uri, headers, body))
    }

    fn compute(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8], rule: BodyRule) -> Fingerprint {
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
        let canonical = self.canonical_json.then(|| canonical_json(body)).flatten();
        let (tag, bytes) = match &canonical {
            Some(c) => (b'j', c.as_slice()),
            None => (b'b', body),
        };
        if rule == BodyRule::Digest && bytes.len() >= BODY_DIGEST_MIN {
            // Upper-case tags (`B`, `J`): the digest of what `b` or `j` would have carried.
            field(&mut h, tag.to_ascii_uppercase(), blake3::hash(bytes).as_bytes());
        } else {
            field(&mut h, tag, bytes);
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
    let Strict(value) = serde_json::from_slice(body).ok()?;
    serde_json::to_vec(&value).ok()
}

/// A JSON value read in one pass that fails on an object that repeats a key (compared after
/// unescaping) or uses a key serde_json keeps for itself.
struct Strict(serde_json::Value);

/// The start of the object keys serde_json uses for its own values.
const SERDE_JSON_PRIVATE: &str = "$serde_json::private::";

/// The key under which serde_json (`arbitrary_precision`) passes a number's digits.
const NUMBER_KEY: &str = "$serde_json::private::Number";

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON whose objects never repeat a key")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(b.into())
    }
    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(n.into())
    }
    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(n.into())
    }
    fn visit_f64<E>(self, n: f64) -> Result<Self::Value, E> {
        Ok(n.into())
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(s.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(serde_json::Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key.starts_with(SERDE_JSON_PRIVATE) {
                // With `arbitrary_precision`, serde_json hands a number over as a one-entry map
                // under its private key, the digits as an owned string; its parser gives a JSON
                // string as a borrowed or copied `str`, never owned. So a body that spells the
                // key out is refused here, or `{"$serde_json::private::Number":"2"}` would be
                // the number 2 (and a `RawValue` key embedded JSON).
                if key != NUMBER_KEY || !object.is_empty() {
                    return Err(A::Error::custom("reserved object key"));
                }
                let NumberDigits(digits) = map.next_value()?;
                return digits.parse().map(serde_json::Value::Number).map_err(A::Error::custom);
            }
            let Strict(value) = map.next_value()?;
            if object.insert(key, value).is_some() {
                return Err(A::Error::custom("repeated object key"));
            }
        }
        Ok(serde_json::Value::Object(object))
    }
}

/// A number's digits as serde_json passes them: only an owned string is accepted.
struct NumberDigits(String);

impl<'de> serde::Deserialize<'de> for NumberDigits {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberDigitsVisitor)
    }
}

struct NumberDigitsVisitor;

impl serde::de::Visitor<'_> for NumberDigitsVisitor {
    type Value = NumberDigits;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number's digits from serde_json")
    }

    fn visit_string<E>(self, digits: String) -> Result<NumberDigits, E> {
        Ok(NumberDigits(digits))
    }

    /// A string from the body itself (the parser's borrowed or copied strings come here).
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<NumberDigits, E> {
        Err(E::invalid_type(serde::de::Unexpected::Str(s), &self))
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
        // Bodies without a repeated key canonicalise exactly as serde_json's `Value` does (as
        // before the check existed), so fingerprints stored by earlier versions still match.
        for body in [
            &br#" {"z":[1e400,-0,{"b":null,"a":"\u0041"}],"a":true} "#[..],
            br#"[1.0, 1, 12345678901234567890123, -1.5e-7, "x\ny", [], {}]"#,
            br#"{"a":{"a":{"a":[{"b":2},{"a":1}]}}}"#,
            br#""just a string""#,
            b"42",
        ] {
            let value: serde_json::Value = serde_json::from_slice(body).unwrap();
            let expected = serde_json::to_vec(&value).unwrap();
            assert_eq!(
                canonical_json(body),
                Some(expected),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
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

    #[test]
    fn large_bodies_are_digested_and_legacy_fingerprints_still_match() {
        let method = Method::POST;
        let uri: Uri = "/pay".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, "application/json".parse().unwrap());
        for canonical_json in [false, true] {
            let o = FingerprintOptions {
                canonical_json,
                ..Default::default()
            };
            let legacy = |body: &[u8]| o.legacy_fingerprint(&method, &uri, &headers, body);
            for len in [0, 80, BODY_DIGEST_MIN - 1, BODY_DIGEST_MIN, 256 * 1024] {
                let text = format!(r#"{{"pad":"{}"}}"#, "x".repeat(len.saturating_sub(10)));
                let body = text.as_bytes();
                let parts = (&method, &uri, &headers, body);
                let current = o.fingerprint(&method, &uri, &headers, body);
                // Below the threshold nothing changed; from it on the digest form differs.
                assert_eq!(
                    current == legacy(body),
                    body.len() < BODY_DIGEST_MIN,
                    "{} bytes",
                    body.len()
                );
                // A record made by an earlier version (legacy form) is the same request...
                assert!(o.matches(legacy(body), current, parts), "{} bytes", body.len());
                assert!(o.matches(current, current, parts));
                // ...and a different body is not, in either form.
                let mut other = body.to_vec();
                other[body.len() / 2] ^= 1;
                assert!(!o.matches(legacy(&other), current, parts), "{} bytes", body.len());
                let other_fp = o.fingerprint(&method, &uri, &headers, &other);
                assert!(!o.matches(other_fp, current, parts), "{} bytes", body.len());
            }
        }
        // Canonical JSON of a large body still ignores key order, in both forms.
        let o = FingerprintOptions {
            canonical_json: true,
            ..Default::default()
        };
        let pad = "y".repeat(2 * BODY_DIGEST_MIN);
        let a = format!(r#"{{"a":1,"pad":"{pad}"}}"#);
        let b = format!(r#"{{ "pad" : "{pad}", "a" : 1 }}"#);
        let fa = o.fingerprint(&method, &uri, &headers, a.as_bytes());
        assert_eq!(fa, o.fingerprint(&method, &uri, &headers, b.as_bytes()));
        let legacy_a = o.legacy_fingerprint(&method, &uri, &headers, a.as_bytes());
        assert!(o.matches(
            legacy_a,
            o.fingerprint(&method, &uri, &headers, b.as_bytes()),
            (&method, &uri, &headers, b.as_bytes())
        ));
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
