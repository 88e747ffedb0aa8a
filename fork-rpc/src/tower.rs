//! tower interop (feature `tower`): tower's layers between tarpc's
//! generated client and a worker or a pool.
//!
//! - [`Client`] is a `tower::Service<(Context, Req)>`, and so is fork-pool's
//!   `Pool` (its own `tower` feature): the request is tarpc's context and
//!   the request enum tarpc generated (`CalcRequest`), the response the
//!   response enum (`CalcResponse`), the error tarpc's [`RpcError`];
//! - [`TowerStub`] turns any such service, layers and all, back into a tarpc
//!   stub, so the generated client's typed methods call through the layers:
//!
//! ```no_run
//! # #[tarpc::service] trait Calc { async fn square(x: u64) -> u64; }
//! # async fn doc(client: fork_rpc::Client<CalcRequest, CalcResponse>) -> Result<(), tarpc::client::RpcError> {
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//!
//! let layered = ServiceBuilder::new()
//!     .load_shed() // fail at once rather than wait ...
//!     .concurrency_limit(4) // ... beyond 4 calls in flight
//!     .service(client);
//! let calc = CalcClient::from(fork_rpc::TowerStub::new(layered));
//! let nine = calc.square(tarpc::context::current(), 3).await?;
//! # Ok(())
//! # }
//! ```
//!
//! An error of a layer (tower's `Overloaded`, `Elapsed`, ...) reaches the
//! caller as `RpcError::Send` with the layer's error as its source (tarpc's
//! error has no variant for it); an `RpcError` from the service comes back
//! as it is. A layer that drops a call (a timeout) cancels it in the worker,
//! as dropping any call does.
//!
//! The tower path costs two allocations per call that the plain client does
//! not make (a boxed future, and the stub's clone of the service).

use std::error::Error as StdError;
use std::fmt;
use std::future::{Future, poll_fn};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use serde::Serialize;
use tarpc::RequestName;
use tarpc::client::RpcError;
use tarpc::client::stub::Stub;
use tarpc::context::Context;
use tower_service::Service;

use crate::client::Client;

/// The future of a call made through a `tower::Service` of this family
/// ([`Client`], fork-pool's `Pool`).
pub type ServiceFuture<Resp> = Pin<Box<dyn Future<Output = Result<Resp, RpcError>> + Send>>;

// ===== impl Service for Client =====

/// Always ready: a call beyond
/// [`max_in_flight_requests`](crate::Config::max_in_flight_requests) waits
/// in its future, as with the plain client.
impl<Req, Resp> Service<(Context, Req)> for Client<Req, Resp>
where
    Req: Serialize + RequestName + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    type Response = Resp;
    type Error = RpcError;
    type Future = ServiceFuture<Resp>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), RpcError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (ctx, request): (Context, Req)) -> Self::Future {
        Box::pin(Arc::new(self.clone()).call_owned(ctx, request))
    }
}

// ===== TowerStub =====

/// A tarpc stub over a `tower::Service<(Context, Req)>`: wrap it in the
/// generated client (`CalcClient::from(TowerStub::new(service))`).
///
/// Each call clones the service, waits until the clone is ready, and calls
/// it, as hyper does. Layers that share their state between clones
/// (`ConcurrencyLimit`, `LoadShed`, `Timeout`, tower's `Buffer`) work as
/// they do anywhere; a layer whose clones each keep their own state
/// (`RateLimit`) must sit behind a `Buffer` to limit the calls together.
pub struct TowerStub<S, Req> {
    service: S,
    /// The request type the stub takes (the service may take several).
    _request: PhantomData<fn(Req)>,
}

impl<S: Clone, Req> Clone for TowerStub<S, Req> {
    fn clone(&self) -> Self {
        TowerStub::new(self.service.clone())
    }
}

impl<S: fmt::Debug, Req> fmt::Debug for TowerStub<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TowerStub").field(&self.service).finish()
    }
}

impl<S, Req> TowerStub<S, Req> {
    /// A stub calling `service`.
    pub fn new(service: S) -> Self {
        TowerStub {
            service,
            _request: PhantomData,
        }
    }

    /// The service.
    pub fn get_ref(&self) -> &S {
        &self.service
    }

    /// The service, back.
    pub fn into_inner(self) -> S {
        self.service
    }
}

impl<S, Req> Stub for TowerStub<S, Req>
where
    S: Service<(Context, Req)> + Clone,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    Req: RequestName,
{
    type Req = Req;
    type Resp = S::Response;

    fn call(
        &self,
        ctx: Context,
        request: Req,
    ) -> impl Future<Output = Result<S::Response, RpcError>> {
        let mut service = self.service.clone();
        async move {
            poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(into_rpc_error)?;
            service.call((ctx, request)).await.map_err(into_rpc_error)
        }
    }
}

/// A service's error as a call's: an `RpcError` as it is, any other (a
/// layer's) as `RpcError::Send` with it as the source.
fn into_rpc_error(e: impl Into<Box<dyn StdError + Send + Sync>>) -> RpcError {
    match e.into().downcast::<RpcError>() {
        Ok(e) => *e,
        Err(other) => RpcError::Send(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("overloaded")]
    struct Overloaded;

    #[test]
    fn an_rpc_error_comes_back_as_it_is_and_a_layers_as_its_source() {
        let e: Box<dyn StdError + Send + Sync> = Box::new(RpcError::DeadlineExceeded);
        assert!(matches!(into_rpc_error(e), RpcError::DeadlineExceeded));
        let e: Box<dyn StdError + Send + Sync> = Box::new(Overloaded);
        match into_rpc_error(e) {
            RpcError::Send(source) => assert!(source.is::<Overloaded>(), "{source:?}"),
            other => panic!("{other:?}"),
        }
    }
}
