//! A handler's panic as the parent gets it: its message, and its location
//! in the source, which a panic hook records (a `catch_unwind` payload
//! does not say).

use std::panic;

use crate::error::HandlerPanic;

thread_local! {
    /// Where the last panic on this thread happened, as the panic hook saw
    /// it (a `catch_unwind` payload does not say).
    static PANIC_LOCATION: std::cell::Cell<Option<String>> = const { std::cell::Cell::new(None) };
}

/// Installs a panic hook that records where a panic happens, then runs the
/// hook that was installed before (by default, the one that prints it).
/// Only in a worker, which is a process of fork-rpc's own.
pub(super) fn record_panic_locations() {
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let location = info.location().map(ToString::to_string);
        PANIC_LOCATION.with(|l| l.set(location));
        previous(info);
    }));
}

/// A panic caught on this thread, with the location its hook recorded.
pub(super) fn caught(payload: &(dyn std::any::Any + Send)) -> HandlerPanic {
    HandlerPanic {
        message: fork_core::__private::panic_message(payload),
        location: PANIC_LOCATION.with(std::cell::Cell::take),
    }
}
