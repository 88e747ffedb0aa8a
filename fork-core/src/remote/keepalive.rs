//! Keepalive: how each side tells a lost connection (a partition, a
//! stopped or frozen peer, which give no EOF) from a quiet one.
//!
//! The parent sends a `Ping` every `interval`, carrying its `timeout`; the
//! remote side answers each with a `Pong`. Both sides stamp the time
//! whenever bytes arrive ([`Stamped`]): any bytes count, data, credit,
//! control or pong, so a busy link never looks silent. A side counts the
//! connection **lost** once nothing at all came for `timeout`
//! ([`judge`]): the parent then fails the template, the remote side ends
//! as at EOF (its template kills and reaps the workers).
//!
//! Pings are not matched to pongs: on a link whose round trip is longer
//! than the interval, the pongs still come one per interval, only later;
//! the connection stays alive as long as `timeout` exceeds the round trip
//! plus the interval.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use super::stream::Outbox;
use super::wire::Frame;

/// The default ping interval (see `RemoteBuilder::keepalive`).
pub(crate) const INTERVAL: Duration = Duration::from_secs(2);
/// The default timeout.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);
/// How long the remote side waits for the parent's first ping (which
/// carries the timeout it is to apply): the default handshake timeout.
pub(crate) const FIRST_PING: Duration = Duration::from_secs(30);

/// One side's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Knobs {
    /// How often to ping; `None` on the side that only answers.
    pub(crate) interval: Option<Duration>,
    /// Silence after which the connection counts as lost.
    pub(crate) timeout: Duration,
}

/// What [`judge`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing came for `silent` (at least the timeout): lost.
    Lost { silent: Duration },
    /// Alive: send a ping now if `ping`, and judge again at `wake`.
    Alive { ping: bool, wake: Instant },
}

/// The keepalive policy, as a pure function of the knobs, when bytes last
/// came (`heard`), when this side last pinged (`pinged`, `None` before
/// the first ping) and `now`:
///
/// 1. silent for `timeout` or more (`now - heard >= timeout`): lost;
/// 2. otherwise a ping is due when there is an interval and none was sent
///    yet, or the last one is `interval` old;
/// 3. the next look is at the earlier of the moment the silence would
///    reach the timeout and the next ping.
pub(crate) fn judge(
    knobs: Knobs,
    heard: Instant,
    pinged: Option<Instant>,
    now: Instant,
) -> Verdict {
    let silent = now.saturating_duration_since(heard);
    if silent >= knobs.timeout {
        return Verdict::Lost { silent };
    }
    let mut wake = heard + knobs.timeout;
    let mut ping = false;
    if let Some(interval) = knobs.interval {
        let due = pinged.map_or(now, |p| p + interval);
        if due <= now {
            ping = true;
            wake = wake.min(now + interval);
        } else {
            wake = wake.min(due);
        }
    }
    Verdict::Alive { ping, wake }
}

/// When bytes last came on a connection.
#[derive(Debug, Clone)]
pub(crate) struct Heard(Arc<Mutex<Instant>>);

impl Heard {
    /// Heard now.
    pub(crate) fn new() -> Heard {
        Heard(Arc::new(Mutex::new(Instant::now())))
    }

    fn stamp(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn last(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A reader that stamps a [`Heard`] whenever a read gives bytes.
#[derive(Debug)]
pub(crate) struct Stamped<R> {
    inner: R,
    heard: Heard,
}

impl<R> Stamped<R> {
    pub(crate) fn new(inner: R, heard: Heard) -> Stamped<R> {
        Stamped { inner, heard }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Stamped<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.heard.stamp();
        }
        polled
    }
}

/// The parent's side: pings every interval (never waiting for room in the
/// queue: a full queue skips a ping) and resolves with the silence once
/// the connection is lost.
pub(crate) async fn ping_until_lost(knobs: Knobs, heard: Heard, out: Outbox) -> Duration {
    let timeout_ms = u32::try_from(knobs.timeout.as_millis()).unwrap_or(u32::MAX);
    let mut pinged = None;
    loop {
        let now = Instant::now();
        match judge(knobs, heard.last(), pinged, now) {
            Verdict::Lost { silent } => return silent,
            Verdict::Alive { ping, wake } => {
                if ping {
                    out.try_send(&Frame::Ping { timeout_ms });
                    pinged = Some(now);
                }
                tokio::time::sleep_until(wake).await;
            }
        }
    }
}

/// The remote side's: resolves with the silence once nothing came for the
/// timeout the parent's latest ping carried ([`FIRST_PING`] before one).
pub(crate) async fn until_lost(heard: Heard, mut timeout: watch::Receiver<Duration>) -> Duration {
    let mut updates = true;
    loop {
        let knobs = Knobs {
            interval: None,
            timeout: *timeout.borrow_and_update(),
        };
        match judge(knobs, heard.last(), None, Instant::now()) {
            Verdict::Lost { silent } => return silent,
            Verdict::Alive { wake, .. } => tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                changed = timeout.changed(), if updates => updates = changed.is_ok(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn parent() -> Knobs {
        Knobs {
            interval: Some(2 * S),
            timeout: 10 * S,
        }
    }

    #[test]
    fn the_first_ping_goes_at_once() {
        let t0 = Instant::now();
        assert_eq!(
            judge(parent(), t0, None, t0),
            Verdict::Alive {
                ping: true,
                wake: t0 + 2 * S
            }
        );
    }

    #[test]
    fn pings_every_interval_while_heard() {
        let t0 = Instant::now();
        // Pinged at t0, heard at t0 + 1 s: next look at the next ping.
        assert_eq!(
            judge(parent(), t0 + S, Some(t0), t0 + S),
            Verdict::Alive {
                ping: false,
                wake: t0 + 2 * S
            }
        );
        assert_eq!(
            judge(parent(), t0 + S, Some(t0), t0 + 2 * S),
            Verdict::Alive {
                ping: true,
                wake: t0 + 4 * S
            }
        );
    }

    #[test]
    fn lost_after_the_timeout_of_silence_not_before() {
        let t0 = Instant::now();
        let just_before = t0 + 10 * S - Duration::from_millis(1);
        assert!(matches!(
            judge(parent(), t0, Some(just_before), just_before),
            Verdict::Alive { .. }
        ));
        assert_eq!(
            judge(parent(), t0, Some(t0 + 8 * S), t0 + 10 * S),
            Verdict::Lost { silent: 10 * S }
        );
        assert_eq!(
            judge(parent(), t0, Some(t0 + 8 * S), t0 + 13 * S),
            Verdict::Lost { silent: 13 * S }
        );
    }

    #[test]
    fn near_the_timeout_the_next_look_is_at_the_timeout() {
        let t0 = Instant::now();
        // Pinged at 9 s, nothing since 0 s: the timeout (10 s) comes
        // before the next ping (11 s).
        assert_eq!(
            judge(parent(), t0, Some(t0 + 9 * S), t0 + 9 * S),
            Verdict::Alive {
                ping: false,
                wake: t0 + 10 * S
            }
        );
    }

    #[test]
    fn a_round_trip_longer_than_the_interval_is_not_a_loss() {
        // Interval 20 ms, round trip 60 ms, timeout 1 s: each pong comes
        // 60 ms after its ping. Simulate 10 s of it, looking every 1 ms.
        let knobs = Knobs {
            interval: Some(Duration::from_millis(20)),
            timeout: S,
        };
        let rtt = Duration::from_millis(60);
        let t0 = Instant::now();
        let (mut heard, mut pinged, mut pings) = (t0, None, Vec::new());
        for ms in 0..10_000 {
            let now = t0 + Duration::from_millis(ms);
            if pings.first().is_some_and(|&p: &Instant| p + rtt <= now) {
                pings.remove(0);
                heard = now;
            }
            match judge(knobs, heard, pinged, now) {
                Verdict::Lost { silent } => panic!("lost at {ms} ms after {silent:?}"),
                Verdict::Alive { ping: true, .. } => {
                    pinged = Some(now);
                    pings.push(now);
                }
                Verdict::Alive { .. } => {}
            }
        }
    }

    #[test]
    fn the_answering_side_never_pings() {
        let t0 = Instant::now();
        let knobs = Knobs {
            interval: None,
            timeout: 10 * S,
        };
        assert_eq!(
            judge(knobs, t0, None, t0 + S),
            Verdict::Alive {
                ping: false,
                wake: t0 + 10 * S
            }
        );
        assert_eq!(
            judge(knobs, t0, None, t0 + 10 * S),
            Verdict::Lost { silent: 10 * S }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_parent_pings_and_gives_up_after_the_timeout() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let heard = Heard::new();
        let start = Instant::now();
        let silent = ping_until_lost(parent(), heard, Outbox(tx)).await;
        assert_eq!(silent, 10 * S);
        assert_eq!(Instant::now() - start, 10 * S);
        // Pings at 0, 2, 4, 6 and 8 s, each carrying the timeout.
        let mut pings = 0;
        while let Ok(super::super::stream::Out::Frame(f)) = rx.try_recv() {
            assert_eq!(
                f,
                super::super::wire::to_vec(&Frame::Ping { timeout_ms: 10_000 })
            );
            pings += 1;
        }
        assert_eq!(pings, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn the_remote_side_applies_the_timeout_of_the_latest_ping() {
        let heard = Heard::new();
        let (tx, rx) = watch::channel(FIRST_PING);
        let start = Instant::now();
        let lost = tokio::spawn(until_lost(heard, rx));
        tokio::time::sleep(S).await;
        tx.send_replace(3 * S);
        let silent = lost.await.unwrap();
        assert_eq!(silent, 3 * S);
        assert_eq!(Instant::now() - start, 3 * S);
    }
}
