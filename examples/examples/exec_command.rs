//! Runs external commands through a template: the template forks and the
//! child calls `exec`, so this (possibly big, multi-threaded) process never
//! forks.
//!
//! Shows: [`Template::command`], its standard streams redirected to pipes
//! sent as descriptors, environment and working directory, and the exit
//! statuses the template reports: success, a non-zero exit code, death by a
//! signal (sent with [`Worker::kill`] or raised by the command itself), and
//! [`Error::Exec`] for a program that does not exist.
//!
//! Run: `cargo run --example exec_command`

use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use fork_core::{Error, Template, Worker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

/// What a command printed, and how it ended.
#[derive(Debug)]
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

// ANCHOR: run_sh
/// Runs `script` with `sh -c` in a process forked from `template`, with its
/// stdout and stderr going to pipes read here.
async fn run_sh(template: &Template, script: &str) -> fork_core::Result<Output> {
    let (out_reader, out_writer) = output_pipe()?;
    let (err_reader, err_writer) = output_pipe()?;
    let mut child = template
        .command("sh")
        .arg("-c")
        .arg(script)
        .stdout(&out_writer)
        .stderr(&err_writer)
        .spawn()
        .await?;
    // The child has its own duplicates; ours must go for the reads to end.
    drop((out_writer, err_writer));
    let (stdout, stderr, status) =
        tokio::try_join!(read_all(out_reader), read_all(err_reader), child.wait())?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// A pipe for a child's output: a tokio read end for us, and a write end
/// to send, in blocking mode as programs expect (the two ends' modes are
/// independent).
fn output_pipe() -> std::io::Result<(pipe::Receiver, OwnedFd)> {
    let (writer, reader) = pipe::pipe()?;
    Ok((reader, writer.into_blocking_fd()?))
}

/// Reads a pipe to its end without blocking the runtime.
async fn read_all(mut reader: pipe::Receiver) -> fork_core::Result<String> {
    let mut text = String::new();
    reader.read_to_string(&mut text).await?;
    Ok(text)
}
// ANCHOR_END: run_sh

fn show(script: &str, out: &Output) {
    println!("$ sh -c {script:?}");
    for line in out.stdout.lines() {
        println!("  stdout: {line}");
    }
    for line in out.stderr.lines() {
        println!("  stderr: {line}");
    }
    println!("  status: {}", out.status);
}

// ANCHOR: main
fn main() -> Result<(), Box<dyn std::error::Error>> {
    fork_core::init(); // first thing: in a template this never returns
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let template = Template::shared()?;

        // ANCHOR: success
        let script = "echo to stdout; echo to stderr >&2";
        let out = run_sh(&template, script).await?;
        show(script, &out);
        assert!(out.status.success());
        assert_eq!(out.stdout, "to stdout\n");
        assert_eq!(out.stderr, "to stderr\n");
        // ANCHOR_END: success

        // ANCHOR: exit_code
        let script = "echo giving up >&2; exit 3";
        let out = run_sh(&template, script).await?;
        show(script, &out);
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stderr, "giving up\n");
        // ANCHOR_END: exit_code

        // ANCHOR: self_signal
        // A command killed by a signal has no exit code, only the signal.
        let script = "kill -TERM $$";
        let out = run_sh(&template, script).await?;
        show(script, &out);
        assert_eq!(out.status.code(), None);
        assert_eq!(out.status.signal(), Some(15)); // SIGTERM
        // ANCHOR_END: self_signal

        // ANCHOR: env_stdin
        // Environment, working directory and stdin, all set from here.
        let (mut in_writer, in_reader) = pipe::pipe()?;
        let in_reader = in_reader.into_blocking_fd()?;
        let (out_reader, out_writer) = output_pipe()?;
        let mut child = template
            .command("sh")
            .arg("-c")
            .arg(r#"echo "$GREETING from $(pwd)"; tr a-z A-Z"#)
            .env("GREETING", "hello")
            .current_dir("/")
            .stdin(&in_reader)
            .stdout(&out_writer)
            .spawn()
            .await?;
        drop((in_reader, out_writer));
        in_writer.write_all(b"shouted through stdin\n").await?;
        drop(in_writer); // EOF: `tr` ends
        let output = read_all(out_reader).await?;
        let status = child.wait().await?;
        // ANCHOR_END: env_stdin
        println!("$ sh -c 'echo \"$GREETING from $(pwd)\"; tr a-z A-Z'   (GREETING=hello, in /)");
        for line in output.lines() {
            println!("  stdout: {line}");
        }
        println!("  status: {status}");
        assert!(status.success());
        assert_eq!(output, "hello from /\nSHOUTED THROUGH STDIN\n");

        // ANCHOR: kill
        // `kill` sends SIGKILL through the template, which reaped the child
        // and reports its status to `wait`.
        let mut sleeper: Worker = template.command("sleep").arg("60").spawn().await?;
        println!("$ sleep 60   (pid {})", sleeper.id());
        assert!(sleeper.try_wait()?.is_none(), "still sleeping");
        sleeper.kill().await?;
        let status = sleeper.wait().await?;
        println!("  killed, status: {status}");
        assert_eq!(status.signal(), Some(9)); // SIGKILL
        // ANCHOR_END: kill

        // ANCHOR: missing
        // `spawn` resolves once `exec` succeeded, so a program that cannot
        // be executed is an error here, with the OS error as its source.
        let err = template
            .command("no-such-program-xyz")
            .spawn()
            .await
            .expect_err("no such program");
        let source = std::error::Error::source(&err).map(ToString::to_string);
        println!("$ no-such-program-xyz");
        println!("  error: {err}: {}", source.as_deref().unwrap_or("?"));
        let Error::Exec { program, source } = &err else {
            panic!("expected Error::Exec, got {err:?}");
        };
        assert_eq!(program, "no-such-program-xyz");
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        // ANCHOR_END: missing
        Ok(())
    })
}
// ANCHOR_END: main
