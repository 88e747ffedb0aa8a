//! Named entry and init functions.
//!
//! A template is a separate process (often a fresh `exec` of the program), so
//! the parent cannot hand it a function pointer. Instead every function a
//! template may call is registered under a stable name at compile time (a
//! [`linkme`] distributed slice), and the parent names it. Users never type the
//! name: they pass the [`Entry`] or [`InitFn`] value the macros return, so a
//! typo is a compile error. The name is `module::path::function` unless given.

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::de::DeserializeOwned;

use crate::context::Context;
use crate::error::{Error, Result};

/// Registration record of an entry function (used by [`entry!`](crate::entry)).
#[doc(hidden)]
#[derive(Debug)]
pub struct EntryDef {
    pub name: &'static str,
    pub run: fn(Context) -> i32,
}

/// Registration record of an init function (used by [`init_fn!`](crate::init_fn)).
#[doc(hidden)]
#[derive(Debug)]
pub struct InitDef {
    pub name: &'static str,
    pub run: fn(&[u8]) -> std::result::Result<(), String>,
}

#[doc(hidden)]
#[linkme::distributed_slice]
pub static ENTRIES: [EntryDef];

#[doc(hidden)]
#[linkme::distributed_slice]
pub static INITS: [InitDef];

/// Finds the one record called `name`.
fn find<T>(all: &'static [T], name: &str, name_of: fn(&T) -> &str) -> Result<&'static T> {
    let mut found = all.iter().filter(|d| name_of(d) == name);
    match (found.next(), found.next()) {
        (Some(d), None) => Ok(d),
        (None, _) => Err(Error::UnknownEntry(name.to_owned())),
        (Some(_), Some(_)) => Err(Error::DuplicateEntry(name.to_owned())),
    }
}

pub(crate) fn find_entry(name: &str) -> Result<&'static EntryDef> {
    find(&ENTRIES, name, |d| d.name)
}

pub(crate) fn find_init(name: &str) -> Result<&'static InitDef> {
    find(&INITS, name, |d| d.name)
}

// ===== impl Entry =====

/// A function a forked process can run: the Rust counterpart of the function
/// name given to AnyEvent::Fork's `run`.
///
/// Made with [`entry!`](crate::entry) from a function `fn(Context) -> R`, where
/// `R` is `()`, an exit code (`i32` or `u8`) or a `Result` of those (an `Err`
/// is printed to stderr and exits with code 1, like `main`). A panic exits the
/// worker with code 101. When the function returns, the worker exits with its
/// code.
///
/// # Examples
///
/// ```
/// use std::io::Write;
/// use fork_core::{Context, Entry};
///
/// fn greet(ctx: Context) -> std::io::Result<()> {
///     let name: String = ctx.arg(0).expect("a name");
///     writeln!(ctx.socket(), "hello, {name}")
/// }
///
/// static GREET: Entry = fork_core::entry!(greet);
/// assert!(GREET.name().ends_with("::greet"));
/// ```
#[derive(Clone, Copy)]
pub struct Entry {
    def: &'static EntryDef,
}

impl Entry {
    #[doc(hidden)]
    pub const fn __new(def: &'static EntryDef) -> Entry {
        Entry { def }
    }

    /// The registered name.
    pub fn name(&self) -> &'static str {
        self.def.name
    }

    /// Finds an entry by its registered name, for programs that choose the
    /// entry at run time.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownEntry`] if no entry has this name,
    /// [`Error::DuplicateEntry`] if several have.
    pub fn lookup(name: &str) -> Result<Entry> {
        find_entry(name).map(Entry::__new)
    }

    /// Checks that this entry's name is registered exactly once.
    pub(crate) fn check(&self) -> Result<()> {
        find_entry(self.def.name).map(drop)
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Entry").field(&self.def.name).finish()
    }
}

// ===== impl InitFn =====

/// A function run inside a template (or a forked process before its entry)
/// to prepare it: the Rust counterpart of AnyEvent::Fork's `eval` and
/// `require`. Load data or libraries once in the template, and every fork
/// shares them copy-on-write.
///
/// Made with [`init_fn!`](crate::init_fn) from a function
/// `fn(T) -> Result<(), E>` where `T: DeserializeOwned` and `E: Display`. The
/// parent passes a `&T` (serialised) when it queues the call. A failure or
/// panic is reported to the parent as [`Error::InitFailed`] and ends that
/// process. An init function must not leave threads running in a template:
/// the template checks and fails the init if it does.
///
/// # Examples
///
/// ```
/// use std::sync::OnceLock;
/// use fork_core::InitFn;
///
/// static WORDS: OnceLock<Vec<String>> = OnceLock::new();
///
/// fn load_words(count: usize) -> Result<(), String> {
///     let words = (0..count).map(|i| format!("word{i}")).collect();
///     WORDS.set(words).map_err(|_| "loaded twice".to_string())
/// }
///
/// static LOAD_WORDS: InitFn<usize> = fork_core::init_fn!(load_words);
/// assert!(LOAD_WORDS.name().ends_with("::load_words"));
/// ```
pub struct InitFn<T> {
    def: &'static InitDef,
    _arg: PhantomData<fn(T)>,
}

impl<T> InitFn<T> {
    #[doc(hidden)]
    pub const fn __new<E>(
        def: &'static InitDef,
        _typed: fn(T) -> std::result::Result<(), E>,
    ) -> InitFn<T> {
        InitFn {
            def,
            _arg: PhantomData,
        }
    }

    /// The registered name.
    pub fn name(&self) -> &'static str {
        self.def.name
    }

    pub(crate) fn check(&self) -> Result<()> {
        find_init(self.def.name).map(drop)
    }
}

impl<T> Clone for InitFn<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for InitFn<T> {}

impl<T> fmt::Debug for InitFn<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("InitFn").field(&self.def.name).finish()
    }
}

// ===== running =====

/// What an entry function may return; turned into the worker's exit code.
pub trait EntryResult {
    /// The exit code for this result (printing any error first).
    fn exit_code(self) -> i32;
}

impl EntryResult for () {
    fn exit_code(self) -> i32 {
        0
    }
}

impl EntryResult for i32 {
    fn exit_code(self) -> i32 {
        self
    }
}

impl EntryResult for u8 {
    fn exit_code(self) -> i32 {
        i32::from(self)
    }
}

impl<T: EntryResult, E: fmt::Debug> EntryResult for std::result::Result<T, E> {
    fn exit_code(self) -> i32 {
        match self {
            Ok(t) => t.exit_code(),
            Err(e) => {
                eprintln!("Error: {e:?}");
                1
            }
        }
    }
}

/// Exit code of a worker whose entry panicked (the same as a panicking `main`).
pub const PANIC_EXIT_CODE: i32 = 101;

#[doc(hidden)]
pub fn run_entry<R: EntryResult>(f: fn(Context) -> R, ctx: Context) -> i32 {
    match catch_unwind(AssertUnwindSafe(|| f(ctx))) {
        Ok(r) => r.exit_code(),
        Err(_) => PANIC_EXIT_CODE,
    }
}

#[doc(hidden)]
pub fn run_init<T: DeserializeOwned, E: fmt::Display>(
    f: fn(T) -> std::result::Result<(), E>,
    arg: &[u8],
) -> std::result::Result<(), String> {
    let arg: T = bincode::deserialize(arg).map_err(|e| format!("bad argument: {e}"))?;
    match catch_unwind(AssertUnwindSafe(|| f(arg))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(format!("panicked: {}", panic_message(&*panic))),
    }
}

/// The message of a panic payload.
#[doc(hidden)]
pub fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

/// Declares an [`Entry`]: a function a forked process can be handed over to.
///
/// `entry!(path::to::function)` registers the function under the name
/// `"<module path>::function"`; `entry!(function, name = "stable-name")` under
/// a name of your choice. The function has the signature
/// `fn(fork_core::Context) -> R` with `R:` [`EntryResult`].
///
/// ```
/// fn work(ctx: fork_core::Context) -> i32 {
///     ctx.args().len() as i32
/// }
/// static WORK: fork_core::Entry = fork_core::entry!(work);
/// static NAMED: fork_core::Entry = fork_core::entry!(work, name = "work-v1");
/// assert_eq!(NAMED.name(), "work-v1");
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
        fn __fork_core_entry(ctx: $crate::Context) -> i32 {
            $crate::__private::run_entry($f, ctx)
        }
        #[$crate::__private::linkme::distributed_slice($crate::__private::ENTRIES)]
        #[linkme(crate = $crate::__private::linkme)]
        static __FORK_CORE_ENTRY: $crate::__private::EntryDef = $crate::__private::EntryDef {
            name: $name,
            run: __fork_core_entry,
        };
        $crate::Entry::__new(&__FORK_CORE_ENTRY)
    }};
}

/// Declares an [`InitFn`]: a function run inside a template to prepare it.
///
/// `init_fn!(path::to::function)` registers it as `"<module path>::function"`;
/// `init_fn!(function, name = "stable-name")` under a name of your choice. The
/// function has the signature `fn(T) -> Result<(), E>` with
/// `T: serde::de::DeserializeOwned` and `E: Display`.
///
/// ```
/// fn setup(level: u32) -> Result<(), String> {
///     if level > 3 { Err(format!("level {level} is too high")) } else { Ok(()) }
/// }
/// static SETUP: fork_core::InitFn<u32> = fork_core::init_fn!(setup);
/// ```
#[macro_export]
macro_rules! init_fn {
    ($f:path) => {
        $crate::init_fn!(
            $f,
            name = ::core::concat!(::core::module_path!(), "::", ::core::stringify!($f))
        )
    };
    ($f:path, name = $name:expr) => {{
        fn __fork_core_init(arg: &[u8]) -> ::core::result::Result<(), ::std::string::String> {
            $crate::__private::run_init($f, arg)
        }
        #[$crate::__private::linkme::distributed_slice($crate::__private::INITS)]
        #[linkme(crate = $crate::__private::linkme)]
        static __FORK_CORE_INIT: $crate::__private::InitDef = $crate::__private::InitDef {
            name: $name,
            run: __fork_core_init,
        };
        $crate::InitFn::__new(&__FORK_CORE_INIT, $f)
    }};
}
