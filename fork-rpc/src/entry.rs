//! Typed RPC entries.

use std::fmt;
use std::marker::PhantomData;

use tarpc::server::Serve;

use crate::server::Setup;

/// A [`fork_core::Entry`] that serves a tarpc service, typed with the
/// service's request, response and event types so
/// [`RpcWorker::builder`](crate::RpcWorker::builder) returns matching client and events.
///
/// Made with [`entry!`](crate::entry).
pub struct RpcEntry<Req, Resp, Ev = ()> {
    entry: fork_core::Entry,
    _types: PhantomData<fn(Req, Ev) -> Resp>,
}

impl<Req, Resp, Ev> RpcEntry<Req, Resp, Ev> {
    #[doc(hidden)]
    pub const fn __new<S, E>(
        entry: fork_core::Entry,
        _init: fn(&mut Setup<Ev>) -> Result<S, E>,
    ) -> Self
    where
        S: Serve<Req = Req, Resp = Resp>,
    {
        RpcEntry {
            entry,
            _types: PhantomData,
        }
    }

    /// Types an entry that serves the protocol by other means (for example
    /// one that calls [`serve`](crate::serve) itself after work of its own).
    /// Nothing checks that it really serves this service: a mismatch shows
    /// as protocol errors on the first call.
    pub const fn from_entry(entry: fork_core::Entry) -> Self {
        RpcEntry {
            entry,
            _types: PhantomData,
        }
    }

    /// The fork-core entry (for its name, or to run it by hand).
    pub fn entry(&self) -> &fork_core::Entry {
        &self.entry
    }
}

impl<Req, Resp, Ev> Clone for RpcEntry<Req, Resp, Ev> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Req, Resp, Ev> Copy for RpcEntry<Req, Resp, Ev> {}

impl<Req, Resp, Ev> fmt::Debug for RpcEntry<Req, Resp, Ev> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RpcEntry").field(&self.entry.name()).finish()
    }
}

/// Declares an [`RpcEntry`]: a worker entry that serves the tarpc service
/// built by an init hook `fn(&mut Setup<Ev>) -> Result<S, E>` (with
/// `S: tarpc::server::Serve + Clone`, `E: Display`).
///
/// `entry!(hook)` registers it as `"<module path>::hook"`;
/// `entry!(hook, name = "...")` under a stable name of your choice.
#[macro_export]
macro_rules! entry {
    ($init:path) => {
        $crate::entry!(
            $init,
            name = ::core::concat!(::core::module_path!(), "::", ::core::stringify!($init))
        )
    };
    ($init:path, name = $name:expr) => {{
        fn __fork_rpc_worker(ctx: $crate::__private::fork_core::Context) -> i32 {
            $crate::__private::exit_code($crate::serve(ctx, $init))
        }
        $crate::RpcEntry::__new(
            $crate::__private::fork_core::entry!(__fork_rpc_worker, name = $name),
            $init,
        )
    }};
}
