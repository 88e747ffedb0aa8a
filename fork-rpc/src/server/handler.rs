//! A running request handler, ended early by its deadline or a
//! cancellation, and whose panic is caught.

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Instant;

use tarpc::ServerError;
use tracing::Span;

use super::panic::caught;
use crate::error::HandlerPanic;

/// What became of a handler.
pub(super) enum Outcome<Resp> {
    /// It returned this reply to request `.0`.
    Done(u64, std::result::Result<Resp, ServerError>),
    /// Request `.0` reached its deadline before its handler returned: no
    /// reply (the caller has given up).
    Expired(u64),
    /// Its request was cancelled: no reply.
    Cancelled,
    /// It panicked.
    Panicked(HandlerPanic),
}

pin_project_lite::pin_project! {
    /// A running request handler, ended early by its deadline or a
    /// cancellation, and whose panic is caught.
    //
    // Fields (pin-project-lite takes no doc comments on them): `span` is the
    // handler's tracing span, if a subscriber wants it; `call`, `None` once
    // cancelled; `timer`, the deadline's, armed only once the handler waits
    // (so one that returns at once costs no timer); `waker`, to end the
    // handler on a cancellation.
    pub(super) struct Handler<F> {
        id: u64,
        deadline: Instant,
        span: Option<Span>,
        #[pin]
        call: Option<F>,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        waker: Option<Waker>,
    }
}

// ===== impl Handler =====

impl<F> Handler<F> {
    pub(super) fn new(id: u64, deadline: Instant, span: Option<Span>, call: F) -> Self {
        Handler {
            id,
            deadline,
            span,
            call: Some(call),
            timer: None,
            waker: None,
        }
    }

    /// The id of its request.
    pub(super) fn id(&self) -> u64 {
        self.id
    }

    /// Drops the handler's future at once; it ends as `Cancelled` when
    /// polled next.
    pub(super) fn cancel(self: Pin<&mut Self>) {
        let mut this = self.project();
        this.call.set(None);
        *this.timer = None;
        if let Some(waker) = this.waker.take() {
            waker.wake();
        }
    }
}

impl<F, Resp> Future for Handler<F>
where
    F: Future<Output = std::result::Result<Resp, ServerError>>,
{
    type Output = Outcome<Resp>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Outcome<Resp>> {
        let this = self.project();
        let Some(call) = this.call.as_pin_mut() else {
            return Poll::Ready(Outcome::Cancelled);
        };
        let _entered = this.span.as_ref().map(Span::enter);
        match panic::catch_unwind(AssertUnwindSafe(|| call.poll(cx))) {
            Ok(Poll::Ready(reply)) => return Poll::Ready(Outcome::Done(*this.id, reply)),
            Ok(Poll::Pending) => {}
            Err(panic) => {
                return Poll::Ready(Outcome::Panicked(caught(&*panic)));
            }
        }
        let deadline = tokio::time::Instant::from_std(*this.deadline);
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Outcome::Expired(*this.id));
        }
        if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *this.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}
