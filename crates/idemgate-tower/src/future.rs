//! [`ResponseFuture`]: untouched requests poll the inner future directly (no allocation);
//! refused ones are ready at once; protected ones run a boxed state machine.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Response, Uri};
use idemgate_core::BoxFuture;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::body::ResponseBody;
use crate::layer::Shared;
use crate::metrics::Outcome;
use crate::service::log_request;

pin_project! {
    /// The response future of [`crate::Idempotency`].
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Passthrough {
            #[pin]
            fut: F,
            shared: Arc<Shared>,
            method: Method,
            uri: Uri,
            start: Instant,
        },
        Ready {
            resp: Option<Response<ResponseBody<B>>>,
        },
        Managed {
            fut: BoxFuture<'static, Result<Response<ResponseBody<B>>, E>>,
        },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn passthrough(fut: F, shared: Arc<Shared>, method: Method, uri: Uri, start: Instant) -> Self {
        Self {
            kind: Kind::Passthrough {
                fut,
                shared,
                method,
                uri,
                start,
            },
        }
    }

    pub(crate) fn ready(resp: Response<ResponseBody<B>>) -> Self {
        Self {
            kind: Kind::Ready { resp: Some(resp) },
        }
    }

    pub(crate) fn managed(fut: BoxFuture<'static, Result<Response<ResponseBody<B>>, E>>) -> Self {
        Self {
            kind: Kind::Managed { fut },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough {
                fut,
                shared,
                method,
                uri,
                start,
            } => {
                let resp = match std::task::ready!(fut.poll(cx)) {
                    Ok(resp) => resp,
                    Err(e) => {
                        shared.metrics.outcome(Outcome::Bypassed);
                        log_request(
                            method,
                            uri.path(),
                            Outcome::Bypassed,
                            http::StatusCode::BAD_GATEWAY,
                            *start,
                        );
                        return Poll::Ready(Err(e));
                    }
                };
                shared.metrics.outcome(Outcome::Bypassed);
                log_request(method, uri.path(), Outcome::Bypassed, resp.status(), *start);
                Poll::Ready(Ok(resp.map(ResponseBody::stream)))
            }
            KindProj::Ready { resp } => match resp.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
            KindProj::Managed { fut } => fut.as_mut().poll(cx),
        }
    }
}
