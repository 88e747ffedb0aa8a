//! The call at the top of `main`.

use crate::activation;
use crate::error::{Error, Result};
use crate::process;
use crate::sys::{self, Forked, Forker};
use crate::template::{self, serve};

/// Turns this process into a template when it was started as one, and
/// otherwise returns. **Call it first thing in `main`**, before any thread or
/// tokio runtime exists.
///
/// Equivalent to `Init::new().init()`; see [`Init`] for the early template.
///
/// # Why first
///
/// A template is this same program, executed again with a marker in its
/// environment. In the template, `init` never returns: it serves fork
/// requests. Whatever `main` did before calling `init` is done again in every
/// template, and a thread started before it would make forking unsound, so
/// `init` checks that the process is still single-threaded and outside any
/// tokio runtime. `#[tokio::main]` cannot be used on `main` for that reason:
/// build the runtime after `init`, or use [`#[fork_core::main]`](crate::main).
///
/// # Panics
///
/// If the precondition is broken (threads already running, a runtime
/// entered), with a message saying so. Use [`Init::try_init`] to get the
/// error instead.
///
/// # Examples
///
/// ```no_run
/// fn main() {
///     fork_core::init(); // first: never returns in a template
///     let rt = tokio::runtime::Runtime::new().unwrap();
///     rt.block_on(async {
///         // ... use fork_core::Template here ...
///     });
/// }
/// ```
pub fn init() {
    Init::new().init();
}

/// Options for [`init`]: whether to fork an early template.
#[derive(Debug, Default, Clone)]
pub struct Init {
    early_template: bool,
}

impl Init {
    /// Default options: no early template.
    pub fn new() -> Init {
        Init::default()
    }

    /// Also fork an *early template* right now, while the process is still
    /// small and single-threaded (AnyEvent::Fork::Early). It becomes
    /// [`Template::early`](crate::Template::early) and the default for
    /// [`Template::shared`](crate::Template::shared); forking workers from it
    /// needs no `exec`. Off by default.
    pub fn early_template(mut self, early: bool) -> Init {
        self.early_template = early;
        self
    }

    /// Runs [`init`] with these options.
    ///
    /// # Panics
    ///
    /// See [`init`].
    pub fn init(self) {
        if let Err(e) = self.try_init() {
            panic!("{e}");
        }
    }

    /// Like [`init`](Init::init) but returns the broken precondition as an
    /// error. Calling it again after it succeeded does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::InitOrder`] if threads are running or a tokio runtime was
    /// entered; [`Error::Io`] if the early template cannot be forked.
    pub fn try_init(self) -> Result<()> {
        if crate::remote::agent::requested() {
            crate::remote::agent::main();
        }
        if std::env::var_os(serve::MARKER).is_some() && stdin_is_control_socket() {
            serve::exec_main();
        }
        if process::initialized() {
            return Ok(());
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::InitOrder(
                "a tokio runtime is already running".into(),
            ));
        }
        let forker = Forker::new().map_err(|e| Error::InitOrder(e.to_string()))?;
        // Before any template or thread: no child sees the variables.
        activation::capture(&forker);
        if self.early_template {
            let (ours, theirs) = sys::seqpacket_pair().map_err(Error::os(
                "creating the early template's control socket pair",
            ))?;
            // Text buffered so far is written once, not again by the template.
            sys::flush_stdio();
            match forker.fork().map_err(Error::Fork)? {
                Forked::Child => {
                    drop(ours);
                    serve::early_main(theirs)
                }
                Forked::Parent { child } => template::set_early(ours, child),
            }
        }
        process::mark_initialized();
        Ok(())
    }
}

/// A template's standard input is a `SOCK_SEQPACKET` socket; a stray marker
/// in the environment of an ordinary run is ignored.
fn stdin_is_control_socket() -> bool {
    use std::os::fd::BorrowedFd;
    let stdin = std::io::stdin();
    let fd: BorrowedFd<'_> = std::os::fd::AsFd::as_fd(&stdin);
    matches!(
        nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SockType),
        Ok(nix::sys::socket::SockType::SeqPacket)
    )
}
