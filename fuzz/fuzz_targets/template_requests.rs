//! What a template decodes from its parent: frames through the `Assembler`
//! (with a fuzzer-chosen number of descriptors per frame), the request
//! records of each message and the descriptor count check. Input layout:
//! `fork_core::fuzzing` (module docs).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fork_core::fuzzing::template_requests(data);
});
