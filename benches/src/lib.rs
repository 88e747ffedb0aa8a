//! What the benchmarks share: reading CPU time, context switches and memory
//! of processes, and formatting ratios and verdicts.

use std::io;

/// This process's CPU seconds and context switches, from `getrusage`.
pub fn rusage_self() -> io::Result<(f64, f64)> {
    // SAFETY: `rusage` is plain data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Ok((
        tv(usage.ru_utime) + tv(usage.ru_stime),
        (usage.ru_nvcsw + usage.ru_nivcsw) as f64,
    ))
}

/// A process's CPU seconds, from `/proc/<pid>/stat` (clock ticks, usually
/// 10 ms).
pub fn proc_cpu(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces: field 3 (state)
    // is index 0, so utime (14) and stime (15) are 11 and 12.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    if ticks.len() != 2 {
        return Err(io::Error::other(format!("cannot parse /proc/{pid}/stat")));
    }
    // SAFETY: sysconf takes an integer constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks[0] + ticks[1]) as f64 / hz)
}

/// A process's context switches, summed over its threads, from
/// `/proc/<pid>/task/*/status`.
pub fn proc_switches(pid: u32) -> io::Result<f64> {
    let mut total = 0.0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = std::fs::read_to_string(task?.path().join("status"))?;
        for line in status.lines() {
            if let Some(n) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += n.trim().parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    Ok(total)
}

/// Memory figures of one process, from `/proc/<pid>/smaps_rollup`, in KiB.
#[derive(Debug, Default, Clone, Copy)]
pub struct Mem {
    pub rss: u64,
    pub pss: u64,
    /// Unique set size: `Private_Clean + Private_Dirty`.
    pub uss: u64,
}

/// Reads `/proc/<pid>/smaps_rollup`.
///
/// # Errors
///
/// If the file cannot be read.
pub fn mem_of(pid: u32) -> io::Result<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let mut mem = Mem::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(key), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(kib) = value.parse::<u64>() else {
            continue;
        };
        match key {
            "Rss:" => mem.rss = kib,
            "Pss:" => mem.pss = kib,
            "Private_Clean:" | "Private_Dirty:" => mem.uss += kib,
            _ => {}
        }
    }
    Ok(mem)
}

/// A ratio with two decimals, or three when it is small.
pub fn ratio(x: f64) -> String {
    if x < 0.1 {
        format!("{x:.3}")
    } else {
        format!("{x:.2}")
    }
}

/// "met" or "MISSED".
pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}
