//! Remote templates (in progress): the pure pieces of the stream protocol,
//! the stream's reader and writer, and the channels with their flow
//! control.

// The relay that uses them comes in the next commit.
#![allow(dead_code)]

mod build_id;
pub(crate) mod hello;
mod mux;
mod stream;
pub(crate) mod wire;
