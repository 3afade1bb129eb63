//! [`ResponseFuture`]: untouched requests poll the inner future directly (no allocation);
//! refused ones are ready at once; protected ones run a boxed state machine on the connection's
//! own task, and finish on a task of their own only if they are dropped before they are done
//! ([`Detach`]): a client that disconnects (the usual reason for a retry) must not cancel an
//! exchange between its claim and its recorded outcome, and the common case pays no task switch.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Response, Uri};
use idemgate_core::BoxFuture;
use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::body::ResponseBody;
use crate::layer::Shared;
use crate::metrics::Outcome;
use crate::service::{log_request, upstream_problem};
use crate::{BoxError, UpstreamError};

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
            fut: Detach<Result<Response<ResponseBody<B>>, E>>,
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

    pub(crate) fn managed(fut: Detach<Result<Response<ResponseBody<B>>, E>>) -> Self {
        Self {
            kind: Kind::Managed { fut },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: 'static,
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
                        log_request(method, uri.path(), Outcome::Bypassed, error_status(&e), *start);
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
            KindProj::Managed { fut } => Pin::new(fut).poll(cx),
        }
    }
}

/// The status a server answers an inner-service error with, for the access log: the status of
/// [`upstream_problem`] when the error is an [`UpstreamError`] or a [`BoxError`] holding one (504
/// for a timeout), else 502. The error's own type is not
/// known here, hence the `Any` look-up.
fn error_status<E: 'static>(e: &E) -> http::StatusCode {
    let e: &dyn Any = e;
    if let Some(u) = e.downcast_ref::<UpstreamError>() {
        upstream_problem(u).status()
    } else if let Some(b) = e.downcast_ref::<BoxError>() {
        upstream_problem(&**b).status()
    } else {
        http::StatusCode::BAD_GATEWAY
    }
}

/// A boxed future that, if dropped before it finishes, is handed to a task of its own to finish
/// (its output is then discarded) and counted in [`DetachedTasks`] until it ends. Polled in place
/// otherwise, so it costs no extra task.
///
/// It holds the service's `Shared` rather than a handle of the (layer-wide) tracker: the tracker
/// is touched only when a future is detached, not at every request.
pub(crate) struct Detach<T> {
    fut: Option<BoxFuture<'static, T>>,
    shared: Arc<Shared>,
    spawn: fn(BoxFuture<'static, T>, &DetachedTasks),
}

impl<T: Send + 'static> Detach<T> {
    pub(crate) fn new(fut: BoxFuture<'static, T>, shared: Arc<Shared>) -> Self {
        fn spawn<T: Send + 'static>(fut: BoxFuture<'static, T>, tasks: &DetachedTasks) {
            // Outside a runtime (a runtime being torn down) there is nothing to finish it on.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let running = tasks.start();
                rt.spawn(async move {
                    let _running = running;
                    let _ = fut.await;
                });
            }
        }
        Self {
            fut: Some(fut),
            shared,
            spawn: spawn::<T>,
        }
    }
}

/// The exchanges that finish on tasks of their own because their client went away (see
/// [`crate::Idempotency::detached`]). A server that is shutting down waits for [`idle`] before it
/// ends the runtime they run on, so their outcomes are recorded instead of their keys staying
/// locked until the lease ends.
///
/// [`idle`]: DetachedTasks::idle
#[derive(Clone, Debug, Default)]
pub struct DetachedTasks(Arc<DetachedInner>);

#[derive(Debug, Default)]
struct DetachedInner {
    running: AtomicUsize,
    idle: Notify,
}

/// One detached exchange, counted until dropped (finished, or dropped with its runtime).
struct Running(DetachedTasks);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0 .0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0 .0.idle.notify_waiters();
        }
    }
}

impl DetachedTasks {
    fn start(&self) -> Running {
        self.0.running.fetch_add(1, Ordering::AcqRel);
        Running(self.clone())
    }

    /// How many detached exchanges are running.
    pub fn running(&self) -> usize {
        self.0.running.load(Ordering::Acquire)
    }

    /// Resolves once no detached exchange is running.
    pub async fn idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            tokio::pin!(notified);
            // Armed before looking, so an exchange that ends in between is not missed.
            notified.as_mut().enable();
            if self.running() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl<T> Future for Detach<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Pending; // polled after completion
        };
        let out = std::task::ready!(fut.as_mut().poll(cx));
        self.fut = None;
        Poll::Ready(out)
    }
}

impl<T> Drop for Detach<T> {
    fn drop(&mut self) {
        if let Some(fut) = self.fut.take() {
            (self.spawn)(fut, &self.shared.detached);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Problem;

    #[test]
    fn the_access_log_gives_an_inner_error_the_status_it_is_answered_with() {
        let timeout = UpstreamError::Timeout(Duration::from_secs(1));
        assert_eq!(error_status(&timeout), http::StatusCode::GATEWAY_TIMEOUT);
        let boxed: BoxError = Box::new(UpstreamError::Timeout(Duration::from_secs(1)));
        assert_eq!(error_status(&boxed), http::StatusCode::GATEWAY_TIMEOUT);
        let refused = UpstreamError::NotExecuted("connection refused".into());
        assert_eq!(error_status(&refused), Problem::UpstreamUnavailable.status());
        let broken: BoxError = "reset".into();
        assert_eq!(error_status(&broken), http::StatusCode::BAD_GATEWAY);
        assert_eq!(error_status(&std::io::Error::other("x")), http::StatusCode::BAD_GATEWAY);
    }
}
