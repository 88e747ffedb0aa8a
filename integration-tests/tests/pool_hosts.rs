//! A pool over several hosts, with real templates: the local one, and a
//! remote template that is this same binary run by `env -i` (the ssh and
//! network-namespace variants are in `remote_netns`). Placement across
//! hosts within their limits, and a host lost under running calls: the
//! calls on it fail promptly naming it (or run again elsewhere when
//! idempotent, and a call that is not is never run twice), the host comes
//! back when it can be connected again. A `harness = false` target:
//! `main` calls `fork_core::init` first (the remote side starts there).

use std::collections::BTreeMap;
use std::time::Duration;

use fork_core::Template;
use fork_core::remote::CommandConnector;
use fork_pool::{Host, HostEvent, Pool};
use fork_rpc::{EventSender, RpcEntry, Setup, WorkerLost};
use integration_tests::{Failed, all_exit_within, block_on, bounded, ensure, fail, parent_of};
use tarpc::context;

#[tarpc::service]
trait Work {
    /// Sends `tag` as an event, sleeps `ms`, returns the worker's pid.
    async fn announced(tag: u32, ms: u64, idempotent: bool) -> u32;
}

#[derive(Clone)]
struct WorkServer {
    events: EventSender<u32>,
}

impl Work for WorkServer {
    async fn announced(self, _: context::Context, tag: u32, ms: u64, _idempotent: bool) -> u32 {
        self.events.send(&tag).expect("event");
        tokio::time::sleep(Duration::from_millis(ms)).await;
        std::process::id()
    }
}

fn work(setup: &mut Setup<u32>) -> Result<ServeWork<WorkServer>, String> {
    Ok(WorkServer {
        events: setup.events(),
    }
    .serve())
}
static WORK: RpcEntry<WorkRequest, WorkResponse, u32> = fork_rpc::entry!(work);

/// A host whose template is this binary run by `env -i`, connected when
/// the pool needs it (and again after it was lost).
fn env_host() -> Host {
    Host::connect("env-i", || {
        Template::remote(CommandConnector::new("env").arg("-i")).start()
    })
}

/// Whether worker `pid` runs under a remote template (worker, template,
/// remote side, this process) rather than a local one (worker, template,
/// this process).
fn is_remote(pid: u32) -> Result<bool, Failed> {
    let template = parent_of(pid).ok_or("worker gone")?;
    let above = parent_of(template).ok_or("template gone")?;
    Ok(above != std::process::id())
}

/// Workers spread over a local and a remote host, each within its own
/// limit, and calls run on both.
fn workers_spread_over_a_local_and_a_remote_host() -> Result<(), Failed> {
    block_on(bounded(async {
        let pool = Pool::builder(Template::shared().map_err(fail)?, &WORK)
            .max(5)
            .load(1)
            .start(Duration::ZERO)
            .host(env_host().max(2))
            .build();
        let client = WorkClient::from(pool.clone());
        let pids = futures::future::try_join_all(
            (0..10).map(|tag| client.announced(context::current(), tag, 300, false)),
        )
        .await
        .map_err(fail)?;
        let mut workers = BTreeMap::new();
        for pid in pids {
            workers.insert(pid, is_remote(pid)?);
        }
        let remote = workers.values().filter(|&&r| r).count();
        ensure!(
            (workers.len(), remote) == (5, 2),
            "workers (pid, remote): {workers:?}"
        );
        let stats = pool.stats();
        let hosts: Vec<(&str, bool, u64)> = stats
            .hosts
            .iter()
            .map(|h| (h.name.as_str(), h.up, h.spawned))
            .collect();
        ensure!(
            hosts == [("local", true, 3), ("env-i", true, 2)],
            "hosts: {hosts:?}"
        );
        // The remote host's template and its remote side.
        let worker = *workers
            .iter()
            .find(|(_, remote)| **remote)
            .ok_or("no remote worker")?
            .0;
        let template = parent_of(worker).ok_or("remote worker gone")?;
        let side = parent_of(template).ok_or("remote template gone")?;
        pool.shutdown().await;
        // Dropped, the pool lets its templates go: nothing is left there.
        drop((pool, client));
        all_exit_within([worker, template, side], Duration::from_secs(2)).await
    }))
}

/// The remote side killed under two running calls: the call that is not
/// idempotent fails at once with the worker lost, and ran once; the
/// idempotent one runs again (on the host connected anew, or locally);
/// the host goes down and comes back up.
fn a_lost_host_fails_or_reruns_its_calls_and_comes_back() -> Result<(), Failed> {
    block_on(bounded(async {
        let pool = Pool::builder_on(
            Host::new("local", Template::shared().map_err(fail)?).max(1),
            &WORK,
        )
        .max(3)
        .load(1)
        .start(Duration::ZERO)
        .host(env_host().max(2))
        .idempotent(|r| {
            matches!(
                r,
                WorkRequest::Announced {
                    idempotent: true,
                    ..
                }
            )
        })
        .build();
        let mut host_events = pool.host_events().ok_or("no host events")?;
        let mut events = pool.events().ok_or("no events")?;
        let client = WorkClient::from(pool.clone());
        // The local host's one worker first, then two on the remote host.
        let local = client.announced(context::current(), 0, 3_000, false);
        let mut started = BTreeMap::new();
        let run = async {
            let (pid, tag) = events.recv().await.ok_or("no event")?;
            started.insert(tag.map_err(fail)?, vec![pid]);
            let lost = client.announced(context::current(), 1, 30_000, false);
            let retried = client.announced(context::current(), 2, 500, true);
            let kill = async {
                while started.len() < 3 {
                    let (pid, tag) = events.recv().await.ok_or("no event")?;
                    started.entry(tag.map_err(fail)?).or_default().push(pid);
                }
                let remote: Vec<u32> = started[&1].iter().chain(&started[&2]).copied().collect();
                for &pid in &remote {
                    ensure!(
                        is_remote(pid)?,
                        "a call ran on local worker {pid}: {started:?}"
                    );
                }
                let template = parent_of(remote[0]).ok_or("no remote template")?;
                let side = parent_of(template).ok_or("no remote side")?;
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(side as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .map_err(fail)?;
                Ok::<_, Failed>(std::time::Instant::now())
            };
            let (lost, retried, killed) = tokio::join!(lost, retried, kill);
            let killed = killed?;
            Ok::<_, Failed>((lost, killed.elapsed(), retried))
        };
        let (local, run) = tokio::join!(local, run);
        let (lost, lost_after, retried) = run?;
        ensure!(local.is_ok(), "the local call failed: {local:?}");
        let e = lost.err().ok_or("a call on a lost host succeeded")?;
        let worker = WorkerLost::find(&e).ok_or_else(|| format!("not a lost worker: {e:?}"))?;
        ensure!(
            worker.pid() == started[&1][0],
            "lost worker {} is not the one that ran it: {started:?}",
            worker.pid()
        );
        ensure!(
            matches!(
                worker.remote_lost(),
                Some(fork_core::Error::RemoteLost { host, .. }) if host == "env -i"
            ),
            "the error does not name the lost host: {worker}"
        );
        ensure!(
            lost_after < Duration::from_secs(5),
            "the call failed {lost_after:?} after its host was lost"
        );
        ensure!(retried.is_ok(), "the idempotent call failed: {retried:?}");
        // Drain what the workers announced meanwhile.
        while let Ok((pid, tag)) = events.try_recv() {
            started.entry(tag.map_err(fail)?).or_default().push(pid);
        }
        ensure!(
            started[&1].len() == 1,
            "a call not idempotent ran again: {started:?}"
        );
        ensure!(
            started[&2].len() == 2,
            "the idempotent call did not run again: {started:?}"
        );
        match host_events.recv().await {
            Some(HostEvent::Up { host }) if host == "env-i" => {}
            other => return Err(format!("first host event: {other:?}").into()),
        }
        match host_events.recv().await {
            Some(HostEvent::Down { host, .. }) if host == "env-i" => {}
            other => return Err(format!("second host event: {other:?}").into()),
        }
        // It comes back when the pool wants a worker there.
        let again = futures::future::try_join_all(
            (10..13).map(|tag| client.announced(context::current(), tag, 200, false)),
        )
        .await
        .map_err(fail)?;
        let mut remote_now = 0;
        for pid in again {
            remote_now += usize::from(is_remote(pid)?);
        }
        ensure!(remote_now > 0, "no call ran on the host connected again");
        let stats = pool.stats();
        let host = &stats.hosts[1];
        ensure!(
            (host.up, host.downs, host.connects, host.lost) == (true, 1, 2, 2),
            "host stats after the loss: {host:?}"
        );
        pool.shutdown().await;
        Ok(())
    }))
}

fn main() {
    fork_core::init();
    integration_tests::run(&[
        (
            "workers_spread_over_a_local_and_a_remote_host",
            workers_spread_over_a_local_and_a_remote_host,
        ),
        (
            "a_lost_host_fails_or_reruns_its_calls_and_comes_back",
            a_lost_host_fails_or_reruns_its_calls_and_comes_back,
        ),
    ]);
}
