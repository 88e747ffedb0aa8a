//! What a measurement costs each of its parties: CPU time and context
//! switches.

use std::io;

use crate::proc::{self, Stat, Usage};

/// CPU seconds (user + system) and context switches (voluntary +
/// involuntary) of the `N` parties to a measurement (this process, a
/// template, workers ...), each `None` where it is not measured.
///
/// A reading holds cumulative figures; [`since`](Costs::since) turns two
/// readings into what was spent between them, and [`add`](Costs::add) sums
/// what several rounds spent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Costs<const N: usize> {
    /// CPU seconds of each party.
    pub cpu: [Option<f64>; N],
    /// Context switches of each party.
    pub switches: [Option<f64>; N],
}

// ===== impl Costs =====

impl<const N: usize> Default for Costs<N> {
    /// Nothing measured.
    fn default() -> Self {
        Costs {
            cpu: [None; N],
            switches: [None; N],
        }
    }
}

impl<const N: usize> Costs<N> {
    /// What was spent from the reading `before` to this one: the
    /// differences of the figures both measured.
    pub fn since(&self, before: &Costs<N>) -> Costs<N> {
        let minus = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        Costs {
            cpu: std::array::from_fn(|i| minus(self.cpu[i], before.cpu[i])),
            switches: std::array::from_fn(|i| minus(self.switches[i], before.switches[i])),
        }
    }

    /// Adds what `more` spent to these figures (a figure measured on one
    /// side only counts as is).
    pub fn add(&mut self, more: &Costs<N>) {
        let plus = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        for i in 0..N {
            self.cpu[i] = plus(self.cpu[i], more.cpu[i]);
            self.switches[i] = plus(self.switches[i], more.switches[i]);
        }
    }
}

impl Costs<2> {
    /// Reads the cumulative costs of this process (all its threads, from
    /// `getrusage`) and of `workers` together (from `/proc`): (parent,
    /// workers).
    ///
    /// # Errors
    ///
    /// If a figure cannot be read (a worker has exited, for one).
    pub fn parent_and(workers: &[u32]) -> io::Result<Costs<2>> {
        let me = Usage::of_self()?;
        let (mut cpu, mut switches) = (0.0, 0.0);
        for &pid in workers {
            cpu += Stat::of(pid)?.cpu.as_secs_f64();
            switches += proc::switches(pid)? as f64;
        }
        Ok(Costs {
            cpu: [Some(me.cpu.as_secs_f64()), Some(cpu)],
            switches: [Some(me.switches as f64), Some(switches)],
        })
    }
}
