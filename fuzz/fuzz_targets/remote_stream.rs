//! What a parent decodes from a remote template's byte stream: frames,
//! the greeting, and the replies in control messages. The input is the
//! stream.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fork_core::fuzzing::remote_stream(data);
});
