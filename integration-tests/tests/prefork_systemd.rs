//! fork-prefork under systemd, the test playing the service manager:
//!
//! - `Type=notify-reload`: a server started with `NOTIFY_SOCKET` says
//!   `READY=1` once its workers are ready, `RELOADING=1` with
//!   `MONOTONIC_USEC=` then `READY=1` around a reload, and `STOPPING=1` as
//!   it stops;
//! - signals (`trap_signals`): `SIGHUP` reloads, `SIGTERM` and `SIGINT`
//!   stop;
//! - socket activation: a server started with a socket on descriptor 3 and
//!   `LISTEN_FDS` serves on it, and no worker sees the variables.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::{Failed, ensure, fail};

/// The next notification, within 10 s.
fn next(socket: &UnixDatagram) -> Result<String, Failed> {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .map_err(|e| format!("no notification within 10 s: {e}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn notifies_ready_reloading_and_stopping() -> Result<(), Failed> {
    let dir = std::env::temp_dir().join(format!("fork-prefork-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(fail)?;
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).map_err(fail)?;
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(fail)?;
    let mut server = Command::new(env!("CARGO_BIN_EXE_prefork-notify"))
        .env("NOTIFY_SOCKET", &path)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(fail)?;
    let ready = next(&socket)?;
    ensure!(ready == "READY=1\n", "first said {ready:?}");
    // The server reloads and stops once told.
    server
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(b"go\n")
        .map_err(fail)?;
    let reloading = next(&socket)?;
    let usec: Option<u64> = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|rest| rest.trim_end().parse().ok());
    ensure!(usec.is_some_and(|u| u > 0), "then said {reloading:?}");
    let reloaded = next(&socket)?;
    ensure!(
        reloaded == "READY=1\n",
        "after the reload said {reloaded:?}"
    );
    let stopping = next(&socket)?;
    ensure!(stopping == "STOPPING=1\n", "at the stop said {stopping:?}");
    let status = server.wait().map_err(fail)?;
    ensure!(status.success(), "the server exited with {status}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// What a service manager does for socket activation, in Python: a
/// listening socket on descriptor 3, `LISTEN_PID`, `LISTEN_FDS` and
/// `LISTEN_FDNAMES` set, then `exec` of the program (same pid). Prints the
/// socket's port first.
const ACTIVATE: &str = r#"
import os, socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
print("port", s.getsockname()[1], flush=True)
os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES="web", LISTEN_PID=str(os.getpid()))
os.execv(sys.argv[1], [sys.argv[1]])
"#;

/// A server started by socket activation serves on the socket it was
/// passed, and its workers (and templates) do not see the variables.
fn serves_on_the_sockets_socket_activation_passes() -> Result<(), Failed> {
    use std::io::{BufRead, BufReader, Read};
    let mut server = Command::new("python3")
        .args(["-c", ACTIVATE, env!("CARGO_BIN_EXE_prefork-activated")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3, which plays the service manager: {e}"))?;
    let mut out = BufReader::new(server.stdout.take().ok_or("no stdout")?);
    let mut line = String::new();
    let mut read = |out: &mut BufReader<_>| -> Result<String, Failed> {
        line.clear();
        out.read_line(&mut line).map_err(fail)?;
        Ok(line.trim_end().to_owned())
    };
    let port: u16 = read(&mut out)?
        .strip_prefix("port ")
        .and_then(|p| p.parse().ok())
        .ok_or("no port")?;
    let names = read(&mut out)?;
    ensure!(
        names == r#"names [Some("web")]"#,
        "the server said {names:?}"
    );
    let ready = read(&mut out)?;
    let workers: Vec<u32> = ready
        .strip_prefix("ready ")
        .ok_or_else(|| format!("the server said {ready:?}"))?
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    ensure!(workers.len() == 2, "workers {workers:?}");
    // A connection to the passed socket reaches a worker.
    let mut answer = String::new();
    std::net::TcpStream::connect(("127.0.0.1", port))
        .map_err(fail)?
        .read_to_string(&mut answer)
        .map_err(fail)?;
    let pid: u32 = answer.trim().parse().map_err(fail)?;
    ensure!(
        workers.contains(&pid),
        "answered by {pid}, not a worker {workers:?}"
    );
    for worker in &workers {
        let env = std::fs::read(format!("/proc/{worker}/environ")).map_err(fail)?;
        ensure!(
            !env.split(|&b| b == 0).any(|v| v.starts_with(b"LISTEN_")),
            "worker {worker} sees the activation's variables"
        );
    }
    server
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(b"stop\n")
        .map_err(fail)?;
    let status = server.wait().map_err(fail)?;
    ensure!(status.success(), "the server exited with {status}");
    Ok(())
}

/// Starts the signal-driven helper; returns it and its output.
fn signalled(
    args: &[&str],
) -> Result<
    (
        std::process::Child,
        std::io::BufReader<std::process::ChildStdout>,
    ),
    Failed,
> {
    let mut server = Command::new(env!("CARGO_BIN_EXE_prefork-signals"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(fail)?;
    let out = std::io::BufReader::new(server.stdout.take().ok_or("no stdout")?);
    Ok((server, out))
}

fn line(out: &mut std::io::BufReader<std::process::ChildStdout>) -> Result<String, Failed> {
    use std::io::BufRead;
    let mut line = String::new();
    out.read_line(&mut line).map_err(fail)?;
    Ok(line.trim_end().to_owned())
}

fn kill(server: &std::process::Child, signal: nix::sys::signal::Signal) -> Result<(), Failed> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server.id() as i32), signal).map_err(fail)
}

/// `trap_signals`: `SIGHUP` reloads (twice), `SIGTERM` stops gracefully;
/// `SIGINT` stops at once. The program then ends as it chooses (exit 0).
fn signals_reload_and_stop_the_server() -> Result<(), Failed> {
    use nix::sys::signal::Signal;
    let (server, mut out) = signalled(&[])?;
    ensure!(line(&mut out)? == "ready", "not ready");
    for generation in 2..=3 {
        kill(&server, Signal::SIGHUP)?;
        let said = line(&mut out)?;
        ensure!(
            said == format!("generation {generation}"),
            "after SIGHUP: {said:?}"
        );
    }
    kill(&server, Signal::SIGTERM)?;
    let said = line(&mut out)?;
    ensure!(said == "stopped", "after SIGTERM: {said:?}");
    let mut server = server;
    let status = server.wait().map_err(fail)?;
    ensure!(status.success(), "after SIGTERM: {status}");

    let (mut server, mut out) = signalled(&[])?;
    ensure!(line(&mut out)? == "ready", "not ready");
    kill(&server, Signal::SIGINT)?;
    let said = line(&mut out)?;
    ensure!(said == "stopped", "after SIGINT: {said:?}");
    let status = server.wait().map_err(fail)?;
    ensure!(status.success(), "after SIGINT: {status}");
    Ok(())
}

/// `SIGTTIN` adds a worker, `SIGTTOU` removes one, never the last; the
/// number holds across a reload.
fn ttin_and_ttou_resize_the_server() -> Result<(), Failed> {
    use nix::sys::signal::Signal;
    let (mut server, mut out) = signalled(&["resize"])?;
    ensure!(line(&mut out)? == "ready", "not ready");
    for (signal, workers) in [
        (Signal::SIGTTIN, 3),
        (Signal::SIGTTOU, 2),
        (Signal::SIGTTOU, 1),
    ] {
        kill(&server, signal)?;
        let said = line(&mut out)?;
        ensure!(
            said == format!("workers {workers}, generation 1"),
            "after {signal}: {said:?}"
        );
    }
    // (At one worker, SIGTTOU changes nothing: see
    // `resize_never_goes_below_one`. Two signals sent at once may be
    // handled in either order, so it is not shown with signals here.)
    kill(&server, Signal::SIGTTIN)?;
    let said = line(&mut out)?;
    ensure!(said == "workers 2, generation 1", "after SIGTTIN: {said:?}");
    // Three, then a reload: the new generation has three too.
    kill(&server, Signal::SIGTTIN)?;
    ensure!(line(&mut out)? == "workers 3, generation 1", "not three");
    kill(&server, Signal::SIGHUP)?;
    let said = line(&mut out)?;
    ensure!(
        said == "workers 3, generation 2",
        "after the reload: {said:?}"
    );
    kill(&server, Signal::SIGTERM)?;
    ensure!(line(&mut out)? == "stopped", "not stopped");
    let status = server.wait().map_err(fail)?;
    ensure!(status.success(), "after SIGTERM: {status}");
    Ok(())
}

/// `resize` and `resize_by` never go below one worker.
fn resize_never_goes_below_one() -> Result<(), Failed> {
    use fork_prefork::{Context, Prefork, PreforkEntry};
    async fn idle(ctx: Context) -> std::io::Result<()> {
        ctx.serve(|_conn, _link| async {}).await
    }
    static IDLE: PreforkEntry = fork_prefork::entry!(idle);
    integration_tests::block_on(async {
        let server = Prefork::builder(fork_core::Template::new().map_err(fail)?, &IDLE)
            .listener(std::net::TcpListener::bind("127.0.0.1:0").map_err(fail)?)
            .workers(1)
            .start()
            .map_err(fail)?;
        server.wait_until(|s| s.idle == 1).await;
        ensure!(server.resize_by(-1).await.map_err(fail)? == 1, "below one");
        ensure!(
            server.resize(0).await.map_err(fail)? == 1,
            "resized to none"
        );
        ensure!(server.resize(3).await.map_err(fail)? == 3, "not three");
        let s = server.wait_until(|s| s.idle == 3).await;
        ensure!(s.idle == 3 && !s.stopped, "{s:?}");
        server.stop().await.map_err(fail)?;
        Ok(())
    })
}

/// A worker that never gets ready is killed at the start timeout, and the
/// server, after `max_boot_failures` of them, stops saying why.
fn a_worker_that_never_gets_ready_is_killed_at_the_start_timeout() -> Result<(), Failed> {
    use fork_prefork::{BootFailure, Context, Error, Prefork, PreforkEntry};
    async fn never_ready(_ctx: Context) -> std::io::Result<()> {
        std::future::pending().await
    }
    static NEVER_READY: PreforkEntry = fork_prefork::entry!(never_ready);
    integration_tests::block_on(async {
        let limit = Duration::from_millis(300);
        let server = Prefork::builder(fork_core::Template::new().map_err(fail)?, &NEVER_READY)
            .workers(1)
            .start_timeout(limit)
            .max_boot_failures(2)
            .start()
            .map_err(fail)?;
        let outcome = tokio::time::timeout(Duration::from_secs(20), server.stopped())
            .await
            .map_err(|_| "the server kept a worker that never got ready")?;
        ensure!(
            matches!(
                &outcome,
                Err(Error::Boot { failures: 2, cause: BootFailure::StartTimeout(d) }) if *d == limit
            ),
            "the server ended with {outcome:?}"
        );
        let stats = server.stats();
        ensure!(stats.total() == 0 && stats.boot_failures == 2, "{stats:?}");
        Ok(())
    })
}

fn main() {
    fork_core::init();
    integration_tests::run_quietly(&[
        (
            "notifies_ready_reloading_and_stopping",
            notifies_ready_reloading_and_stopping,
        ),
        (
            "serves_on_the_sockets_socket_activation_passes",
            serves_on_the_sockets_socket_activation_passes,
        ),
        (
            "signals_reload_and_stop_the_server",
            signals_reload_and_stop_the_server,
        ),
        (
            "ttin_and_ttou_resize_the_server",
            ttin_and_ttou_resize_the_server,
        ),
        ("resize_never_goes_below_one", resize_never_goes_below_one),
        (
            "a_worker_that_never_gets_ready_is_killed_at_the_start_timeout",
            a_worker_that_never_gets_ready_is_killed_at_the_start_timeout,
        ),
    ]);
}
