//! tower's layers between tarpc's generated client and a pool.
//!
//! Shows: a `Pool` as a `tower::Service` (fork-pool's `tower` feature);
//! tower's `load_shed`, `concurrency_limit` and `timeout` layers stacked on
//! it with `ServiceBuilder`; `fork_rpc::TowerStub` turning the stack back
//! into a stub, so the generated client's typed methods call through the
//! layers; calls beyond the limit shed at once (`Overloaded`), a call past
//! the timeout ended (`Elapsed`) and cancelled in its worker, both found as
//! the source of the call's `RpcError::Send`.
//!
//! Run: `cargo run --example tower_layers` (under a second).

use std::time::{Duration, Instant};

use fork_core::Template;
use fork_pool::Pool;
use fork_rpc::{Config, RpcEntry, Setup, TowerStub};
use futures::future::join_all;
use tarpc::client::RpcError;
use tarpc::context;
use tower::ServiceBuilder;
use tower::load_shed::error::Overloaded;
use tower::timeout::error::Elapsed;

#[tarpc::service]
trait Calc {
    /// `x * x`, after `ms` milliseconds (a stand-in for a longer job).
    async fn square(x: u64, ms: u64) -> u64;
}

#[derive(Clone)]
struct CalcServer;

impl Calc for CalcServer {
    async fn square(self, _: context::Context, x: u64, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        x * x
    }
}

fn calc(_setup: &mut Setup<()>) -> Result<ServeCalc<CalcServer>, String> {
    Ok(CalcServer.serve())
}

static CALC: RpcEntry<CalcRequest, CalcResponse> = fork_rpc::entry!(calc);

/// The layer's error behind a call's `RpcError::Send`, if it is an `E`.
fn layer_error<E: std::error::Error + 'static>(e: &RpcError) -> bool {
    matches!(e, RpcError::Send(source) if source.is::<E>())
}

#[fork_core::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = Pool::builder(Template::shared()?, &CALC)
        .max(2)
        .rpc(Config::default().concurrent(4))
        .build();

    // ANCHOR: layers
    // Three calls at most in flight; a fourth fails at once rather than
    // wait (load_shed); none takes longer than 300 ms.
    let layered = ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(3)
        .timeout(Duration::from_millis(300))
        .service(pool.clone());
    let calc = CalcClient::from(TowerStub::new(layered));
    assert_eq!(calc.square(context::current(), 7, 0).await?, 49);
    // ANCHOR_END: layers
    println!("through the layers: 7 * 7 = 49");

    // ANCHOR: shed
    // Five calls at once: three run, two are shed without reaching a worker.
    let start = Instant::now();
    let results = join_all((0..5).map(|x| calc.square(context::current(), x, 100))).await;
    let shed = results
        .iter()
        .filter(|r| matches!(r, Err(e) if layer_error::<Overloaded>(e)))
        .count();
    let served: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    assert_eq!((shed, served.len()), (2, 3), "{results:?}");
    // ANCHOR_END: shed
    println!(
        "5 calls at once: {} served {served:?}, {shed} shed, in {} ms",
        served.len(),
        start.elapsed().as_millis()
    );

    // ANCHOR: timeout
    // A 5 s job ends after 300 ms; dropping it cancelled it in the worker.
    let start = Instant::now();
    let e = calc
        .square(context::current(), 3, 5_000)
        .await
        .expect_err("the layer's timeout ends the call");
    assert!(layer_error::<Elapsed>(&e), "{e:?}");
    // ANCHOR_END: timeout
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "{took:?}");
    println!("a 5 s job timed out after {} ms", took.as_millis());

    let stats = pool.stats();
    println!("pool: {stats:?}");
    pool.shutdown().await;
    Ok(())
}
