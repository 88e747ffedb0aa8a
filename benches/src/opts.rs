//! A bench's command line, and how long its measurements run.

use std::time::Duration;

/// What a bench reads from its command line. Parsed by hand: other
/// arguments (the `--bench` that cargo passes) are ignored.
///
/// # Examples
///
/// ```
/// use benches::Args;
///
/// let args = Args::parse(["--bench", "--quick", "--only", "serial"].map(String::from));
/// assert!(args.quick);
/// assert!(args.wants("fork-rpc sync, serial, multi-thread"));
/// assert!(!args.wants("fork-rpc sync, 64 in flight, multi-thread"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    /// `--quick`: a smoke run, with short measurements whose figures only
    /// show that nothing is broken (for CI).
    pub quick: bool,
    /// `--only TEXT`: measure only the rows whose name contains `TEXT`, and
    /// say more about them on stderr (pids, calls counting the warm-up), to
    /// profile one of them. Not every bench honours it.
    pub only: Option<String>,
}

impl Args {
    /// Parses this process's arguments (`std::env::args`, without the
    /// program's name).
    pub fn from_env() -> Args {
        Args::parse(std::env::args().skip(1))
    }

    /// Parses `args`, which do not include the program's name.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Args {
        let args: Vec<String> = args.into_iter().collect();
        let quick = args.iter().any(|a| a == "--quick");
        let only = args
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| args.get(i + 1).cloned());
        Args { quick, only }
    }

    /// Whether the row named `what` is to be measured: every row is, unless
    /// `--only` names a part of some others.
    pub fn wants(&self, what: &str) -> bool {
        self.only.as_deref().is_none_or(|only| what.contains(only))
    }
}

/// How long a measurement runs: `count` timed rounds of `len` each (after an
/// untimed warm-up of a quarter round).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rounds {
    /// Timed rounds per measurement (per peer, when peers take turns).
    pub count: u32,
    /// Length of one round.
    pub len: Duration,
}

impl Rounds {
    /// `count` rounds of `len`.
    pub const fn new(count: u32, len: Duration) -> Rounds {
        Rounds { count, len }
    }
}
