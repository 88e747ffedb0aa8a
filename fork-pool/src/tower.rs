//! `tower::Service` for [`Pool`] (feature `tower`): see fork-rpc's
//! [`TowerStub`](fork_rpc::TowerStub) to call a service through tower's
//! layers with the generated client's typed methods.

use std::task::{Context as TaskContext, Poll};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tarpc::RequestName;
use tarpc::client::RpcError;
use tarpc::client::stub::Stub;
use tarpc::context::Context;
use tower_service::Service;

use crate::pool::Pool;

/// Always ready: the pool queues a call it cannot place yet (or fails it
/// with [`Error::QueueFull`](crate::Error::QueueFull)), as with the plain
/// stub.
impl<Req, Resp, Ev> Service<(Context, Req)> for Pool<Req, Resp, Ev>
where
    Req: Serialize + DeserializeOwned + RequestName + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
    Ev: DeserializeOwned + Send + Sync + 'static,
{
    type Response = Resp;
    type Error = RpcError;
    type Future = fork_rpc::ServiceFuture<Resp>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), RpcError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (ctx, request): (Context, Req)) -> Self::Future {
        let pool = self.clone();
        Box::pin(async move { Stub::call(&pool, ctx, request).await })
    }
}
