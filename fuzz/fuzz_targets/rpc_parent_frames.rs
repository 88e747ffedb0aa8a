//! What a parent decodes from an RPC worker: length-delimited frames of
//! replies, events, panic reports and retire requests, in bincode or JSON
//! (the first byte chooses). Input layout: `fork_rpc::fuzzing` (module
//! docs).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fork_rpc::fuzzing::rpc_parent_frames(data);
});
