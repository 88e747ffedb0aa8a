//! The loops around the rounds: an untimed warm-up of a quarter round, then
//! the timed rounds, what they cost, and a progress line on stderr.
//!
//! - [`alone`] measures one thing on its own, its costs read once around
//!   all its rounds (the spawn bench, whose parties include this process's
//!   reaped children).
//! - [`side_by_side`] measures several peers whose rounds take turns, so
//!   that a change in the machine's load hits them all alike, and reads the
//!   costs of each peer around each of its rounds (the rpc and pool
//!   benches).
//!
//! A round is a closure that runs operations for about the length it is
//! given and returns how many it did and how long it took (see
//! [`drive`](crate::drive)).

use std::fmt::Display;
use std::io;
use std::time::Duration;

use crate::{BoxResult, Costs, Rounds, Sample};

/// Measures `what`: `round` once untimed as a warm-up (a quarter round),
/// then `rounds.count` times. `costs` reads the cumulative costs of the
/// measurement's parties; it is called before the first timed round and
/// after the last.
///
/// Prints `measuring WHAT ... RATE/s` on stderr.
///
/// # Errors
///
/// The first error of a round or of reading the costs.
pub fn alone<const N: usize>(
    what: &str,
    rounds: Rounds,
    mut costs: impl FnMut() -> io::Result<Costs<N>>,
    mut round: impl FnMut(Duration) -> BoxResult<(u64, Duration)>,
) -> BoxResult<Sample<N>> {
    eprint!("measuring {what} ...");
    round(rounds.len / 4)?;
    let mut sample = Sample::default();
    let before = costs()?;
    for _ in 0..rounds.count {
        let (ops, took) = round(rounds.len)?;
        sample.push_round(ops, took);
    }
    sample.costs = costs()?.since(&before);
    eprintln!(" {:.0}/s", sample.median());
    Ok(sample)
}

/// Measures `peers`, each a name and a peer, side by side: a quarter round
/// each, untimed, as a warm-up, then `rounds.count` rounds each, the peers
/// taking turns. Around each timed round the costs of this process and of
/// the peer's workers (`pids` of the peer, asked before the round) are read
/// ([`Costs::parent_and`]). Returns a sample per peer, in their order.
///
/// Prints `measuring WHAT ... NAME RATE/s; ...` on stderr; if `verbose`,
/// with the operations of each peer counting the warm-up (for profilers
/// that count events over the whole run).
///
/// # Errors
///
/// The first error of a round or of reading the costs.
pub fn side_by_side<S: Display, P>(
    what: &str,
    peers: &[(S, P)],
    rounds: Rounds,
    verbose: bool,
    pids: impl Fn(&P) -> Vec<u32>,
    mut round: impl FnMut(&P, Duration) -> BoxResult<(u64, Duration)>,
) -> BoxResult<Vec<Sample<2>>> {
    eprint!("measuring {what} ...");
    let mut warm_up = Vec::new();
    for (_, peer) in peers {
        warm_up.push(round(peer, rounds.len / 4)?.0);
    }
    let mut samples = vec![Sample::default(); peers.len()];
    for _ in 0..rounds.count {
        for ((_, peer), sample) in peers.iter().zip(&mut samples) {
            let pids = pids(peer);
            let before = Costs::parent_and(&pids)?;
            let (ops, took) = round(peer, rounds.len)?;
            let after = Costs::parent_and(&pids)?;
            sample.push_round(ops, took);
            sample.costs.add(&after.since(&before));
        }
    }
    for (((name, _), sample), warm_up) in peers.iter().zip(&samples).zip(warm_up) {
        eprint!(" {name} {:.0}/s", sample.median());
        if verbose {
            eprint!(" ({} calls with the warm-up)", sample.ops + warm_up);
        }
        eprint!(";");
    }
    eprintln!();
    Ok(samples)
}
