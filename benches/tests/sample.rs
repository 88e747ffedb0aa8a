//! A sample's figures, and the costs it sums.

use benches::{Costs, Sample};
use std::time::Duration;

fn sample(rates: &[u64]) -> Sample<2> {
    let mut sample = Sample::default();
    for &ops in rates {
        sample.push_round(ops, Duration::from_secs(1));
    }
    sample
}

#[test]
fn median() {
    assert_eq!(sample(&[3, 1, 2]).median(), 2.0);
    assert_eq!(sample(&[4, 1, 2, 3]).median(), 2.5);
    assert!(sample(&[]).median().is_nan());
}

#[test]
fn ratio_to_is_the_median_of_the_ratios_of_rounds() {
    let base = sample(&[100, 200, 400]);
    let other = sample(&[110, 180, 800]);
    // Round by round: 1.1, 0.9, 2.0.
    assert_eq!(other.ratio_to(&base), 1.1);
}

#[test]
fn costs_per_op_and_busy() {
    let mut s = sample(&[500, 500]);
    let before = Costs {
        cpu: [Some(1.0), Some(10.0)],
        switches: [Some(7.0), None],
    };
    let after = Costs {
        cpu: [Some(1.001), Some(11.0)],
        switches: [Some(1007.0), None],
    };
    s.costs.add(&after.since(&before));
    s.costs.add(&after.since(&before));
    let cpu = s.cpu_per_op();
    assert!((cpu[0].unwrap() - 2.0).abs() < 1e-9, "{cpu:?}");
    assert_eq!(cpu[1], Some(2000.0));
    assert_eq!(s.switches_per_op(), [Some(2.0), None]);
    // 2 s of the workers' CPU over 2 s of rounds.
    assert_eq!(s.busy(1), 1.0);
}
