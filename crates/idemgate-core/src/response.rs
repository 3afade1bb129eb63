//! A stored HTTP response: status, headers and body in one contiguous buffer.
//!
//! The response is encoded once, when it is recorded; memory, embedded, Redis and PostgreSQL
//! stores all keep exactly these bytes, and a replay decodes headers as zero-copy slices of the
//! same buffer. One allocation per record, sized exactly, so a stored record never pins a larger
//! network read buffer.
//!
//! Layout (little endian): `status u16`, `count u16`, then `count` × (`name_len u16`, name,
//! `value_len u32`, value), then the body to the end.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// A stored response could not be decoded: the stored bytes are damaged or from another format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored response is corrupt: {0}")]
pub struct CorruptResponse(pub &'static str);

/// A recorded response.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredResponse {
    data: Bytes,
    body_off: usize,
}

impl std::fmt::Debug for StoredResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredResponse")
            .field("status", &self.status())
            .field("len", &self.data.len())
            .finish()
    }
}

/// Builds a [`StoredResponse`]: headers first, then the body in as many pieces as it arrives.
#[derive(Debug)]
pub struct ResponseBuilder {
    buf: BytesMut,
    body_off: usize,
}

impl ResponseBuilder {
    /// Appends a piece of the body.
    pub fn extend_body(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Body bytes so far.
    pub fn body_len(&self) -> usize {
        self.buf.len() - self.body_off
    }

    /// The finished response.
    pub fn finish(self) -> StoredResponse {
        StoredResponse {
            data: self.buf.freeze(),
            body_off: self.body_off,
        }
    }
}

impl StoredResponse {
    /// Starts a response with the headers that `keep` accepts; `body_hint` is the expected body
    /// length (exact when known).
    pub fn builder(
        status: StatusCode,
        headers: &HeaderMap,
        keep: impl Fn(&HeaderName) -> bool,
        body_hint: usize,
    ) -> ResponseBuilder {
        let kept = || headers.iter().filter(|(n, _)| keep(n));
        let head_len: usize = kept().map(|(n, v)| 6 + n.as_str().len() + v.len()).sum::<usize>() + 4;
        let mut buf = BytesMut::with_capacity(head_len + body_hint);
        buf.put_u16_le(status.as_u16());
        buf.put_u16_le(0);
        let mut count: u16 = 0;
        for (name, value) in kept() {
            if count == u16::MAX {
                break;
            }
            buf.put_u16_le(name.as_str().len() as u16);
            buf.put_slice(name.as_str().as_bytes());
            buf.put_u32_le(value.len() as u32);
            buf.put_slice(value.as_bytes());
            count += 1;
        }
        buf[2..4].copy_from_slice(&count.to_le_bytes());
        let body_off = buf.len();
        ResponseBuilder { buf, body_off }
    }

    /// A response from its parts (tests, small bodies).
    pub fn new(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Self {
        let mut b = Self::builder(status, headers, |_| true, body.len());
        b.extend_body(body);
        b.finish()
    }

    /// Decodes stored bytes, checking their structure.
    pub fn from_bytes(data: Bytes) -> Result<Self, CorruptResponse> {
        let mut at = 4usize;
        let count = u16::from_le_bytes(get2(&data, 2)?);
        StatusCode::from_u16(u16::from_le_bytes(get2(&data, 0)?)).map_err(|_| CorruptResponse("status"))?;
        for _ in 0..count {
            let n = u16::from_le_bytes(get2(&data, at)?) as usize;
            at += 2 + n;
            let v = u32::from_le_bytes(get4(&data, at)?) as usize;
            at += 4 + v;
            if at > data.len() {
                return Err(CorruptResponse("header overruns the buffer"));
            }
        }
        Ok(Self { data, body_off: at })
    }

    /// The encoded bytes, as stores keep them.
    pub fn as_bytes(&self) -> &Bytes {
        &self.data
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(u16::from_le_bytes([self.data[0], self.data[1]]))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The body: a zero-copy slice of the stored buffer.
    pub fn body(&self) -> Bytes {
        self.data.slice(self.body_off..)
    }

    /// The headers, values sharing the stored buffer.
    pub fn headers(&self) -> Result<HeaderMap, CorruptResponse> {
        self.headers_with_room(0)
    }

    /// [`Self::headers`] in a map with room for `extra` more (a replay adds one: inserting
    /// past the capacity would grow the map, reallocating it, on every replay).
    pub fn headers_with_room(&self, extra: usize) -> Result<HeaderMap, CorruptResponse> {
        let count = u16::from_le_bytes([self.data[2], self.data[3]]) as usize;
        // A stored count past what a `HeaderMap` holds (~24k) is a damaged or forged record:
        // `with_capacity` and `append` would panic on it.
        let mut map = HeaderMap::try_with_capacity(count + extra).map_err(|_| CorruptResponse("too many headers"))?;
        let mut at = 4;
        for _ in 0..count {
            let n = u16::from_le_bytes(get2(&self.data, at)?) as usize;
            let name = header_name(&self.data[at + 2..at + 2 + n]).map_err(|_| CorruptResponse("header name"))?;
            at += 2 + n;
            let v = u32::from_le_bytes(get4(&self.data, at)?) as usize;
            let value = HeaderValue::from_maybe_shared(self.data.slice(at + 4..at + 4 + v))
                .map_err(|_| CorruptResponse("header value"))?;
            at += 4 + v;
            map.try_append(name, value)
                .map_err(|_| CorruptResponse("too many headers"))?;
        }
        Ok(map)
    }
}

/// The stored (lower-case) name as a `HeaderName`: the names most responses carry are matched
/// directly, which is ~20 instructions where `HeaderName::from_bytes` (a standard-header lookup
/// and a validation pass) is ~330, on every header of every replay.
fn header_name(b: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    use http::header;
    Ok(match b {
        b"content-type" => header::CONTENT_TYPE,
        b"content-length" => header::CONTENT_LENGTH,
        b"date" => header::DATE,
        b"location" => header::LOCATION,
        b"cache-control" => header::CACHE_CONTROL,
        b"etag" => header::ETAG,
        b"server" => header::SERVER,
        b"vary" => header::VARY,
        b"last-modified" => header::LAST_MODIFIED,
        b"content-encoding" => header::CONTENT_ENCODING,
        _ => return HeaderName::from_bytes(b),
    })
}

fn get2(d: &[u8], at: usize) -> Result<[u8; 2], CorruptResponse> {
    d.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .ok_or(CorruptResponse("truncated"))
}

fn get4(d: &[u8], at: usize) -> Result<[u8; 4], CorruptResponse> {
    d.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .ok_or(CorruptResponse("truncated"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_forged_header_count_is_corrupt_not_a_panic() {
        let count: u16 = 25_000;
        let mut buf = Vec::new();
        buf.extend_from_slice(&200u16.to_le_bytes());
        buf.extend_from_slice(&count.to_le_bytes());
        for _ in 0..count {
            buf.extend_from_slice(&1u16.to_le_bytes());
            buf.push(b'x');
            buf.extend_from_slice(&1u32.to_le_bytes());
            buf.push(b'y');
        }
        let r = StoredResponse::from_bytes(Bytes::from(buf)).unwrap();
        assert!(r.headers().is_err());
        assert!(r.headers_with_room(1).is_err());
    }

    #[test]
    fn common_names_decode_as_from_bytes_does() {
        let names = [
            "content-type",
            "content-length",
            "date",
            "location",
            "cache-control",
            "etag",
            "server",
            "vary",
            "last-modified",
            "content-encoding",
            "x-custom",
            "content-typ",
            "dates",
        ];
        for n in names {
            assert_eq!(
                header_name(n.as_bytes()).unwrap(),
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                "{n}"
            );
        }
        assert!(header_name(b"bad name").is_err());
    }

    proptest! {
        #[test]
        fn round_trips_byte_exact(
            status in 100u16..600,
            headers in proptest::collection::vec(("[a-z][a-z0-9-]{0,20}", "[ -~]{0,40}"), 0..12),
            body in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            let mut map = HeaderMap::new();
            for (n, v) in &headers {
                map.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v.trim()).unwrap());
            }
            let status = StatusCode::from_u16(status).unwrap();
            let stored = StoredResponse::new(status, &map, &body);
            let decoded = StoredResponse::from_bytes(stored.as_bytes().clone()).unwrap();
            prop_assert_eq!(decoded.status(), status);
            prop_assert_eq!(decoded.headers().unwrap(), map);
            prop_assert_eq!(&decoded.body()[..], &body[..]);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(r) = StoredResponse::from_bytes(Bytes::from(data)) {
                let _ = r.headers();
                let _ = r.body();
                let _ = r.status();
            }
        }
    }
}
