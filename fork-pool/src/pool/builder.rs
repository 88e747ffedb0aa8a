//! Building a pool: the knobs, the idempotent requests, then
//! [`build`](Builder::build).

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tarpc::RequestName;

use super::Pool;
use super::host::Host;
use super::metrics::Metrics;
use super::retry::Retry;
use super::shared::Shared;
use super::spawn::{HostTemplate, RpcSpawn};
use crate::config::{Config, Overflow};

/// Builds a [`Pool`]; see [`Config`] for every knob.
pub struct Builder<Req, Resp, Ev> {
    /// Where workers run (at least one).
    pub(super) hosts: Vec<Host>,
    pub(super) entry: fork_rpc::RpcEntry<Req, Resp, Ev>,
    pub(super) config: Config,
    /// `max` was given (by [`max`](Builder::max) or
    /// [`config`](Builder::config)); if not, it depends on the hosts.
    pub(super) max_given: bool,
    /// Which requests may run again.
    pub(super) idempotent: Option<Retry<Req>>,
    pub(super) retries: u32,
    /// The `pool` label of its metrics; the entry's name if `None`.
    #[cfg(feature = "metrics")]
    pub(super) metrics_label: Option<String>,
}

impl<Req, Resp, Ev> fmt::Debug for Builder<Req, Resp, Ev> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

// ===== impl Builder =====

impl<Req, Resp, Ev> Builder<Req, Resp, Ev>
where
    Req: Serialize + DeserializeOwned + RequestName + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
    Ev: DeserializeOwned + Send + Sync + 'static,
{
    /// Adds a host to fork workers on: another template (local, or
    /// remote), with its own limits. Workers are placed across all hosts,
    /// the first one (the template the pool was built with) included, and
    /// calls go to the least-loaded worker wherever it runs; see [`Host`]
    /// for placement and what happens when a host is lost. The pool's
    /// [`max`](Builder::max) caps the workers of all hosts together.
    pub fn host(mut self, host: Host) -> Self {
        self.hosts.push(host);
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self.max_given = true;
        self
    }

    /// Sets [`Config::max`].
    pub fn max(mut self, max: usize) -> Self {
        self.config.max = max;
        self.max_given = true;
        self
    }

    /// Sets [`Config::idle`].
    pub fn idle(mut self, idle: usize) -> Self {
        self.config.idle = idle;
        self
    }

    /// Sets [`Config::load`].
    pub fn load(mut self, load: usize) -> Self {
        self.config.load = load;
        self
    }

    /// Sets [`Config::start`].
    pub fn start(mut self, start: Duration) -> Self {
        self.config.start = start;
        self
    }

    /// Sets [`Config::stop`].
    pub fn stop(mut self, stop: Duration) -> Self {
        self.config.stop = stop;
        self
    }

    /// Bounds the queue ([`Config::queue_limit`], [`Config::overflow`]).
    pub fn queue_limit(mut self, limit: usize, overflow: Overflow) -> Self {
        self.config.queue_limit = Some(limit);
        self.config.overflow = overflow;
        self
    }

    /// Recycles each worker after `jobs` jobs, plus a random jitter (10%,
    /// at least 1, unless [`max_requests_jitter`](Builder::max_requests_jitter)
    /// says otherwise) so that workers do not all restart at once
    /// ([`Config::max_requests`]).
    pub fn max_requests(mut self, jobs: usize) -> Self {
        self.config.max_requests = Some(jobs);
        self
    }

    /// Recycles each worker after exactly `jobs` jobs: `max_requests` with
    /// no jitter.
    pub fn max_requests_exactly(mut self, jobs: usize) -> Self {
        self.config.max_requests = Some(jobs);
        self.config.max_requests_jitter = Some(0);
        self
    }

    /// The most extra jobs a worker serves past `max_requests`, picked at
    /// random per worker ([`Config::max_requests_jitter`]).
    pub fn max_requests_jitter(mut self, jobs: usize) -> Self {
        self.config.max_requests_jitter = Some(jobs);
        self
    }

    /// Sets [`Config::max_rss`] in bytes.
    pub fn max_rss(mut self, bytes: u64) -> Self {
        self.config.max_rss = Some(bytes);
        self
    }

    /// Sets [`Config::job_timeout`].
    pub fn job_timeout(mut self, limit: Duration) -> Self {
        self.config.job_timeout = Some(limit);
        self
    }

    /// Sets [`Config::kill_grace`].
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.config.kill_grace = grace;
        self
    }

    /// Sets [`Config::shutdown_timeout`].
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// Sets the workers' RPC configuration ([`Config::rpc`]).
    pub fn rpc(mut self, rpc: fork_rpc::Config) -> Self {
        self.config.rpc = rpc;
        self
    }

    /// Marks requests that may run more than once: when the worker running
    /// one dies, the pool runs it again on another worker instead of
    /// failing it, up to [`retries`](Builder::retries) times (once by
    /// default). The pool keeps such a request (behind an `Arc`, not a copy)
    /// until it is answered.
    pub fn idempotent(
        mut self,
        is_idempotent: impl Fn(&Req) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.idempotent = Some(Retry::new(Box::new(is_idempotent)));
        self
    }

    /// How many times an [idempotent](Builder::idempotent) job is run again
    /// after its worker died. The default is 1.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Labels the pool's [metrics](crate#metrics) `pool="<label>"` (feature
    /// `metrics`), so that several pools in one program are told apart.
    /// The default is the entry's registered name (its module path and
    /// function, as `my_server::calc`): give pools over the same entry
    /// labels of their own, or their metrics mix.
    #[cfg(feature = "metrics")]
    pub fn metrics_label(mut self, label: impl Into<String>) -> Self {
        self.metrics_label = Some(label.into());
        self
    }

    /// Builds the pool: starts the supervisor, which starts `idle` workers
    /// at once. With the feature `metrics`, registers the pool's
    /// [metrics](crate#metrics) with the recorder installed now: install
    /// yours before.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn build(mut self) -> Pool<Req, Resp, Ev> {
        let retry = self.idempotent.and_then(|retry| retry.times(self.retries));
        #[cfg(feature = "metrics")]
        let metrics = Metrics::new(
            self.metrics_label
                .unwrap_or_else(|| self.entry.entry().name().to_owned()),
        );
        #[cfg(not(feature = "metrics"))]
        let metrics = Metrics::none();
        if !self.max_given && self.hosts.len() > 1 {
            // Each host's own max, or as many as this machine has CPUs.
            let cpus = Config::default().max;
            self.config.max = self
                .hosts
                .iter()
                .map(|h| h.max.unwrap_or(cpus))
                .fold(0, usize::saturating_add);
        }
        let slots = self.hosts.iter().map(Host::slot).collect();
        let spawner = RpcSpawn {
            hosts: self
                .hosts
                .into_iter()
                .map(|host| HostTemplate::new(host.source))
                .collect(),
            entry: self.entry,
            rpc: self.config.rpc.clone(),
        };
        Pool::from_shared(Shared::start(self.config, slots, spawner, retry, metrics))
    }
}
