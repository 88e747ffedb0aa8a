//! [`Client`], the parent's tarpc [`Stub`] for a worker's service.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tarpc::RequestName;
use tarpc::client::RpcError;
use tarpc::client::stub::Stub;

use super::call::Call;
use super::connection::Channel;
use super::lost::Lost;
#[cfg(doc)]
use crate::config::Config;

/// The parent's stub for a worker's service: tarpc's wire format, with
/// fork-rpc's error mapping, and [contexts](Client::context) with the
/// configured default deadline. Cheap to clone; wrap it in
/// the generated client (`CalcClient::from(client)`).
///
/// Dropping every clone closes the connection gracefully: the worker
/// finishes what it received, flushes, runs its done hook and exits 0.
pub struct Client<Req, Resp> {
    pub(super) inner: Channel<Req, Resp>,
    pub(super) lost: Arc<Lost>,
    pub(super) default_timeout: Option<Duration>,
}

impl<Req, Resp> Clone for Client<Req, Resp> {
    fn clone(&self) -> Self {
        Client {
            inner: self.inner.clone(),
            lost: self.lost.clone(),
            default_timeout: self.default_timeout,
        }
    }
}

impl<Req, Resp> fmt::Debug for Client<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("pid", &self.lost.pid)
            .finish()
    }
}

impl<Req, Resp> Client<Req, Resp> {
    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.lost.pid
    }

    /// Whether the worker asked to be retired (with
    /// [`EventSender::retire`](crate::EventSender::retire)): send it no new
    /// calls, and drop the clients once pending calls are answered.
    pub fn retire_requested(&self) -> bool {
        *self.lost.retire.borrow()
    }

    /// Whether the connection has ended: the worker closed it or went away,
    /// or sent what cannot be read. Every call fails from then on; a worker
    /// that sent bad bytes may still be running (end it with
    /// [`RpcWorker::kill`](crate::RpcWorker::kill)).
    pub fn is_closed(&self) -> bool {
        self.lost.end().is_some()
    }

    /// Resolves when the worker asks to be retired (never, if it does not).
    pub async fn retire_request(&self) {
        let mut rx = self.lost.retire.subscribe();
        if rx.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// A context for a call on this client: tarpc's current one, expiring
    /// after the client's [`default_timeout`](Config::default_timeout)
    /// from now (tarpc's 10 s if it has none). Contexts made otherwise
    /// (`tarpc::context::current()`, [`with_timeout`](crate::context::with_timeout))
    /// keep their deadlines: the client never rewrites one.
    ///
    /// ```no_run
    /// # async fn doc(client: fork_rpc::Client<String, String>) -> Result<(), tarpc::client::RpcError> {
    /// use tarpc::client::stub::Stub;
    ///
    /// let reply = client.call(client.context(), "a long job".into()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn context(&self) -> tarpc::context::Context {
        crate::context::with_default(self.default_timeout)
    }
}

impl<Req, Resp> Client<Req, Resp>
where
    Req: Serialize + RequestName + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    /// Makes a call as [`Stub::call`] does, through a client kept in an
    /// `Arc`: the future holds the `Arc`, so it borrows nothing (it can be
    /// spawned, or kept beside the client it came from). For code built on
    /// the stub, such as a pool that lends its workers' clients to jobs.
    ///
    /// ```no_run
    /// # async fn doc(client: fork_rpc::Client<String, String>) {
    /// use std::sync::Arc;
    ///
    /// let client = Arc::new(client);
    /// let call = client.clone().call_owned(tarpc::context::current(), "ping".into());
    /// let reply = tokio::spawn(call).await.unwrap();
    /// # }
    /// ```
    pub fn call_owned(
        self: Arc<Self>,
        ctx: tarpc::context::Context,
        request: Req,
    ) -> impl Future<Output = Result<Resp, RpcError>> + Send + Unpin + 'static {
        Call::new(self, ctx, request)
    }
}

impl<Req, Resp> Stub for Client<Req, Resp>
where
    Req: Serialize + RequestName + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    type Req = Req;
    type Resp = Resp;

    /// Sends the request when first polled; dropping the future before the
    /// reply cancels the call in the worker. The call ends at the
    /// context's deadline, as given (see [`Client::context`]).
    fn call(
        &self,
        ctx: tarpc::context::Context,
        request: Req,
    ) -> impl Future<Output = Result<Resp, RpcError>> {
        Call::new(self, ctx, request)
    }
}
