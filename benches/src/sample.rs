//! The figures of one measurement: the rate of each round, and what the
//! rounds cost.

use std::time::Duration;

use crate::Costs;

/// The timed rounds of one measurement of one peer: their rates in
/// operations per second, and what they cost its `N` parties.
///
/// # Examples
///
/// ```
/// use benches::Sample;
/// use std::time::Duration;
///
/// let mut sample = Sample::<2>::default();
/// for ops in [300, 100, 200] {
///     sample.push_round(ops, Duration::from_secs(1));
/// }
/// assert_eq!(sample.median(), 200.0);
/// assert_eq!((sample.min(), sample.max()), (100.0, 300.0));
/// assert_eq!(sample.ops, 600);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Sample<const N: usize> {
    /// Operations per second of each round, in the order they ran.
    pub rates: Vec<f64>,
    /// Operations over the rounds.
    pub ops: u64,
    /// Time over the rounds.
    pub elapsed: Duration,
    /// What the rounds cost each party.
    pub costs: Costs<N>,
}

// ===== impl Sample =====

impl<const N: usize> Sample<N> {
    /// Adds a round that did `ops` operations in `took`.
    pub fn push_round(&mut self, ops: u64, took: Duration) {
        self.ops += ops;
        self.elapsed += took;
        self.rates.push(ops as f64 / took.as_secs_f64());
    }

    /// The median round's rate (NaN without rounds).
    pub fn median(&self) -> f64 {
        median(self.rates.clone())
    }

    /// The slowest round's rate.
    pub fn min(&self) -> f64 {
        self.rates.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// The fastest round's rate.
    pub fn max(&self) -> f64 {
        self.rates.iter().copied().fold(0.0, f64::max)
    }

    /// This sample's rate over `base`'s, for peers whose rounds took turns:
    /// the median of the ratios of their rounds, each against its
    /// neighbour (steadier than the ratio of the medians when the machine's
    /// load changes during the run).
    pub fn ratio_to(&self, base: &Sample<N>) -> f64 {
        median(
            self.rates
                .iter()
                .zip(&base.rates)
                .map(|(a, b)| a / b)
                .collect(),
        )
    }

    /// CPU µs per operation of each party.
    pub fn cpu_per_op(&self) -> [Option<f64>; N] {
        self.costs.cpu.map(|c| c.map(|c| c * 1e6 / self.ops as f64))
    }

    /// Context switches per operation of each party.
    pub fn switches_per_op(&self) -> [Option<f64>; N] {
        self.costs.switches.map(|s| s.map(|s| s / self.ops as f64))
    }

    /// How many CPUs `party` kept busy, on average over the rounds (NaN if
    /// its CPU time is not measured).
    pub fn busy(&self, party: usize) -> f64 {
        self.costs.cpu[party].unwrap_or(f64::NAN) / self.elapsed.as_secs_f64()
    }
}

/// The median of `values` (NaN if there are none).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
