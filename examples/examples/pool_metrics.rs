//! A pool's metrics, exported for Prometheus.
//!
//! Shows: fork-pool's `metrics` feature; `metrics-exporter-prometheus`'s
//! recorder installed before the pool is built, without its HTTP listener;
//! a pool labelled with `Builder::metrics_label`; a batch of calls and a
//! worker killed from outside (a crash); then what Prometheus would scrape,
//! rendered by the exporter's handle, printed and checked.
//!
//! Run: `cargo run --example pool_metrics` (under a second).

use fork_core::Template;
use fork_pool::Pool;
use fork_rpc::{RpcEntry, Setup};
use futures::future::try_join_all;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tarpc::context;

#[tarpc::service]
trait Calc {
    async fn square(x: u64) -> u64;
}

#[derive(Clone)]
struct CalcServer;

impl Calc for CalcServer {
    async fn square(self, _: context::Context, x: u64) -> u64 {
        x * x
    }
}

fn calc(_setup: &mut Setup<()>) -> Result<ServeCalc<CalcServer>, String> {
    Ok(CalcServer.serve())
}

static CALC: RpcEntry<CalcRequest, CalcResponse> = fork_rpc::entry!(calc);

#[fork_core::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ANCHOR: recorder
    // The recorder first: a pool registers its metrics when it is built.
    // Without the exporter's HTTP listener, the program renders what
    // Prometheus scrapes itself (serve it from your own HTTP endpoint).
    let prometheus = PrometheusBuilder::new()
        // The call latency as a Prometheus histogram (else a summary).
        .set_buckets_for_metric(
            Matcher::Full("fork_pool_call_duration_seconds".into()),
            &[0.001, 0.01, 0.1, 1.0],
        )?
        .install_recorder()?;
    // ANCHOR_END: recorder

    // ANCHOR: pool
    let pool = Pool::builder(Template::shared()?, &CALC)
        .max(2)
        .metrics_label("squares") // pool="squares" on each of its metrics
        .build();
    let calc = CalcClient::from(pool.clone());
    let squares = try_join_all((0..20).map(|x| calc.square(context::current(), x))).await?;
    assert_eq!(squares[7], 49);
    // A worker killed from outside: a crash.
    let victim = pool.worker_pids()[0];
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL)?;
    pool.wait_until(|s| s.crashed == 1).await;
    pool.shutdown().await;
    // ANCHOR_END: pool

    // ANCHOR: render
    let scraped = prometheus.render();
    print!("{scraped}");
    // ANCHOR_END: render
    for line in [
        r#"fork_pool_jobs_completed_total{pool="squares"} 20"#,
        r#"fork_pool_jobs_failed_total{pool="squares"} 0"#,
        r#"fork_pool_workers_crashed_total{pool="squares"} 1"#,
        r#"fork_pool_call_duration_seconds_count{pool="squares"} 20"#,
        r#"fork_pool_workers{pool="squares"} 0"#,
        r#"fork_pool_workers_busy{pool="squares"} 0"#,
    ] {
        assert!(
            scraped.lines().any(|l| l == line),
            "not in what was scraped: {line}"
        );
    }
    Ok(())
}
