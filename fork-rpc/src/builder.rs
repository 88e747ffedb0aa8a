//! Starting an RPC worker: [`RpcWorker::builder`], the counterpart of
//! `Pool::builder` in fork-pool and of [`Fork::run`](fork_core::Fork::run)
//! in fork-core.

use std::fmt;
use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tarpc::RequestName;

use crate::client::{Client, RpcWorker};
use crate::config::Config;
use crate::entry::RpcEntry;
use crate::error::Result;

/// Starts a worker serving an [`RpcEntry`]: made by
/// [`RpcWorker::builder`], configured with [`config`](Builder::config),
/// started with [`spawn`](Builder::spawn) or
/// [`spawn_until`](Builder::spawn_until).
///
/// ```no_run
/// # use fork_rpc::{Config, RpcEntry, RpcWorker};
/// # async fn doc(template: fork_core::Template, calc: &RpcEntry<String, String>) -> fork_rpc::Result<()> {
/// // Arguments and descriptors for the init hook go on the fork.
/// let mut fork = template.fork();
/// fork.arg("a model to load");
/// let (client, mut worker) = RpcWorker::builder(&mut fork, calc)
///     .config(Config::default().concurrent(8))
///     .spawn()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "a builder does nothing until it is spawned"]
pub struct Builder<'a, Req, Resp, Ev> {
    fork: &'a mut fork_core::Fork,
    entry: &'a RpcEntry<Req, Resp, Ev>,
    config: Config,
}

impl<Req, Resp, Ev> fmt::Debug for Builder<'_, Req, Resp, Ev> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("fork", &self.fork)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

// ===== impl RpcWorker =====

impl<Ev> RpcWorker<Ev> {
    /// Starts building a worker forked by `fork` (with the arguments,
    /// descriptors and init functions you put on it, which the init hook
    /// gets as they are) and serving `entry`, with the default
    /// [`Config`].
    pub fn builder<'a, Req, Resp>(
        fork: &'a mut fork_core::Fork,
        entry: &'a RpcEntry<Req, Resp, Ev>,
    ) -> Builder<'a, Req, Resp, Ev> {
        Builder {
            fork,
            entry,
            config: Config::default(),
        }
    }
}

// ===== impl Builder =====

impl<Req, Resp, Ev> Builder<'_, Req, Resp, Ev>
where
    Req: Serialize + RequestName + Send + 'static,
    Resp: Serialize + DeserializeOwned + Send + 'static,
{
    /// The worker's configuration: its mode, format, limits and default
    /// deadline. The default is [`Config::default`].
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Forks the worker and waits until it serves. The stub is tarpc's:
    /// wrap it in the generated client, `CalcClient::from(client)`.
    ///
    /// fork-rpc sends its configuration and a descriptor channel in the
    /// fork's [slot](fork_core::Fork::slot), apart from your arguments.
    ///
    /// # Errors
    ///
    /// [`Error::Core`](crate::Error::Core) if the fork fails,
    /// [`Error::Init`](crate::Error::Init) with the message of a failing
    /// init hook, [`Error::Lost`](crate::Error::Lost) if the worker dies
    /// before it serves, [`Error::StartTimeout`](crate::Error::StartTimeout)
    /// if it does not serve within [`Config::start_timeout`]. A worker that
    /// does not serve is killed, also when the returned future is dropped
    /// while its init hook runs (as by a timeout of your own); after a start
    /// timeout, `spawn` returns once it is gone (or after 2 s).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the client's background reader task is
    /// spawned on it).
    pub async fn spawn(self) -> Result<(Client<Req, Resp>, RpcWorker<Ev>)> {
        self.spawn_until(std::future::pending()).await
    }

    /// [`spawn`](Builder::spawn), giving up when `give_up` resolves first
    /// (a shutdown, a Ctrl-C): the worker, if it was forked, is killed, and
    /// `spawn_until` returns [`Error::StartAbandoned`](crate::Error::StartAbandoned)
    /// once it is gone (or after 2 s), so that nothing of it is left.
    /// Dropping a `spawn` future kills the worker too, but cannot wait for
    /// it.
    ///
    /// # Errors
    ///
    /// As [`spawn`](Builder::spawn), and
    /// [`Error::StartAbandoned`](crate::Error::StartAbandoned).
    ///
    /// # Panics
    ///
    /// As [`spawn`](Builder::spawn).
    pub async fn spawn_until(
        self,
        give_up: impl Future<Output = ()>,
    ) -> Result<(Client<Req, Resp>, RpcWorker<Ev>)> {
        crate::client::spawn_until(self.fork, self.entry, &self.config, give_up).await
    }
}
