//! Every answer the layer produces itself, as RFC 9457 `application/problem+json`.
//!
//! Each problem has a stable `type` URI under [`PROBLEM_BASE`]; clients switch on it. The table in
//! docs/DESIGN.md lists them.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use crate::body::ResponseBody;

/// The prefix of every problem `type`.
pub const PROBLEM_BASE: &str = "https://idemgate.dev/problems/";

/// A problem the layer answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// 400: the key header's value is not a valid key.
    InvalidKey(String),
    /// 400: the request carries the key header more than once.
    MultipleKeys,
    /// 400: the route requires a key and the request has none.
    MissingKey,
    /// 400: the request body could not be read.
    UnreadableBody,
    /// 409: a request with this key is still in flight.
    Conflict {
        /// Seconds the client should wait before retrying.
        retry_after_secs: u64,
    },
    /// 413: the request body is larger than the configured limit.
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// 422: the key was used before with another request.
    KeyReused,
    /// 502: the upstream could not be reached; nothing was executed and the key is free.
    UpstreamUnavailable,
    /// 502: the upstream failed mid-exchange; the outcome is unknown and the key stays locked.
    UpstreamFailed {
        /// When the lock ends (seconds).
        retry_after_secs: u64,
    },
    /// 504: the upstream did not answer in time; the outcome is unknown and the key stays locked.
    UpstreamTimeout {
        /// When the lock ends (seconds).
        retry_after_secs: u64,
    },
    /// 503: the store could not be reached; nothing was forwarded.
    StoreUnavailable,
    /// 503: the store is at capacity; nothing was forwarded.
    StoreFull,
    /// 400: the request line or a header is not valid HTTP/1.1 (the server answers this one,
    /// before any layer sees the request; the connection is closed).
    MalformedRequest,
    /// 431: the request line and headers are over the server's limit (connection closed).
    HeadersTooLarge,
    /// 414: the request target is over the server's limit (connection closed).
    UriTooLong,
}

impl Problem {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Problem::InvalidKey(_)
            | Problem::MultipleKeys
            | Problem::MissingKey
            | Problem::UnreadableBody
            | Problem::MalformedRequest => StatusCode::BAD_REQUEST,
            Problem::Conflict { .. } => StatusCode::CONFLICT,
            Problem::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Problem::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Problem::UpstreamUnavailable | Problem::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            Problem::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Problem::StoreUnavailable | Problem::StoreFull => StatusCode::SERVICE_UNAVAILABLE,
            Problem::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Problem::UriTooLong => StatusCode::URI_TOO_LONG,
        }
    }

    /// The last segment of the `type` URI.
    pub fn slug(&self) -> &'static str {
        match self {
            Problem::InvalidKey(_) => "invalid-key",
            Problem::MultipleKeys => "multiple-keys",
            Problem::MissingKey => "missing-key",
            Problem::UnreadableBody => "unreadable-body",
            Problem::Conflict { .. } => "request-in-progress",
            Problem::PayloadTooLarge { .. } => "payload-too-large",
            Problem::KeyReused => "key-reused",
            Problem::UpstreamUnavailable => "upstream-unavailable",
            Problem::UpstreamFailed { .. } => "upstream-failed",
            Problem::UpstreamTimeout { .. } => "upstream-timeout",
            Problem::StoreUnavailable => "store-unavailable",
            Problem::StoreFull => "store-full",
            Problem::MalformedRequest => "malformed-request",
            Problem::HeadersTooLarge => "headers-too-large",
            Problem::UriTooLong => "uri-too-long",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Problem::InvalidKey(_) => "Invalid idempotency key",
            Problem::MultipleKeys => "More than one idempotency key",
            Problem::MissingKey => "Idempotency key required",
            Problem::UnreadableBody => "Request body could not be read",
            Problem::Conflict { .. } => "A request with this idempotency key is in progress",
            Problem::PayloadTooLarge { .. } => "Request body too large",
            Problem::KeyReused => "Idempotency key reused with a different request",
            Problem::UpstreamUnavailable => "Upstream unavailable",
            Problem::UpstreamFailed { .. } => "Upstream failed",
            Problem::UpstreamTimeout { .. } => "Upstream timed out",
            Problem::StoreUnavailable => "Idempotency store unavailable",
            Problem::StoreFull => "Idempotency store full",
            Problem::MalformedRequest => "Malformed HTTP request",
            Problem::HeadersTooLarge => "Request head too large",
            Problem::UriTooLong => "Request URI too long",
        }
    }

    fn detail(&self) -> String {
        match self {
            Problem::InvalidKey(why) => format!("{why}; a key is 1-255 visible ASCII characters, bare or as a quoted string"),
            Problem::MultipleKeys => "send the idempotency key header exactly once".into(),
            Problem::MissingKey => "this endpoint requires an idempotency key header".into(),
            Problem::UnreadableBody => "the request body ended early or was malformed".into(),
            Problem::Conflict { .. } => "the first request with this key has not finished; retry later with the same key".into(),
            Problem::PayloadTooLarge { limit } => format!("request bodies over {limit} bytes are not accepted"),
            Problem::KeyReused => "this key was already used with a different method, path, query, body or content type; use a new key for a new request".into(),
            Problem::UpstreamUnavailable => "the upstream could not be reached; nothing was executed, retry with the same key".into(),
            Problem::UpstreamFailed { .. } => "the upstream connection failed mid-request; the outcome is unknown, so the key stays locked until its lease ends".into(),
            Problem::UpstreamTimeout { .. } => "the upstream did not answer in time; the outcome is unknown, so the key stays locked until its lease ends".into(),
            Problem::StoreUnavailable => "the idempotency store cannot be reached; the request was not forwarded, retry with the same key".into(),
            Problem::StoreFull => "the idempotency store is at capacity; the request was not forwarded".into(),
            Problem::MalformedRequest => "the request line or a header (or its Content-Length / Transfer-Encoding) is not valid HTTP/1.1; nothing was forwarded and the connection is closed".into(),
            Problem::HeadersTooLarge => "the request line and headers are larger than the server accepts; nothing was forwarded and the connection is closed".into(),
            Problem::UriTooLong => "the request target is longer than the server accepts; nothing was forwarded and the connection is closed".into(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Problem::Conflict { retry_after_secs }
            | Problem::UpstreamFailed { retry_after_secs }
            | Problem::UpstreamTimeout { retry_after_secs } => Some(*retry_after_secs),
            Problem::StoreUnavailable | Problem::StoreFull | Problem::UpstreamUnavailable => Some(1),
            _ => None,
        }
    }

    /// The problem document.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "type": format!("{PROBLEM_BASE}{}", self.slug()),
            "title": self.title(),
            "status": self.status().as_u16(),
            "detail": self.detail(),
        })
    }

    /// The headers every answer with this problem carries (framing aside).
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(3);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = self.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        h
    }

    /// The problem as a response.
    pub fn into_response<B>(self) -> Response<ResponseBody<B>> {
        let body = Bytes::from(self.to_json().to_string());
        let mut resp = Response::new(ResponseBody::full(body));
        *resp.status_mut() = self.status();
        *resp.headers_mut() = self.headers();
        resp
    }
}
