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

    /// Sets [`start_timeout`](Config::start_timeout).
    pub fn start_timeout(mut self, limit: Duration) -> Self {
        self.start_timeout = limit;
        self
    }
}
