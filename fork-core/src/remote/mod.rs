//! Remote templates (in progress): the pure pieces of the stream protocol.

// The relay that uses them comes in the next commit.
#![allow(dead_code)]

mod build_id;
pub(crate) mod hello;
pub(crate) mod wire;
