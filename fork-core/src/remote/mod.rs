//! Remote templates: a template on another host (or in a container), its
//! workers forked there, their streams carried back over one connection.
//!
//! A **remote template** is this program's own binary, started through a
//! [`Connector`] (ssh, `docker exec`, `kubectl exec`, any command that
//! gives stdio; [`CommandConnector`] runs such a command) with one
//! argument that makes [`init`](crate::init) serve as the remote side. It
//! forks a local template there (preloaded by [`Template::init`] and
//! [`Template::arg`] as usual, copy-on-write on that host), which forks the
//! workers. The parent gets an ordinary [`Template`]: forks, [`Worker`]s
//! with pids (the remote host's), exit statuses, [`Worker::kill`], and each
//! worker's stream an ordinary tokio socket, so fork-rpc works on it
//! unchanged.
//!
//! Each worker's stream travels one of two ways, the same to use:
//!
//! - as a **channel** of the connection to the remote template (its stdio),
//!   relayed by a task here and by the remote side there: this works over
//!   any connector;
//! - as a **forwarded connection** of its own, when the connector can
//!   forward a unix socket ([`Connector::forward`]; `SshConnector`,
//!   feature `openssh`, does through its ControlMaster): the worker's
//!   socket on the host is the
//!   connection sshd made, and the stream here the one the ControlMaster
//!   accepted, with no relay of ours on either side (pipelined calls
//!   measured 1.1x as fast through ssh on loopback; see the book).
//!   [`RemoteBuilder::forward_streams`] turns it off.
//!
//! ```no_run
//! use std::io::Write;
//! use fork_core::{Context, Entry, Template};
//! use fork_core::remote::CommandConnector;
//!
//! fn hello(ctx: Context) -> std::io::Result<()> {
//!     write!(ctx.socket(), "hello from {}", std::process::id())
//! }
//! static HELLO: Entry = fork_core::entry!(hello);
//!
//! #[fork_core::main]
//! async fn main() -> fork_core::Result<()> {
//!     let ssh = CommandConnector::new("ssh").args(["-T", "build-1"]).shell_line(true);
//!     let template = Template::remote(ssh).program("/opt/app/bin/app").start().await?;
//!     let mut worker = template.fork().run(&HELLO).await?;
//!     let mut text = String::new();
//!     let mut stream = worker.take_stream().unwrap();
//!     tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut text).await?;
//!     assert!(worker.wait().await?.success());
//!     Ok(())
//! }
//! ```
//!
//! # What differs from a local template
//!
//! - **No descriptors cross.** [`Fork::fd`], [`Template::fd`], a
//!   [`Command`](crate::Command)'s standard streams, [`Fork::template`] and
//!   [`Template::into_fd`] fail with [`Error::RemoteUnsupported`] (or
//!   [`Error::HandOver`]). Descriptors a layer puts in a
//!   [slot](crate::Fork::slot) are replaced on the remote host by sockets
//!   whose peer is closed (fork-rpc's descriptor channel then never
//!   delivers, and its shared payloads, which need memory files, fail).
//! - **The same build on both sides**, checked when connecting: the
//!   protocol versions must match ([`Error::RemoteVersion`]) and, unless
//!   [`RemoteBuilder::same_build`] says otherwise, the build ids
//!   ([`Error::RemoteBuild`]).
//! - **Standard output** of the remote template and its workers is its
//!   standard error (standard output carries the protocol); ssh and
//!   [`CommandConnector`] pass it to this process's standard error.
//!
//! # Which binary runs there
//!
//! By default the other side runs the program at this binary's path here;
//! [`RemoteBuilder::program`] names another path. With
//! [`RemoteBuilder::upload_to`] the parent puts this binary there itself,
//! once: through the same connector it runs a short `sh` script that
//! checks `dir/<name>-<sha256>` with `sha256sum` and, if it is missing or
//! differs, receives the binary on its standard input, checks its hash on
//! arrival and renames it into place (atomically: a concurrent start never
//! runs a half-written file). Later starts find it and send nothing. A
//! failed step is [`Error::RemoteUpload`], saying which
//! ([`UploadFailure`]) and in which directory.
//!
//! # Lifetimes
//!
//! The remote side exits at EOF of its input: when the last handle to the
//! template (and its workers) is dropped here, when
//! [`Template::shutdown`] is called, or when this process dies (even by
//! `SIGKILL`, since the kernel closes its end of the pipe or ssh
//! connection). The remote template then kills and reaps its workers and
//! exits, as a local one does. A remote side that does not end within 5 s
//! after its input was closed is killed through its [`Session`].
//!
//! # Losing the connection
//!
//! A host that drops off the network, or freezes, gives no EOF: TCP just
//! stalls. So the parent sends a ping every interval and the other side
//! answers it; each side counts the connection **lost** when nothing at
//! all (data, replies, pings or answers) came for the timeout
//! ([`RemoteBuilder::keepalive`]: 2 s and 10 s by default). A busy link
//! never times out, and a slow one only if its round trip exceeds the
//! timeout minus the interval.
//!
//! The connection is lost, here, when the stream ends without this side
//! having shut it down (the transport or the remote side died), when
//! reading or writing it fails, or at the keepalive timeout. Then, at
//! once: every worker's stream ends (reads see EOF, so a fork-rpc call in
//! flight fails with its worker-lost error, which carries this one; a
//! forwarded stream ends when the keepalive [cuts](Forward::cut) its
//! forward, or, after an EOF, when the remote template kills its worker),
//! [`Worker::wait`] of each of its workers, pending forks and new ones
//! fail with [`Error::RemoteLost`] naming the host
//! ([`RemoteBuilder::name`], [`Template::host`]) and the cause
//! ([`LostCause`](crate::LostCause)), and [`Template::lost`] resolves
//! ([`Template::is_lost`] turns `true`). The workers' exit statuses are
//! unknown. The transport is ended after 5 s if it has not ended itself.
//!
//! On the other side, hearing nothing from the parent for the same
//! timeout counts as EOF: the remote side closes its template's socket,
//! the template kills and reaps its workers, and it exits, so a host cut
//! off by a partition keeps no orphans, and one that comes back has
//! nothing left of the lost template.
//!
//! # Protocol
//!
//! One byte stream carries frames of ten kinds, `[kind u8][channel u64
//! LE][len u32 LE][payload]`: a greeting each way first (magic string,
//! protocol version, build id, the template's pid, and from the parent
//! whether to listen for forwarded streams, answered by a `Listening`
//! frame with the socket's path), then control messages (the local
//! control protocol's requests and replies), and the workers' streams as
//! numbered channels (`Data`, `Eof`, `Credit`, and `Close` when one side's
//! end is gone: the other side closes its end, so a write there fails with
//! `EPIPE` as on a local socket) or, announced by `Forwarded` before their
//! spawn request, as forwarded connections (whose first 16 bytes name the
//! spawn), and the keepalive's `Ping` (carrying the timeout the other
//! side applies) and `Pong`. Every length is
//! bounded before anything is buffered: 32 KiB for data, 4 KiB for
//! greetings, 4 MiB for replies, 64 MiB for requests. A malformed frame
//! from the remote side fails the template with [`Error::Protocol`].
//!
//! Each channel is flow-controlled: a sender may have at most 256 KiB on a
//! channel that the receiver has not delivered yet, so a worker that does
//! not read its stream (or a parent that does not read a worker's) stops
//! only that channel, and the memory a channel buffers is bounded.
//!
//! [`Template`]: crate::Template
//! [`Template::init`]: crate::Template::init
//! [`Template::arg`]: crate::Template::arg
//! [`Template::fd`]: crate::Template::fd
//! [`Template::into_fd`]: crate::Template::into_fd
//! [`Template::shutdown`]: crate::Template::shutdown
//! [`Template::host`]: crate::Template::host
//! [`Template::lost`]: crate::Template::lost
//! [`Template::is_lost`]: crate::Template::is_lost
//! [`Worker::wait`]: crate::Worker::wait
//! [`Error::RemoteLost`]: crate::Error::RemoteLost
//! [`Worker`]: crate::Worker
//! [`Worker::kill`]: crate::Worker::kill
//! [`Fork::fd`]: crate::Fork::fd
//! [`Fork::template`]: crate::Fork::template
//! [`Error::RemoteUnsupported`]: crate::Error::RemoteUnsupported
//! [`Error::HandOver`]: crate::Error::HandOver
//! [`Error::RemoteVersion`]: crate::Error::RemoteVersion
//! [`Error::RemoteBuild`]: crate::Error::RemoteBuild
//! [`Error::Protocol`]: crate::Error::Protocol
//! [`Error::RemoteUpload`]: crate::Error::RemoteUpload

pub(crate) mod agent;
mod bridge;
mod build_id;
mod builder;
mod command;
mod connector;
mod ctrl;
pub(crate) mod forward;
pub(crate) mod hello;
mod keepalive;
mod mux;
#[cfg(feature = "openssh")]
mod ssh;
mod stream;
mod upload;
pub(crate) mod wire;

pub use self::builder::RemoteBuilder;
pub use self::command::CommandConnector;
pub use self::connector::{BoxFuture, Connection, Connector, Forward, RemoteCommand, Session};
#[cfg(feature = "openssh")]
pub use self::ssh::SshConnector;
pub use self::upload::UploadFailure;
