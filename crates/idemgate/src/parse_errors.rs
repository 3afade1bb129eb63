//! Problem documents for the requests that hyper refuses before the gateway sees them.
//!
//! Sometimes hyper cannot parse a request head. The request line or a header may be malformed,
//! `Content-Length` may be invalid, the head may be over hyper's buffer limit, or the URI may be
//! too long. hyper then answers by itself with a bare `400`, `431` or `414` that has no body, and
//! closes the connection. No hook lets the server choose that answer.
//!
//! [`ProblemIo`] sits between hyper and the client's socket and writes a problem document in its
//! place, with the type `malformed-request`, `headers-too-large` or `uri-too-long`, as every
//! other answer of the gateway's own is.
//!
//! It tells hyper's answer apart from an upstream's response by the connection's state, not by
//! guessing from the bytes:
//! - hyper writes such an answer only while no request is in progress on the connection
//!   ([`HeadClock::in_progress`] is 0);
//! - it writes one only when nothing of an earlier response is still in its buffer. hyper calls
//!   the socket's `poll_flush` only once its write buffer is empty, so this holds when no
//!   response has ended ([`HeadClock::ended`]) since the last flush.
//!
//! Each answer counts as one `invalid` request in `idemgate_requests_total`. There is no access
//! line, since there is no method or path to log.
//!
//! Any other write passes through untouched, and so does anything that does not match, such as
//! a status this module does not know. At worst a client sees hyper's bare answer, as it would
//! without this module.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use idemgate_tower::{Outcome, Problem};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::head_timeout::HeadClock;

/// A client connection's socket, answering hyper's own parse-error responses with problem
/// documents (module docs).
pub struct ProblemIo<T> {
    inner: T,
    clock: Arc<HeadClock>,
    /// `clock.ended()` at the last flush.
    flushed_ended: u32,
    /// The problem response written instead of hyper's, and how many of its bytes are written.
    replacement: Option<(Vec<u8>, usize)>,
}

impl<T> ProblemIo<T> {
    /// `inner`, the socket of the connection whose requests `clock` counts.
    pub fn new(inner: T, clock: Arc<HeadClock>) -> Self {
        let flushed_ended = clock.ended();
        Self {
            inner,
            clock,
            flushed_ended,
            replacement: None,
        }
    }

    /// Whether `buf`, about to be written, is hyper's own answer to an unparsable request, or
    /// comes after one (then it is dropped: hyper writes nothing more before it closes).
    fn intercept(&mut self, buf: &[u8]) -> bool {
        if self.replacement.is_some() {
            return true;
        }
        if self.clock.in_progress() != 0 || self.clock.ended() != self.flushed_ended {
            return false;
        }
        let Some(problem) = problem_for(buf) else {
            return false;
        };
        tracing::debug!(
            status = problem.status().as_u16(),
            "unparsable request; answered with a problem document"
        );
        // Counted with the layer's outcomes, as the invalid requests it answers itself are.
        metrics::counter!("idemgate_requests_total", "outcome" => Outcome::Invalid.as_str()).increment(1);
        self.replacement = Some((encode(&problem), 0));
        true
    }
}

/// The problem for the response whose first bytes are `head`, if it is one that hyper answers
/// parse errors with.
fn problem_for(head: &[u8]) -> Option<Problem> {
    let rest = head
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| head.strip_prefix(b"HTTP/1.0 "))?;
    match rest.get(..4)? {
        b"400 " => Some(Problem::MalformedRequest),
        b"431 " => Some(Problem::HeadersTooLarge),
        b"414 " => Some(Problem::UriTooLong),
        _ => None,
    }
}

/// `problem` as a whole HTTP/1.1 response that closes the connection: the problem's own headers
/// (`Problem::headers`, as every other problem answer has them) plus the framing.
fn encode(problem: &Problem) -> Vec<u8> {
    let body = problem.to_json().to_string();
    let status = problem.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &problem.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = format!(
        "connection: close\r\ndate: {}\r\ncontent-length: {}\r\n\r\n",
        httpdate::fmt_http_date(std::time::SystemTime::now()),
        body.len()
    );
    out.extend_from_slice(framing.as_bytes());
    out.extend_from_slice(body.as_bytes());
    out
}

impl<T: AsyncWrite + Unpin> ProblemIo<T> {
    /// Writes what is left of the replacement, if there is one.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((bytes, at)) = &mut self.replacement else {
            return Poll::Ready(Ok(()));
        };
        while *at < bytes.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *at += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ProblemIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ProblemIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.intercept(buf) {
            // Taken whole; the replacement goes out at the flush (or shutdown) that follows.
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
        if this.intercept(first) {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // hyper's buffer is empty whenever it calls this (module docs).
        this.flushed_ended = this.clock.ended();
        ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const HYPER_400: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 06:00:00 GMT\r\n\r\n";

    async fn written(io: ProblemIo<tokio::io::DuplexStream>, mut peer: tokio::io::DuplexStream) -> String {
        drop(io);
        let mut out = Vec::new();
        peer.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn an_answer_on_an_idle_connection_becomes_a_problem() {
        let (a, b) = tokio::io::duplex(4096);
        let mut io = ProblemIo::new(a, HeadClock::new());
        io.write_all(HYPER_400).await.unwrap();
        io.flush().await.unwrap();
        let out = written(io, b).await;
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        assert!(out.contains("content-type: application/problem+json\r\n"), "{out}");
        assert!(out.contains("connection: close\r\n"), "{out}");
        let body = out.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["type"], "https://idemgate.dev/problems/malformed-request");
        assert_eq!(v["status"], 400);
    }

    #[tokio::test]
    async fn each_status_of_hypers_has_its_type() {
        for (head, status, slug) in [
            (
                &b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n"[..],
                431,
                "headers-too-large",
            ),
            (&b"HTTP/1.1 414 URI Too Long\r\n\r\n"[..], 414, "uri-too-long"),
        ] {
            let (a, b) = tokio::io::duplex(4096);
            let mut io = ProblemIo::new(a, HeadClock::new());
            io.write_all(head).await.unwrap();
            io.shutdown().await.unwrap();
            let out = written(io, b).await;
            assert!(out.starts_with(&format!("HTTP/1.1 {status} ")), "{out}");
            assert!(out.contains(&format!("/problems/{slug}\"")), "{out}");
        }
    }

    #[tokio::test]
    async fn a_response_in_progress_passes_untouched() {
        let (a, b) = tokio::io::duplex(4096);
        let clock = HeadClock::new();
        let mut io = ProblemIo::new(a, clock.clone());
        let busy = clock.busy();
        io.write_all(HYPER_400).await.unwrap();
        io.flush().await.unwrap();
        drop(busy);
        assert_eq!(written(io, b).await.as_bytes(), HYPER_400);
    }

    #[tokio::test]
    async fn the_tail_of_a_response_that_ended_before_the_flush_passes_untouched() {
        // A response body that looks like hyper's answer, still in hyper's buffer when the
        // response ends: not replaced, since no flush has happened since it ended.
        let (a, b) = tokio::io::duplex(4096);
        let clock = HeadClock::new();
        let mut io = ProblemIo::new(a, clock.clone());
        drop(clock.busy());
        io.write_all(HYPER_400).await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(written(io, b).await.as_bytes(), HYPER_400);
    }

    #[tokio::test]
    async fn other_statuses_and_bytes_pass_untouched() {
        for bytes in [&b"HTTP/1.1 408 Request Timeout\r\n\r\n"[..], b"HTTP/1.1 40", b"hello"] {
            let (a, b) = tokio::io::duplex(4096);
            let mut io = ProblemIo::new(a, HeadClock::new());
            io.write_all(bytes).await.unwrap();
            io.flush().await.unwrap();
            assert_eq!(written(io, b).await.as_bytes(), bytes);
        }
    }
}
