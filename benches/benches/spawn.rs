//! Spawn benchmark: how fast fork-core forks workers, compared with the raw
//! `fork()` limit measured in the same run.
//!
//! Run: `cargo bench -p benches --bench spawn` (about 30 seconds), or
//! `cargo bench -p benches --bench spawn -- --quick` (a few seconds, a 64 MiB
//! parent instead of 1 GiB; for CI). Unknown arguments (`--bench`, which cargo
//! passes) are ignored.
//!
//! The machines this runs on are small, shared and noisy: every measurement is
//! split into rounds, the table shows the median round and the spread, and
//! rates are also given as ratios to the raw limit measured minutes earlier in
//! the same process.

use benches::{Mem, mem_of, ratio, verdict};
use std::error::Error;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use fork_core::{Context, Entry, Template};
use tokio::io::AsyncReadExt;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

// ===== worker entries =====

// ANCHOR: entries
/// The benchmarked worker: returns at once (exit code 0).
fn nop(_ctx: Context) {}
static NOP: Entry = fork_core::entry!(nop, name = "benches::spawn::nop");

/// The idle worker: says it is up, then blocks reading its socket.
fn idle(ctx: Context) -> io::Result<()> {
    ctx.socket().write_all(b"up")?;
    let mut byte = [0u8; 1];
    let _ = ctx.socket().read(&mut byte)?;
    Ok(())
}
static IDLE: Entry = fork_core::entry!(idle, name = "benches::spawn::idle");
// ANCHOR_END: entries

// ===== options =====

#[derive(Debug, Clone, Copy)]
struct Opts {
    /// Rounds per measurement.
    rounds: u32,
    /// Length of one round.
    round: Duration,
    /// Rounds and round length for raw `fork()` from the big parent.
    big_rounds: u32,
    big_round: Duration,
    /// Most raw forks from the big parent per round.
    big_max: u64,
    /// Size of the parent's touched heap in the "big parent" part.
    ballast: usize,
}

impl Opts {
    /// Parses `std::env::args` by hand: `--quick` is the only option; other
    /// arguments (`--bench` from cargo) are ignored.
    fn from_args() -> Opts {
        let quick = std::env::args().skip(1).any(|a| a == "--quick");
        if quick {
            Opts {
                rounds: 1,
                round: Duration::from_millis(200),
                big_rounds: 1,
                big_round: Duration::from_millis(200),
                big_max: 50,
                ballast: 64 << 20,
            }
        } else {
            Opts {
                rounds: 5,
                round: Duration::from_millis(300),
                big_rounds: 3,
                big_round: Duration::from_millis(700),
                big_max: 200,
                ballast: 1 << 30,
            }
        }
    }
}

// ===== measuring =====

/// The rates of the rounds of one measurement, in operations per second.
#[derive(Debug, Clone)]
struct Sample {
    rates: Vec<f64>,
    ops: u64,
    /// CPU time per operation in µs, split as (this process, template,
    /// workers), over the timed rounds.
    cpu: [Option<f64>; 3],
}

impl Sample {
    fn median(&self) -> f64 {
        let mut r = self.rates.clone();
        r.sort_by(f64::total_cmp);
        let n = r.len();
        if n % 2 == 1 {
            r[n / 2]
        } else {
            (r[n / 2 - 1] + r[n / 2]) / 2.0
        }
    }

    fn min(&self) -> f64 {
        self.rates.iter().copied().fold(f64::INFINITY, f64::min)
    }

    fn max(&self) -> f64 {
        self.rates.iter().copied().fold(0.0, f64::max)
    }
}

/// Runs `round` once untimed as a warm-up (a quarter round), then `rounds`
/// times; each call runs operations for about the given time and returns
/// `(operations done, time taken)`. CPU time is charged as `who` says.
fn measure(
    what: &str,
    who: Who,
    rounds: u32,
    round_len: Duration,
    mut round: impl FnMut(Duration) -> BoxResult<(u64, Duration)>,
) -> BoxResult<Sample> {
    eprint!("measuring {what} ...");
    round(round_len / 4)?;
    let mut sample = Sample {
        rates: Vec::new(),
        ops: 0,
        cpu: [None; 3],
    };
    let before = CpuTimes::now(who)?;
    for _ in 0..rounds {
        let (ops, took) = round(round_len)?;
        sample.ops += ops;
        sample.rates.push(ops as f64 / took.as_secs_f64());
    }
    let used = CpuTimes::now(who)?.since(&before);
    let per_op = |d: Duration| Some(d.as_secs_f64() * 1e6 / sample.ops as f64);
    sample.cpu = match who {
        Who::Raw => [per_op(used.me), None, per_op(used.children)],
        Who::Template(_) => [
            per_op(used.me),
            per_op(used.template),
            per_op(used.template_children),
        ],
        Who::Creation => [per_op(used.me), per_op(used.children), None],
    };
    eprintln!(" {:.0}/s", sample.median());
    Ok(sample)
}

// ===== CPU accounting =====

/// Whose CPU time a measurement uses besides this process's.
#[derive(Debug, Clone, Copy)]
enum Who {
    /// Raw forks: the workers are our children.
    Raw,
    /// Spawns through the template with this pid: the workers are its
    /// children (it reaps them, so their time shows in its `cutime`).
    Template(u32),
    /// Template creation: the templates are our children.
    Creation,
}

/// Cumulative CPU times (user + system).
#[derive(Debug, Default, Clone, Copy)]
struct CpuTimes {
    me: Duration,
    children: Duration,
    template: Duration,
    template_children: Duration,
}

impl CpuTimes {
    fn now(who: Who) -> io::Result<CpuTimes> {
        let mut times = CpuTimes {
            me: rusage(libc::RUSAGE_SELF)?,
            children: rusage(libc::RUSAGE_CHILDREN)?,
            ..CpuTimes::default()
        };
        if let Who::Template(pid) = who {
            (times.template, times.template_children) = proc_cpu(pid)?;
        }
        Ok(times)
    }

    fn since(&self, before: &CpuTimes) -> CpuTimes {
        CpuTimes {
            me: self.me.saturating_sub(before.me),
            children: self.children.saturating_sub(before.children),
            template: self.template.saturating_sub(before.template),
            template_children: self
                .template_children
                .saturating_sub(before.template_children),
        }
    }
}

/// User + system time from `getrusage(who)`.
fn rusage(who: libc::c_int) -> io::Result<Duration> {
    // SAFETY: `rusage` is plain data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(tv(usage.ru_utime) + tv(usage.ru_stime))
}

/// A process's own and its reaped children's CPU time, from
/// `/proc/<pid>/stat` (in clock ticks, usually 10 ms).
fn proc_cpu(pid: u32) -> io::Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces: field 3 (state)
    // is index 0, so utime (14), stime, cutime, cstime are 11 to 14.
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
    // SAFETY: sysconf takes an integer constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks = |t: u64| Duration::from_nanos(t * 1_000_000_000 / hz);
    Ok((ticks(fields[0] + fields[1]), ticks(fields[2] + fields[3])))
}

/// Runs `op` over and over in `depth` tokio tasks (so `depth` operations are
/// in flight) until `len` has passed, and waits for the last ones.
async fn in_flight<F, Fut>(len: Duration, depth: usize, op: F) -> BoxResult<(u64, Duration)>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = BoxResult<()>> + Send + 'static,
{
    let start = Instant::now();
    let deadline = start + len;
    let mut tasks = JoinSet::new();
    for _ in 0..depth {
        let op = op.clone();
        tasks.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                op().await?;
                done += 1;
            }
            BoxResult::Ok(done)
        });
    }
    let mut done = 0;
    while let Some(result) = tasks.join_next().await {
        done += result??;
    }
    Ok((done, start.elapsed()))
}

/// Runs the synchronous `op` until `len` has passed or `max` operations are
/// done.
fn repeat(
    len: Duration,
    max: u64,
    mut op: impl FnMut() -> io::Result<()>,
) -> BoxResult<(u64, Duration)> {
    let start = Instant::now();
    let mut done = 0;
    while done < max && start.elapsed() < len {
        op()?;
        done += 1;
    }
    Ok((done, start.elapsed()))
}

// ===== the operations =====

// ANCHOR: raw
/// The raw limit: `socketpair` + `fork` + child `_exit` + EOF on the
/// parent's end + `waitpid`.
fn raw_spawn() -> io::Result<()> {
    let (ours, theirs) = UnixStream::pair()?;
    // SAFETY: the child calls only `_exit`, which is async-signal-safe, so it
    // is sound even when other threads exist in the parent (the big-parent
    // measurement forks with the tokio runtime's threads alive).
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => return Err(io::Error::last_os_error()),
        // SAFETY: `_exit` never returns and touches no state of the parent.
        0 => unsafe { libc::_exit(0) },
        _ => {}
    }
    drop(theirs);
    let mut byte = [0u8; 1];
    let n = (&ours).read(&mut byte)?;
    assert_eq!(n, 0, "the child writes nothing");
    let mut status = 0;
    // SAFETY: `status` is a valid, writable c_int and `pid` is our child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(io::Error::last_os_error());
    }
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    Ok(())
}
// ANCHOR_END: raw

// ANCHOR: spawn
/// One spawn through a template: request, the worker runs `nop` and exits,
/// the parent sees EOF on the worker's socket and gets its exit status.
async fn template_spawn(template: Template) -> BoxResult<()> {
    let mut worker = template.fork().run(&NOP).await?;
    let mut stream = worker.take_stream().expect("a worker socket");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await?;
    assert!(rest.is_empty(), "the worker writes nothing");
    let status = worker.wait().await?;
    assert!(status.success(), "worker failed: {status}");
    Ok(())
}
// ANCHOR_END: spawn

/// Measures template spawns `depth` at a time.
fn spawns(
    rt: &Runtime,
    opts: &Opts,
    what: &str,
    template: &Template,
    depth: usize,
) -> BoxResult<Sample> {
    measure(
        what,
        Who::Template(template.id()),
        opts.rounds,
        opts.round,
        |len| {
            let template = template.clone();
            rt.block_on(in_flight(len, depth, move || {
                template_spawn(template.clone())
            }))
        },
    )
}

/// Measures template creation: exec, wait until it serves, drop it.
fn creations(rt: &Runtime, opts: &Opts, what: &str) -> BoxResult<Sample> {
    measure(what, Who::Creation, opts.rounds, opts.round, |len| {
        rt.block_on(in_flight(len, 1, || async {
            let template = Template::new()?;
            template.ready().await?;
            Ok(())
        }))
    })
}

// ===== memory =====

// ANCHOR: idle
/// Forks an idle worker, reads its memory once it is up, then kills it.
async fn idle_worker_mem(template: &Template) -> BoxResult<Mem> {
    let mut worker = template.fork().kill_on_drop(true).run(&IDLE).await?;
    let mut up = [0u8; 2];
    worker
        .stream()
        .expect("a worker socket")
        .read_exact(&mut up)
        .await?;
    let mem = mem_of(worker.id())?;
    worker.kill().await?;
    Ok(mem)
}
// ANCHOR_END: idle

// ===== report =====

#[derive(Debug)]
struct Row {
    what: String,
    sample: Sample,
    /// Rate of the same measurement without the big heap, for the big-parent rows.
    baseline: Option<f64>,
    target: &'static str,
}

#[derive(Debug, Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(
        &mut self,
        what: &str,
        sample: &Sample,
        baseline: Option<&Sample>,
        target: &'static str,
    ) {
        self.rows.push(Row {
            what: what.to_owned(),
            sample: sample.clone(),
            baseline: baseline.map(Sample::median),
            target,
        });
    }

    fn print(&self, raw: f64) {
        println!();
        println!(
            "| measurement | ops/s (median) | µs/op | × raw | × small parent | spread (min–max ops/s) | ops | CPU µs/op: parent + template + workers | target |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
        for row in &self.rows {
            let rate = row.sample.median();
            let vs_small = row.baseline.map_or_else(String::new, |b| ratio(rate / b));
            let cpu: Vec<String> = row
                .sample
                .cpu
                .iter()
                .map(|c| c.map_or_else(|| "–".to_owned(), |c| format!("{c:.0}")))
                .collect();
            let total: f64 = row.sample.cpu.iter().flatten().sum();
            println!(
                "| {} | {:.0} | {:.0} | {} | {} | {:.0}–{:.0} | {} | {} = {:.0} | {} |",
                row.what,
                rate,
                1e6 / rate,
                ratio(rate / raw),
                vs_small,
                row.sample.min(),
                row.sample.max(),
                row.sample.ops,
                cpu.join(" + "),
                total,
                row.target,
            );
        }
    }
}

fn human(bytes: usize) -> String {
    if bytes >= 1 << 30 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

// ===== main =====

// ANCHOR: main
fn main() -> BoxResult<()> {
    // First thing, before any thread: turns template processes started from
    // this binary into templates, and forks the early template.
    fork_core::Init::new().early_template(true).init();
    let opts = Opts::from_args();

    // 1. The raw limit, from this small, still single-threaded process.
    let raw = measure("raw fork", Who::Raw, opts.rounds, opts.round, |len| {
        repeat(len, u64::MAX, raw_spawn)
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let _rt = rt.enter();
    let exec = Template::new()?;
    rt.block_on(exec.ready())?;
    let early = Template::early()?;
    rt.block_on(early.ready())?;
    // ... then the template measurements, on this runtime.
    // ANCHOR_END: main

    let mut report = Report::default();
    report.add(
        "raw fork, small parent (the limit)",
        &raw,
        None,
        "reference",
    );

    // 2.-4. Template spawns, one at a time and several in flight.
    let mut small = Vec::new();
    for (name, template) in [("exec'd", &exec), ("early", &early)] {
        for depth in [1, 4, 16] {
            let what = if depth == 1 {
                format!("spawn, {name} template, sequential")
            } else {
                format!("spawn, {name} template, {depth} in flight")
            };
            let sample = spawns(&rt, &opts, &what, template, depth)?;
            report.add(&what, &sample, None, "≥ 0.90× raw");
            small.push((name, template, depth, sample));
        }
    }

    // 5. Template creation.
    let created = creations(&rt, &opts, "template creation")?;
    report.add(
        "template creation (exec + ready + drop)",
        &created,
        None,
        "",
    );

    // 6. The same with a big parent.
    let big = human(opts.ballast);
    eprint!("touching {big} of heap ...");
    let mut ballast = vec![0u8; opts.ballast];
    for i in (0..ballast.len()).step_by(4096) {
        ballast[i] = 1;
    }
    std::hint::black_box(&mut ballast);
    eprintln!(" done");
    // Forking a multi-threaded process (the runtime's threads are alive, if
    // idle): acceptable here because the child only calls `_exit`.
    let raw_big = measure(
        &format!("raw fork, {big} parent"),
        Who::Raw,
        opts.big_rounds,
        opts.big_round,
        |len| repeat(len, opts.big_max, raw_spawn),
    )?;
    report.add(&format!("raw fork, {big} parent"), &raw_big, Some(&raw), "");
    let mut big_ratios = Vec::new();
    for (name, template, depth, without) in &small {
        if *depth == 4 {
            continue;
        }
        let what = if *depth == 1 {
            format!("spawn, {name} template, sequential, {big} parent")
        } else {
            format!("spawn, {name} template, {depth} in flight, {big} parent")
        };
        let with = spawns(&rt, &opts, &what, template, *depth)?;
        report.add(&what, &with, Some(without), "≥ 0.90× small parent");
        big_ratios.push((what, with.median() / without.median()));
    }
    let created_big = creations(&rt, &opts, &format!("template creation, {big} parent"))?;
    report.add(
        &format!("template creation, {big} parent"),
        &created_big,
        Some(&created),
        "",
    );
    drop(ballast);

    // Cross-check of the limit at the end of the run (the machine's load
    // drifts): raw forks again, from this now multi-threaded (but idle)
    // process; the child still calls only `_exit`.
    let raw_end = measure(
        "raw fork, end of run",
        Who::Raw,
        opts.rounds,
        opts.round,
        |len| repeat(len, u64::MAX, raw_spawn),
    )?;
    report.add(
        "raw fork, end of run, runtime threads alive (cross-check)",
        &raw_end,
        None,
        "",
    );

    // 7. Idle worker memory.
    let mut mems = Vec::new();
    for (name, template) in [("exec'd", &exec), ("early", &early)] {
        let worker = rt.block_on(idle_worker_mem(template))?;
        let itself = mem_of(template.id())?;
        mems.push((name, worker, itself));
    }

    // The report.
    let raw_rate = raw.median();
    report.print(raw_rate);
    println!();
    println!("| process | USS KiB | PSS KiB | RSS KiB | target |");
    println!("|---|---:|---:|---:|---|");
    for (name, worker, itself) in &mems {
        println!(
            "| idle worker, {name} template | {} | {} | {} | USS ≤ 512 KiB: {} |",
            worker.uss,
            worker.pss,
            worker.rss,
            verdict(worker.uss <= 512)
        );
        println!(
            "| the {name} template itself | {} | {} | {} | |",
            itself.uss, itself.pss, itself.rss
        );
    }
    println!();
    println!("Targets:");
    let raw_end_rate = raw_end.median();
    for (name, _, depth, sample) in &small {
        let ratio = sample.median() / raw_rate;
        let how = if *depth == 1 {
            "sequential".to_owned()
        } else {
            format!("{depth} in flight")
        };
        println!(
            "- {name} template, {how}: {ratio:.3}× raw (≥ 0.90): {} ({:.2}× the end-of-run raw)",
            verdict(ratio >= 0.9),
            sample.median() / raw_end_rate,
        );
    }
    for (what, ratio) in &big_ratios {
        println!(
            "- {what}: {ratio:.3}× small parent (≥ 0.90): {}",
            verdict(*ratio >= 0.9)
        );
    }
    println!(
        "- raw fork, {big} parent: {:.3}× small parent",
        raw_big.median() / raw_rate
    );
    println!();
    println!(
        "For reference (not measured here): Perl's AnyEvent::Fork ~1.8k spawns/s, raw fork ~6k/s on these machines."
    );
    Ok(())
}
