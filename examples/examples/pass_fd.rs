//! Passes file descriptors to workers: to a template, so that every worker
//! forked from it inherits them, and to a single worker.
//!
//! Shows: [`Template::fd`] (a pipe every worker writes a line to),
//! [`Fork::fd`](fork_core::Fork::fd) (a TCP listener that one worker accepts a
//! connection on), [`Context::fds`] and [`Context::take_fds`] in the worker,
//! and that a worker holds exactly the descriptors it was sent: one lists
//! `/proc/self/fd` and sends the list back. Uses `#[fork_core::main]`.
//!
//! Run: `cargo run --example pass_fd`

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::time::Duration;

use fork_core::{Context, Entry, Template};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

// ANCHOR: log_line
/// Runs in every worker: writes one line to the pipe inherited from the
/// template, the first (here the only) descriptor the template was sent.
fn log_line(mut ctx: Context) -> std::io::Result<()> {
    let n: u32 = ctx.arg(0).expect("a worker number");
    let mut pipe = File::from(ctx.take_fds().remove(0));
    // One write of less than PIPE_BUF bytes: lines from several workers
    // never interleave.
    pipe.write_all(format!("worker {n} (pid {}) was here\n", std::process::id()).as_bytes())
}

static LOG_LINE: Entry = fork_core::entry!(log_line);
// ANCHOR_END: log_line

// ANCHOR: serve_one
/// Runs in one worker: accepts one connection on the listener sent to this
/// worker alone (after the template's pipe) and answers one line.
fn serve_one(mut ctx: Context) -> std::io::Result<()> {
    let [_pipe, listener] = <[_; 2]>::try_from(ctx.take_fds()).expect("a pipe and a listener");
    let listener = TcpListener::from(listener);
    let (conn, peer) = listener.accept()?;
    let mut request = String::new();
    BufReader::new(&conn).read_line(&mut request)?;
    writeln!(
        &conn,
        "pid {} got {:?} from {peer}",
        std::process::id(),
        request.trim_end()
    )
}

static SERVE_ONE: Entry = fork_core::entry!(serve_one);
// ANCHOR_END: serve_one

// ANCHOR: list_fds
/// Runs in one worker: sends back every open descriptor as
/// `number<TAB>target<TAB>what it is`, one per line.
fn list_fds(ctx: Context) -> std::io::Result<()> {
    // Collect the numbers first: the directory is itself read through a
    // descriptor, which is closed again once `read_dir` is done.
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        numbers.push(
            entry?
                .file_name()
                .to_string_lossy()
                .parse::<i32>()
                .expect("a number"),
        );
    }
    numbers.sort_unstable();
    let mut names = vec![
        (0, "stdin".to_owned()),
        (1, "stdout".to_owned()),
        (2, "stderr".to_owned()),
        (ctx.socket().as_raw_fd(), "ctx.socket()".to_owned()),
    ];
    for (i, fd) in ctx.fds().iter().enumerate() {
        names.push((fd.as_raw_fd(), format!("ctx.fds()[{i}]")));
    }
    let mut list = String::new();
    for fd in numbers {
        // Fails only for the descriptor `read_dir` used, now closed.
        let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else {
            continue;
        };
        let what = names.iter().find(|(n, _)| *n == fd).map_or("?", |(_, w)| w);
        list += &format!("{fd}\t{}\t{what}\n", target.display());
    }
    ctx.socket().write_all(list.as_bytes())
}

static LIST_FDS: Entry = fork_core::entry!(list_fds);
// ANCHOR_END: list_fds

/// What `/proc/self/fd/N` points to in this process, e.g. `pipe:[1234]`.
fn fd_target(fd: impl AsFd) -> std::io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
}

// ANCHOR: main
#[fork_core::main] // calls fork_core::init() first, then builds the runtime
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Our own template, since we prepare it (the shared one is for everyone).
    let template = Template::new()?;

    // ANCHOR: template_fd
    // The template gets a duplicate of the pipe's write end; every worker
    // forked from it afterwards inherits it as its first descriptor.
    let (writer, reader) = tokio::net::unix::pipe::pipe()?;
    let writer = writer.into_blocking_fd()?; // workers write with blocking calls
    template.fd(&writer);
    template.ready().await?;
    let mut workers = Vec::new();
    for n in 0..3u32 {
        workers.push(template.fork().arg(&n).run(&LOG_LINE).await?);
    }
    let mut lines = tokio::io::BufReader::new(reader).lines();
    let mut got = Vec::new();
    for _ in &workers {
        got.push(lines.next_line().await?.expect("a line per worker"));
    }
    for worker in &mut workers {
        assert!(worker.wait().await?.success());
    }
    // ANCHOR_END: template_fd
    got.sort();
    println!("through the template's pipe:");
    for (n, (line, worker)) in got.iter().zip(&workers).enumerate() {
        println!("  {line}");
        assert_eq!(*line, format!("worker {n} (pid {}) was here", worker.id()));
    }

    // ANCHOR: fork_fd
    // A listener for one worker only: it arrives after the template's pipe.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut server = template.fork().fd(&listener).run(&SERVE_ONE).await?;
    // The worker holds its own duplicate: connecting works whether or not
    // this process keeps the listener open.
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(b"ping\n").await?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await?;
    assert!(server.wait().await?.success());
    // ANCHOR_END: fork_fd
    println!("through the listener sent to worker {}:", server.id());
    println!("  {}", reply.trim_end());
    let local = conn.local_addr()?;
    assert_eq!(
        reply,
        format!("pid {} got \"ping\" from {local}\n", server.id())
    );

    // ANCHOR: proc_self_fd
    let mut lister = template.fork().fd(&listener).run(&LIST_FDS).await?;
    let mut list = String::new();
    let mut stream = lister.take_stream().expect("a socket");
    stream.read_to_string(&mut list).await?;
    assert!(lister.wait().await?.success());
    // ANCHOR_END: proc_self_fd
    println!("/proc/self/fd of worker {}:", lister.id());
    let mut fds = Vec::new();
    for line in list.lines() {
        let [fd, target, what] = line.split('\t').collect::<Vec<_>>()[..] else {
            panic!("a malformed line: {line:?}");
        };
        println!("  {fd:>2} -> {target:<24} {what}");
        fds.push((target.to_owned(), what.to_owned()));
    }
    // Exactly stdin, stdout, stderr, the socket and the two descriptors sent
    // (the very pipe and listener this process holds: same inode), nothing
    // else of the template's or of this process's.
    let expected = [
        ("/dev/null".into(), "stdin"),
        (fd_target(std::io::stdout())?, "stdout"),
        (fd_target(std::io::stderr())?, "stderr"),
        (fd_target(&writer)?, "ctx.fds()[0]"),
        (fd_target(&listener)?, "ctx.fds()[1]"),
    ];
    for (target, what) in &expected {
        let target = target.display().to_string();
        assert!(
            fds.contains(&(target.clone(), what.to_string())),
            "{what} should be {target}"
        );
    }
    assert!(
        fds.iter()
            .any(|(t, w)| t.starts_with("socket:") && w == "ctx.socket()")
    );
    assert_eq!(fds.len(), expected.len() + 1, "unexpected: {fds:?}");

    // ANCHOR: eof
    // The template keeps its copy of the write end for as long as it lives:
    // the reader sees EOF only once our copy, every worker's and the
    // template's are closed. Dropping the last handle ends the template.
    drop((writer, workers, server, lister, template));
    let mut reader = lines.into_inner();
    let mut rest = String::new();
    let eof = tokio::time::timeout(Duration::from_secs(10), reader.read_to_string(&mut rest));
    assert_eq!(eof.await??, 0, "no more lines were written");
    // ANCHOR_END: eof
    println!("the pipe reached EOF: every copy of its write end is closed");
    Ok(())
}
// ANCHOR_END: main
