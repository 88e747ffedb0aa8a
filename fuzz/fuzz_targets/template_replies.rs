//! What a parent decodes from a template: frames through the `Assembler`,
//! then the reply records of each message, as the connection's reader
//! dispatches them. Input layout: `fork_core::fuzzing` (module docs).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fork_core::fuzzing::template_replies(data);
});
