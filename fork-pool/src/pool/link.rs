//! A pool's hosts and their connections: a host's first connection (the
//! workers placed there wait for it), noticing its loss (its template's
//! [`lost`](fork_core::Template::lost)), taking its workers out, and
//! connecting it again once its back-off ends. The policy (placement,
//! back-off) is [`crate::hosts`]; what the pool knows of each host is
//! `host::Slot`.

use std::sync::Arc;

use fork_core::Signal;
use tokio::time::Instant;

use super::host::{HostEvent, Link};
use super::shared::Shared;
use super::spawn::{Process, Spawn};

// ===== impl Shared: hosts =====

impl<S: Spawn> Shared<S> {
    /// Waits until `host` is no longer being connected; true if it is up.
    /// If not, the worker placed there is not started.
    pub(crate) async fn host_connected(&self, host: usize) -> bool {
        let mut link = self.lock().hosts[host].watch_link();
        let up = matches!(
            link.wait_for(|&link| link != Link::Connecting)
                .await
                .as_deref(),
            Ok(Link::Up)
        );
        if !up {
            self.not_started(host);
        }
        up
    }

    /// Connects `host` for a worker placed on it while it was down (so
    /// marked connecting); true if it is up. If not, that worker is not
    /// started.
    pub(crate) async fn connect_host(self: &Arc<Self>, host: usize) -> bool {
        let up = self.try_connect(host).await;
        if !up {
            self.not_started(host);
        }
        up
    }

    /// A worker placed on `host` is not started: the host could not be
    /// connected. If nothing else can serve the queue, it fails with why.
    fn not_started(&self, host: usize) {
        let mut st = self.lock();
        st.started(host);
        if let Some(e) = st.hosts[host].last_error.clone() {
            self.fail_queued_if_stuck(&mut st, e);
        }
        drop(st);
        self.wake.notify_one();
        self.changed.notify_waiters();
    }

    /// Connects `host` (marked connecting); true if it is up. If not, it
    /// stays down, and is tried again after its back-off.
    async fn try_connect(self: &Arc<Self>, host: usize) -> bool {
        let mut abandon = self.abandon.subscribe();
        let result = tokio::select! {
            result = self.spawner.connect(host) => result,
            _ = abandon.wait_for(|given_up| *given_up) => {
                // A shutdown past its deadline gives up on the connection
                // (it may never end): not a failure of the host, which is
                // connected again when the pool next needs it.
                self.lock().hosts[host].set_link(Link::Down);
                self.changed.notify_waiters();
                return false;
            }
        };
        let mut st = self.lock();
        let slot = &mut st.hosts[host];
        match result {
            Ok(()) => {
                slot.set_link(Link::Up);
                slot.generation += 1;
                slot.down_failures = 0;
                slot.not_before = None;
                slot.stats.connects += 1;
                let name = slot.name().to_owned();
                drop(st);
                tracing::info!(host = name, "host up");
                self.host_event(HostEvent::Up { host: name });
                self.watch_host(host);
                self.wake.notify_one();
                self.changed.notify_waiters();
                true
            }
            Err(e) => {
                let backoff = slot.down(&mut rand::rng());
                // Down news only the first time: a host lost was
                // reported when it was.
                let news = slot.stats.connects == 0 && slot.down_failures == 1;
                let name = slot.name().to_owned();
                st.stats.spawn_failures += 1;
                tracing::warn!(host = name, error = %e, ?backoff, "could not connect a host");
                let e = Arc::new(e);
                st.hosts[host].last_error = Some(e.clone());
                drop(st);
                if news {
                    self.host_event(HostEvent::Down {
                        host: name,
                        error: e,
                    });
                }
                self.reconnect_later(host);
                self.wake.notify_one();
                self.changed.notify_waiters();
                false
            }
        }
    }

    /// Tries to connect `host` again once its back-off is over, if it is
    /// still down then (a worker placed there may have done it first),
    /// whether or not the pool wants workers there: a host comes back as
    /// soon as it can be reached.
    fn reconnect_later(self: &Arc<Self>, host: usize) {
        let (at, link) = {
            let st = self.lock();
            (st.hosts[host].not_before, st.hosts[host].link())
        };
        if link != Link::Down {
            return;
        }
        let mut for_good = self.for_good.subscribe();
        let shared = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep_until(at.unwrap_or_else(Instant::now)) => {}
                _ = for_good.wait_for(|&gone| gone) => return,
            }
            let Some(shared) = shared.upgrade() else {
                return;
            };
            {
                let mut st = shared.lock();
                let slot = &mut st.hosts[host];
                if slot.link() != Link::Down {
                    return;
                }
                slot.set_link(Link::Connecting);
            }
            shared.try_connect(host).await;
        });
    }

    /// Watches the connection of `host`'s template as it is now, if it can
    /// be lost, until it is or the pool is shut down for good.
    pub(crate) fn watch_host(self: &Arc<Self>, host: usize) {
        let Some(lost) = self.spawner.lost(host) else {
            return;
        };
        let generation = self.lock().hosts[host].generation;
        let mut for_good = self.for_good.subscribe();
        let shared = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::select! {
                error = lost => {
                    if let Some(shared) = shared.upgrade() {
                        shared.host_lost(host, generation, error);
                    }
                }
                _ = for_good.wait_for(|&gone| gone) => {}
            }
        });
    }

    /// The connection of `host` (as it was at `generation`) was lost: the
    /// host is down, its workers leave the pool (their running calls fail
    /// as their streams end), and it is tried again after a back-off.
    fn host_lost(self: &Arc<Self>, host: usize, generation: u64, error: fork_rpc::Error) {
        let mut st = self.lock();
        let slot = &mut st.hosts[host];
        if slot.generation != generation || slot.link() != Link::Up {
            return;
        }
        slot.stats.downs += 1;
        let backoff = slot.down(&mut rand::rng());
        let name = slot.name().to_owned();
        let error = Arc::new(error);
        slot.last_error = Some(error.clone());
        let gone: Vec<u64> = st
            .dispatch
            .members
            .iter()
            .filter(|m| m.host == host)
            .map(|m| m.id)
            .collect();
        for id in &gone {
            if let Some(m) = st.dispatch.remove(*id) {
                st.crashed_on(host);
                m.process.signal(Signal::SIGKILL);
            }
        }
        tracing::warn!(host = name, %error, workers = gone.len(), ?backoff, "host lost");
        drop(st);
        self.host_event(HostEvent::Down { host: name, error });
        self.reconnect_later(host);
        self.wake.notify_one();
        self.changed.notify_waiters();
    }
}
