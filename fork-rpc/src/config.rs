//! Configuration shared by the parent and the worker.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a worker serves requests (AnyEvent::Fork::RPC's `async` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Mode {
    /// One request at a time, in arrival order (`async => 0`). Requests sent
    /// meanwhile wait, in order, in the socket. The default.
    Sync,
    /// Up to `limit` requests concurrently (`async => 1`). More wait in
    /// order until one finishes: they are queued, never rejected.
    Async {
        /// Most requests served at once; at least 1.
        limit: usize,
    },
}

/// The serialisation format of requests, replies and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Format {
    /// bincode (compact and fast). The default.
    Bincode,
    /// JSON (readable, and for types bincode cannot encode, such as
    /// `#[serde(flatten)]` or untagged enums).
    Json,
}

/// How a worker is spawned and served. Sent to the worker at spawn time, so
/// both sides always agree.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Config {
    /// Sync or async serving. The default is [`Mode::Sync`].
    pub mode: Mode,
    /// Serialisation format. The default is [`Format::Bincode`].
    pub format: Format,
    /// Largest frame (one request, reply or event, serialised) in bytes,
    /// in both directions. A bigger one fails that connection with an error,
    /// before its bytes are read. Decoding trusts no length a frame claims
    /// beyond the bytes it has left, so the memory a message takes is
    /// bounded by what its bytes can encode. The default is 16 MiB.
    pub max_frame: usize,
    /// The timeout of the contexts [`Client::context`](crate::Client::context)
    /// makes (a pool's `Pool::context` too): calls made with them end this
    /// long after the context was made. `None` is tarpc's 10 s.
    /// `Duration::MAX` means no limit (taken as a century). Contexts made
    /// otherwise keep their deadlines. The default is `None`.
    pub default_timeout: Option<Duration>,
    /// Requests in flight on one connection before further calls wait for a
    /// reply (tarpc's `max_in_flight_requests`). The default is 1000.
    pub max_in_flight_requests: usize,
    /// How long [`Builder::spawn`](crate::Builder::spawn) waits for a worker to start serving
    /// (the fork, init functions, the init hook, the handshake) before it
    /// kills it and fails with
    /// [`Error::StartTimeout`](crate::Error::StartTimeout). Longer lets slow
    /// init hooks (loading a model) finish; shorter notices a hung one
    /// sooner. `Duration::MAX` means no limit. The default is 60 s.
    pub start_timeout: Duration,
    /// [`SharedBytes`](crate::SharedBytes) at least this many bytes long
    /// travel as sealed memory files (their descriptor beside the frame,
    /// the pages shared); shorter ones as bytes in the frame. Lower shares
    /// more (a memory file costs a few system calls on each side, about
    /// what copying 100-200 KiB through the socket costs here); higher
    /// copies more. `usize::MAX` never shares. The default is 256 KiB.
    pub shared_threshold: usize,
    /// Longest [`SharedBytes`](crate::SharedBytes) that travels as a
    /// memory file, in bytes, in both directions. A longer one fails its
    /// call (the sender checks before sending; a receiver refuses what a
    /// peer sends over it), so one frame makes the receiver map at most
    /// `max_shared_fds × max_shared_len` bytes. The default is 1 GiB.
    pub max_shared_len: usize,
    /// Most memory files one frame carries; at most 253 (the kernel's limit
    /// for one message). Further big payloads in the same frame travel as
    /// bytes; a peer that sends more fails the frame. The default is 64.
    pub max_shared_fds: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Sync,
            format: Format::Bincode,
            max_frame: 16 * 1024 * 1024,
            default_timeout: None,
            max_in_flight_requests: 1000,
            start_timeout: Duration::from_secs(60),
            shared_threshold: 256 * 1024,
            max_shared_len: 1 << 30,
            max_shared_fds: 64,
        }
    }
}

impl Config {
    /// Sets [`mode`](Config::mode).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Serves up to `limit` requests concurrently ([`Mode::Async`]).
    pub fn concurrent(self, limit: usize) -> Self {
        self.mode(Mode::Async {
            limit: limit.max(1),
        })
    }

    /// Sets [`format`](Config::format).
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Sets [`max_frame`](Config::max_frame).
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Sets [`default_timeout`](Config::default_timeout).
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = Some(timeout);
        self
    }

    /// Clears [`default_timeout`](Config::default_timeout): tarpc's 10 s
    /// applies again.
    pub fn no_default_timeout(mut self) -> Self {
        self.default_timeout = None;
        self
    }

    /// Sets [`max_in_flight_requests`](Config::max_in_flight_requests).
    pub fn max_in_flight_requests(mut self, requests: usize) -> Self {
        self.max_in_flight_requests = requests;
        self
    }

    /// A context for a call on a worker with this configuration: tarpc's
    /// current one, expiring after [`default_timeout`](Config::default_timeout)
    /// from now (tarpc's 10 s if it has none). It is what
    /// [`Client::context`](crate::Client::context) and fork-pool's
    /// `Pool::context` return.
    pub fn context(&self) -> tarpc::context::Context {
        crate::context::with_default(self.default_timeout)
    }

    /// Sets [`shared_threshold`](Config::shared_threshold).
    pub fn shared_threshold(mut self, bytes: usize) -> Self {
        self.shared_threshold = bytes;
        self
    }

    /// Sets [`max_shared_len`](Config::max_shared_len).
    pub fn max_shared_len(mut self, bytes: usize) -> Self {
        self.max_shared_len = bytes;
        self
    }

    /// Sets [`max_shared_fds`](Config::max_shared_fds).
    pub fn max_shared_fds(mut self, fds: usize) -> Self {
        self.max_shared_fds = fds;
        self
    }

    /// Sets [`start_timeout`](Config::start_timeout).
    pub fn start_timeout(mut self, limit: Duration) -> Self {
        self.start_timeout = limit;
        self
    }
}
