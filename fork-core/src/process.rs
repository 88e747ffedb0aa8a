//! What this process is, as fork-core sees it: whether it is past
//! [`init`](crate::init) (a parent that called it, or a template, or a
//! worker forked from one).

use std::sync::atomic::{AtomicBool, Ordering};

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// Whether this process is past `init`, so that a template started from it
/// reaches `init` too.
pub(crate) fn initialized() -> bool {
    INITIALIZED.load(Ordering::Acquire)
}

/// Records that this process is past `init`: the parent's `init` returned,
/// or a template (about to serve) reached it, so the workers it forks may
/// start templates too.
pub(crate) fn mark_initialized() {
    INITIALIZED.store(true, Ordering::Release);
}
