//! What the handles ask of the manager: stop, reload, resize.

use fork_core::Template;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Command, Manager, Resize, Stopping};
use crate::error::{Error, Result};
use crate::policy::{self, Mode};

impl Manager {
    pub(super) fn command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Stop { reply } => {
                self.stops.push(reply);
                self.stop(now);
            }
            Command::Reload { template, reply } => {
                if self.stopping.is_some() {
                    let _ = reply.send(Err(Error::Stopped));
                    return;
                }
                self.reload(template, reply);
            }
            Command::Resize { size, reply } => {
                let _ = reply.send(self.resize(size));
            }
        }
    }

    /// Sets the number of workers (fixed sizing) or the most (spare
    /// sizing), never below 1; the policy forks or retires (idle workers
    /// only) from its next step on. The number is the manager's: it holds
    /// across reloads.
    pub(super) fn resize(&mut self, size: Resize) -> usize {
        let now = match self.knobs.mode {
            policy::Mode::Fixed(n) => n,
            policy::Mode::Spare { max, .. } => max,
        };
        let new = match size {
            Resize::To(n) => n,
            Resize::By(delta) => now.saturating_add_signed(delta),
        }
        .max(1);
        match &mut self.knobs.mode {
            policy::Mode::Fixed(n) => *n = new,
            policy::Mode::Spare { max, .. } => *max = new,
        }
        tracing::info!(workers = new, "resized");
        new
    }

    pub(super) fn reload(&mut self, template: Template, reply: oneshot::Sender<Result<()>>) {
        let old = std::mem::replace(&mut self.template, template);
        if self.previous.is_none() {
            self.previous = Some((self.generation, old));
        }
        self.newest += 1;
        self.generation = self.newest;
        let serving = self.members.iter().filter(|m| !m.stopping()).count();
        (self.replacing, self.floor) = match self.knobs.mode {
            Mode::Fixed(n) => (n, n),
            Mode::Spare { max, .. } => {
                let floor = serving.max(self.config.start_servers()).min(max);
                // More serving than `max` (after a resize down): no more than
                // `floor` new ones may be ready before the last old one goes.
                (serving.min(floor), floor)
            }
        };
        self.rate = 1;
        self.boot_streak = 0;
        self.abnormal_streak = 0;
        self.backoff_until = None;
        tracing::info!(generation = self.generation, "reloading");
        self.reloads.push((self.generation, reply));
    }

    pub(super) fn stop(&mut self, now: Instant) {
        match self.stopping {
            None => {
                tracing::info!("stopping gracefully");
                self.stopping = Some(Stopping::Graceful);
                for (_, reply) in self.reloads.drain(..) {
                    let _ = reply.send(Err(Error::Stopped));
                }
                let ids: Vec<u64> = self.members.iter().map(|m| m.id).collect();
                for id in ids {
                    self.ask_to_stop(id, now);
                }
            }
            Some(Stopping::Graceful) => {
                tracing::info!("stopping at once");
                self.stopping = Some(Stopping::Quick);
                for m in &mut self.members {
                    m.kill();
                }
            }
            Some(Stopping::Quick) => {}
        }
    }
}
