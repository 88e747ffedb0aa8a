//! What an RPC worker decodes from its parent: length-prefixed tarpc
//! `ClientMessage`s (requests and cancellations), in bincode or JSON (the
//! first byte chooses), with the frame limit checked before a frame's bytes
//! are awaited. Input layout: `fork_rpc::fuzzing` (module docs).

#![no_main]

use std::cell::RefCell;
use std::panic;

use libfuzzer_sys::fuzz_target;

thread_local! {
    /// The last panic: where and why (see the hook below).
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fuzz_target!(
    init: {
        // The worker catches the panic tarpc raises when it decodes an
        // absurd deadline (it adds it to the clock), and makes it an error:
        // that is part of what this target checks. libfuzzer-sys's panic
        // hook would abort on any panic, caught or not, so this one only
        // notes it; a panic that escapes the decoder aborts below, with the
        // note.
        // (No backtrace: symbolising one reads the binary's debug
        // information, megabytes that the allocation cap would refuse.)
        panic::set_hook(Box::new(|info| {
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
        }));
    },
    |data: &[u8]| {
        if panic::catch_unwind(|| fork_rpc::fuzzing::rpc_worker_frames(data)).is_err() {
            let note = LAST_PANIC.with(|p| p.borrow_mut().take());
            eprintln!("uncaught panic: {}", note.unwrap_or_default());
            std::process::abort();
        }
    }
);
