//! systemd's service notifications (`sd_notify(3)`), sent when the server
//! is started by systemd with `Type=notify` or `Type=notify-reload` (when
//! `NOTIFY_SOCKET` is set; nothing otherwise):
//!
//! - `READY=1` once the first generation's workers are all ready, and
//!   again when a reload ends (successful or not: the server serves);
//! - `RELOADING=1` with `MONOTONIC_USEC=` as a reload begins;
//! - `STOPPING=1` as a stop begins.
//!
//! The [`sd-notify`](https://docs.rs/sd-notify) crate writes them.

use sd_notify::NotifyState;
use tokio::sync::watch;

use super::stats::Stats;

/// Sends `states` to the service manager, if there is one. A failure is
/// logged: a server does not stop serving because systemd is not
/// listening.
fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("could not notify the service manager: {e}");
    }
}

/// Says `READY=1` once every worker of the first generation is ready
/// (none is starting, and at least one serves). Holds no handle of the
/// server: a server that stops first sends nothing.
pub(super) async fn ready_when_started(mut stats: watch::Receiver<Stats>) {
    let started = stats
        .wait_for(|s| s.stopped || (s.starting == 0 && s.idle + s.busy > 0))
        .await
        .is_ok_and(|s| !s.stopped);
    if started {
        notify(&[NotifyState::Ready]);
    }
}

/// A reload begins. (systemd 253 and later want the monotonic clock with
/// it; reading it cannot fail on Linux, but if it did, the reload is
/// announced without it.)
pub(super) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// A reload ended: the server serves (the new generation, or the old one).
pub(super) fn reloaded() {
    notify(&[NotifyState::Ready]);
}

/// A stop begins.
pub(super) fn stopping() {
    notify(&[NotifyState::Stopping]);
}
