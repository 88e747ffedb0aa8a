//! Remote-template benchmark: spawns and RPC calls through a remote
//! template, beside a local template in the same run.
//!
//! Run: `cargo bench -p benches --bench remote` (under a minute), or
//! `cargo bench -p benches --bench remote -- --quick` (a few seconds; for
//! CI). `--only TEXT` measures only the rows whose name contains `TEXT`.
//!
//! The templates, each this bench's binary:
//!
//! - **local**: `Template::new()`.
//! - **remote, `env -i`**: `Template::remote` through a local command: the
//!   remote protocol, its relay and its channels, without a network.
//! - **remote, ssh**: `Template::remote` through `ssh` to the throwaway sshd
//!   of `.ci/sshd` on 127.0.0.1, when `FORK_TEST_SSH_CONFIG` names its
//!   config (`bash .ci/sshd start` prints it); otherwise these rows are
//!   skipped, and the report says so.
//!
//! What is measured: a spawn (fork a worker that exits at once, wait for its
//! status), one at a time; fork-rpc calls to one worker, one at a time and
//! 64 in flight. Targets (issue #14): remote spawn ≥ 100/s; pipelined calls
//! over a remote worker ≥ 0.5× over a local one.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::Align::{Left, Right};
use benches::measure::side_by_side;
use benches::{Args, BoxResult, Caller, Rounds, Sample, Table, calls, ratio, spread, verdict};
use fork_core::remote::CommandConnector;
use fork_core::{Context, Entry, Template};
use fork_rpc::{RpcEntry, RpcWorker, Setup};
use tarpc::client::RpcError;
use tarpc::context;
use tokio::runtime::Runtime;

// ===== what the workers run =====

/// Exits at once.
fn nop(_: Context) {}
static NOP: Entry = fork_core::entry!(nop, name = "benches::remote::nop");

#[tarpc::service]
trait Echo {
    async fn echo(x: u64) -> u64;
}

#[derive(Clone)]
struct EchoServer;

impl Echo for EchoServer {
    async fn echo(self, _: context::Context, x: u64) -> u64 {
        x
    }
}

fn echo_service(_: &mut Setup<()>) -> Result<ServeEcho<EchoServer>, String> {
    Ok(EchoServer.serve())
}
static ECHO: RpcEntry<EchoRequest, EchoResponse> =
    fork_rpc::entry!(echo_service, name = "benches::remote::echo");

struct Sender(EchoClient<fork_rpc::Client<EchoRequest, EchoResponse>>);

impl Caller for Sender {
    type Work = ();
    type Error = RpcError;

    fn call(&self, (): (), x: u64) -> impl Future<Output = Result<u64, RpcError>> + Send + '_ {
        self.0.echo(context::current(), x)
    }
}

// ===== the templates =====

/// Where a template runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Local,
    Env,
    Ssh,
}

impl Place {
    fn name(self) -> &'static str {
        match self {
            Place::Local => "local template",
            Place::Env => "remote, env -i",
            Place::Ssh => "remote, ssh to 127.0.0.1",
        }
    }

    async fn template(self, ssh_config: Option<&str>) -> BoxResult<Template> {
        Ok(match self {
            Place::Local => Template::new()?,
            Place::Env => {
                Template::remote(CommandConnector::new("env").arg("-i"))
                    .start()
                    .await?
            }
            Place::Ssh => {
                let config = ssh_config.ok_or("no ssh config")?;
                let ssh = CommandConnector::new("ssh")
                    .args(["-F", config, "fork-test"])
                    .shell_line(true);
                Template::remote(ssh).start().await?
            }
        })
    }
}

/// One measured row.
struct Row {
    what: String,
    place: Place,
    sample: Sample<2>,
    /// Median of per-round ratios to the local template's.
    to_local: f64,
}

fn measure(rt: &Runtime, args: &Args, places: &[Place], rows: &mut Vec<Row>) -> BoxResult<()> {
    let ssh_config = std::env::var("FORK_TEST_SSH_CONFIG").ok();
    let rounds = if args.quick {
        Rounds::new(1, Duration::from_millis(200))
    } else {
        Rounds::new(5, Duration::from_millis(1000))
    };
    let mut templates = Vec::new();
    for &place in places {
        let started = Instant::now();
        let template = rt.block_on(place.template(ssh_config.as_deref()))?;
        eprintln!(
            "{}: started in {:.0} ms",
            place.name(),
            started.elapsed().as_secs_f64() * 1e3
        );
        templates.push((place.name(), (place, template)));
    }

    if args.wants("spawn") {
        let samples = side_by_side(
            "spawn + wait, one at a time",
            &templates,
            rounds,
            false,
            |_| Vec::new(),
            |(_, template), len| {
                rt.block_on(async {
                    let start = Instant::now();
                    let mut n = 0;
                    while start.elapsed() < len {
                        let mut worker = template.fork().run(&NOP).await?;
                        let status = worker.wait().await?;
                        if !status.success() {
                            return Err(format!("a worker ended with {status:?}").into());
                        }
                        n += 1;
                    }
                    Ok((n, start.elapsed()))
                })
            },
        )?;
        push(rows, "spawn + wait", &templates, samples);
    }

    let mut workers = Vec::new();
    for (name, (place, template)) in &templates {
        let (client, worker) =
            rt.block_on(RpcWorker::builder(&mut template.fork(), &ECHO).spawn())?;
        workers.push((
            *name,
            (*place, Arc::new(Sender(EchoClient::from(client))), worker),
        ));
    }
    for depth in [1, 64] {
        let what = if depth == 1 {
            "RPC calls, one at a time".to_string()
        } else {
            format!("RPC calls, {depth} in flight")
        };
        if !args.wants(&what) {
            continue;
        }
        let samples = side_by_side(
            &what,
            &workers,
            rounds,
            false,
            |(_, _, worker)| vec![worker.id()],
            |(_, sender, _), len| rt.block_on(calls(sender.clone(), (), depth, len)),
        )?;
        let peers: Vec<_> = workers
            .iter()
            .map(|(n, (p, _, _))| (*n, (*p, ())))
            .collect();
        push(rows, &what, &peers, samples);
    }
    Ok(())
}

/// Adds a row per peer, with its ratio to the first (local) peer.
fn push<T>(rows: &mut Vec<Row>, what: &str, peers: &[(&str, (Place, T))], samples: Vec<Sample<2>>) {
    let base = samples.first().cloned();
    for ((_, (place, _)), sample) in peers.iter().zip(samples) {
        rows.push(Row {
            what: what.to_string(),
            place: *place,
            to_local: base.as_ref().map_or(f64::NAN, |b| sample.ratio_to(b)),
            sample,
        });
    }
}

fn print(rows: &[Row], ssh: bool) {
    println!("## Remote templates: spawns and RPC calls, beside a local template");
    println!();
    println!(
        "Operations per second (median round, spread) and the median of per-round ratios to \
         the local template; CPU µs per operation of this process and of the worker. Load: {}.",
        benches::proc::load_average()
    );
    println!();
    let table = Table::new(&[
        ("operation", Left),
        ("template", Left),
        ("ops/s", Right),
        ("spread", Right),
        ("× local", Right),
        ("CPU µs/op: parent + worker", Right),
    ]);
    println!("{}", table.head());
    for row in rows {
        let cpu = row.sample.cpu_per_op();
        let cpu = match (cpu[0], cpu[1]) {
            (Some(p), Some(w)) => format!("{p:.1} + {w:.1}"),
            (Some(p), None) => format!("{p:.1}"),
            _ => "?".into(),
        };
        println!(
            "{}",
            table.row(&[
                &row.what,
                &row.place.name(),
                &format!("{:.0}", row.sample.median()),
                &spread(&row.sample),
                &ratio(row.to_local),
                &cpu,
            ])
        );
    }
    println!();
    if !ssh {
        println!(
            "- ssh rows skipped: FORK_TEST_SSH_CONFIG is not set (`bash .ci/sshd start` prints \
             the config to point it at)"
        );
    }
    for row in rows.iter().filter(|r| r.place != Place::Local) {
        if row.what == "spawn + wait" {
            let rate = row.sample.median();
            println!(
                "- target ≥ 100 remote spawns/s, {}: {} ({rate:.0}/s)",
                row.place.name(),
                verdict(rate >= 100.0)
            );
        }
        if row.what.contains("in flight") {
            println!(
                "- target ≥ 0.5× a local worker's pipelined calls, {}: {} ({})",
                row.place.name(),
                verdict(row.to_local >= 0.5),
                ratio(row.to_local)
            );
        }
    }
}

fn main() -> BoxResult<()> {
    fork_core::init();
    let args = Args::from_env();
    let ssh = std::env::var_os("FORK_TEST_SSH_CONFIG").is_some();
    let mut places = vec![Place::Local, Place::Env];
    if ssh {
        places.push(Place::Ssh);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    measure(&rt, &args, &places, &mut rows)?;
    drop(rt);
    print(&rows, ssh);
    Ok(())
}
