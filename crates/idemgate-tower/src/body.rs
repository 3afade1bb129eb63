//! The bodies the layer hands on: a buffered request or a streamed one, and a stored, streamed
//! or partly buffered response.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::BoxError;

pin_project! {
    /// A request body as the inner service receives it: `Full { data }` holds the buffered bytes
    /// until sent; `Stream { body }` is the original body.
    #[allow(missing_docs)]
    #[project = RequestBodyProj]
    pub enum RequestBody<B> {
        /// Buffered by the layer (protected requests: it was fingerprinted).
        Full {
            data: Option<Bytes>,
        },
        /// Untouched (requests the layer does not protect).
        Stream {
            #[pin]
            body: B,
        },
    }
}

impl<B> RequestBody<B> {
    /// A buffered body.
    pub fn full(data: Bytes) -> Self {
        RequestBody::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            RequestBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RequestBodyProj::Stream { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Full { data } => data.is_none(),
            RequestBody::Stream { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            RequestBody::Stream { body } => body.size_hint(),
        }
    }
}

pin_project! {
    /// A response body as the layer returns it: `Full { data }` holds a complete body until
    /// sent; `Stream { prefix, body }` sends bytes already read, then the rest of the inner body.
    #[allow(missing_docs)]
    #[project = ResponseBodyProj]
    pub enum ResponseBody<B> {
        /// A complete body: stored, replayed, or a problem document.
        Full {
            data: Option<Bytes>,
        },
        /// The inner service's body, after `prefix` (bytes already read while trying to store it).
        Stream {
            prefix: Option<Bytes>,
            #[pin]
            body: B,
        },
    }
}

impl<B> ResponseBody<B> {
    /// A complete body.
    pub fn full(data: Bytes) -> Self {
        ResponseBody::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }

    /// The inner body, streamed.
    pub fn stream(body: B) -> Self {
        ResponseBody::Stream { prefix: None, body }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ResponseBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseBodyProj::Stream { prefix, body } => match prefix.take() {
                Some(p) => Poll::Ready(Some(Ok(Frame::data(p)))),
                None => body.poll_frame(cx).map_err(Into::into),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full { data } => data.is_none(),
            ResponseBody::Stream { prefix, body } => prefix.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            ResponseBody::Stream { prefix, body } => {
                let p = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let h = body.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + p);
                if let Some(u) = h.upper() {
                    out.set_upper(u + p);
                }
                out
            }
        }
    }
}
