//! One pool across machines: jobs run on workers forked by the local
//! template and by remote templates reached over ssh, each host with its
//! own limit and weight, dispatched least-loaded across all of them.
//!
//! Shows: `Host::connect` (a remote template started over ssh through
//! `SshConnector`, one ControlMaster per host, each worker's stream a
//! forwarded connection of its own; connected when the pool first wants a
//! worker there and again after a loss),
//! `Builder::host`, `max` and `weight` per host, `Pool::host_events`
//! (hosts going up and down), `Stats::hosts` (per-host counts), and that
//! a job's result tells where it ran.
//!
//! Run: `cargo run --example remote_pool -- SSH_CONFIG HOST [HOST...]`,
//! each HOST a host of that ssh_config with this same binary at the same
//! path. Without arguments it uses the throwaway sshd of the test scripts:
//! `FORK_TEST_SSH_CONFIG=$(bash .ci/sshd start)` and its host `fork-test`
//! (a loopback sshd: "remote" workers run on this machine, under sshd).
//! With neither, it says so and uses `env -i` as a stand-in remote host.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fork_core::Template;
use fork_core::remote::{CommandConnector, Connector, SshConnector};
use fork_pool::{Host, HostEvent, JobPool, Pool};
use fork_rpc::jobs::Job;
use futures::StreamExt;

/// Counts the primes in `[from, to)`, and says where it ran: (count, the
/// host's name, the worker's pid).
fn count_primes((from, to): (u64, u64)) -> Result<(u64, String, u32), String> {
    let count = (from.max(2)..to)
        .filter(|&n| {
            (2..n)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
        })
        .count() as u64;
    let mut host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "?".to_owned(), |h| h.trim().to_owned());
    // sshd tells the sessions it starts (and what they fork) where from.
    if let Ok(from) = std::env::var("SSH_CONNECTION") {
        let client = from.split(' ').next().unwrap_or("?").to_owned();
        host = format!("{host}, under sshd, for {client}");
    }
    Ok((count, host, std::process::id()))
}
static COUNT_PRIMES: Job<(u64, u64), (u64, String, u32), String> = fork_rpc::job!(count_primes);

/// The remote hosts: `(name, connector)`.
fn remote_hosts() -> Vec<(String, Arc<dyn Connector>)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (config, hosts) = match args.split_first() {
        Some((config, hosts)) if !hosts.is_empty() => (config.clone(), hosts.to_vec()),
        _ => match std::env::var("FORK_TEST_SSH_CONFIG") {
            Ok(config) => (config, vec!["fork-test".to_owned()]),
            Err(_) => {
                eprintln!(
                    "no ssh_config given and FORK_TEST_SSH_CONFIG unset: using `env -i` \
                     as a stand-in remote host (see the top of this file)"
                );
                let env = CommandConnector::new("env").arg("-i");
                return vec![("env-i".to_owned(), Arc::new(env))];
            }
        },
    };
    hosts
        .into_iter()
        .map(|host| {
            let ssh = SshConnector::new(&host).config_file(&config);
            (host, Arc::new(ssh) as Arc<dyn Connector>)
        })
        .collect()
}

#[fork_core::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ANCHOR: build
    let remotes = remote_hosts();
    // Spare workers, so that every host has one from the start.
    let spares = 1 + 2 * remotes.len();
    let mut builder = Pool::jobs(Template::shared()?).load(2).idle(spares);
    for (name, ssh) in remotes {
        // Connected when first needed, and again (with back-off) if lost.
        let host = Host::connect(name, move || Template::remote(ssh.clone()).start());
        builder = builder.host(host.max(4).weight(2));
    }
    let pool: JobPool = builder.build();
    let mut host_events = pool.host_events().expect("taken once");
    // ANCHOR_END: build
    let up = pool.wait_until(|s| s.hosts.iter().all(|h| h.up && h.idle > 0));
    tokio::time::timeout(Duration::from_secs(30), up).await?;

    // ANCHOR: run
    let ranges = (0..200u64).map(|i| (i * 5_000, (i + 1) * 5_000));
    let mut results = pool.map(ranges, |range| pool.run(&COUNT_PRIMES, range));
    let (mut primes, mut workers) = (0, BTreeMap::<u32, (String, usize)>::new());
    while let Some(result) = results.next().await {
        let (count, host, pid) = result?;
        primes += count;
        workers.entry(pid).or_insert((host, 0)).1 += 1;
    }
    // ANCHOR_END: run
    drop(results);
    assert_eq!(primes, 78_498, "the primes below a million");
    println!("{primes} primes below 1,000,000, counted in 200 jobs by:");
    for (pid, (host, jobs)) in &workers {
        println!("  worker {pid:>7} on {host}: {jobs} jobs");
    }
    let stats = pool.stats();
    for host in &stats.hosts {
        println!(
            "host {:<10} up: {:<5} workers started: {}, lost: {}, times down: {}",
            host.name, host.up, host.spawned, host.lost, host.downs
        );
    }
    assert!(
        stats.hosts.iter().all(|h| h.up && h.spawned > 0),
        "every host served: {stats:?}"
    );
    while let Ok(event) = host_events.try_recv() {
        match event {
            HostEvent::Up { host } => println!("event: {host} up"),
            HostEvent::Down { host, error } => println!("event: {host} down: {error}"),
            _ => {}
        }
    }
    tokio::time::timeout(Duration::from_secs(30), pool.shutdown()).await?;
    Ok(())
}
