//! A prefork HTTP server with hyper: workers forked from a template accept
//! on one shared listener, and the server reloads on `SIGHUP` without
//! losing a request.
//!
//! Run plainly (`cargo run --example prefork_http`, under a second), it
//! demonstrates itself: two workers, keep-alive requests, a reload, the
//! same connection told `Connection: close` by the old generation, the new
//! generation answering, a graceful stop. Run as
//! `prefork_http --serve 127.0.0.1:8080 --workers 4`, it serves
//! `Hello, world!` until `SIGTERM` (or Ctrl-C), reloading on `SIGHUP`: point
//! a load generator at it.

use std::convert::Infallible;
use std::net::SocketAddr;

use fork_core::Template;
use fork_prefork::{Context, Prefork, PreforkEntry};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, HOST, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

// ANCHOR: worker
/// A worker: hyper's HTTP/1.1 on each connection it accepts. While the
/// worker drains (a reload or a stop), each answer says `Connection:
/// close`, so a keep-alive client never sends on a connection being
/// closed.
async fn hello(ctx: Context) -> std::io::Result<()> {
    ctx.serve(|conn, link| async move {
        let service = hyper::service::service_fn(move |_: Request<Incoming>| {
            let link = link.clone();
            async move {
                let body = format!(
                    "Hello, world! (worker {}, generation {})\n",
                    std::process::id(),
                    link.generation()
                );
                let mut response = Response::new(Full::new(Bytes::from(body)));
                if link.is_draining() {
                    response
                        .headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(response)
            }
        });
        let http = hyper::server::conn::http1::Builder::new();
        let _ = http.serve_connection(TokioIo::new(conn), service).await;
    })
    .await
}
static HELLO: PreforkEntry = fork_prefork::entry!(hello);
// ANCHOR_END: worker

// ANCHOR: server
/// A server of `workers` workers on `listener`, which reloads with a fresh
/// template.
fn server(listener: std::net::TcpListener, workers: usize) -> Result<Prefork, fork_prefork::Error> {
    Prefork::builder(
        Template::new().map_err(|e| fork_prefork::Error::Reload(std::sync::Arc::new(e)))?,
        &HELLO,
    )
    .listener(listener)
    .workers(workers)
    .on_reload(|| async { Template::new() })
    .start()
}
// ANCHOR_END: server

/// One keep-alive client connection.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Result<Client, Box<dyn std::error::Error>> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Client { sender })
    }

    /// GET /: the body, and whether the server said `Connection: close`.
    async fn get(&mut self) -> Result<(String, bool), Box<dyn std::error::Error>> {
        let request = Request::get("/")
            .header(HOST, "localhost")
            .body(Empty::new())?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let close = response
            .headers()
            .get(CONNECTION)
            .is_some_and(|v| v == "close");
        let body = response.into_body().collect().await?.to_bytes();
        Ok((String::from_utf8_lossy(&body).trim_end().to_owned(), close))
    }
}

async fn demonstrate() -> Result<(), Box<dyn std::error::Error>> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = server(listener, 2)?;
    server.wait_until(|s| s.idle == 2).await;
    println!("serving on http://{addr} with 2 workers");

    let mut client = Client::connect(addr).await?;
    let (body, close) = client.get().await?;
    println!("{body}");
    assert!(body.contains("generation 1") && !close);

    // ANCHOR: reload
    // A reload: the new generation starts first, then the old one drains.
    // The open connection's next answer (from the old generation) says
    // `Connection: close`; a new connection reaches the new generation.
    let reload = tokio::spawn({
        let server = server.clone();
        async move { server.reload().await }
    });
    server
        .wait_until(|s| s.generation == 2 && s.stopping > 0)
        .await;
    // The old worker hears it is draining a moment later: until then it
    // answers as before; from then on, with `Connection: close`.
    let closing = async {
        loop {
            let (body, close) = client.get().await?;
            if close {
                return Ok::<_, Box<dyn std::error::Error>>(body);
            }
        }
    };
    let body = tokio::time::timeout(std::time::Duration::from_secs(10), closing).await??;
    println!("{body} (Connection: close)");
    assert!(body.contains("generation 1"));
    reload.await??;
    let (body, _) = Client::connect(addr).await?.get().await?;
    println!("{body}");
    assert!(body.contains("generation 2"));
    // ANCHOR_END: reload

    server.stop().await?;
    println!("stopped: every worker reaped");
    Ok(())
}

/// `--serve ADDR --workers N`: serves until SIGTERM or Ctrl-C.
async fn serve(addr: &str, workers: usize) -> Result<(), Box<dyn std::error::Error>> {
    let listener = std::net::TcpListener::bind(addr)?;
    let server = server(listener, workers)?;
    let signals = server.trap_signals()?;
    server.wait_until(|s| s.idle == workers).await;
    println!("serving on http://{addr} with {workers} workers (SIGHUP reloads, SIGTERM stops)");
    signals.await?;
    Ok(())
}

#[fork_core::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().position(|a| a == "--serve") {
        None => demonstrate().await,
        Some(i) => {
            let addr = args.get(i + 1).ok_or("--serve needs an address")?;
            let workers = match args.iter().position(|a| a == "--workers") {
                Some(j) => args.get(j + 1).ok_or("--workers needs a number")?.parse()?,
                None => 2,
            };
            serve(addr, workers).await
        }
    }
}
