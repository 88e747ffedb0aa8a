//! Retries: a job marked idempotent runs again on another worker when the
//! worker it ran on is lost. The pool keeps such a request behind an `Arc`
//! and sends it again as it is: no copy, no serialisation round trip (see
//! [`Wire`]).

use std::sync::Arc;

use super::job::Expiry;
use super::shared::Shared;
use super::spawn::{Spawn, Wire};
use tarpc::client::RpcError;

/// Tells idempotent requests apart.
pub(crate) type IsIdempotent<Req> = Box<dyn Fn(&Req) -> bool + Send + Sync>;

/// Which requests run again, and how often.
pub(crate) struct Retry<Req> {
    is_idempotent: IsIdempotent<Req>,
    times: u32,
}

// ===== impl Retry =====

impl<Req> Retry<Req> {
    /// Retries for the requests `is_idempotent` accepts, once.
    pub(crate) fn new(is_idempotent: IsIdempotent<Req>) -> Self {
        Retry {
            is_idempotent,
            times: 1,
        }
    }

    /// The same, `times` times at most; `None` if that is never.
    pub(crate) fn times(self, times: u32) -> Option<Self> {
        (times > 0).then_some(Retry { times, ..self })
    }

    /// Whether `request` may run again.
    pub(crate) fn applies(&self, request: &Req) -> bool {
        (self.is_idempotent)(request)
    }
}

// ===== impl Shared: retrying =====

impl<S: Spawn> Shared<S> {
    /// Runs an idempotent job, and again on another worker (up to the
    /// retries) while the worker it ran on is lost.
    pub(crate) async fn run_retrying(
        self: &Arc<Self>,
        expiry: Expiry,
        request: Arc<S::Req>,
    ) -> Result<S::Resp, RpcError> {
        let times = self.retry.as_ref().map_or(0, |r| r.times);
        let mut result = self.run_slowly(expiry, Wire::Shared(request.clone())).await;
        for _ in 0..times {
            let Err(e) = &result else { break };
            if !fork_rpc::WorkerLost::is_lost(e) {
                break;
            }
            tracing::debug!(error = %e, "running an idempotent job again on another worker");
            result = self.run_slowly(expiry, Wire::Shared(request.clone())).await;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_requests_run_again() {
        let retry = Retry::new(Box::new(|r: &String| r.starts_with("get")));
        assert!(retry.applies(&"get x".to_owned()));
        assert!(!retry.applies(&"put x".to_owned()));
        // No retries: nothing runs again.
        assert!(retry.times(0).is_none());
    }
}
