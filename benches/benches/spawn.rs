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
//!
//! The harness (options, rounds, samples, CPU accounting, tables) is the
//! `benches` library's, shared with the rpc and pool benches.

#![deny(unsafe_code)]

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use benches::Align::{Left, Right};
use benches::measure::alone;
use benches::proc::{Mem, Stat, Usage};
use benches::{
    Args, BoxResult, Costs, Rounds, Sample, Table, in_flight, ratio, repeat, spread, sum, verdict,
};
use fork_core::{Context, Entry, Template};
use tokio::io::AsyncReadExt;
use tokio::runtime::Runtime;

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
    /// Rounds of each measurement.
    rounds: Rounds,
    /// Rounds of raw `fork()` from the big parent.
    big: Rounds,
    /// Most raw forks from the big parent per round.
    big_max: u64,
    /// Size of the parent's touched heap in the "big parent" part.
    ballast: usize,
}

impl Opts {
    /// `--quick` is the only option; other arguments (`--bench` from cargo)
    /// are ignored.
    fn from_args() -> Opts {
        if Args::from_env().quick {
            Opts {
                rounds: Rounds::new(1, Duration::from_millis(200)),
                big: Rounds::new(1, Duration::from_millis(200)),
                big_max: 50,
                ballast: 64 << 20,
            }
        } else {
            Opts {
                rounds: Rounds::new(5, Duration::from_millis(300)),
                big: Rounds::new(3, Duration::from_millis(700)),
                big_max: 200,
                ballast: 1 << 30,
            }
        }
    }
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

/// Cumulative CPU times of (this process, the template, the workers), as
/// `who` says.
fn costs(who: Who) -> io::Result<Costs<3>> {
    let me = Some(Usage::of_self()?.cpu.as_secs_f64());
    let children = Some(Usage::of_children()?.cpu.as_secs_f64());
    let cpu = match who {
        Who::Raw => [me, None, children],
        Who::Template(pid) => {
            let template = Stat::of(pid)?;
            let secs = |d: Duration| Some(d.as_secs_f64());
            [me, secs(template.cpu), secs(template.children_cpu)]
        }
        Who::Creation => [me, children, None],
    };
    Ok(Costs {
        cpu,
        ..Costs::default()
    })
}

/// Measures `round` on its own, its CPU time charged as `who` says.
fn measure(
    what: &str,
    who: Who,
    rounds: Rounds,
    round: impl FnMut(Duration) -> BoxResult<(u64, Duration)>,
) -> BoxResult<Sample<3>> {
    alone(what, rounds, || costs(who), round)
}

// ===== the operations =====

// ANCHOR: raw
/// The raw limit: `socketpair` + `fork` + child `_exit` + EOF on the
/// parent's end + `waitpid`.
///
/// The only `unsafe` code of the benches, allowed here alone: the limit is
/// a bare `fork()`, `_exit` and `waitpid` made here, not through fork-core
/// (whose wrappers are what is measured against it).
#[allow(unsafe_code)]
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
) -> BoxResult<Sample<3>> {
    measure(what, Who::Template(template.id()), opts.rounds, |len| {
        let template = template.clone();
        rt.block_on(in_flight(len, depth, move || {
            template_spawn(template.clone())
        }))
    })
}

/// Measures template creation: exec, wait until it serves, drop it.
fn creations(rt: &Runtime, opts: &Opts, what: &str) -> BoxResult<Sample<3>> {
    measure(what, Who::Creation, opts.rounds, |len| {
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
    let mem = Mem::of(worker.id())?;
    worker.kill().await?;
    Ok(mem)
}
// ANCHOR_END: idle

// ===== report =====

#[derive(Debug)]
struct Row {
    what: String,
    sample: Sample<3>,
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
        sample: &Sample<3>,
        baseline: Option<&Sample<3>>,
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
        let table = Table::new(&[
            ("measurement", Left),
            ("ops/s (median)", Right),
            ("µs/op", Right),
            ("× raw", Right),
            ("× small parent", Right),
            ("spread (min–max ops/s)", Right),
            ("ops", Right),
            ("CPU µs/op: parent + template + workers", Right),
            ("target", Left),
        ]);
        println!();
        println!("{}", table.head());
        for row in &self.rows {
            let rate = row.sample.median();
            let vs_small = row.baseline.map_or_else(String::new, |b| ratio(rate / b));
            let cells: [&dyn std::fmt::Display; 9] = [
                &row.what,
                &format!("{rate:.0}"),
                &format!("{:.0}", 1e6 / rate),
                &ratio(rate / raw),
                &vs_small,
                &spread(&row.sample),
                &row.sample.ops,
                &sum(&row.sample.cpu_per_op(), 0),
                &row.target,
            ];
            println!("{}", table.row(&cells));
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
    let raw = measure("raw fork", Who::Raw, opts.rounds, |len| {
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
        opts.big,
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
    let raw_end = measure("raw fork, end of run", Who::Raw, opts.rounds, |len| {
        repeat(len, u64::MAX, raw_spawn)
    })?;
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
        let itself = Mem::of(template.id())?;
        mems.push((name, worker, itself));
    }

    // The report.
    let raw_rate = raw.median();
    report.print(raw_rate);
    println!();
    let table = Table::memory("process");
    println!("{}", table.head());
    for (name, worker, itself) in &mems {
        let target = format!("USS ≤ 512 KiB: {}", verdict(worker.uss <= 512));
        println!(
            "{}",
            table.row(&[
                &format!("idle worker, {name} template"),
                &worker.uss,
                &worker.pss,
                &worker.rss,
                &target,
            ])
        );
        // A template has no target: the cell is left out.
        println!(
            "{}",
            table.row(&[
                &format!("the {name} template itself"),
                &itself.uss,
                &itself.pss,
                &itself.rss,
            ])
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
