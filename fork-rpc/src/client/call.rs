//! The future of one call, as a small state machine: start (or wait for a
//! place in flight), wait for the outcome, explain a failure.

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use serde::Serialize;
use tarpc::RequestName;
use tarpc::client::RpcError;

use super::connection::{Sent, Start};
use super::lost::explain;
use super::stub::Client;

/// A call on a worker, through a client held by reference (the stub) or
/// in an `Arc` ([`Client::call_owned`]).
///
/// Written out as a state machine rather than an `async fn`: a call's
/// future is moved several times on its way (tarpc's generated method keeps
/// two copies of it), so its size counts, and an `async fn` keeps its
/// arguments beside every later state. The rare states are boxed.
pub(super) struct Call<'a, C, Req, Resp>
where
    C: Deref<Target = Client<Req, Resp>>,
    Resp: Serialize + Send + 'static,
{
    client: C,
    state: CallState<'a, Req>,
}

enum CallState<'a, Req> {
    /// Not polled yet.
    Start(tarpc::context::Context, Req),
    /// Waiting for a place among the calls in flight.
    Full(Pin<Box<dyn Future<Output = Result<Sent, RpcError>> + Send + 'a>>),
    /// Sent, waiting for its outcome.
    Sent(Sent),
    /// Failed with an error that may mean the worker was lost: finding out.
    Explaining(Pin<Box<dyn Future<Output = RpcError> + Send + 'a>>),
    Done,
}

// Nothing in a call is pinned in place: the states that are futures are
// boxed.
impl<C, Req, Resp> Unpin for Call<'_, C, Req, Resp>
where
    C: Deref<Target = Client<Req, Resp>>,
    Resp: Serialize + Send + 'static,
{
}

impl<'a, C, Req, Resp> Call<'a, C, Req, Resp>
where
    C: Deref<Target = Client<Req, Resp>> + Clone + Send + Sync + 'a,
    Req: Serialize + RequestName + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    pub(super) fn new(client: C, ctx: tarpc::context::Context, request: Req) -> Self {
        Call {
            client,
            state: CallState::Start(ctx, request),
        }
    }

    /// The outcome of a failed call: errors that may mean the connection
    /// ended say why it did.
    fn fail(&mut self, e: RpcError) -> Option<RpcError> {
        if !matches!(
            e,
            RpcError::Shutdown | RpcError::Send(_) | RpcError::Channel(_)
        ) {
            return Some(e);
        }
        let lost = self.client.lost.clone();
        self.state = CallState::Explaining(Box::pin(explain(lost, e)));
        None
    }
}

impl<'a, C, Req, Resp> Future for Call<'a, C, Req, Resp>
where
    C: Deref<Target = Client<Req, Resp>> + Clone + Send + Sync + 'a,
    Req: Serialize + RequestName + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    type Output = Result<Resp, RpcError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if matches!(this.state, CallState::Start(..)) {
            // Starting a call uses the task's budget, as tokio's own
            // resources do: a task that starts call after call yields now
            // and then, so that the runtime writes and reads for them.
            ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
        }
        loop {
            let failed = match std::mem::replace(&mut this.state, CallState::Done) {
                CallState::Start(ctx, request) => match this.client.inner.start(ctx, request) {
                    Ok(Start::Sent(sent)) => {
                        this.state = CallState::Sent(sent);
                        continue;
                    }
                    Ok(Start::Full(ctx, request)) => {
                        let client = this.client.clone();
                        this.state = CallState::Full(Box::pin(async move {
                            client.inner.start_waiting(ctx, request).await
                        }));
                        continue;
                    }
                    Err(e) => e,
                },
                CallState::Full(mut waiting) => match waiting.as_mut().poll(cx) {
                    Poll::Pending => {
                        this.state = CallState::Full(waiting);
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(sent)) => {
                        this.state = CallState::Sent(sent);
                        continue;
                    }
                    Poll::Ready(Err(e)) => e,
                },
                CallState::Sent(mut sent) => {
                    let outcome = this.client.inner.poll_sent(&mut sent, cx);
                    let Poll::Ready(outcome) = outcome else {
                        this.state = CallState::Sent(sent);
                        return Poll::Pending;
                    };
                    this.client.inner.end_call(sent);
                    match outcome {
                        Ok(reply) => return Poll::Ready(Ok(reply)),
                        Err(e) => e,
                    }
                }
                CallState::Explaining(mut explaining) => match explaining.as_mut().poll(cx) {
                    Poll::Pending => {
                        this.state = CallState::Explaining(explaining);
                        return Poll::Pending;
                    }
                    Poll::Ready(e) => return Poll::Ready(Err(e)),
                },
                CallState::Done => panic!("a fork-rpc call polled after it completed"),
            };
            if let Some(e) = this.fail(failed) {
                return Poll::Ready(Err(e));
            }
        }
    }
}

impl<C, Req, Resp> Drop for Call<'_, C, Req, Resp>
where
    C: Deref<Target = Client<Req, Resp>>,
    Resp: Serialize + Send + 'static,
{
    fn drop(&mut self) {
        if let CallState::Sent(sent) = std::mem::replace(&mut self.state, CallState::Done) {
            self.client.inner.end_call(sent);
        }
    }
}

#[cfg(test)]
mod tests {
    #[tarpc::service]
    trait Sz {
        async fn add(a: i64, b: i64) -> i64;
    }

    /// The size of what `f` returns, without calling it.
    fn size_of_output<C: 'static, F>(_: impl FnOnce(&'static C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The future of a generated method is moved several times (tarpc's
    /// generated method keeps two copies of ours), so its size counts for
    /// pipelined calls: 176 bytes before the call owned its place in
    /// flight; as much with it, since the request's trace context moved from
    /// the future to the in-flight table.
    #[test]
    fn a_call_future_stays_small() {
        type C = SzClient<super::super::Client<SzRequest, SzResponse>>;
        let size = size_of_output(|c: &'static C| c.add(tarpc::context::current(), 1, 2));
        assert!(size <= 176, "a call's future takes {size} bytes");
    }
}
