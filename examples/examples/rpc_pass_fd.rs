//! Hands accepted TCP connections to a running RPC worker.
//!
//! Shows: `RpcWorker::send_fd` in the parent, then a call telling the
//! worker to serve what it was sent; `Setup::fd_receiver` and
//! `FdReceiver::recv` in the worker, which answers on the connection with
//! tokio. The parent accepts on 127.0.0.1 (any free port) and the example
//! makes three client connections itself, checks every byte they get back,
//! then closes the worker.
//!
//! Run: `cargo run --example rpc_pass_fd`

use std::os::fd::OwnedFd;
use std::rc::Rc;

use fork_core::Template;
use fork_rpc::{FdReceiver, RpcEntry, RpcWorker, Setup};
use serde::{Deserialize, Serialize};
use tarpc::context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

// ANCHOR: service
#[tarpc::service]
trait Echo {
    /// Serves the connection sent to the worker just before this call:
    /// reads one line and answers it. `peer` is for the answer.
    async fn serve_conn(peer: String) -> Result<Served, String>;
}

/// What the worker did with a connection.
#[derive(Debug, Serialize, Deserialize)]
struct Served {
    line: String,
    answered: usize,
}
// ANCHOR_END: service

// ANCHOR: server
#[derive(Clone)]
struct EchoServer {
    /// Descriptors from the parent, in the order it sent them. `recv`
    /// takes `&mut`, and tarpc clones the server for every request.
    fds: Rc<Mutex<FdReceiver>>,
}

impl Echo for EchoServer {
    async fn serve_conn(self, _: context::Context, peer: String) -> Result<Served, String> {
        let fds = self.fds.lock().await.recv().await;
        let fds = fds
            .map_err(|e| e.to_string())?
            .ok_or("the channel is closed")?;
        let [fd] = <[OwnedFd; 1]>::try_from(fds).map_err(|fds| format!("{} fds", fds.len()))?;
        answer(fd, &peer).await.map_err(|e| format!("{peer}: {e}"))
    }
}

/// Reads one line from the connection and answers it.
async fn answer(fd: OwnedFd, peer: &str) -> std::io::Result<Served> {
    // The same socket the parent accepted, already non-blocking (that flag
    // is shared): make it a tokio stream of this worker's runtime.
    let conn = std::net::TcpStream::from(fd);
    conn.set_nonblocking(true)?;
    let mut conn = TcpStream::from_std(conn)?;
    let mut line = String::new();
    BufReader::new(&mut conn).read_line(&mut line).await?;
    let line = line.trim_end().to_owned();
    let pid = std::process::id();
    let answer = format!("worker {pid} to {peer}: {}\n", line.to_uppercase());
    conn.write_all(answer.as_bytes()).await?;
    // Dropping `conn` closes the worker's copy: the client sees EOF.
    Ok(Served {
        line,
        answered: answer.len(),
    })
}

fn echo(setup: &mut Setup<()>) -> Result<ServeEcho<EchoServer>, String> {
    let fds = setup.fd_receiver().ok_or("the receiver was taken")?;
    Ok(EchoServer {
        fds: Rc::new(Mutex::new(fds)),
    }
    .serve())
}

static ECHO: RpcEntry<EchoRequest, EchoResponse> = fork_rpc::entry!(echo);
// ANCHOR_END: server

// ANCHOR: client
/// A client of the TCP service: sends a line, returns everything it gets
/// back, and its own address (the peer the server saw).
async fn client(addr: std::net::SocketAddr, n: u32) -> std::io::Result<(u32, String, String)> {
    let mut conn = TcpStream::connect(addr).await?;
    conn.write_all(format!("hello from client {n}\n").as_bytes())
        .await?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await?; // to EOF: the worker closed it
    Ok((n, conn.local_addr()?.to_string(), reply))
}
// ANCHOR_END: client

#[fork_core::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let template = Template::shared()?;
    let (client_stub, mut worker) = RpcWorker::builder(&mut template.fork(), &ECHO)
        .spawn()
        .await?;
    let echo = EchoClient::from(client_stub);

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("listening on {addr}, served by worker {}", worker.id());
    let mut clients = tokio::task::JoinSet::new();
    for n in 0..3 {
        clients.spawn(client(addr, n));
    }

    // ANCHOR: hand_over
    for _ in 0..3 {
        let (conn, peer) = listener.accept().await?;
        worker.send_fd(&conn).await?; // a duplicate, beside the RPC stream
        drop(conn); // the worker's copy is the connection now
        let served = echo
            .serve_conn(context::current(), peer.to_string())
            .await??;
        println!(
            "  worker served {peer}: read {:?}, answered {} bytes",
            served.line, served.answered
        );
    }
    // ANCHOR_END: hand_over

    while let Some(result) = clients.join_next().await {
        let (n, local, reply) = result??;
        print!("  client {n} got: {reply}");
        let expected = format!("worker {} to {local}: HELLO FROM CLIENT {n}\n", worker.id());
        assert_eq!(reply, expected);
    }

    drop(echo);
    let status = worker.wait().await?;
    assert!(status.success());
    println!("worker {} exited with {status}", worker.id());
    Ok(())
}
