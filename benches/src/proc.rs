//! Readers of what processes cost and hold: CPU time and context switches
//! (from `getrusage`, `/proc/<pid>/stat` and `/proc/<pid>/task/*/status`),
//! memory (`/proc/<pid>/smaps_rollup`) and the machine's load
//! (`/proc/loadavg`).

use std::io;
use std::time::Duration;

use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeVal;
use nix::unistd::{SysconfVar, sysconf};

// ===== getrusage =====

/// Cumulative resource use of this process or of its reaped children, from
/// `getrusage`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// CPU time, user + system.
    pub cpu: Duration,
    /// Context switches, voluntary + involuntary.
    pub switches: u64,
}

impl Usage {
    /// This process's use, all its threads together (`RUSAGE_SELF`).
    ///
    /// # Errors
    ///
    /// If `getrusage` fails.
    pub fn of_self() -> io::Result<Usage> {
        Usage::of(UsageWho::RUSAGE_SELF)
    }

    /// The use of this process's children that have exited and been reaped
    /// (`RUSAGE_CHILDREN`).
    ///
    /// # Errors
    ///
    /// If `getrusage` fails.
    pub fn of_children() -> io::Result<Usage> {
        Usage::of(UsageWho::RUSAGE_CHILDREN)
    }

    fn of(who: UsageWho) -> io::Result<Usage> {
        let usage = getrusage(who)?;
        let time = |t: TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
        Ok(Usage {
            cpu: time(usage.user_time()) + time(usage.system_time()),
            switches: (usage.voluntary_context_switches() + usage.involuntary_context_switches())
                as u64,
        })
    }
}

// ===== /proc/<pid>/stat =====

/// A process's CPU times, from `/proc/<pid>/stat`, in clock ticks (usually
/// 10 ms).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Its own CPU time, user + system (`utime + stime`).
    pub cpu: Duration,
    /// The CPU time of its children that exited and that it reaped
    /// (`cutime + cstime`).
    pub children_cpu: Duration,
}

impl Stat {
    /// Reads `/proc/<pid>/stat`.
    ///
    /// # Errors
    ///
    /// If the file cannot be read or parsed.
    pub fn of(pid: u32) -> io::Result<Stat> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name, which may hold spaces: field 3
        // (state) is index 0, so utime (14), stime, cutime, cstime are 11
        // to 14.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<u64> = after
            .split_whitespace()
            .skip(11)
            .take(4)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        if fields.len() != 4 {
            return Err(io::Error::other(format!("cannot parse /proc/{pid}/stat")));
        }
        let hz = sysconf(SysconfVar::CLK_TCK)?.unwrap_or(1).max(1) as u64;
        let ticks = |t: u64| Duration::from_nanos(t * 1_000_000_000 / hz);
        Ok(Stat {
            cpu: ticks(fields[0] + fields[1]),
            children_cpu: ticks(fields[2] + fields[3]),
        })
    }
}

// ===== /proc/<pid>/task/*/status =====

/// A process's context switches, voluntary + involuntary, summed over its
/// threads, from `/proc/<pid>/task/*/status`.
///
/// # Errors
///
/// If the files cannot be read.
pub fn switches(pid: u32) -> io::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = std::fs::read_to_string(task?.path().join("status"))?;
        for line in status.lines() {
            if let Some(n) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += n.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok(total)
}

// ===== /proc/<pid>/smaps_rollup =====

/// Memory figures of one process, from `/proc/<pid>/smaps_rollup`, in KiB.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Mem {
    /// Resident set size: every page in memory, shared or not.
    pub rss: u64,
    /// Proportional set size: each page divided by the number of processes
    /// that share it.
    pub pss: u64,
    /// Unique set size: `Private_Clean + Private_Dirty`, the pages no other
    /// process shares.
    pub uss: u64,
}

impl Mem {
    /// Reads `/proc/<pid>/smaps_rollup`.
    ///
    /// # Errors
    ///
    /// If the file cannot be read.
    pub fn of(pid: u32) -> io::Result<Mem> {
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
}

// ===== /proc/loadavg =====

/// The 1-minute load average, from `/proc/loadavg`: how busy the machine
/// was besides the bench. `"?"` if it cannot be read.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}
