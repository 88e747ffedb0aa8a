//! Retries: a job marked idempotent runs again on another worker when the
//! worker it ran on is lost. The pool keeps a copy of such a request (a
//! clone, made when the call is made) to send it again.

use std::sync::Arc;

use tarpc::client::RpcError;
use tarpc::context::Context;
use tokio::time::Instant;

use super::shared::Shared;
use super::spawn::Spawn;

/// Tells idempotent requests apart.
pub(crate) type IsIdempotent<Req> = Box<dyn Fn(&Req) -> bool + Send + Sync>;

/// Which requests run again, and how often.
pub(crate) struct Retry<Req> {
    is_idempotent: IsIdempotent<Req>,
    /// `Req::clone`, for the requests that may run again.
    clone: fn(&Req) -> Req,
    times: u32,
}

// ===== impl Retry =====

impl<Req> Retry<Req> {
    /// Retries for the requests `is_idempotent` accepts, once.
    pub(crate) fn new(is_idempotent: IsIdempotent<Req>, clone: fn(&Req) -> Req) -> Self {
        Retry {
            is_idempotent,
            clone,
            times: 1,
        }
    }

    /// The same, `times` times at most; `None` if that is never.
    pub(crate) fn times(self, times: u32) -> Option<Self> {
        (times > 0).then_some(Retry { times, ..self })
    }

    /// A copy of `request` to run again, if it may run again.
    pub(crate) fn copy(&self, request: &Req) -> Option<Req> {
        (self.is_idempotent)(request).then(|| (self.clone)(request))
    }
}

// ===== impl Shared: retrying =====

impl<S: Spawn> Shared<S> {
    /// Runs an idempotent job, and again on another worker (up to the
    /// retries) while the worker it ran on is lost. `copy` is the request's
    /// copy for the first retry.
    pub(crate) async fn run_retrying(
        self: &Arc<Self>,
        deadline: Instant,
        ctx: Context,
        request: S::Req,
        copy: S::Req,
    ) -> Result<S::Resp, RpcError> {
        let Some(retry) = &self.retry else {
            return self.run_slowly(deadline, ctx, request).await;
        };
        let mut result = self.run_slowly(deadline, ctx, request).await;
        let mut copy = Some(copy);
        for left in (0..retry.times).rev() {
            let Err(e) = &result else { break };
            if !fork_rpc::WorkerLost::is_lost(e) {
                break;
            }
            let Some(request) = copy.take() else { break };
            if left > 0 {
                copy = Some((retry.clone)(&request));
            }
            tracing::debug!(error = %e, "running an idempotent job again on another worker");
            result = self.run_slowly(deadline, ctx, request).await;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_requests_are_copied() {
        let retry = Retry::new(Box::new(|r: &String| r.starts_with("get")), String::clone);
        assert_eq!(retry.copy(&"get x".to_owned()).as_deref(), Some("get x"));
        assert_eq!(retry.copy(&"put x".to_owned()), None);
        // No retries: nothing is kept.
        assert!(retry.times(0).is_none());
    }
}
