//! What a parent decodes from a forked process before it starts: its
//! start-up report (`Ack`), header then body. The input is what the process
//! wrote on its socket.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fork_core::fuzzing::worker_ack(data);
});
