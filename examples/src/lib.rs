//! Runnable examples live in `examples/`; see the README.
