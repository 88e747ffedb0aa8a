//! The connection's background task: reads when no call waits (so that
//! events and the end of the connection still get noticed), fails calls
//! past their deadline on one timer set to the earliest, and while calls
//! wait, looks every [`WATCH`] that the elected reader reads. Ends when the
//! connection does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use serde::Serialize;

use super::connection::Shared;
use super::reader::WATCH;

/// The background task of a connection.
pub(super) async fn run<Resp: Serialize + Send + 'static>(shared: Arc<Shared<Resp>>) {
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    // What the timer is set for.
    let mut timer_for: Option<Instant> = None;
    // When to look at the reader next.
    let mut look: Option<Instant> = None;
    std::future::poll_fn(|cx| {
        let (mut deadline, mut watching, unread) = {
            let st = &mut *shared.state();
            if st.calls.is_ended() {
                return Poll::Ready(());
            }
            st.election.set_background(cx.waker());
            (
                st.calls.timer(),
                st.election.watching(),
                st.election.unread(),
            )
        };
        if unread {
            shared.read(None);
        }
        loop {
            if watching && look.is_none() {
                look = Some(Instant::now() + WATCH);
            }
            let Some(at) = deadline.into_iter().chain(look).min() else {
                break;
            };
            if timer_for != Some(at) {
                // Deadlines are on the real clock (tarpc's); the timer is on
                // the runtime's, which need not be the real one: tokio's
                // paused clock in tests runs ahead of it. Set `at - now`
                // ahead; if it fires early, it is set again for what is left,
                // and the task yields meanwhile rather than spin.
                let on_runtime =
                    tokio::time::Instant::now() + at.saturating_duration_since(Instant::now());
                match &mut timer {
                    Some(timer) => timer.as_mut().reset(on_runtime),
                    None => timer = Some(Box::pin(tokio::time::sleep_until(on_runtime))),
                }
                timer_for = Some(at);
            }
            if let Some(timer) = &mut timer
                && timer.as_mut().poll(cx).is_pending()
            {
                break;
            }
            let now = Instant::now();
            if now < at {
                timer_for = None;
                continue;
            }
            if deadline.is_some_and(|at| at <= now) {
                deadline = shared.expire(now);
            }
            if look.is_some_and(|at| at <= now) {
                look = None;
                watching = shared.watch();
            }
        }
        if shared.state().calls.is_ended() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}
