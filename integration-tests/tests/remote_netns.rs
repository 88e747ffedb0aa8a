//! Remote templates on three hosts in network namespaces: the ones
//! `.ci/netns start` sets up (`fork-a`, `fork-b`, `fork-c`, each an sshd
//! on its own veth link; `bash .ci/test` starts them and sets
//! `FORK_TEST_NETNS_SSH_CONFIG` to their ssh_config). The tests take a
//! host's link down (`.ci/netns partition`) to cut it off without an EOF,
//! and reach one through a latency proxy.
//!
//! Where namespaces are not available, `.ci/test` sets
//! `FORK_TEST_NETNS=unavailable: <why>`: each test then says loudly that it
//! is skipped, and why. With neither variable set, each fails and says how
//! to run it: they never pass silently.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fork_core::remote::{CommandConnector, SshConnector};
use fork_core::testing::wait_exit;
use fork_core::{Error, LostCause, Template};
use fork_pool::{Host, HostEvent, Pool};
use fork_rpc::{RpcWorker, WorkerLost};
use futures::FutureExt;
use integration_tests::remote::{
    CALC, CalcClient, CalcWorkerClient, SHOUT, calc_worker, is_forwarded,
};
use integration_tests::{Failed, block_on, bounded_by, ensure, fail, parent_of};
use tarpc::context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOSTS: [&str; 3] = ["fork-a", "fork-b", "fork-c"];

/// How long a test's async part may take (a partition and its healing
/// take seconds): a hang is a failure, not a stuck run.
const LIMIT: Duration = Duration::from_secs(90);

// ===== helpers =====

/// The ssh_config of the namespace hosts; `None` (after a loud line on
/// stderr) where namespaces are not available; an error saying how to run
/// the test if nobody set them up.
fn netns_config(test: &str) -> Result<Option<String>, Failed> {
    if let Ok(config) = std::env::var("FORK_TEST_NETNS_SSH_CONFIG") {
        return Ok(Some(config));
    }
    match std::env::var("FORK_TEST_NETNS") {
        Ok(why) if why.starts_with("unavailable") => {
            eprintln!(
                "\n!!! SKIPPED {test}: network namespaces are {why}; this test did NOT run\n"
            );
            Ok(None)
        }
        _ => Err(
            "FORK_TEST_NETNS_SSH_CONFIG is not set: run the suite with `bash .ci/test` \
                  (as root), which starts the three namespace hosts these tests use \
                  (`bash .ci/netns start` prints the config path), or set \
                  FORK_TEST_NETNS='unavailable: <why>' to skip them on a machine without \
                  network namespaces"
                .into(),
        ),
    }
}

/// Runs `.ci/netns` with `args`.
fn netns(args: &[&str]) -> Result<(), Failed> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/netns");
    let status = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .status()
        .map_err(fail)?;
    ensure!(status.success(), ".ci/netns {args:?} failed: {status}");
    Ok(())
}

/// A host cut off (its link down) until this is dropped.
struct Partition(&'static str);

impl Partition {
    fn new(host: &'static str) -> Result<Partition, Failed> {
        netns(&["partition", host])?;
        Ok(Partition(host))
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if let Err(e) = netns(&["heal", self.0]) {
            eprintln!("healing {} failed: {e:?}", self.0);
        }
    }
}

/// The inode of a network namespace (of `/proc/<pid>/ns/net`, or of
/// `/run/netns/<host>`), which identifies it.
fn net_ns(path: &str) -> Result<u64, Failed> {
    Ok(std::fs::metadata(path)
        .map_err(|e| format!("{path}: {e}"))?
        .ino())
}

fn net_ns_of(pid: u32) -> Result<u64, Failed> {
    net_ns(&format!("/proc/{pid}/ns/net"))
}

fn host_ns(host: &str) -> Result<u64, Failed> {
    net_ns(&format!("/run/netns/{host}"))
}

/// The processes in namespace `ns` that run this test binary.
fn ours_in(ns: u64) -> Result<Vec<u32>, Failed> {
    let exe = std::env::current_exe().map_err(fail)?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").map_err(fail)? {
        let Some(pid) = entry
            .ok()
            .and_then(|e| e.file_name().to_str()?.parse::<u32>().ok())
        else {
            continue;
        };
        // A process that is gone meanwhile is not there.
        if net_ns_of(pid).is_ok_and(|n| n == ns)
            && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe)
        {
            found.push(pid);
        }
    }
    Ok(found)
}

/// The ssh ControlMasters (`ssh … -M … HOST`) running for `host`.
fn ssh_masters(host: &str) -> Result<Vec<u32>, Failed> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").map_err(fail)?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"ssh"))
            && args.contains(&&b"-M"[..])
            && args.contains(&host.as_bytes())
        {
            found.push(pid);
        }
    }
    Ok(found)
}

/// `ssh -F CONFIG HOST [options]`, as a command connector.
fn ssh(config: &str, host: &str, options: &[String]) -> CommandConnector {
    CommandConnector::new("ssh")
        .args(["-F", config])
        .args(options)
        .arg(host)
        .shell_line(true)
}

/// A context whose deadline is far: only a loss ends its call early.
fn patient() -> context::Context {
    let mut ctx = context::current();
    ctx.deadline = Instant::now() + Duration::from_secs(60);
    ctx
}

/// `n` calls with a far deadline to `calc`, whose host was cut off at
/// `cut`: each fails with the worker-lost error naming `host`, within
/// `limit` of the cut. Returns how long after the cut they failed.
async fn calls_fail_naming(
    calc: &CalcWorkerClient,
    n: i64,
    host: &str,
    cut: Instant,
    limit: Duration,
) -> Result<Duration, Failed> {
    let calls = (0..n).map(|i| {
        let calc = calc.clone();
        async move { calc.add(patient(), i, i).await }
    });
    let results = futures::future::join_all(calls).await;
    let failed_after = cut.elapsed();
    ensure!(
        failed_after < limit,
        "the calls in flight failed only {failed_after:?} after the partition"
    );
    for r in &results {
        let e = r
            .as_ref()
            .err()
            .ok_or("a call succeeded across a partition")?;
        let lost = WorkerLost::find(e).ok_or_else(|| format!("a call gave {e:?}"))?;
        ensure!(
            lost.remote_lost().is_some() && lost.to_string().contains(host),
            "the error names the host: {lost}"
        );
    }
    Ok(failed_after)
}

// ===== tests =====

/// A remote template on each of the three hosts (over the `openssh`
/// crate) forks its workers there: each worker's network namespace is its
/// host's, not ours, and its bytes and exit status come back.
fn a_template_on_each_host_forks_its_workers_there() -> Result<(), Failed> {
    let Some(config) = netns_config("a_template_on_each_host_forks_its_workers_there")? else {
        return Ok(());
    };
    block_on(bounded_by(LIMIT, async {
        let ours = net_ns("/proc/self/ns/net")?;
        for host in HOSTS {
            let session = openssh::SessionBuilder::default()
                .config_file(&config)
                .known_hosts_check(openssh::KnownHosts::Strict)
                .connect_mux(host)
                .await
                .map_err(fail)?;
            let template = Template::remote(SshConnector::from_session(Arc::new(session)))
                .name(host)
                .start()
                .await
                .map_err(fail)?;
            ensure!(template.host() == Some(host), "host {:?}", template.host());
            let mut worker = template.fork().arg(&7i32).run(&SHOUT).await.map_err(fail)?;
            let theirs = net_ns_of(worker.id())?;
            ensure!(
                theirs != ours && theirs == host_ns(host)?,
                "the worker on {host} is in namespace {theirs} (ours {ours}, {host}'s {})",
                host_ns(host)?
            );
            let mut stream = worker.take_stream().ok_or("no stream")?;
            ensure!(
                is_forwarded(&stream)?,
                "{host}: the worker's stream is not a forwarded connection"
            );
            stream.write_all(host.as_bytes()).await.map_err(fail)?;
            let mut reply = vec![0u8; host.len()];
            stream.read_exact(&mut reply).await.map_err(fail)?;
            ensure!(reply == host.to_uppercase().as_bytes(), "reply {reply:?}");
            drop(stream);
            let status = worker.wait().await.map_err(fail)?;
            ensure!(status.code() == Some(7), "exit status {status:?}");
            let status = template.shutdown().await.map_err(fail)?;
            ensure!(
                status.success(),
                "{host}: the remote side ended with {status:?}"
            );
        }
        Ok(())
    }))
}

/// A host cut off while RPC calls are in flight: no EOF comes, the
/// keepalive finds the connection lost within its timeout, every call
/// fails with the worker-lost error naming the host, the worker's
/// `wait()` gives `RemoteLost`, and `lost()` resolves. On the host, the
/// remote side hears nothing for the timeout and ends by itself, its
/// template and worker with it, while the link is still down (nothing from
/// here can reach it). Once the link is back, a new template starts there.
fn a_partitioned_host_is_lost_and_keeps_no_orphans() -> Result<(), Failed> {
    const HOST: &str = "fork-b";
    const TIMEOUT: Duration = Duration::from_secs(2);
    const MARGIN: Duration = Duration::from_secs(2);
    let Some(config) = netns_config("a_partitioned_host_is_lost_and_keeps_no_orphans")? else {
        return Ok(());
    };
    block_on(bounded_by(LIMIT, async {
        let ns = host_ns(HOST)?;
        ensure!(
            ours_in(ns)?.is_empty(),
            "a leftover runs in {HOST}: {:?}",
            ours_in(ns)?
        );
        // Named by default after the command line, which names the host.
        // ANCHOR: keepalive
        let template = Template::remote(ssh(&config, HOST, &[]))
            .keepalive(TIMEOUT / 4, TIMEOUT) // ping every 0.5 s, lost after 2 s of silence
            .start()
            .await
            .map_err(fail)?;
        let host = template.host().ok_or("no host name")?.to_string(); // "ssh -F … fork-b"
        let lost = template.lost(); // resolves with Error::RemoteLost once it is lost
        // ANCHOR_END: keepalive
        ensure!(host.ends_with(HOST), "host name {host:?}");
        let agent = parent_of(template.id()).ok_or("no remote side")?;
        let (calc, mut worker) = calc_worker(&template).await?;
        let pids = [agent, template.id(), worker.id()];
        let mut running = ours_in(ns)?;
        running.sort_unstable();
        let mut want = pids.to_vec();
        want.sort_unstable();
        ensure!(running == want, "in {HOST}: {running:?}, expected {want:?}");

        // ANCHOR: partition
        let partition = Partition::new(HOST)?; // bash .ci/netns partition fork-b
        // ANCHOR_END: partition
        let cut = Instant::now();
        let failed_after = calls_fail_naming(&calc, 8, HOST, cut, TIMEOUT + MARGIN).await?;
        let e = match worker.wait().await {
            Err(fork_rpc::Error::Core(e)) => e,
            other => return Err(format!("wait() gave {other:?}").into()),
        };
        ensure!(
            matches!(&e, Error::RemoteLost { host: h, cause: LostCause::Silent(_) } if *h == host),
            "wait() gave {e:?}"
        );
        let e = lost.now_or_never().ok_or("lost() did not resolve")?;
        ensure!(
            e.is_remote_lost() && template.is_lost(),
            "lost() gave {e:?}"
        );

        // The host's side ends on its own keepalive: the link is still down.
        let gone = tokio::task::spawn_blocking(move || {
            pids.iter()
                .map(|&pid| wait_exit(pid, TIMEOUT + MARGIN).map_err(fail))
                .collect::<Result<Vec<bool>, Failed>>()
        })
        .await
        .map_err(fail)??;
        ensure!(
            gone.iter().all(|&g| g),
            "in {HOST}, cut off, {pids:?} gone: {gone:?} ({:?} after the partition)",
            cut.elapsed()
        );
        ensure!(
            ours_in(ns)?.is_empty(),
            "left in {HOST}: {:?}",
            ours_in(ns)?
        );
        eprintln!(
            "calls failed {failed_after:?} after the partition; the host's side was gone \
             {:?} after it (timeout {TIMEOUT:?})",
            cut.elapsed()
        );
        drop(partition);
        ensure!(
            ours_in(ns)?.is_empty(),
            "left in {HOST} after healing: {:?}",
            ours_in(ns)?
        );

        let again = Template::remote(ssh(&config, HOST, &[]))
            .start()
            .await
            .map_err(fail)?;
        ensure!(
            net_ns_of(again.id())? == ns,
            "the new template runs in {HOST}"
        );
        let mut worker = again.fork().arg(&7i32).run(&SHOUT).await.map_err(fail)?;
        drop(worker.take_stream());
        ensure!(
            worker.wait().await.map_err(fail)?.code() == Some(7),
            "worker"
        );
        let status = again.shutdown().await.map_err(fail)?;
        ensure!(
            status.success(),
            "the new remote side ended with {status:?}"
        );
        Ok(())
    }))
}

/// A slow link is not a lost one: through a proxy that delays every chunk
/// by 30 ms each way (a 60 ms round trip, three times the keepalive
/// interval of 20 ms), a template forks and serves RPC calls for seconds,
/// and stays idle longer than its timeout, without being found lost.
fn a_slow_link_is_not_a_lost_one() -> Result<(), Failed> {
    const HOST: &str = "fork-c";
    const DELAY: Duration = Duration::from_millis(30);
    const TIMEOUT: Duration = Duration::from_secs(1);
    let Some(config) = netns_config("a_slow_link_is_not_a_lost_one")? else {
        return Ok(());
    };
    block_on(bounded_by(LIMIT, async {
        let (proxy, proxy_task) =
            integration_tests::latency_proxy("10.231.3.2:22".parse().map_err(fail)?, DELAY)
                .await
                .map_err(fail)?;
        let options = [
            "-o".to_string(),
            "HostName=127.0.0.1".to_string(),
            "-o".to_string(),
            format!("Port={}", proxy.port()),
        ];
        let template = Template::remote(ssh(&config, HOST, &options))
            .name("fork-c (+60 ms)")
            .keepalive(Duration::from_millis(20), TIMEOUT)
            .start()
            .await
            .map_err(fail)?;
        ensure!(
            net_ns_of(template.id())? == host_ns(HOST)?,
            "it runs in {HOST}"
        );
        let mut lost = Box::pin(template.lost());
        let (client, mut worker) = RpcWorker::builder(&mut template.fork(), &CALC)
            .spawn()
            .await
            .map_err(fail)?;
        let calc = CalcClient::from(client);
        let started = Instant::now();
        ensure!(
            calc.add(context::current(), 2, 3).await.map_err(fail)? == 5,
            "2 + 3"
        );
        let round_trip = started.elapsed();
        ensure!(
            round_trip >= 2 * DELAY,
            "a call took {round_trip:?}: the proxy does not delay"
        );
        // Calls, one at a time and 16 at once, for 3 s.
        let mut calls = 0;
        while started.elapsed() < Duration::from_secs(3) {
            let batch = (0..16i64).map(|i| {
                let calc = calc.clone();
                async move { calc.add(context::current(), i, 1).await }
            });
            for (i, sum) in futures::future::join_all(batch)
                .await
                .into_iter()
                .enumerate()
            {
                ensure!(sum.map_err(fail)? == i as i64 + 1, "call {i}");
            }
            ensure!(
                calc.add(context::current(), 1, 1).await.map_err(fail)? == 2,
                "1 + 1"
            );
            calls += 17;
        }
        // Idle for longer than the timeout: pings and pongs keep it alive.
        tokio::time::sleep(2 * TIMEOUT).await;
        ensure!(
            calc.add(context::current(), 4, 5).await.map_err(fail)? == 9,
            "4 + 5"
        );
        ensure!(
            !template.is_lost() && (&mut lost).now_or_never().is_none(),
            "found lost after {calls} calls over a 60 ms round trip"
        );
        drop(calc);
        ensure!(worker.wait().await.map_err(fail)?.success(), "worker");
        let status = template.shutdown().await.map_err(fail)?;
        ensure!(status.success(), "the remote side ended with {status:?}");
        proxy_task.abort();
        eprintln!("{calls} calls over a {round_trip:?} round trip, never lost");
        Ok(())
    }))
}

/// One pool over the three hosts, each its own remote template: calls
/// spread over all; a host partitioned under running calls fails those
/// (naming it) within the keepalive timeout while the others go on and
/// take the new calls, none stuck; healed, it comes back.
fn a_pool_over_three_hosts_survives_a_partition() -> Result<(), Failed> {
    const TIMEOUT: Duration = Duration::from_secs(2);
    const MARGIN: Duration = Duration::from_secs(2);
    let Some(config) = netns_config("a_pool_over_three_hosts_survives_a_partition")? else {
        return Ok(());
    };
    block_on(bounded_by(LIMIT, async {
        // ANCHOR: pool
        let host = |name: &'static str| {
            let ssh = ssh(&config, name, &["-o".into(), "ConnectTimeout=2".into()]);
            Host::connect(name, move || {
                Template::remote(ssh.clone())
                    .name(name)
                    .keepalive(TIMEOUT / 4, TIMEOUT)
                    .handshake_timeout(Duration::from_secs(5))
                    .start()
            })
            .max(2)
        };
        let pool = Pool::builder_on(host("fork-a"), &CALC)
            .host(host("fork-b"))
            .host(host("fork-c"))
            .load(1)
            .start(Duration::ZERO)
            .build();
        let mut events = pool.host_events().ok_or("no host events")?;
        // ANCHOR_END: pool
        let calc = CalcClient::from(pool.clone());
        let naps = |n: usize, ms: u64| {
            let calc = calc.clone();
            futures::future::join_all((0..n).map(move |_| {
                let calc = calc.clone();
                async move { calc.nap(patient(), ms).await }
            }))
        };
        for r in naps(6, 300).await {
            r.map_err(fail)?;
        }
        let spawned: Vec<u64> = pool.stats().hosts.iter().map(|h| h.spawned).collect();
        ensure!(spawned == [2, 2, 2], "workers per host: {spawned:?}");

        // Six long calls, one per worker; fork-b cut off under two.
        let long = naps(6, 8_000);
        let cut = async {
            pool.wait_until(|s| s.busy == 6).await;
            let partition = Partition::new("fork-b")?;
            Ok::<_, Failed>((partition, Instant::now()))
        };
        let (long, cut) = tokio::join!(long, async {
            let cut = cut.await?;
            // Meanwhile new calls go to the hosts that are up.
            let down = loop {
                match events.recv().await {
                    Some(HostEvent::Down { host, .. }) => break host,
                    Some(_) => continue,
                    None => return Err(Failed::from("no down event")),
                }
            };
            let noticed = cut.1.elapsed();
            Ok::<_, Failed>((cut, down, noticed))
        });
        let ((partition, at), down, noticed) = cut?;
        ensure!(down == "fork-b", "down: {down}");
        ensure!(
            noticed < TIMEOUT + MARGIN,
            "fork-b was found down {noticed:?} after the partition"
        );
        let mut lost = 0;
        for r in &long {
            if let Err(e) = r {
                let worker = WorkerLost::find(e).ok_or_else(|| format!("a call gave {e:?}"))?;
                ensure!(
                    worker.to_string().contains("fork-b"),
                    "the error does not name the host: {worker}"
                );
                lost += 1;
            }
        }
        ensure!(lost == 2, "{lost} calls failed, not fork-b's two: {long:?}");
        let stats = pool.stats();
        ensure!(
            !stats.hosts[1].up && stats.hosts[1].downs == 1,
            "fork-b: {:?}",
            stats.hosts[1]
        );
        // While it is cut off, calls are served by the others, none stuck.
        let during = Instant::now();
        for r in naps(8, 200).await {
            r.map_err(fail)?;
        }
        ensure!(
            during.elapsed() < Duration::from_secs(4),
            "8 calls on 4 workers took {:?} while a host was down",
            during.elapsed()
        );
        ensure!(at.elapsed() > TIMEOUT, "(the partition lasted)");

        // Healed: the next attempts to connect it succeed.
        drop(partition);
        let back = Instant::now();
        let again = naps(12, 1_000);
        let up = async {
            loop {
                match events.recv().await {
                    Some(HostEvent::Up { host }) if host == "fork-b" => return Ok(back.elapsed()),
                    Some(_) => continue,
                    None => return Err(Failed::from("no up event")),
                }
            }
        };
        let (again, up) = tokio::join!(again, up);
        for r in again {
            r.map_err(fail)?;
        }
        let up = up?;
        // Up again: it takes its share of the next calls.
        for r in naps(6, 500).await {
            r.map_err(fail)?;
        }
        let b = pool.stats().hosts[1].clone();
        ensure!(
            b.up && b.connects == 2 && b.spawned > 2,
            "fork-b after healing ({up:?}): {b:?}"
        );
        pool.shutdown().await;
        Ok(())
    }))
}

/// A host cut off under a template through `SshConnector`, whose
/// workers' streams are forwarded connections of the ControlMaster: the
/// keepalive finds it lost, the forward is cut (the ControlMaster ended),
/// and the calls in flight on those streams fail within the timeout,
/// naming the host, as they do over channels.
fn forwarded_streams_end_when_their_host_is_cut_off() -> Result<(), Failed> {
    const HOST: &str = "fork-c";
    const TIMEOUT: Duration = Duration::from_secs(2);
    const MARGIN: Duration = Duration::from_secs(2);
    let Some(config) = netns_config("forwarded_streams_end_when_their_host_is_cut_off")? else {
        return Ok(());
    };
    block_on(bounded_by(LIMIT, async {
        let before = ssh_masters(HOST)?;
        let ssh = Arc::new(SshConnector::new(HOST).config_file(&config));
        let template = Template::remote(ssh.clone())
            .name(HOST)
            .keepalive(TIMEOUT / 4, TIMEOUT)
            .start()
            .await
            .map_err(fail)?;
        let mut masters = ssh_masters(HOST)?;
        masters.retain(|pid| !before.contains(pid));
        ensure!(masters.len() == 1, "new ControlMasters: {masters:?}");
        let mut shout = template.fork().arg(&7i32).run(&SHOUT).await.map_err(fail)?;
        let mut stream = shout.take_stream().ok_or("no stream")?;
        ensure!(
            is_forwarded(&stream)?,
            "the worker's stream is not a forwarded connection"
        );
        let (calc, _worker) = calc_worker(&template).await?;
        let partition = Partition::new(HOST)?;
        let cut = Instant::now();
        calls_fail_naming(&calc, 4, HOST, cut, TIMEOUT + MARGIN).await?;
        // The plain stream ends too: EOF, or a reset by the ended master.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(MARGIN, stream.read_to_end(&mut rest)).await;
        ensure!(
            read.is_ok(),
            "the stream still waits {MARGIN:?} after the loss"
        );
        // Cut: the ControlMaster ends.
        integration_tests::all_exit_within(masters, MARGIN).await?;
        drop(partition);
        // The same connector connects anew once the host is back.
        let again = Template::remote(ssh.clone()).start().await.map_err(fail)?;
        let mut worker = again.fork().arg(&7i32).run(&SHOUT).await.map_err(fail)?;
        let stream = worker.take_stream().ok_or("no stream")?;
        ensure!(
            is_forwarded(&stream)?,
            "the new template's stream is not forwarded"
        );
        drop(stream);
        ensure!(
            worker.wait().await.map_err(fail)?.code() == Some(7),
            "shout"
        );
        let status = again.shutdown().await.map_err(fail)?;
        ensure!(
            status.success(),
            "the new remote side ended with {status:?}"
        );
        Ok(())
    }))
}

/// A template through `SshConnector` dropped while its host is cut off:
/// what its ControlMaster carried cannot be closed on the host, so it is
/// never idle, yet it ends by itself once the host stopped answering its
/// checks (`ServerAliveInterval` 5 s, three of them), and nothing of it
/// stays here.
fn a_control_master_to_a_host_cut_off_ends_by_itself() -> Result<(), Failed> {
    const HOST: &str = "fork-a";
    let Some(config) = netns_config("a_control_master_to_a_host_cut_off_ends_by_itself")? else {
        return Ok(());
    };
    block_on(bounded_by(LIMIT, async {
        let before = ssh_masters(HOST)?;
        let ssh = SshConnector::new(HOST).config_file(&config);
        let template = Template::remote(ssh).start().await.map_err(fail)?;
        let mut worker = template.fork().arg(&7i32).run(&SHOUT).await.map_err(fail)?;
        let mut masters = ssh_masters(HOST)?;
        masters.retain(|pid| !before.contains(pid));
        ensure!(masters.len() == 1, "new ControlMasters: {masters:?}");
        let partition = Partition::new(HOST)?;
        let cut = Instant::now();
        drop(worker.take_stream());
        drop(worker);
        drop(template);
        integration_tests::all_exit_within(masters, Duration::from_secs(30)).await?;
        eprintln!(
            "the ControlMaster ended {:?} after the partition",
            cut.elapsed()
        );
        drop(partition);
        Ok(())
    }))
}

fn main() {
    fork_core::init();
    integration_tests::run_serially(&[
        (
            "a_template_on_each_host_forks_its_workers_there",
            a_template_on_each_host_forks_its_workers_there,
        ),
        (
            "a_partitioned_host_is_lost_and_keeps_no_orphans",
            a_partitioned_host_is_lost_and_keeps_no_orphans,
        ),
        (
            "a_slow_link_is_not_a_lost_one",
            a_slow_link_is_not_a_lost_one,
        ),
        (
            "a_pool_over_three_hosts_survives_a_partition",
            a_pool_over_three_hosts_survives_a_partition,
        ),
        (
            "forwarded_streams_end_when_their_host_is_cut_off",
            forwarded_streams_end_when_their_host_is_cut_off,
        ),
        (
            "a_control_master_to_a_host_cut_off_ends_by_itself",
            a_control_master_to_a_host_cut_off_ends_by_itself,
        ),
    ])
}
