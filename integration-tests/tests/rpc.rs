//! fork-rpc, end to end: typed calls, modes, events, hooks, graceful close,
//! worker death, deadlines, cancellation, descriptors to running workers,
//! bad input, and the worker's side of the wire protocol.

use std::cell::Cell;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use fork_core::{Context, Template};
use fork_rpc::{Config, EventSender, FdReceiver, Format, RpcEntry, RpcWorker, Setup, WorkerLost};
use integration_tests::{Failed, block_on, ensure, fail};
use serde::{Deserialize, Serialize};
use tarpc::client::RpcError;
use tarpc::{ClientMessage, Request, context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tarpc::service]
trait Calc {
    async fn add(a: i64, b: i64) -> i64;
    async fn ratio(a: f64, b: f64) -> f64;
    async fn echo(s: String) -> String;
    /// A reply of `n` bytes.
    async fn big(n: u64) -> String;
    /// Sleeps (asynchronously), returns how many calls ran at once at most.
    async fn slow(ms: u64) -> usize;
    /// Emits `n` events, then returns `n`.
    async fn emit(n: u32) -> u32;
    /// Returns at once; emits `n` events `ms` later.
    async fn emit_later(n: u32, ms: u64);
    /// Emits an event and flushes it, then blocks the worker's thread.
    async fn flush_then_block(ms: u64);
    async fn panic(message: String);
    async fn exit(code: i32);
    /// Reads everything from the next descriptor sent to the worker.
    async fn read_fd() -> String;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Event {
    Progress(u32),
}

#[derive(Clone)]
struct CalcServer {
    events: EventSender<Event>,
    running: Rc<Cell<usize>>,
    peak: Rc<Cell<usize>>,
    fds: Rc<tokio::sync::Mutex<FdReceiver>>,
}

impl Calc for CalcServer {
    async fn add(self, _: context::Context, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn ratio(self, _: context::Context, a: f64, b: f64) -> f64 {
        a / b
    }

    async fn echo(self, _: context::Context, s: String) -> String {
        s
    }

    async fn big(self, _: context::Context, n: u64) -> String {
        "y".repeat(n as usize)
    }

    async fn slow(self, _: context::Context, ms: u64) -> usize {
        /// Counts a running call until it ends, also when it is aborted.
        struct Running(Rc<Cell<usize>>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.set(self.0.get() - 1);
            }
        }
        self.running.set(self.running.get() + 1);
        let _running = Running(self.running.clone());
        self.peak.set(self.peak.get().max(self.running.get()));
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.peak.get()
    }

    async fn emit(self, _: context::Context, n: u32) -> u32 {
        for i in 0..n {
            self.events.send(&Event::Progress(i)).expect("event");
        }
        n
    }

    async fn emit_later(self, _: context::Context, n: u32, ms: u64) {
        let events = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            for i in 0..n {
                events.send(&Event::Progress(i)).expect("event");
            }
        });
    }

    async fn flush_then_block(self, _: context::Context, ms: u64) {
        self.events.send(&Event::Progress(7)).expect("event");
        self.events.flush().await.expect("flush");
        std::thread::sleep(Duration::from_millis(ms));
    }

    async fn panic(self, _: context::Context, message: String) {
        panic!("{message}");
    }

    async fn exit(self, _: context::Context, code: i32) {
        std::process::exit(code);
    }

    async fn read_fd(self, _: context::Context) -> String {
        let fds = self
            .fds
            .lock()
            .await
            .recv()
            .await
            .expect("recv")
            .expect("a descriptor");
        let mut s = String::new();
        for fd in fds {
            std::fs::File::from(fd)
                .read_to_string(&mut s)
                .expect("read");
        }
        s
    }
}

/// The init hook: argument 0, if any, is an instruction.
fn calc(setup: &mut Setup<Event>) -> Result<ServeCalc<CalcServer>, String> {
    match setup.arg::<String>(0).ok().as_deref() {
        Some("fail") => return Err("the dictionary is missing".into()),
        Some("hang") => {
            // Tells its pid on the descriptor, then never returns.
            let mut pipe = std::fs::File::from(setup.take_fds().pop().ok_or("no fd")?);
            let _ = pipe.write_all(&std::process::id().to_le_bytes());
            loop {
                std::thread::park();
            }
        }
        Some("done-to-fd") => {
            let mut pipe = std::fs::File::from(setup.take_fds().pop().ok_or("no fd")?);
            setup.on_done(move || {
                let _ = pipe.write_all(b"done");
            });
        }
        _ => {}
    }
    let fds = setup.fd_receiver().ok_or("no fd receiver")?;
    Ok(CalcServer {
        events: setup.events(),
        running: Rc::default(),
        peak: Rc::default(),
        fds: Rc::new(tokio::sync::Mutex::new(fds)),
    }
    .serve())
}
static CALC: RpcEntry<CalcRequest, CalcResponse, Event> = fork_rpc::entry!(calc);

/// A worker that says it is ready, then sends `garbage`, then exits if told
/// to or waits for EOF.
fn fake_worker(ctx: Context) -> i32 {
    let garbage: Vec<u8> = ctx.arg(0).expect("the garbage");
    let exit: bool = ctx.arg(1).expect("whether to exit");
    let mut socket = ctx.socket();
    socket.write_all(&[0, 0, 0, 0, 0]).expect("handshake");
    socket.write_all(&garbage).expect("garbage");
    if !exit {
        let mut buf = [0u8; 1024];
        while matches!(socket.read(&mut buf), Ok(n) if n > 0) {}
    }
    0
}
static FAKE: RpcEntry<CalcRequest, CalcResponse, Event> =
    RpcEntry::from_entry(fork_core::entry!(fake_worker));

/// A worker's reply frame, as fork-rpc encodes it (variant 0 of its
/// private `WorkerMsg`), for workers written by hand.
#[derive(Serialize)]
enum WorkerReply {
    Reply(tarpc::Response<CalcResponse>),
}

/// A worker that answers its first request with the reply of another
/// method (as one serving another service would), then waits for EOF.
fn wrong_method_worker(ctx: Context) -> i32 {
    let mut socket = ctx.socket();
    let Some(request) =
        integration_tests::first_request::<CalcRequest>(&mut socket).expect("a request")
    else {
        return 2;
    };
    let mut out = Vec::new();
    push_frame(
        &mut out,
        &WorkerReply::Reply(tarpc::Response {
            request_id: request.id,
            message: Ok(CalcResponse::Echo("not a sum".into())),
        }),
    );
    socket.write_all(&out).expect("reply");
    let mut buf = [0u8; 1024];
    while matches!(socket.read(&mut buf), Ok(n) if n > 0) {}
    0
}
static WRONG_METHOD: RpcEntry<CalcRequest, CalcResponse, Event> =
    RpcEntry::from_entry(fork_core::entry!(wrong_method_worker));

/// Where the exit handler of [`REGISTER_EXIT_HANDLER`] leaves its marks.
static EXIT_MARKS: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// A C exit handler: marks that the process ran its exit handlers.
extern "C" fn mark_exit() {
    if let Some(dir) = EXIT_MARKS.get() {
        let _ = std::fs::write(
            dir.join(std::process::id().to_string()),
            b"exit handlers ran",
        );
    }
}

/// Registers [`mark_exit`] in the template (as a C library it loads would).
fn register_exit_handler(dir: std::path::PathBuf) -> Result<(), String> {
    EXIT_MARKS.set(dir).map_err(|_| "registered twice")?;
    fork_core::testing::on_exit(mark_exit).map_err(|e| e.to_string())
}
static REGISTER_EXIT_HANDLER: fork_core::InitFn<std::path::PathBuf> =
    fork_core::init_fn!(register_exit_handler);

/// An init function that fails (fork-core's, run before the entry).
fn refuse(reason: String) -> Result<(), String> {
    Err(reason)
}
static REFUSE: fork_core::InitFn<String> = fork_core::init_fn!(refuse);

/// Leaves through `std::process::exit`, which runs exit handlers.
fn exit_through_std(_: Context) -> i32 {
    std::process::exit(0)
}
static EXIT_THROUGH_STD: fork_core::Entry = fork_core::entry!(exit_through_std);

async fn start(
    config: Config,
) -> Result<
    (
        CalcClient<fork_rpc::Client<CalcRequest, CalcResponse>>,
        fork_rpc::RpcWorker<Event>,
    ),
    Failed,
> {
    let t = Template::shared().map_err(fail)?;
    let (client, worker) = RpcWorker::builder(&mut t.fork(), &CALC)
        .config(config)
        .spawn()
        .await
        .map_err(fail)?;
    Ok((CalcClient::from(client), worker))
}

fn lost(e: &RpcError) -> Result<&WorkerLost, Failed> {
    WorkerLost::find(e).ok_or_else(|| format!("not a lost worker: {e:?}").into())
}

/// What a worker sends, as fork-rpc encodes it (a copy of its private
/// `WorkerMsg`, for tests that speak the protocol by hand).
#[derive(Debug, Deserialize)]
#[allow(dead_code, reason = "the payloads are read through `Debug` only")]
enum WorkerMsg {
    Reply(tarpc::Response<CalcResponse>),
    Event(Vec<u8>),
    Panic(fork_rpc::HandlerPanic),
    Retire,
}

/// Forks a CALC worker the way `RpcWorker::builder` does, reads its handshake,
/// and returns its socket: for tests that speak the protocol by hand.
async fn raw_worker(
    config: &Config,
) -> Result<(tokio::net::UnixStream, fork_core::Worker), Failed> {
    let t = Template::shared().map_err(fail)?;
    let (_side, side_theirs) = fork_core::fdpass::seqpacket_pair().map_err(fail)?;
    let mut worker = t
        .fork()
        .slot(
            bincode::serialize(config).map_err(fail)?,
            &[std::os::fd::AsFd::as_fd(&side_theirs)],
        )
        .run(CALC.entry())
        .await
        .map_err(fail)?;
    let mut stream = worker.take_stream().ok_or("no socket")?;
    let mut handshake = [0u8; 5];
    stream.read_exact(&mut handshake).await.map_err(fail)?;
    ensure!(handshake == [0; 5], "handshake {handshake:?}");
    Ok((stream, worker))
}

/// Appends a request frame (bincode, as the client encodes it).
fn push_request(out: &mut Vec<u8>, id: u64, timeout: Duration, message: CalcRequest) {
    let mut ctx = context::current();
    ctx.deadline = Instant::now() + timeout;
    push_frame(
        out,
        &ClientMessage::Request(Request {
            context: ctx,
            id,
            message,
        }),
    );
}

/// Appends a cancellation frame.
fn push_cancel(out: &mut Vec<u8>, id: u64) {
    let cancel: ClientMessage<CalcRequest> = ClientMessage::Cancel {
        trace_context: Default::default(),
        request_id: id,
    };
    push_frame(out, &cancel);
}

fn push_frame(out: &mut Vec<u8>, message: &impl Serialize) {
    use bincode::Options;
    let frame = bincode::DefaultOptions::new()
        .serialize(message)
        .expect("encodable");
    out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    out.extend_from_slice(&frame);
}

/// Reads the worker's next frame; `None` at the end of the stream.
async fn read_msg(stream: &mut tokio::net::UnixStream) -> Result<Option<WorkerMsg>, Failed> {
    use bincode::Options;
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(fail(e)),
    }
    let mut frame = vec![0; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut frame).await.map_err(fail)?;
    Ok(Some(
        bincode::DefaultOptions::new()
            .deserialize(&frame)
            .map_err(fail)?,
    ))
}

/// Reads the reply to request `id`, failing on anything else.
async fn expect_reply(
    stream: &mut tokio::net::UnixStream,
    id: u64,
) -> Result<CalcResponse, Failed> {
    match read_msg(stream).await? {
        Some(WorkerMsg::Reply(reply)) if reply.request_id == id => reply.message.map_err(fail),
        other => Err(format!("expected the reply to {id}, got {other:?}").into()),
    }
}

// ===== tests =====

fn typed_calls_in_both_formats() -> Result<(), Failed> {
    block_on(async {
        for format in [Format::Bincode, Format::Json] {
            let (calc, mut worker) = start(Config::default().format(format)).await?;
            let sum = calc.add(context::current(), 40, 2).await.map_err(fail)?;
            ensure!(sum == 42, "{format:?}: 40 + 2 = {sum}");
            let s = calc
                .echo(context::current(), "héllo".into())
                .await
                .map_err(fail)?;
            ensure!(s == "héllo", "{format:?}: echo {s:?}");
            // In `ps` and `top`, the worker is its init hook's name.
            let comm =
                std::fs::read_to_string(format!("/proc/{}/comm", worker.id())).map_err(fail)?;
            ensure!(comm.trim_end() == "calc", "the worker is named {comm:?}");
            drop(calc);
            let status = worker.wait().await.map_err(fail)?;
            ensure!(status.success(), "{format:?}: worker exited with {status}");
        }
        Ok(())
    })
}

fn sync_mode_serves_one_at_a_time() -> Result<(), Failed> {
    block_on(async {
        let (calc, _worker) = start(Config::default()).await?;
        let calls = (0..5).map(|_| calc.slow(context::current(), 20));
        let peaks = futures::future::try_join_all(calls).await.map_err(fail)?;
        ensure!(
            peaks.iter().all(|&p| p == 1),
            "sync mode ran calls at once: {peaks:?}"
        );
        Ok(())
    })
}

fn async_mode_queues_beyond_its_limit() -> Result<(), Failed> {
    block_on(async {
        let (calc, _worker) = start(Config::default().concurrent(3)).await?;
        let calls = (0..10).map(|_| calc.slow(context::current(), 30));
        let peaks = futures::future::try_join_all(calls).await.map_err(fail)?;
        let peak = peaks.into_iter().max().unwrap_or(0);
        ensure!(peak == 3, "async mode with limit 3 peaked at {peak}");
        Ok(())
    })
}

/// Calls beyond `max_in_flight_requests` wait in the parent for a place:
/// the worker never has more at once; a call given up in flight or while
/// it waits for a place (one handed to it meanwhile, or not) gives its
/// place back; a worker's death fails the waiting calls too.
fn calls_beyond_the_in_flight_limit_wait_for_a_place() -> Result<(), Failed> {
    block_on(async {
        let config = Config::default().concurrent(8).max_in_flight_requests(2);
        let (calc, mut worker) = start(config).await?;
        let calls = (0..6).map(|_| calc.slow(context::current(), 30));
        let peaks =
            tokio::time::timeout(Duration::from_secs(5), futures::future::try_join_all(calls))
                .await
                .map_err(|_| "calls beyond the limit never got a place")?
                .map_err(fail)?;
        let peak = peaks.into_iter().max().unwrap_or(0);
        ensure!(
            peak == 2,
            "two places in flight, the worker ran {peak} at once"
        );

        let mut a1 = Box::pin(calc.slow(context::current(), 10_000));
        let mut a2 = Box::pin(calc.slow(context::current(), 10_000));
        ensure!(
            futures::poll!(a1.as_mut()).is_pending() && futures::poll!(a2.as_mut()).is_pending(),
            "slow(10 s) returned"
        );
        let mut b = Box::pin(calc.add(context::current(), 1, 1));
        let mut c = Box::pin(calc.add(context::current(), 2, 2));
        ensure!(
            futures::poll!(b.as_mut()).is_pending() && futures::poll!(c.as_mut()).is_pending(),
            "a call beyond the limit did not wait"
        );
        // a1's place goes to b, which is dropped before it uses it: the
        // place goes on to c.
        drop(a1);
        drop(b);
        drop(a2);
        let sum = tokio::time::timeout(Duration::from_secs(3), c)
            .await
            .map_err(|_| "no place came to a waiting call")?
            .map_err(fail)?;
        ensure!(sum == 4, "add(2, 2) returned {sum}");
        // Both places are back: with one held, another call gets through.
        let held = calc.slow(context::current(), 60_000);
        let mut held = std::pin::pin!(held);
        ensure!(
            futures::poll!(held.as_mut()).is_pending(),
            "slow(60 s) returned"
        );
        let sum = tokio::time::timeout(Duration::from_secs(3), calc.add(context::current(), 1, 2))
            .await
            .map_err(|_| "a place given up on was not given back")?
            .map_err(fail)?;
        ensure!(sum == 3, "add(1, 2) returned {sum}");

        let pid = worker.id();
        let other = calc.slow(context::current(), 60_000);
        let waiting = calc.add(context::current(), 5, 5);
        let kill = async {
            tokio::task::yield_now().await;
            worker.kill().await
        };
        let (held, other, waiting, killed) = tokio::join!(held, other, waiting, kill);
        killed.map_err(fail)?;
        let results = [
            ("held", held.map(|_| ())),
            ("other", other.map(|_| ())),
            ("waiting", waiting.map(|_| ())),
        ];
        for (what, result) in results {
            let e = result
                .err()
                .ok_or(format!("{what}: a call on a killed worker succeeded"))?;
            ensure!(lost(&e)?.pid() == pid, "{what}: {e:?}");
        }
        Ok(())
    })
}

fn events_arrive_in_order_with_replies() -> Result<(), Failed> {
    block_on(async {
        let (calc, mut worker) = start(Config::default()).await?;
        let mut events = worker.events().ok_or("no events")?;
        for round in 0..5 {
            let n = calc.emit(context::current(), 3).await.map_err(fail)?;
            ensure!(n == 3, "emit returned {n}");
            // The reply came after the events, so they are all here already.
            for i in 0..3 {
                let e = events
                    .try_recv()
                    .ok_or(format!("round {round}: event {i} missing"))?;
                ensure!(
                    e.map_err(fail)? == Event::Progress(i),
                    "round {round}: event {i} out of order"
                );
            }
            ensure!(events.try_recv().is_none(), "round {round}: extra event");
        }
        Ok(())
    })
}

fn events_arrive_while_no_call_waits() -> Result<(), Failed> {
    block_on(async {
        let (calc, mut worker) = start(Config::default()).await?;
        let mut events = worker.events().ok_or("no events")?;
        calc.emit_later(context::current(), 3, 50)
            .await
            .map_err(fail)?;
        // No call waits now: the client reads the events in the background.
        for i in 0..3 {
            // (Under the 10 s of the call's deadline, whose timer would
            // wake the background reader anyway.)
            let e = tokio::time::timeout(Duration::from_secs(5), events.recv())
                .await
                .map_err(|_| format!("event {i} did not come"))?
                .ok_or(format!("events ended before event {i}"))?;
            ensure!(e.map_err(fail)? == Event::Progress(i), "event {i} wrong");
        }
        Ok(())
    })
}

/// Many tasks on a multi-threaded runtime call one worker, and a third of
/// them give up while waiting (dropped, or past a deadline): one waiting
/// call reads for all, so each that gives up must pass that on. Every
/// other call gets its own answer, and none hangs.
fn callers_that_give_up_leave_the_reading_to_others() -> Result<(), Failed> {
    block_on(async {
        let (calc, _worker) = start(Config::default().concurrent(64)).await?;
        let calc = std::sync::Arc::new(calc);
        // The second call (in a task of its own) waits; the first, polled
        // after it, reads, and gives up before the second's reply comes,
        // which must still reach that call.
        let (polled, was_polled) = tokio::sync::oneshot::channel();
        let second = tokio::spawn({
            let calc = calc.clone();
            async move {
                let mut call = std::pin::pin!(calc.slow(context::current(), 100));
                if futures::poll!(call.as_mut()).is_ready() {
                    return Err("slow(100) returned at once".into());
                }
                let _ = polled.send(());
                call.await.map_err(fail)
            }
        });
        was_polled.await.map_err(fail)?;
        let first = tokio::time::timeout(
            Duration::from_millis(50),
            calc.slow(context::current(), 300),
        );
        ensure!(first.await.is_err(), "the first call was not dropped");
        // Well before any deadline timer (10 s) could wake a reader.
        tokio::time::timeout(Duration::from_secs(3), second)
            .await
            .map_err(|_| "the second call's reply was not read")?
            .map_err(fail)??;
        // Calls that give up ask for a second more than they wait, so that
        // on a busy machine the reply cannot come first (the worker cancels
        // them, so it does not spend that second).
        let tasks = (0..300i64).map(|i| {
            let calc = calc.clone();
            tokio::spawn(async move {
                let ms = (i % 7) as u64 * 3;
                match i % 3 {
                    // Dropped while its call waits.
                    0 => {
                        let gave_up = tokio::time::timeout(
                            Duration::from_millis(ms / 2),
                            calc.slow(context::current(), ms + 1000),
                        )
                        .await;
                        ensure!(gave_up.is_err(), "call {i} was not dropped");
                    }
                    // Past its deadline while it waits.
                    1 => {
                        let ctx = fork_rpc::context::with_timeout(Duration::from_millis(ms / 2));
                        let e = calc.slow(ctx, ms + 1000).await.unwrap_err();
                        ensure!(matches!(e, RpcError::DeadlineExceeded), "call {i}: {e:?}");
                    }
                    _ => {
                        calc.slow(context::current(), ms).await.map_err(fail)?;
                        let sum = calc.add(context::current(), i, 1).await.map_err(fail)?;
                        ensure!(sum == i + 1, "add({i}, 1) returned {sum}");
                    }
                }
                Ok::<(), Failed>(())
            })
        });
        let all = futures::future::join_all(tasks);
        let results = tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .map_err(|_| "calls hung")?;
        for result in results {
            result.map_err(fail)??;
        }
        Ok(())
    })
}

/// A call whose future was polled, then neither polled again nor dropped,
/// holds up no other call (it cannot read for them).
fn a_call_polled_then_left_holds_up_no_other() -> Result<(), Failed> {
    block_on(async {
        let (calc, _worker) = start(Config::default().concurrent(8)).await?;
        let calc = std::sync::Arc::new(calc);
        // Same task: `long` waits (it was polled) while another call is made.
        let mut long = std::pin::pin!(calc.slow(context::current(), 100));
        ensure!(
            futures::poll!(long.as_mut()).is_pending(),
            "slow(100) returned at once"
        );
        // Well before any deadline (10 s) could end the wait.
        let sum = tokio::time::timeout(Duration::from_secs(3), calc.add(context::current(), 1, 2))
            .await
            .map_err(|_| "a call made beside a waiting one got no reply")?
            .map_err(fail)?;
        ensure!(sum == 3, "add(1, 2) returned {sum}");
        tokio::time::timeout(Duration::from_secs(3), long)
            .await
            .map_err(|_| "the waiting call got no reply")?
            .map_err(fail)?;
        // Another task: its call waits first, then this task polls one call
        // and keeps it without polling it again.
        let (polled, was_polled) = tokio::sync::oneshot::channel();
        let other = tokio::spawn({
            let calc = calc.clone();
            async move {
                let mut call = std::pin::pin!(calc.slow(context::current(), 20));
                if futures::poll!(call.as_mut()).is_ready() {
                    return Err("slow(20) returned at once".into());
                }
                let _ = polled.send(());
                call.await.map_err(fail)
            }
        });
        was_polled.await.map_err(fail)?;
        let mut left = std::pin::pin!(calc.slow(context::current(), 1000));
        ensure!(
            futures::poll!(left.as_mut()).is_pending(),
            "slow(1000) returned at once"
        );
        tokio::time::timeout(Duration::from_secs(3), other)
            .await
            .map_err(|_| "a call waiting beside one left unpolled got no reply")?
            .map_err(fail)??;
        Ok(())
    })
}

fn init_failure_is_the_spawn_error() -> Result<(), Failed> {
    block_on(async {
        let t = Template::shared().map_err(fail)?;
        let e = RpcWorker::builder(t.fork().arg("fail"), &CALC)
            .spawn()
            .await
            .unwrap_err();
        ensure!(
            matches!(&e, fork_rpc::Error::Init(m) if m == "the dictionary is missing"),
            "spawn gave {e:?}"
        );
        ensure!(e.is_init_failed(), "{e:?} is not an init failure");
        // An init function of fork-core's that fails in the worker, before
        // the entry: fork-core's error, an init failure too.
        let e = RpcWorker::builder(t.fork().init(&REFUSE, &"no licence".to_owned()), &CALC)
            .spawn()
            .await
            .unwrap_err();
        ensure!(
            matches!(&e, fork_rpc::Error::Core(fork_core::Error::InitFailed { message, .. }) if message == "no licence"),
            "spawn gave {e:?}"
        );
        ensure!(e.is_init_failed(), "{e:?} is not an init failure");
        ensure!(!e.is_protocol() && !e.is_worker_lost(), "{e:?}");
        Ok(())
    })
}

/// A spawn given up on while the worker's init hook runs (dropped, as by a
/// timeout) kills the worker.
fn abandoned_spawn_kills_the_worker() -> Result<(), Failed> {
    block_on(async {
        let t = Template::shared().map_err(fail)?;
        let (pid_r, pid_w) = std::io::pipe().map_err(fail)?;
        let mut fork = t.fork();
        fork.arg("hang").fd(&pid_w);
        let config = Config::default();
        let spawn = RpcWorker::builder(&mut fork, &CALC).config(config).spawn();
        let read_pid = tokio::task::spawn_blocking(move || {
            let mut pid = [0u8; 4];
            std::io::Read::read_exact(&mut &pid_r, &mut pid).map(|()| u32::from_le_bytes(pid))
        });
        let pid = tokio::select! {
            spawned = spawn => return Err(format!("spawn returned {:?}", spawned.map(drop)).into()),
            pid = read_pid => pid.map_err(fail)?.map_err(fail)?,
        };
        drop(pid_w);
        // Fails if the worker outlived its abandoned spawn.
        integration_tests::all_exit([pid]).await
    })
}

fn graceful_close_finishes_everything() -> Result<(), Failed> {
    block_on(async {
        let t = Template::shared().map_err(fail)?;
        let (mut done_r, done_w) = std::io::pipe().map_err(fail)?;
        let (client, mut worker) =
            RpcWorker::builder(t.fork().arg("done-to-fd").fd(&done_w), &CALC)
                .config(Config::default().concurrent(4))
                .spawn()
                .await
                .map_err(fail)?;
        drop(done_w);
        let calc = CalcClient::from(client);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let calc = calc.clone();
            tasks.push(tokio::spawn(async move {
                calc.slow(context::current(), 50).await
            }));
        }
        drop(calc);
        for task in tasks {
            task.await.map_err(fail)?.map_err(fail)?;
        }
        let status = worker.wait().await.map_err(fail)?;
        ensure!(status.code() == Some(0), "worker exited with {status}");
        let mut done = String::new();
        done_r.read_to_string(&mut done).map_err(fail)?;
        ensure!(done == "done", "done hook wrote {done:?}");
        Ok(())
    })
}

fn killed_worker_fails_calls_promptly() -> Result<(), Failed> {
    block_on(async {
        let (calc, mut worker) = start(Config::default()).await?;
        let pid = worker.id();
        let call = calc.slow(context::current(), 60_000);
        let kill = async {
            // Make sure the call reached the worker.
            tokio::task::yield_now().await;
            worker.kill().await
        };
        let started = Instant::now();
        let (result, killed) = tokio::join!(call, kill);
        killed.map_err(fail)?;
        let e = result.unwrap_err();
        let l = lost(&e)?;
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        ensure!(l.pid() == pid, "pid {}", l.pid());
        ensure!(
            l.status().and_then(|s| s.signal()) == Some(libc::SIGKILL),
            "status {:?}",
            l.status()
        );
        // Later calls fail at once, the same way.
        let e = calc.add(context::current(), 1, 1).await.unwrap_err();
        ensure!(lost(&e)?.pid() == pid, "later call gave {e:?}");
        Ok(())
    })
}

fn panicking_handler_reports_its_message() -> Result<(), Failed> {
    block_on(async {
        let (calc, mut worker) = start(Config::default()).await?;
        let e = calc
            .panic(context::current(), "boom at 42".into())
            .await
            .unwrap_err();
        let l = lost(&e)?;
        ensure!(
            l.panic_message() == Some("boom at 42"),
            "panic message {:?}",
            l.panic_message()
        );
        ensure!(
            l.status().and_then(|s| s.code()) == Some(fork_core::PANIC_EXIT_CODE),
            "status {:?}",
            l.status()
        );
        // Where it panicked, as the worker's panic hook saw it.
        let location = l.panic().and_then(|p| p.location()).unwrap_or_default();
        ensure!(
            location.starts_with("integration-tests/tests/rpc.rs:"),
            "panic location {location:?}"
        );
        ensure!(
            format!("{l}").contains(&format!("boom at 42 (at {location})")),
            "display {l}"
        );
        let status = worker.wait().await.map_err(fail)?;
        ensure!(status.code() == Some(101), "worker exited with {status}");
        Ok(())
    })
}

/// A handler's panic ends the worker as every worker ends (`_exit` after
/// flushing stdout): the exit handlers it inherited from the template do
/// not run in it.
fn a_panicking_handler_runs_no_exit_handlers() -> Result<(), Failed> {
    block_on(async {
        let dir = std::env::temp_dir().join(format!(
            "fork-rpc-exit-marks-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(fail)?
                .as_nanos()
        ));
        std::fs::create_dir(&dir).map_err(fail)?;
        let result = async {
            let t = Template::new().map_err(fail)?;
            t.init(&REGISTER_EXIT_HANDLER, &dir);
            t.ready().await.map_err(fail)?;
            // The handler is inherited and runs on `exit()`: the control.
            let mut control = t.fork().run(&EXIT_THROUGH_STD).await.map_err(fail)?;
            control.wait().await.map_err(fail)?;
            ensure!(
                dir.join(control.id().to_string()).exists(),
                "the control process ran no exit handler: the check cannot fail"
            );
            let (client, mut worker) = RpcWorker::builder(&mut t.fork(), &CALC)
                .spawn()
                .await
                .map_err(fail)?;
            let e = CalcClient::from(client)
                .panic(context::current(), "on purpose".into())
                .await
                .unwrap_err();
            ensure!(lost(&e)?.panic_message() == Some("on purpose"), "{e:?}");
            let status = worker.wait().await.map_err(fail)?;
            ensure!(status.code() == Some(101), "worker exited with {status}");
            let marked = dir.join(worker.id().to_string());
            ensure!(
                !marked.exists(),
                "the panicking worker ran the template's exit handlers"
            );
            Ok(())
        }
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    })
}

/// A worker answering a call with the reply of another method (it serves
/// another service) fails that call with an error: tarpc's generated client
/// would reach `unreachable!()` on it.
fn a_reply_of_another_method_fails_its_call() -> Result<(), Failed> {
    block_on(async {
        let t = Template::shared().map_err(fail)?;
        let (client, mut worker) = RpcWorker::builder(&mut t.fork(), &WRONG_METHOD)
            .spawn()
            .await
            .map_err(fail)?;
        let calc = CalcClient::from(client);
        let call = tokio::spawn(async move {
            let result = calc.add(context::current(), 1, 2).await;
            (result, calc)
        });
        let (result, calc) = match call.await {
            Ok(outcome) => outcome,
            Err(e) if e.is_panic() => {
                return Err("the caller panicked on a reply of another method".into());
            }
            Err(e) => return Err(fail(e)),
        };
        match result {
            Err(RpcError::Server(e)) => ensure!(
                e.kind == std::io::ErrorKind::InvalidData
                    && e.detail
                        .contains("answered a `Add` request with a `Echo` reply"),
                "error {e:?}"
            ),
            other => return Err(format!("add gave {other:?}").into()),
        }
        drop(calc);
        ensure!(worker.wait().await.map_err(fail)?.success(), "worker");
        Ok(())
    })
}

/// A worker whose init hook never returns is killed after `start_timeout`,
/// and `spawn` says so.
fn a_worker_that_does_not_start_in_time_is_killed() -> Result<(), Failed> {
    block_on(async {
        let t = Template::shared().map_err(fail)?;
        let (mut pid_r, pid_w) = std::io::pipe().map_err(fail)?;
        let mut fork = t.fork();
        fork.arg("hang").fd(&pid_w);
        drop(pid_w);
        // ANCHOR: start_timeout
        let limit = Duration::from_millis(300);
        let config = Config::default().start_timeout(limit);
        let e = tokio::time::timeout(
            Duration::from_secs(30),
            RpcWorker::builder(&mut fork, &CALC).config(config).spawn(),
        )
        .await
        .map_err(|_| "spawn hung")?
        .map(drop)
        .unwrap_err();
        // ANCHOR_END: start_timeout
        let mut pid = [0u8; 4];
        pid_r.read_exact(&mut pid).map_err(fail)?;
        let pid = u32::from_le_bytes(pid);
        match &e {
            fork_rpc::Error::StartTimeout { limit: l, pid: p } => {
                ensure!(*l == limit && *p == Some(pid), "error {e:?}, pid {pid}")
            }
            other => return Err(format!("expected a start timeout, got {other:?}").into()),
        }
        ensure!(e.is_start_timeout(), "predicate");
        ensure!(
            e.to_string()
                == format!(
                    "the worker {pid} did not start serving within 300ms \
                     (fork_rpc::Config::start_timeout); it was killed"
                ),
            "message: {e}"
        );
        // Gone when spawn returned: not even a zombie.
        ensure!(
            integration_tests::state_of(pid).is_none(),
            "worker {pid} is still there"
        );
        Ok(())
    })
}

/// `SIGTERM` to a worker: it asks to be retired, answers every request it
/// had read (running and queued), reads nothing more, and exits 0.
fn sigterm_lets_a_worker_finish_what_it_has() -> Result<(), Failed> {
    block_on(async {
        let (mut stream, mut worker) = raw_worker(&Config::default()).await?;
        let long = Duration::from_secs(60);
        let mut out = Vec::new();
        push_request(&mut out, 1, long, CalcRequest::Slow { ms: 200 });
        push_request(&mut out, 2, long, CalcRequest::Add { a: 1, b: 1 });
        push_request(&mut out, 3, long, CalcRequest::Add { a: 2, b: 2 });
        stream.write_all(&out).await.map_err(fail)?;
        // The requests are in the worker's socket before the signal is sent.
        worker.signal(fork_core::Signal::SIGTERM).map_err(fail)?;
        let run = async {
            let mut replies = Vec::new();
            let mut retired = 0;
            while let Some(msg) = read_msg(&mut stream).await? {
                match msg {
                    WorkerMsg::Reply(r) => replies.push((r.request_id, r.message.map_err(fail)?)),
                    WorkerMsg::Retire => retired += 1,
                    other => return Err(format!("unexpected {other:?}").into()),
                }
            }
            ensure!(retired == 1, "{retired} retire requests");
            ensure!(
                matches!(
                    replies.as_slice(),
                    [
                        (1, CalcResponse::Slow(_)),
                        (2, CalcResponse::Add(2)),
                        (3, CalcResponse::Add(4))
                    ]
                ),
                "replies {replies:?}"
            );
            let status = worker.wait().await.map_err(fail)?;
            ensure!(status.code() == Some(0), "worker exited with {status}");
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .map_err(|_| "the worker hung")?
    })
}

/// After `SIGTERM`, the client sees the retire request, then a worker that
/// left on its own (exit 0): later calls fail with `WorkerLost`.
fn sigterm_is_a_graceful_end_for_the_client() -> Result<(), Failed> {
    block_on(async {
        let t = Template::shared().map_err(fail)?;
        let (client, mut worker) = RpcWorker::builder(&mut t.fork(), &CALC)
            .spawn()
            .await
            .map_err(fail)?;
        let calc = CalcClient::from(client.clone());
        ensure!(
            calc.add(context::current(), 1, 2).await.map_err(fail)? == 3,
            "add"
        );
        // ANCHOR: sigterm
        worker
            .process()
            .signal(fork_core::Signal::SIGTERM)
            .map_err(fail)?;
        // The worker asks to be retired, answers what it has, and exits 0.
        tokio::time::timeout(Duration::from_secs(10), client.retire_request())
            .await
            .map_err(|_| "no retire request")?;
        let status = worker.wait().await.map_err(fail)?;
        ensure!(status.code() == Some(0), "worker exited with {status}");
        let e = calc.add(context::current(), 1, 2).await.unwrap_err();
        let l = lost(&e)?;
        ensure!(l.status() == Some(status), "lost {l:?}");
        // ANCHOR_END: sigterm
        Ok(())
    })
}

fn exit_in_handler_is_a_lost_worker() -> Result<(), Failed> {
    block_on(async {
        let (calc, _worker) = start(Config::default()).await?;
        let e = calc.exit(context::current(), 3).await.unwrap_err();
        let l = lost(&e)?;
        ensure!(
            l.status().and_then(|s| s.code()) == Some(3),
            "status {:?}",
            l.status()
        );
        Ok(())
    })
}

/// On a runtime whose clock is paused and moved ahead of the real one
/// (tokio's `start_paused` and `advance`, common in tests), deadlines still
/// pass on the real clock (tarpc's), and the client waits for them without
/// holding the runtime's thread: other tasks run meanwhile.
fn calls_end_on_a_paused_clock() -> Result<(), Failed> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .map_err(fail)
            .and_then(|rt| {
                rt.block_on(async {
                    let (calc, _worker) = start(Config::default()).await?;
                    tokio::time::advance(Duration::from_secs(3600)).await;
                    let turns = std::rc::Rc::new(Cell::new(0u64));
                    let local = tokio::task::LocalSet::new();
                    let counting = local.spawn_local({
                        let turns = turns.clone();
                        async move {
                            loop {
                                turns.set(turns.get() + 1);
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                        }
                    });
                    let e = local
                        .run_until(calc.slow(
                            fork_rpc::context::with_timeout(Duration::from_millis(200)),
                            60_000,
                        ))
                        .await
                        .unwrap_err();
                    counting.abort();
                    ensure!(
                        matches!(e, RpcError::DeadlineExceeded),
                        "slow(60 s) gave {e:?}"
                    );
                    ensure!(turns.get() > 1, "no other task ran while the call waited");
                    let sum = calc.add(context::current(), 1, 2).await.map_err(fail)?;
                    ensure!(sum == 3, "add(1, 2) returned {sum}");
                    Ok(())
                })
            });
        let _ = tx.send(result);
    });
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| "the calls did not end within 10 s on a paused clock")?
}

fn deadlines_per_client_and_per_call() -> Result<(), Failed> {
    block_on(async {
        let t = Template::shared().map_err(fail)?;
        let config = Config::default().default_timeout(Duration::from_millis(50));
        let (client, _worker) = RpcWorker::builder(&mut t.fork(), &CALC)
            .config(config)
            .spawn()
            .await
            .map_err(fail)?;
        let calc = CalcClient::from(client.clone());
        // The client's contexts carry its default deadline.
        let e = calc.slow(client.context(), 60_000).await.unwrap_err();
        ensure!(
            matches!(e, RpcError::DeadlineExceeded),
            "default deadline gave {e:?}"
        );
        // The worker (sync: one call at a time) gave up the expired call, so
        // the next one is served; an explicit deadline is kept.
        let peak = calc
            .slow(fork_rpc::context::with_timeout(Duration::from_secs(5)), 200)
            .await
            .map_err(fail)?;
        ensure!(peak == 1, "peak {peak}");
        // So is tarpc's own (10 s), even with a client default of 50 ms: the
        // client rewrites no deadline.
        let peak = calc.slow(context::current(), 200).await.map_err(fail)?;
        ensure!(peak == 1, "peak {peak}");
        // An explicit deadline of 9.7 s, which the client once took for
        // tarpc's implicit one and cut to its default, is kept too.
        let peak = calc
            .slow(
                fork_rpc::context::with_timeout(Duration::from_millis(9_700)),
                200,
            )
            .await
            .map_err(fail)?;
        ensure!(peak == 1, "peak {peak}");
        Ok(())
    })
}

/// A client as a `tower::Service`, under tower's layers, called through
/// the generated client by way of `TowerStub`: replies, and the client's
/// own errors, come back as they are.
fn tower_layers_over_a_client() -> Result<(), Failed> {
    block_on(async {
        let t = Template::shared().map_err(fail)?;
        let (client, _worker) = RpcWorker::builder(&mut t.fork(), &CALC)
            .config(Config::default().concurrent(4))
            .spawn()
            .await
            .map_err(fail)?;
        let layered = tower::ServiceBuilder::new()
            .concurrency_limit(2)
            .service(client);
        let calc = CalcClient::from(fork_rpc::TowerStub::new(layered));
        let sum = calc.add(context::current(), 40, 2).await.map_err(fail)?;
        ensure!(sum == 42, "40 + 2 = {sum}");
        // Four slow calls, two at a time under the limit: the worker, which
        // could run four, never sees more than two at once.
        let peaks =
            futures::future::try_join_all((0..4).map(|_| calc.slow(context::current(), 100)))
                .await
                .map_err(fail)?;
        ensure!(peaks.iter().all(|&p| p <= 2), "peaks {peaks:?}");
        ensure!(peaks.contains(&2), "peaks {peaks:?}: never two at once");
        // The client's own error is not dressed as a layer's.
        let e = calc
            .slow(
                fork_rpc::context::with_timeout(Duration::from_millis(50)),
                60_000,
            )
            .await
            .unwrap_err();
        ensure!(
            matches!(e, RpcError::DeadlineExceeded),
            "deadline gave {e:?}"
        );
        Ok(())
    })
}

fn descriptors_reach_a_running_worker() -> Result<(), Failed> {
    block_on(async {
        let (calc, worker) = start(Config::default()).await?;
        for word in ["first", "second"] {
            let (r, mut w) = std::io::pipe().map_err(fail)?;
            w.write_all(word.as_bytes()).map_err(fail)?;
            drop(w);
            worker.send_fd(&r).await.map_err(fail)?;
            let got = calc.read_fd(context::current()).await.map_err(fail)?;
            ensure!(got == word, "read {got:?}, sent {word:?}");
        }
        Ok(())
    })
}

/// Requests and replies of megabytes, several in flight each way at once:
/// both sides' sockets fill, and writers wait for room while they keep
/// reading. Nothing is left open in the worker afterwards.
fn large_messages_both_ways_at_once() -> Result<(), Failed> {
    block_on(async {
        const LEN: usize = 3 << 20;
        let (calc, worker) = start(Config::default().concurrent(4)).await?;
        let before = integration_tests::fds_of(worker.id()).map_err(fail)?;
        let echoes = (0..6u8).map(|i| {
            let s = char::from(b'a' + i).to_string().repeat(LEN);
            let calc = &calc;
            async move {
                let back = calc.echo(context::current(), s.clone()).await?;
                Ok::<bool, RpcError>(back == s)
            }
        });
        let bigs = (0..3).map(|_| calc.big(context::current(), LEN as u64));
        let both = async {
            tokio::try_join!(
                futures::future::try_join_all(echoes),
                futures::future::try_join_all(bigs)
            )
        };
        let (echoed, bigs) = tokio::time::timeout(Duration::from_secs(30), both)
            .await
            .map_err(|_| "the transfers hung")?
            .map_err(fail)?;
        ensure!(
            echoed.iter().all(|&same| same),
            "echoes came back changed: {echoed:?}"
        );
        ensure!(
            bigs.iter()
                .all(|s| s.len() == LEN && s.bytes().all(|b| b == b'y')),
            "big replies of {:?} bytes",
            bigs.iter().map(String::len).collect::<Vec<_>>()
        );
        let after = integration_tests::fds_of(worker.id()).map_err(fail)?;
        ensure!(
            before == after,
            "the worker's descriptors were {before:?}, then {after:?}"
        );
        Ok(())
    })
}

fn oversized_request_is_an_error() -> Result<(), Failed> {
    block_on(async {
        let (calc, _worker) = start(Config::default().max_frame(1024)).await?;
        let e = calc
            .echo(context::current(), "x".repeat(4096))
            .await
            .unwrap_err();
        ensure!(
            !WorkerLost::is_lost(&e),
            "oversized request blamed on the worker: {e:?}"
        );
        // The cause names the knob and its value.
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        ensure!(
            cause.as_deref().is_some_and(|c| c.contains("max_frame")
                && c.contains("1024 bytes")
                && c.contains("fork_rpc::Config::max_frame")),
            "cause {cause:?}"
        );
        Ok(())
    })
}

fn bad_bytes_from_the_worker_are_errors() -> Result<(), Failed> {
    let frame_of = |payload: &[u8]| {
        let mut f = (payload.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(payload);
        f
    };
    // (what, bytes, the fake worker exits after them)
    let cases: [(&str, Vec<u8>, bool); 3] = [
        ("undecodable reply", frame_of(&[0xff; 12]), false),
        (
            "oversized frame",
            0x4000_0000u32.to_be_bytes().to_vec(),
            false,
        ),
        ("truncated frame, then exit", vec![0, 0, 0, 9, 1, 2], true),
    ];
    block_on(async {
        let t = Template::shared().map_err(fail)?;
        for (what, garbage, exit) in cases {
            let (client, _worker) = RpcWorker::builder(t.fork().arg(&garbage).arg(&exit), &FAKE)
                .spawn()
                .await
                .map_err(fail)?;
            let calc = CalcClient::from(client);
            let call = calc.add(
                fork_rpc::context::with_timeout(Duration::from_secs(60)),
                1,
                2,
            );
            let e = tokio::time::timeout(Duration::from_secs(30), call)
                .await
                .map_err(|_| format!("{what}: the call hung"))?
                .unwrap_err();
            // Bad bytes from a live worker are a protocol error; a worker
            // that went away is lost.
            ensure!(WorkerLost::is_lost(&e) == exit, "{what}: got {e:?}");
        }
        Ok(())
    })
}

fn flushed_event_arrives_while_its_handler_blocks() -> Result<(), Failed> {
    block_on(async {
        let (calc, mut worker) = start(Config::default()).await?;
        let mut events = worker.events().ok_or("no events")?;
        let started = Instant::now();
        let call =
            tokio::spawn(async move { calc.flush_then_block(context::current(), 2000).await });
        let event = events.recv().await.ok_or("no event")?.map_err(fail)?;
        ensure!(event == Event::Progress(7), "event {event:?}");
        ensure!(
            started.elapsed() < Duration::from_millis(1500),
            "the event came after {:?}, with the reply",
            started.elapsed()
        );
        call.await.map_err(fail)?.map_err(fail)?;
        Ok(())
    })
}

fn cancelled_call_stops_its_handler() -> Result<(), Failed> {
    block_on(async {
        let (calc, _worker) = start(Config::default()).await?;
        let ctx = fork_rpc::context::with_timeout(Duration::from_secs(60));
        // Dropping the call (here, on a timeout of our own) cancels it.
        let call = tokio::time::timeout(Duration::from_millis(200), calc.slow(ctx, 60_000));
        ensure!(call.await.is_err(), "the 60 s call returned");
        // The worker serves one call at a time: this one runs only because
        // the cancelled handler was dropped, and runs alone.
        let started = Instant::now();
        let peak = calc
            .slow(fork_rpc::context::with_timeout(Duration::from_secs(10)), 1)
            .await
            .map_err(fail)?;
        ensure!(peak == 1, "peak {peak}");
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        Ok(())
    })
}

/// A reply that encodes but does not decode (JSON writes a NaN as `null`)
/// fails its own call; the connection and the worker go on.
fn undecodable_reply_fails_its_call_only() -> Result<(), Failed> {
    block_on(async {
        let (calc, mut worker) = start(Config::default().format(Format::Json)).await?;
        let e = calc.ratio(context::current(), 0.0, 0.0).await.unwrap_err();
        ensure!(
            matches!(&e, RpcError::Server(e) if e.detail.contains("could not be decoded")),
            "a NaN reply gave {e:?}"
        );
        let half = calc
            .ratio(context::current(), 1.0, 2.0)
            .await
            .map_err(fail)?;
        ensure!(half == 0.5, "1 / 2 = {half}");
        drop(calc);
        let status = worker.wait().await.map_err(fail)?;
        ensure!(status.success(), "the worker exited with {status}");
        Ok(())
    })
}

fn oversized_reply_is_an_error_reply() -> Result<(), Failed> {
    block_on(async {
        let (calc, _worker) = start(Config::default().max_frame(1024)).await?;
        let e = calc.big(context::current(), 4096).await.unwrap_err();
        ensure!(
            matches!(&e, RpcError::Server(e) if e.detail.contains("could not be sent")),
            "oversized reply gave {e:?}"
        );
        // It failed that call only.
        let sum = calc.add(context::current(), 1, 2).await.map_err(fail)?;
        ensure!(sum == 3, "1 + 2 = {sum}");
        Ok(())
    })
}

fn worker_protocol_by_hand() -> Result<(), Failed> {
    block_on(async {
        let (mut stream, mut worker) = raw_worker(&Config::default()).await?;
        let long = Duration::from_secs(60);
        let run = async {
            let mut out = Vec::new();
            // Expired on arrival: never runs (it would send events).
            push_request(&mut out, 1, Duration::ZERO, CalcRequest::Emit { n: 2 });
            push_request(&mut out, 2, long, CalcRequest::Slow { ms: 100 });
            // An id already in flight is ignored.
            push_request(&mut out, 2, long, CalcRequest::Emit { n: 2 });
            // Cancelled while queued.
            push_request(&mut out, 3, long, CalcRequest::Slow { ms: 60_000 });
            push_cancel(&mut out, 3);
            push_request(&mut out, 4, long, CalcRequest::Add { a: 1, b: 2 });
            push_request(&mut out, 5, long, CalcRequest::Slow { ms: 60_000 });
            stream.write_all(&out).await.map_err(fail)?;
            ensure!(
                matches!(expect_reply(&mut stream, 2).await?, CalcResponse::Slow(1)),
                "reply 2"
            );
            ensure!(
                matches!(expect_reply(&mut stream, 4).await?, CalcResponse::Add(3)),
                "reply 4"
            );
            // 5 runs now (sync mode: it started as 4 returned): cancel it,
            // then one that runs past its deadline, then a quick one.
            let mut out = Vec::new();
            push_cancel(&mut out, 5);
            push_request(&mut out, 6, long, CalcRequest::Add { a: 2, b: 2 });
            push_request(
                &mut out,
                7,
                Duration::from_millis(100),
                CalcRequest::Slow { ms: 60_000 },
            );
            push_request(&mut out, 8, long, CalcRequest::Add { a: 3, b: 3 });
            stream.write_all(&out).await.map_err(fail)?;
            ensure!(
                matches!(expect_reply(&mut stream, 6).await?, CalcResponse::Add(4)),
                "reply 6"
            );
            ensure!(
                matches!(expect_reply(&mut stream, 8).await?, CalcResponse::Add(6)),
                "reply 8"
            );
            // A graceful close: nothing more comes, and the worker exits 0.
            stream.shutdown().await.map_err(fail)?;
            if let Some(msg) = read_msg(&mut stream).await? {
                return Err(format!("unexpected {msg:?}").into());
            }
            let status = worker.wait().await.map_err(fail)?;
            ensure!(status.success(), "worker exited with {status}");
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .map_err(|_| "the worker hung")?
    })
}

/// A request whose deadline is absurdly far (it overflows the worker's
/// clock) ends the connection as bad input, after the requests before it are
/// answered; the worker does not panic.
fn absurd_deadline_from_the_parent_is_bad_input() -> Result<(), Failed> {
    /// tarpc's `ClientMessage::Request`, with the deadline as it travels.
    #[derive(Serialize)]
    enum Message {
        Request {
            context: (Duration, tarpc::trace::Context),
            id: u64,
            message: CalcRequest,
        },
    }
    block_on(async {
        let (mut stream, mut worker) = raw_worker(&Config::default()).await?;
        let mut out = Vec::new();
        push_request(
            &mut out,
            1,
            Duration::from_secs(60),
            CalcRequest::Add { a: 1, b: 2 },
        );
        push_frame(
            &mut out,
            &Message::Request {
                context: (Duration::MAX, Default::default()),
                id: 2,
                message: CalcRequest::Add { a: 2, b: 2 },
            },
        );
        stream.write_all(&out).await.map_err(fail)?;
        ensure!(
            matches!(expect_reply(&mut stream, 1).await?, CalcResponse::Add(3)),
            "reply 1"
        );
        if let Some(msg) = read_msg(&mut stream).await? {
            return Err(format!("unexpected {msg:?}").into());
        }
        let status = worker.wait().await.map_err(fail)?;
        ensure!(status.code() == Some(1), "worker exited with {status}");
        Ok(())
    })
}

fn main() {
    fork_core::init();
    integration_tests::run(&[
        ("typed_calls_in_both_formats", typed_calls_in_both_formats),
        (
            "sync_mode_serves_one_at_a_time",
            sync_mode_serves_one_at_a_time,
        ),
        (
            "async_mode_queues_beyond_its_limit",
            async_mode_queues_beyond_its_limit,
        ),
        (
            "calls_beyond_the_in_flight_limit_wait_for_a_place",
            calls_beyond_the_in_flight_limit_wait_for_a_place,
        ),
        (
            "events_arrive_in_order_with_replies",
            events_arrive_in_order_with_replies,
        ),
        (
            "events_arrive_while_no_call_waits",
            events_arrive_while_no_call_waits,
        ),
        (
            "callers_that_give_up_leave_the_reading_to_others",
            callers_that_give_up_leave_the_reading_to_others,
        ),
        (
            "a_call_polled_then_left_holds_up_no_other",
            a_call_polled_then_left_holds_up_no_other,
        ),
        (
            "init_failure_is_the_spawn_error",
            init_failure_is_the_spawn_error,
        ),
        (
            "abandoned_spawn_kills_the_worker",
            abandoned_spawn_kills_the_worker,
        ),
        (
            "graceful_close_finishes_everything",
            graceful_close_finishes_everything,
        ),
        (
            "killed_worker_fails_calls_promptly",
            killed_worker_fails_calls_promptly,
        ),
        (
            "panicking_handler_reports_its_message",
            panicking_handler_reports_its_message,
        ),
        (
            "exit_in_handler_is_a_lost_worker",
            exit_in_handler_is_a_lost_worker,
        ),
        (
            "a_panicking_handler_runs_no_exit_handlers",
            a_panicking_handler_runs_no_exit_handlers,
        ),
        (
            "a_reply_of_another_method_fails_its_call",
            a_reply_of_another_method_fails_its_call,
        ),
        (
            "a_worker_that_does_not_start_in_time_is_killed",
            a_worker_that_does_not_start_in_time_is_killed,
        ),
        (
            "sigterm_lets_a_worker_finish_what_it_has",
            sigterm_lets_a_worker_finish_what_it_has,
        ),
        (
            "sigterm_is_a_graceful_end_for_the_client",
            sigterm_is_a_graceful_end_for_the_client,
        ),
        ("calls_end_on_a_paused_clock", calls_end_on_a_paused_clock),
        ("tower_layers_over_a_client", tower_layers_over_a_client),
        (
            "deadlines_per_client_and_per_call",
            deadlines_per_client_and_per_call,
        ),
        (
            "descriptors_reach_a_running_worker",
            descriptors_reach_a_running_worker,
        ),
        (
            "large_messages_both_ways_at_once",
            large_messages_both_ways_at_once,
        ),
        (
            "oversized_request_is_an_error",
            oversized_request_is_an_error,
        ),
        (
            "bad_bytes_from_the_worker_are_errors",
            bad_bytes_from_the_worker_are_errors,
        ),
        (
            "flushed_event_arrives_while_its_handler_blocks",
            flushed_event_arrives_while_its_handler_blocks,
        ),
        (
            "cancelled_call_stops_its_handler",
            cancelled_call_stops_its_handler,
        ),
        (
            "undecodable_reply_fails_its_call_only",
            undecodable_reply_fails_its_call_only,
        ),
        (
            "oversized_reply_is_an_error_reply",
            oversized_reply_is_an_error_reply,
        ),
        ("worker_protocol_by_hand", worker_protocol_by_hand),
        (
            "absurd_deadline_from_the_parent_is_bad_input",
            absurd_deadline_from_the_parent_is_bad_input,
        ),
    ]);
}
