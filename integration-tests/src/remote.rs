//! Fixtures of the remote-template tests (`remote`, `remote_ssh`,
//! `remote_netns`): an entry that echoes, a small RPC service, and what a
//! worker's stream is. The remote side of those tests is the same test
//! binary, so an entry defined here (registered as
//! `integration_tests::remote::…`, once in each binary that uses it) is
//! found there as it is here.

use std::io::{Read, Write};
use std::time::Duration;

use fork_core::{Context, Entry, Template};
use fork_rpc::{RpcEntry, RpcWorker, Setup};
use tarpc::context;

use crate::{Failed, fail};

/// Echoes what it reads in upper case until EOF, then exits with the code
/// in its last argument (the fork's, after the template's arguments if
/// there are any).
fn shout(ctx: Context) -> i32 {
    let code: i32 = ctx.arg(ctx.args().len() - 1).expect("an exit code");
    let mut socket = ctx.socket();
    let mut buf = [0u8; 4096];
    loop {
        match socket.read(&mut buf) {
            Ok(0) | Err(_) => return code,
            Ok(n) => {
                if socket.write_all(&buf[..n].to_ascii_uppercase()).is_err() {
                    return code;
                }
            }
        }
    }
}
/// Echoes in upper case until EOF, then exits with the code given as the
/// fork's argument: `template.fork().arg(&7i32).run(&SHOUT)`.
pub static SHOUT: Entry = fork_core::entry!(shout);

/// The service of the remote RPC tests.
#[tarpc::service]
pub trait Calc {
    /// `a + b`.
    async fn add(a: i64, b: i64) -> i64;
    /// `s`, unchanged.
    async fn echo(s: String) -> String;
    /// The worker's pid.
    async fn pid() -> u32;
    /// `data`, unchanged.
    async fn echo_shared(data: fork_rpc::SharedBytes) -> fork_rpc::SharedBytes;
    /// Sleeps `ms`, then returns the worker's pid.
    async fn nap(ms: u64) -> u32;
    /// Ends the worker at once with exit code `code` (the call never
    /// answers: it fails with the worker-lost error).
    async fn quit(code: i32);
}

#[derive(Clone)]
struct CalcServer;

impl Calc for CalcServer {
    async fn add(self, _: context::Context, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn echo(self, _: context::Context, s: String) -> String {
        s
    }

    async fn pid(self, _: context::Context) -> u32 {
        std::process::id()
    }

    async fn echo_shared(
        self,
        _: context::Context,
        data: fork_rpc::SharedBytes,
    ) -> fork_rpc::SharedBytes {
        data
    }

    async fn nap(self, _: context::Context, ms: u64) -> u32 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        std::process::id()
    }

    async fn quit(self, _: context::Context, code: i32) {
        std::process::exit(code)
    }
}

fn calc(_: &mut Setup<()>) -> Result<ServeCalc<CalcServer>, String> {
    Ok(CalcServer.serve())
}
/// A worker serving [`Calc`].
pub static CALC: RpcEntry<CalcRequest, CalcResponse> = fork_rpc::entry!(calc);

/// A client of a [`CALC`] worker.
pub type CalcWorkerClient = CalcClient<fork_rpc::Client<CalcRequest, CalcResponse>>;

/// Forks a [`CALC`] worker from `template` and checks that it answers a
/// first call (2 + 3).
///
/// # Errors
///
/// If the fork fails or the call does.
pub async fn calc_worker(template: &Template) -> Result<(CalcWorkerClient, RpcWorker), Failed> {
    let (client, worker) = RpcWorker::builder(&mut template.fork(), &CALC)
        .spawn()
        .await
        .map_err(fail)?;
    let calc = CalcClient::from(client);
    crate::ensure!(
        calc.add(context::current(), 2, 3).await.map_err(fail)? == 5,
        "2 + 3"
    );
    Ok((calc, worker))
}

/// Whether a worker's stream is a connection through a forwarded socket
/// (its peer has a path) rather than one end of a socket pair.
///
/// # Errors
///
/// If the stream has no peer address.
pub fn is_forwarded(stream: &tokio::net::UnixStream) -> Result<bool, Failed> {
    Ok(stream.peer_addr().map_err(fail)?.as_pathname().is_some())
}
