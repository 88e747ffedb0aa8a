//! What the parent sees when an RPC worker dies: a call fails at once with
//! a `fork_rpc::WorkerLost` that says which worker, how it ended, and the
//! message of the handler panic that killed it, never a hang.
//!
//! Shows: a worker killed in the middle of a call (`SIGKILL`), later calls on
//! the same client failing the same way, a handler that panics (exit code
//! 101, with its message), and one that calls `std::process::exit(3)`.
//! `WorkerLost::find` gets the error out of tarpc's `RpcError`. And one
//! failed call that is not a lost worker: a request bigger than
//! `Config::max_frame`.
//!
//! The panicking worker's default panic hook prints its usual message to the
//! shared stderr: that line is expected.
//!
//! Run: `cargo run --example rpc_worker_lost`

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use fork_core::Template;
use fork_rpc::{Config, EventSender, RpcEntry, RpcWorker, Setup, WorkerLost};
use tarpc::client::RpcError;
use tarpc::context;

#[tarpc::service]
trait Job {
    /// Says it started (an event), works for `ms` milliseconds, then
    /// returns `ms`.
    async fn work(ms: u64) -> u64;
    /// Panics with `message`.
    async fn fail(message: String);
    /// Exits the worker with `code`, without replying.
    async fn exit(code: i32);
    /// The length of `data`.
    async fn len(data: Vec<u8>) -> usize;
}

#[derive(Clone)]
struct JobServer {
    events: EventSender<()>,
}

impl Job for JobServer {
    async fn work(self, _: context::Context, ms: u64) -> u64 {
        self.events.send(&()).expect("an event");
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }

    async fn fail(self, _: context::Context, message: String) {
        panic!("{message}");
    }

    async fn exit(self, _: context::Context, code: i32) {
        std::process::exit(code);
    }

    async fn len(self, _: context::Context, data: Vec<u8>) -> usize {
        data.len()
    }
}

fn job(setup: &mut Setup<()>) -> Result<ServeJob<JobServer>, String> {
    Ok(JobServer {
        events: setup.events(),
    }
    .serve())
}

static JOB: RpcEntry<JobRequest, JobResponse> = fork_rpc::entry!(job);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    fork_core::init(); // first thing: in a template this never returns
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let template = Template::shared()?;

        // ANCHOR: killed
        let (client, mut worker) = RpcWorker::builder(&mut template.fork(), &JOB)
            .spawn()
            .await?;
        let job = JobClient::from(client);
        let mut events = worker.events().expect("the events");
        let started = Instant::now();
        let call = job.work(context::current(), 5_000);
        let kill = async {
            events.recv().await; // the call is running in the worker
            worker.kill().await // SIGKILL, and wait until it is reaped
        };
        let (result, killed) = tokio::join!(call, kill);
        killed?;
        let err = result.unwrap_err();
        let lost = WorkerLost::find(&err).expect("the worker is gone");
        assert_eq!(lost.pid(), worker.id());
        assert_eq!(lost.status().and_then(|s| s.signal()), Some(9)); // SIGKILL
        assert_eq!(lost.panic_message(), None);
        assert!(started.elapsed() < Duration::from_secs(4)); // not the 5 s call
        // ANCHOR_END: killed
        println!(
            "killed mid-call after {} ms: {lost}",
            started.elapsed().as_millis()
        );

        // ANCHOR: later
        // Every later call on that client fails at once, the same way.
        let err = job.work(context::current(), 1).await.unwrap_err();
        assert!(WorkerLost::is_lost(&err));
        // ANCHOR_END: later
        println!("  a later call: {}", WorkerLost::find(&err).expect("lost"));

        // ANCHOR: panicked
        let (client, mut worker) = RpcWorker::builder(&mut template.fork(), &JOB)
            .spawn()
            .await?;
        let job = JobClient::from(client);
        let err = job
            .fail(context::current(), "out of coffee".into())
            .await
            .unwrap_err();
        let lost = WorkerLost::find(&err).expect("the worker is gone");
        assert_eq!(lost.panic_message(), Some("out of coffee"));
        assert_eq!(
            lost.status().and_then(|s| s.code()),
            Some(fork_core::PANIC_EXIT_CODE) // 101, as a panicking main
        );
        assert_eq!(worker.wait().await?.code(), Some(101));
        // ANCHOR_END: panicked
        println!("a handler panicked: {lost}");

        // ANCHOR: exited
        let (client, _worker) = RpcWorker::builder(&mut template.fork(), &JOB)
            .spawn()
            .await?;
        let job = JobClient::from(client);
        let err = job.exit(context::current(), 3).await.unwrap_err();
        let lost = WorkerLost::find(&err).expect("the worker is gone");
        assert_eq!(lost.status().and_then(|s| s.code()), Some(3));
        // ANCHOR_END: exited
        println!("a handler exited: {lost}");

        // ANCHOR: oversized
        // Not every failed call is a lost worker: a request bigger than
        // `max_frame` is refused before it is sent, and the worker serves on.
        let config = Config::default().max_frame(64 * 1024);
        let (client, mut worker) = RpcWorker::builder(&mut template.fork(), &JOB)
            .config(config)
            .spawn()
            .await?;
        let job = JobClient::from(client);
        let err = job
            .len(context::current(), vec![0; 100_000])
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::Send(_)), "{err:?}");
        assert!(!WorkerLost::is_lost(&err));
        assert_eq!(job.len(context::current(), vec![0; 1000]).await?, 1000);
        drop(job);
        assert_eq!(worker.wait().await?.code(), Some(0));
        // ANCHOR_END: oversized
        println!("an oversized request: {err} (the worker served on, then exited with 0)");
        Ok(())
    })
}
