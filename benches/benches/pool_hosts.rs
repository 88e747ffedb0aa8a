//! A pool over three hosts: its throughput beside the sum of what each
//! host gives alone (issue #14's target: ≥ 0.9×), in one run.
//!
//! Run: `cargo bench -p benches --bench pool_hosts` (about a minute), or
//! with `-- --quick` (a few seconds; for CI).
//!
//! The hosts are the three network-namespace hosts of `.ci/netns`
//! (`fork-a`, `fork-b`, `fork-c`, each a remote template over ssh to an
//! sshd in its namespace) when `FORK_TEST_NETNS_SSH_CONFIG` names their
//! config (`bash .ci/netns start` prints it); otherwise three remote
//! templates through `env -i`, and the report says so.
//!
//! What is measured, with each host's pool at most 4 workers, one call on a
//! worker at a time, 64 calls in flight:
//!
//! - **calls that wait 5 ms** in the worker (a stand-in for I/O-bound work):
//!   each host alone gives at most 4 / 5 ms = 800 calls/s, so the sum of
//!   three is what one pool over the three can give if its dispatch across
//!   hosts costs nothing. This is the row the target is judged on.
//! - **empty calls** (CPU-bound): shown for what they are; the three hosts
//!   share this machine's 2 CPUs, so their sum is not reachable here and no
//!   target is judged on it.

#![forbid(unsafe_code)]

use std::time::Duration;

use benches::Align::{Left, Right};
use benches::{Args, BoxResult, Sample, Table, ratio, spread, verdict};
use fork_core::Template;
use fork_core::remote::CommandConnector;
use fork_pool::{Host, Pool};
use fork_rpc::{RpcEntry, Setup};
use tarpc::context;
use tokio::runtime::Runtime;

#[tarpc::service]
trait Nap {
    /// Waits `us` microseconds (0: answers at once).
    async fn nap(us: u64);
}

#[derive(Clone)]
struct NapServer;

impl Nap for NapServer {
    async fn nap(self, _: context::Context, us: u64) {
        if us > 0 {
            tokio::time::sleep(Duration::from_micros(us)).await;
        }
    }
}

fn nap_service(_: &mut Setup<()>) -> Result<ServeNap<NapServer>, String> {
    Ok(NapServer.serve())
}
static NAP: RpcEntry<NapRequest, NapResponse> = fork_rpc::entry!(nap_service);

/// Workers per host, and calls in flight.
const WORKERS: usize = 4;
const DEPTH: usize = 64;

/// The three hosts: their names, and how to reach each.
fn hosts() -> (Vec<(String, CommandConnector)>, &'static str) {
    match std::env::var("FORK_TEST_NETNS_SSH_CONFIG") {
        Ok(config) => (
            ["fork-a", "fork-b", "fork-c"]
                .iter()
                .map(|&name| {
                    let ssh = CommandConnector::new("ssh")
                        .args(["-F", config.as_str(), name])
                        .shell_line(true);
                    (name.to_owned(), ssh)
                })
                .collect(),
            "three network-namespace hosts over ssh (.ci/netns)",
        ),
        Err(_) => (
            ["env-1", "env-2", "env-3"]
                .iter()
                .map(|&name| (name.to_owned(), CommandConnector::new("env").arg("-i")))
                .collect(),
            "three remote templates through `env -i` (FORK_TEST_NETNS_SSH_CONFIG is not set: \
             `bash .ci/netns start` as root prints it)",
        ),
    }
}

fn host(name: &str, ssh: &CommandConnector) -> Host {
    let ssh = ssh.clone();
    Host::connect(name, move || Template::remote(ssh.clone()).start()).max(WORKERS)
}

/// A pool over `hosts`, started and warm (every worker up).
async fn pool(hosts: &[(String, CommandConnector)]) -> BoxResult<Pool<NapRequest, NapResponse>> {
    let (first, rest) = hosts.split_first().ok_or("no host")?;
    let mut builder = Pool::builder_on(host(&first.0, &first.1), &NAP)
        .load(1)
        .max(WORKERS * hosts.len())
        .idle(WORKERS * hosts.len());
    for (name, ssh) in rest {
        builder = builder.host(host(name, ssh));
    }
    let pool = builder.build();
    let want = WORKERS * hosts.len();
    tokio::time::timeout(
        Duration::from_secs(60),
        pool.wait_until(|s| s.idle + s.busy == want),
    )
    .await
    .map_err(|_| "the pool's workers did not all start within 60 s")?;
    Ok(pool)
}

/// Calls per second through `pool`, `DEPTH` in flight, in `rounds` rounds
/// of `len`.
async fn rate(
    pool: &Pool<NapRequest, NapResponse>,
    us: u64,
    rounds: u32,
    len: Duration,
) -> BoxResult<Sample<2>> {
    let client = NapClient::from(pool.clone());
    let call = move || {
        let client = client.clone();
        async move {
            client.nap(context::current(), us).await?;
            BoxResult::Ok(())
        }
    };
    benches::in_flight(len / 4, DEPTH, call.clone()).await?;
    let mut sample = Sample::default();
    for _ in 0..rounds {
        let (ops, took) = benches::in_flight(len, DEPTH, call.clone()).await?;
        sample.push_round(ops, took);
    }
    Ok(sample)
}

struct Row {
    work: &'static str,
    alone: Vec<(String, Sample<2>)>,
    all: Sample<2>,
}

fn measure(rt: &Runtime, args: &Args) -> BoxResult<(Vec<Row>, &'static str)> {
    let (hosts, what) = hosts();
    let (rounds, len) = if args.quick {
        (1, Duration::from_millis(300))
    } else {
        (5, Duration::from_secs(2))
    };
    let mut rows = Vec::new();
    for (work, us) in [("calls that wait 5 ms", 5_000), ("empty calls", 0)] {
        if !args.wants(work) {
            continue;
        }
        let mut alone = Vec::new();
        for h in &hosts {
            let sample = rt.block_on(async {
                let pool = pool(std::slice::from_ref(h)).await?;
                let sample = rate(&pool, us, rounds, len).await;
                pool.shutdown().await;
                sample
            })?;
            alone.push((h.0.clone(), sample));
        }
        let all = rt.block_on(async {
            let pool = pool(&hosts).await?;
            let sample = rate(&pool, us, rounds, len).await;
            let stats = pool.stats();
            pool.shutdown().await;
            let per_host: Vec<u64> = stats.hosts.iter().map(|h| h.spawned).collect();
            if per_host.iter().any(|&n| n < WORKERS as u64) {
                return Err(format!("workers per host: {per_host:?}").into());
            }
            sample
        })?;
        rows.push(Row { work, alone, all });
    }
    Ok((rows, what))
}

fn print(rows: &[Row], what: &str) {
    println!("## A pool over three hosts, beside each host alone");
    println!();
    println!(
        "Calls per second (median round, spread), {DEPTH} in flight, at most {WORKERS} workers \
         per host, one call per worker at a time. Hosts: {what}. Load: {}.",
        benches::proc::load_average()
    );
    println!();
    let table = Table::new(&[
        ("work", Left),
        ("pool over", Left),
        ("calls/s", Right),
        ("spread", Right),
        ("× sum of each alone", Right),
    ]);
    println!("{}", table.head());
    let mut verdicts = Vec::new();
    for row in rows {
        let sum: f64 = row.alone.iter().map(|(_, s)| s.median()).sum();
        for (name, sample) in &row.alone {
            println!(
                "{}",
                table.row(&[
                    &row.work,
                    &format!("{name} alone"),
                    &format!("{:.0}", sample.median()),
                    &spread(sample),
                    &"",
                ])
            );
        }
        let x = row.all.median() / sum;
        println!(
            "{}",
            table.row(&[
                &row.work,
                &"all three",
                &format!("{:.0}", row.all.median()),
                &spread(&row.all),
                &ratio(x),
            ])
        );
        if row.work.starts_with("calls that wait") {
            verdicts.push(format!(
                "- target ≥ 0.9× the sum of each host alone, {}: {} ({})",
                row.work,
                verdict(x >= 0.9),
                ratio(x)
            ));
        }
    }
    println!();
    for v in verdicts {
        println!("{v}");
    }
    println!(
        "- empty calls are CPU-bound: the three hosts share this machine's 2 CPUs, so the sum \
         of each alone is not reachable here and no target is judged on them."
    );
}

fn main() -> BoxResult<()> {
    fork_core::init();
    let args = Args::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (rows, what) = measure(&rt, &args)?;
    drop(rt);
    print(&rows, what);
    Ok(())
}
