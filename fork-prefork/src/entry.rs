//! [`PreforkEntry`] and [`entry!`](crate::entry): named prefork worker
//! functions.

use std::fmt;

/// A prefork worker's function, registered under a stable name (a
/// [`fork_core::Entry`] underneath) so a template can run it. Made with
/// [`entry!`](crate::entry); given to [`Prefork::builder`](crate::Prefork::builder).
#[derive(Clone, Copy)]
pub struct PreforkEntry {
    entry: fork_core::Entry,
}

impl PreforkEntry {
    #[doc(hidden)]
    pub const fn __new(entry: fork_core::Entry) -> PreforkEntry {
        PreforkEntry { entry }
    }

    /// The fork-core entry (for its name).
    pub fn entry(&self) -> &fork_core::Entry {
        &self.entry
    }
}

impl fmt::Debug for PreforkEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PreforkEntry")
            .field(&self.entry.name())
            .finish()
    }
}

/// Declares a [`PreforkEntry`]: an `async fn(fork_prefork::Context) -> R`
/// (with `R:` [`WorkerResult`](crate::WorkerResult): `()` or
/// `Result<(), E: Debug>`) that a prefork server's workers run, each on a
/// `current_thread` tokio runtime of its own.
///
/// `entry!(function)` registers it as `"<module path>::function"`;
/// `entry!(function, name = "stable-name")` under a name of your choice.
///
/// ```
/// use fork_prefork::{Context, PreforkEntry};
/// use tokio::io::AsyncWriteExt;
///
/// async fn hello(ctx: Context) -> std::io::Result<()> {
///     ctx.serve(|mut stream, _link| async move {
///         let _ = stream.write_all(b"hello\n").await;
///     })
///     .await
/// }
/// static HELLO: PreforkEntry = fork_prefork::entry!(hello);
/// assert!(HELLO.entry().name().ends_with("::hello"));
/// ```
#[macro_export]
macro_rules! entry {
    ($f:path) => {
        $crate::entry!(
            $f,
            name = ::core::concat!(::core::module_path!(), "::", ::core::stringify!($f))
        )
    };
    ($f:path, name = $name:expr) => {{
        fn __fork_prefork_worker(ctx: $crate::__private::fork_core::Context) -> i32 {
            $crate::__private::run(ctx, $f)
        }
        $crate::PreforkEntry::__new($crate::__private::fork_core::entry!(
            __fork_prefork_worker,
            name = $name
        ))
    }};
}
