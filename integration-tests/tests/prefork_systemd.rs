//! fork-prefork under systemd's `Type=notify-reload` protocol: a server
//! started with `NOTIFY_SOCKET` says `READY=1` once its workers are ready,
//! `RELOADING=1` with `MONOTONIC_USEC=` then `READY=1` around a reload, and
//! `STOPPING=1` as it stops. The test plays the service manager: it binds
//! the notification socket and reads what the server sends.

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

fn main() {
    fork_core::init();
    integration_tests::run_quietly(&[(
        "notifies_ready_reloading_and_stopping",
        notifies_ready_reloading_and_stopping,
    )]);
}
