//! Templates: small single-threaded processes that fork workers on request.
//!
//! - [`handle`]: the `Template` handle, its preparation and its end;
//! - [`registry`]: the process-wide templates (early, shared);
//! - [`conn`]: the parent's side of a template's control socket;
//! - [`serve`]: the template's side, a blocking loop that forks;
//! - [`title`]: the names templates and workers show in `ps` and `top`.

pub(crate) mod conn;
mod handle;
mod registry;
pub(crate) mod serve;
mod title;

pub use self::handle::Template;
pub(crate) use self::registry::set_early;
