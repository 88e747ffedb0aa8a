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
//! - **remote, ssh**: `Template::remote` through `ssh` (a
//!   `CommandConnector`: the workers' streams are channels of the
//!   connection) to the throwaway sshd of `.ci/sshd` on 127.0.0.1, when
//!   `FORK_TEST_SSH_CONFIG` names its config (`bash .ci/sshd start` prints
//!   it); otherwise these rows are skipped, and the report says so.
//! - **remote, ssh, forwarded streams**: the same host through
//!   `SshConnector` (a ControlMaster), whose forward carries each worker's
//!   stream as a connection of its own (the default with it).
//!
//! What is measured: a spawn (fork a worker that exits at once, wait for its
//! status), one at a time; fork-rpc calls to one worker, one at a time and
//! 64 in flight. Targets (issue #14): remote spawn ≥ 100/s; pipelined calls
//! over a remote worker ≥ 0.5× over a local one.
//!
//! With ssh, a second table weighs the ways a worker's stream could cross
//! the ssh connection (issue #14 asks to measure them): a ping-pong of
//! 40-byte messages (a fork-rpc echo request's size), one at a time and 64
//! in flight, echoed by a process on the ssh host, over
//!
//! - a local socket (a worker of the local template: the baseline);
//! - a mux channel (a worker of the remote template: what we do);
//! - a forwarded unix socket (`ssh -L local.sock:remote.sock`, its own ssh
//!   connection; the echo process listens on `remote.sock`);
//! - a plain ssh pipe (`ssh host cat`: the raw limit, one stream, no
//!   multiplexing at all).

#![forbid(unsafe_code)]

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::Align::{Left, Right};
use benches::measure::side_by_side;
use benches::{Args, BoxResult, Caller, Rounds, Sample, Table, calls, ratio, spread, verdict};
use fork_core::remote::{CommandConnector, SshConnector};
use fork_core::{Context, Entry, Template};
use fork_rpc::{RpcEntry, RpcWorker, Setup};
use tarpc::client::RpcError;
use tarpc::context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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

/// Echoes its stream until EOF, as `cat` does.
fn echo_stream(cx: Context) -> std::io::Result<()> {
    echo(cx.socket())
}
static ECHO_STREAM: Entry = fork_core::entry!(echo_stream, name = "benches::remote::echo_stream");

/// Listens on the unix socket at the path of argument 0, says so on its
/// stream (one byte), and echoes the one connection it accepts.
fn echo_listener(cx: Context) -> std::io::Result<()> {
    let path: PathBuf = cx.arg(0).map_err(std::io::Error::other)?;
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    cx.socket().write_all(b"L")?;
    echo(&listener.accept()?.0)
}
static ECHO_LISTENER: Entry =
    fork_core::entry!(echo_listener, name = "benches::remote::echo_listener");

fn echo(mut s: &std::os::unix::net::UnixStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n])?;
    }
}

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
    SshForwarded,
}

impl Place {
    fn name(self) -> &'static str {
        match self {
            Place::Local => "local template",
            Place::Env => "remote, env -i",
            Place::Ssh => "remote, ssh to 127.0.0.1",
            Place::SshForwarded => "remote, ssh, forwarded streams",
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
            Place::SshForwarded => {
                let config = ssh_config.ok_or("no ssh config")?;
                let ssh = SshConnector::new("fork-test").config_file(config);
                let template = Template::remote(ssh).start().await?;
                // Checked here: a forward that failed its check would leave
                // the streams in channels and this row would measure those.
                let mut worker = template.fork().run(&NOP).await?;
                let stream = worker.take_stream().ok_or("no stream")?;
                if stream.peer_addr()?.as_pathname().is_none() {
                    return Err("the ssh template's streams are not forwarded".into());
                }
                worker.wait().await?;
                template
            }
        })
    }
}

/// Template starts: each place's, in milliseconds.
type Starts = Vec<(Place, Vec<f64>)>;

/// One measured row.
struct Row {
    what: String,
    place: Place,
    sample: Sample<2>,
    /// Median of per-round ratios to the local template's.
    to_local: f64,
}

fn measure(
    rt: &Runtime,
    args: &Args,
    places: &[Place],
    rows: &mut Vec<Row>,
    echo: &mut Vec<EchoRow>,
    starts: &mut Starts,
) -> BoxResult<()> {
    let ssh_config = std::env::var("FORK_TEST_SSH_CONFIG").ok();
    let rounds = if args.quick {
        Rounds::new(1, Duration::from_millis(200))
    } else {
        Rounds::new(5, Duration::from_millis(1000))
    };
    let mut templates = Vec::new();
    let tries = if args.quick { 1 } else { 5 };
    for &place in places {
        // Each start a new connection (for ssh a new login); the last
        // template started serves the measurements below.
        let mut ms = Vec::new();
        let mut last: Option<Template> = None;
        for _ in 0..tries {
            let started = Instant::now();
            let template = rt.block_on(place.template(ssh_config.as_deref()))?;
            ms.push(started.elapsed().as_secs_f64() * 1e3);
            if let Some(old) = last.replace(template) {
                rt.block_on(old.shutdown())?;
            }
        }
        eprintln!("{}: started in {ms:.0?} ms", place.name());
        starts.push((place, ms));
        let template = last.ok_or("no template started")?;
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
    if ssh_config.is_some() && ECHO_ROWS.iter().any(|what| args.wants(what)) {
        let [(_, (_, local)), ..] = &templates[..] else {
            return Err("no local template".into());
        };
        let (_, (_, remote)) = templates
            .iter()
            .find(|(_, (place, _))| *place == Place::Ssh)
            .ok_or("no ssh template")?;
        echo_rows(rt, args, rounds, local, remote, echo)?;
    }
    Ok(())
}

// ===== the ways a worker's stream can cross the ssh connection =====

/// Bytes of one ping-pong message: a fork-rpc echo request's size.
const MSG: usize = 40;
/// The echo table's operations, by messages in flight.
const ECHO_ROWS: [&str; 2] = ["echo, one at a time", "echo, 64 in flight"];

/// One way to the echo process: its two directions.
struct Pipe {
    r: Box<dyn AsyncRead + Send + Unpin>,
    w: Box<dyn AsyncWrite + Send + Unpin>,
}

/// What stays alive while a pipe is measured.
enum Keep {
    Worker(fork_core::Worker),
    Child(tokio::process::Child),
}

/// One measured row of the echo table.
struct EchoRow {
    what: String,
    way: Way,
    sample: Sample<2>,
    /// Median of per-round ratios to the local socket's.
    to_local: f64,
    /// The same, to the plain ssh pipe's.
    to_pipe: f64,
}

/// Where an echo row's messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Local,
    Mux,
    Forwarded,
    Pipe,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Local => "local socket",
            Way::Mux => "mux channel, ssh",
            Way::Forwarded => "forwarded unix socket, ssh -L",
            Way::Pipe => "plain ssh pipe (cat)",
        }
    }
}

/// Keeps `depth` messages in flight (each one sent again as soon as its
/// echo is back) until `len` has passed, then waits for the last echoes.
async fn ping_pong(pipe: &mut Pipe, depth: usize, len: Duration) -> BoxResult<(u64, Duration)> {
    let start = Instant::now();
    let out = [7u8; MSG].repeat(depth);
    let mut buf = vec![0u8; 64 * 1024];
    pipe.w.write_all(&out).await?;
    pipe.w.flush().await?;
    let (mut in_flight, mut done, mut partial) = (depth, 0u64, 0);
    while in_flight > 0 {
        let n = pipe.r.read(&mut buf).await?;
        if n == 0 {
            return Err("the echo ended".into());
        }
        if buf[..n].iter().any(|&b| b != 7) {
            return Err("the echo changed the bytes".into());
        }
        partial += n;
        let back = partial / MSG;
        partial %= MSG;
        done += back as u64;
        in_flight -= back;
        if back > 0 && start.elapsed() < len {
            pipe.w.write_all(&out[..back * MSG]).await?;
            pipe.w.flush().await?;
            in_flight += back;
        }
    }
    Ok((done, start.elapsed()))
}

fn halves(s: tokio::net::UnixStream) -> Pipe {
    let (r, w) = s.into_split();
    Pipe {
        r: Box::new(r),
        w: Box::new(w),
    }
}

/// An echo worker of `template`, and its stream.
async fn echo_worker(template: &Template) -> BoxResult<(Pipe, Keep)> {
    let mut worker = template.fork().run(&ECHO_STREAM).await?;
    let stream = worker.take_stream().ok_or("no stream")?;
    Ok((halves(stream), Keep::Worker(worker)))
}

/// `ssh -L dir/local.sock:dir/remote.sock` to an echo listener (a worker of
/// the local template: this host is the ssh host).
async fn forwarded(
    template: &Template,
    ssh_config: &str,
    dir: &Path,
) -> BoxResult<(Pipe, Vec<Keep>)> {
    let (near, far) = (dir.join("local.sock"), dir.join("remote.sock"));
    let mut listener = template.fork().arg(&far).run(&ECHO_LISTENER).await?;
    let mut ready = [0u8];
    listener
        .stream()
        .ok_or("no stream")?
        .read_exact(&mut ready)
        .await?;
    // With a session (`cat`, reading the pipe we hold), as over a
    // ControlMaster that serves a template: `ssh -N` opens none, and
    // OpenSSH sets TCP_NODELAY on its connection only when a session
    // starts, so Nagle's algorithm would hold back the small packets (about
    // 50k messages/s in flight, measured).
    let ssh = tokio::process::Command::new("ssh")
        .args(["-F", ssh_config, "-o", "ExitOnForwardFailure=yes", "-L"])
        .arg(format!("{}:{}", near.display(), far.display()))
        .args(["fork-test", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    // ssh binds `near` once it has logged in; nothing says when.
    let started = Instant::now();
    let stream = loop {
        match tokio::net::UnixStream::connect(&near).await {
            Ok(s) => break s,
            Err(e) if started.elapsed() > Duration::from_secs(10) => {
                return Err(format!("ssh -L did not listen on {}: {e}", near.display()).into());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    Ok((
        halves(stream),
        vec![Keep::Worker(listener), Keep::Child(ssh)],
    ))
}

/// `ssh host cat`.
fn plain_pipe(ssh_config: &str) -> BoxResult<(Pipe, Keep)> {
    let mut ssh = tokio::process::Command::new("ssh")
        .args(["-F", ssh_config, "fork-test", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pipe = Pipe {
        w: Box::new(ssh.stdin.take().ok_or("no stdin")?),
        r: Box::new(ssh.stdout.take().ok_or("no stdout")?),
    };
    Ok((pipe, Keep::Child(ssh)))
}

/// The echo table's rows: every way, one at a time and 64 in flight.
fn echo_rows(
    rt: &Runtime,
    args: &Args,
    rounds: Rounds,
    local: &Template,
    remote: &Template,
    rows: &mut Vec<EchoRow>,
) -> BoxResult<()> {
    let ssh_config = std::env::var("FORK_TEST_SSH_CONFIG")?;
    let dir = std::env::temp_dir().join(format!("fork-bench-remote-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut keep = Vec::new();
    let mut ways = Vec::new();
    let built = rt.block_on(async {
        for way in [Way::Local, Way::Mux, Way::Forwarded, Way::Pipe] {
            let pipe = match way {
                Way::Local => {
                    let (pipe, k) = echo_worker(local).await?;
                    keep.push(k);
                    pipe
                }
                Way::Mux => {
                    let (pipe, k) = echo_worker(remote).await?;
                    keep.push(k);
                    pipe
                }
                Way::Forwarded => {
                    let (pipe, k) = forwarded(local, &ssh_config, &dir).await?;
                    keep.extend(k);
                    pipe
                }
                Way::Pipe => {
                    let (pipe, k) = plain_pipe(&ssh_config)?;
                    keep.push(k);
                    pipe
                }
            };
            ways.push((way.name(), (way, tokio::sync::Mutex::new(pipe))));
        }
        BoxResult::Ok(())
    });
    let measured = built.and_then(|()| {
        for (depth, what) in [1, 64].into_iter().zip(ECHO_ROWS) {
            if !args.wants(what) {
                continue;
            }
            let samples = side_by_side(
                what,
                &ways,
                rounds,
                false,
                |_| Vec::new(),
                |(_, pipe), len| {
                    rt.block_on(async { ping_pong(&mut *pipe.lock().await, depth, len).await })
                },
            )?;
            let (local, pipe) = (samples[0].clone(), samples[samples.len() - 1].clone());
            for ((_, (way, _)), sample) in ways.iter().zip(samples) {
                rows.push(EchoRow {
                    what: what.to_string(),
                    way: *way,
                    to_local: sample.ratio_to(&local),
                    to_pipe: sample.ratio_to(&pipe),
                    sample,
                });
            }
        }
        Ok(())
    });
    // Closing the pipes ends the echoes; then the workers and ssh go.
    drop(ways);
    rt.block_on(async {
        for k in keep {
            match k {
                Keep::Worker(mut w) => {
                    let _ = w.wait().await;
                }
                Keep::Child(mut c) => {
                    let _ = c.kill().await;
                }
            }
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    measured
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
            "- ssh rows (and the table of ways across ssh) skipped: FORK_TEST_SSH_CONFIG is not \
             set (`bash .ci/sshd start` prints the config to point it at)"
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

fn print_echo(rows: &[EchoRow]) {
    println!();
    println!(
        "## How a worker's stream crosses ssh: a mux channel, a forwarded socket, a plain pipe"
    );
    println!();
    println!(
        "Ping-pongs of {MSG}-byte messages per second with an echo process on the ssh host \
         (median round, spread), and the medians of per-round ratios to a local socket and to \
         a plain ssh pipe."
    );
    println!();
    let table = Table::new(&[
        ("operation", Left),
        ("way", Left),
        ("msgs/s", Right),
        ("spread", Right),
        ("× local socket", Right),
        ("× plain ssh pipe", Right),
    ]);
    println!("{}", table.head());
    for row in rows {
        println!(
            "{}",
            table.row(&[
                &row.what,
                &row.way.name(),
                &format!("{:.0}", row.sample.median()),
                &spread(&row.sample),
                &ratio(row.to_local),
                &ratio(row.to_pipe),
            ])
        );
    }
}

fn print_starts(starts: &Starts) {
    println!();
    println!("## Starting a template");
    println!();
    println!(
        "Milliseconds from the call to a template ready to fork (median of the starts, min–max): \
         `Template::new()` here, `Template::remote(..).start()` through a new connection each \
         time (for ssh a new login; through `SshConnector` a new ControlMaster, its forward \
         set up and checked)."
    );
    println!();
    let table = Table::new(&[
        ("template", Left),
        ("starts", Right),
        ("ms", Right),
        ("min–max", Right),
    ]);
    println!("{}", table.head());
    for (place, ms) in starts {
        let mut sorted = ms.clone();
        sorted.sort_by(f64::total_cmp);
        let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
        println!(
            "{}",
            table.row(&[
                &place.name(),
                &sorted.len(),
                &format!("{:.1}", sorted[sorted.len() / 2]),
                &format!("{min:.1}–{max:.1}"),
            ])
        );
    }
}

fn main() -> BoxResult<()> {
    fork_core::init();
    let args = Args::from_env();
    let ssh = std::env::var_os("FORK_TEST_SSH_CONFIG").is_some();
    let mut places = vec![Place::Local, Place::Env];
    if ssh {
        places.extend([Place::Ssh, Place::SshForwarded]);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (mut rows, mut echo, mut starts) = (Vec::new(), Vec::new(), Vec::new());
    measure(&rt, &args, &places, &mut rows, &mut echo, &mut starts)?;
    drop(rt);
    print(&rows, ssh);
    if !echo.is_empty() {
        print_echo(&echo);
    }
    print_starts(&starts);
    Ok(())
}
