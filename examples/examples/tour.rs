//! A guided tour of fork-core, printing what it does as it goes: start-up,
//! a template preloaded with state, workers sharing that state
//! copy-on-write, spawn rates, descriptor passing, an external command and
//! exit statuses, then a summary table.
//!
//! Run: `cargo run --release --example tour` (a few seconds; also works
//! without `--release`, only slower).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fork_core::{Context, Entry, InitFn, Template};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::task::JoinSet;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ANCHOR: preload
/// Entries in the lookup table: the smallest prime factor of every number
/// below 2^22 (16 MiB of `u32`).
const TABLE_LEN: usize = 1 << 22;

/// Built once, inside the template; every worker forked from it shares it.
static TABLE: OnceLock<Vec<u32>> = OnceLock::new();
/// How long building it took (also inherited by the workers).
static BUILD_TIME: OnceLock<Duration> = OnceLock::new();

/// An init function: runs in the template, not in this process.
fn build_table(len: usize) -> Result<(), String> {
    let start = Instant::now();
    let mut smallest = vec![0u32; len];
    for i in 2..len {
        if smallest[i] == 0 {
            for j in (i..len).step_by(i) {
                if smallest[j] == 0 {
                    smallest[j] = i as u32;
                }
            }
        }
    }
    TABLE
        .set(smallest)
        .map_err(|_| "the table was built twice")?;
    BUILD_TIME
        .set(start.elapsed())
        .map_err(|_| "the table was built twice")?;
    Ok(())
}

static BUILD_TABLE: InitFn<usize> = fork_core::init_fn!(build_table);
// ANCHOR_END: preload

// ANCHOR: factorize
/// Runs in a worker: factorizes its argument with the preloaded table and
/// reports `factors`, then `build time`, then `rss shared` (KiB) on its
/// socket, one per line.
fn factorize(ctx: Context) -> std::io::Result<()> {
    let mut n: u32 = ctx.arg(0).expect("a number");
    let table = TABLE.get().expect("the template preloaded the table");
    let mut factors = Vec::new();
    while n > 1 {
        factors.push(table[n as usize].to_string());
        n /= table[n as usize];
    }
    let built = BUILD_TIME.get().expect("the build time").as_micros();
    let (rss, shared) = memory_kib()?;
    let report = format!("{}\n{built}\n{rss} {shared}\n", factors.join(" "));
    ctx.socket().write_all(report.as_bytes())
}

static FACTORIZE: Entry = fork_core::entry!(factorize);
// ANCHOR_END: factorize

/// This process's resident memory and the part of it shared with other
/// processes, in KiB.
fn memory_kib() -> std::io::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup")?;
    let field = |name: &str| -> u64 {
        let line = text.lines().find_map(|l| l.strip_prefix(name));
        line.and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((
        field("Rss:"),
        field("Shared_Clean:") + field("Shared_Dirty:"),
    ))
}

/// Does nothing: measures the cost of a fork, a start and an exit.
fn noop(_ctx: Context) {}

static NOOP: Entry = fork_core::entry!(noop);

/// Writes a line into the descriptor it was sent.
fn write_to_fd(mut ctx: Context) -> std::io::Result<()> {
    let fd = ctx.take_fds().pop().expect("a pipe");
    let line = format!(
        "hello from pid {}, through its descriptor {}\n",
        std::process::id(),
        fd.as_raw_fd()
    );
    File::from(fd).write_all(line.as_bytes())
}

static WRITE_TO_FD: Entry = fork_core::entry!(write_to_fd);

/// Exits with the code it is given.
fn exit_with(ctx: Context) -> i32 {
    ctx.arg(0).expect("an exit code")
}

static EXIT_WITH: Entry = fork_core::entry!(exit_with);

/// Waits for the parent to close the socket (or to kill it).
fn wait_for_eof(ctx: Context) -> std::io::Result<()> {
    let mut rest = Vec::new();
    ctx.socket().read_to_end(&mut rest).map(drop)
}

static WAIT_FOR_EOF: Entry = fork_core::entry!(wait_for_eof);

/// A pipe: a tokio read end for us, and a write end to send to a worker or
/// a command, in blocking mode as they expect.
fn output_pipe() -> std::io::Result<(pipe::Receiver, OwnedFd)> {
    let (writer, reader) = pipe::pipe()?;
    Ok((reader, writer.into_blocking_fd()?))
}

/// Reads a pipe to its end without blocking the runtime.
async fn read_pipe(mut reader: pipe::Receiver) -> std::io::Result<String> {
    let mut text = String::new();
    reader.read_to_string(&mut text).await?;
    Ok(text)
}

// ANCHOR: spawn_rate
/// Forks `NOOP` workers from `template` and waits for each, with `in_flight`
/// at a time, for about `budget`; returns spawns per second.
async fn spawn_rate(
    template: &Template,
    in_flight: usize,
    budget: Duration,
) -> Result<f64, BoxError> {
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..in_flight {
        let template = template.clone();
        tasks.spawn(async move {
            let mut spawned = 0u32;
            while start.elapsed() < budget {
                let mut worker = template.fork().run(&NOOP).await?;
                assert!(worker.wait().await?.success());
                spawned += 1;
            }
            Ok::<_, fork_core::Error>(spawned)
        });
    }
    let mut total = 0;
    while let Some(spawned) = tasks.join_next().await {
        total += spawned??;
    }
    Ok(f64::from(total) / start.elapsed().as_secs_f64())
}
// ANCHOR_END: spawn_rate

/// Prints a step's title and its explanation.
fn step(title: &str, text: &str) {
    println!("\n== {title}\n");
    for line in text.lines() {
        println!("   {}", line.trim());
    }
    println!();
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// ANCHOR: main
fn main() -> Result<(), BoxError> {
    // First thing in main, before any thread: in a template this call never
    // returns. It also forks the early template, a copy of this process
    // while it is still small.
    fork_core::Init::new().early_template(true).init();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(tour())
}
// ANCHOR_END: main

async fn tour() -> Result<(), BoxError> {
    let tour_start = Instant::now();
    let mut summary: Vec<(String, String)> = Vec::new();
    println!("fork-core tour: this process is pid {}", std::process::id());

    // ---------------------------------------------------------------------
    step(
        "1. A template, preloaded",
        "Template::new() starts a small, single-threaded process from this
         program's own binary (the threaded parent never forks). An init
         function runs inside it and builds a 16 MiB lookup table.",
    );
    // ANCHOR: template
    let template = Template::new()?;
    let started = Instant::now();
    template.init(&BUILD_TABLE, &TABLE_LEN);
    template.ready().await?; // the init function has run, in the template
    let ready_after = started.elapsed();
    // ANCHOR_END: template
    println!(
        "   template pid {}: table of {TABLE_LEN} entries ready after {ready_after:.0?}",
        template.id()
    );
    assert!(TABLE.get().is_none(), "this process never built the table");
    println!("   (this process has no table: TABLE.get() is None here)");

    // ---------------------------------------------------------------------
    step(
        "2. Workers share it",
        "Each worker is forked from the template with the table already in
         memory, shared copy-on-write: no worker builds or copies it.",
    );
    // ANCHOR: workers
    let numbers: [u32; 4] = [4_194_303, 4_120_819, 1_234_567, 999_983];
    let mut fork_times = Vec::new();
    let mut workers = Vec::new();
    for n in numbers {
        let started = Instant::now();
        workers.push(template.fork().arg(&n).run(&FACTORIZE).await?);
        fork_times.push(started.elapsed());
    }
    let mut reports = Vec::new();
    for worker in &mut workers {
        let mut report = String::new();
        let mut stream = worker.take_stream().expect("a socket");
        stream.read_to_string(&mut report).await?;
        reports.push(report);
    }
    for worker in &mut workers {
        assert!(worker.wait().await?.success());
    }
    // ANCHOR_END: workers
    let table_kib = (TABLE_LEN * 4 / 1024) as u64;
    let mut min_shared = u64::MAX;
    let mut build_us = 0;
    for ((n, worker), report) in numbers.iter().zip(&workers).zip(&reports) {
        let lines: Vec<&str> = report.lines().collect();
        let [factors, built, memory] = lines[..] else {
            panic!("a malformed report: {report:?}");
        };
        let factors: Vec<u32> = factors.split(' ').map(|f| f.parse().unwrap()).collect();
        assert_eq!(factors.iter().product::<u32>(), *n);
        let (rss, shared) = memory.split_once(' ').expect("rss and shared");
        let (rss, shared): (u64, u64) = (rss.parse()?, shared.parse()?);
        build_us = built.parse()?;
        min_shared = min_shared.min(shared);
        let factors: Vec<String> = factors.iter().map(u32::to_string).collect();
        println!(
            "   worker {}: {n} = {:<18} rss {}, {} shared",
            worker.id(),
            factors.join(" x "),
            mib(rss),
            mib(shared)
        );
    }
    // The table's pages are mapped in the template and in the worker.
    assert!(
        min_shared >= table_kib * 9 / 10,
        "the table should be shared: {min_shared} KiB shared, table {table_kib} KiB"
    );
    let average_fork = fork_times.iter().sum::<Duration>() / fork_times.len() as u32;
    let build = Duration::from_micros(build_us);
    println!(
        "   the template built the table once in {build:.0?}; a worker started in {average_fork:.0?} on average"
    );
    summary.push((
        "preloaded state".into(),
        format!("{} table, built once in {build:.0?}", mib(table_kib)),
    ));
    summary.push((
        "workers using it".into(),
        format!(
            "{} forked, {average_fork:.0?} each, >= {} shared",
            workers.len(),
            mib(min_shared)
        ),
    ));
    drop(workers);

    // ---------------------------------------------------------------------
    step(
        "3. Spawn rate",
        "Fork a worker that exits at once and wait for it, again and again:
         one at a time, then 8 at a time. The early template is the copy of
         this process forked by fork_core::Init before the runtime started.",
    );
    // ANCHOR: rates
    let budget = Duration::from_millis(400);
    let plain = Template::new()?;
    plain.ready().await?; // started: do not time its exec
    let early = Template::early()?;
    for (name, template) in [
        ("exec'd template", &plain),
        ("exec'd template + 16 MiB table", &template),
        ("early template", &early),
    ] {
        let sequential = spawn_rate(template, 1, budget).await?;
        let parallel = spawn_rate(template, 8, budget).await?;
        println!(
            "   {name:<31} {sequential:>6.0} spawns/s one at a time, {parallel:>6.0} with 8 in flight"
        );
        assert!(sequential > 0.0 && parallel > 0.0);
        summary.push((
            format!("spawn rate, {name}"),
            format!("{sequential:>5.0}/s one at a time, {parallel:>5.0}/s with 8 in flight"),
        ));
    }
    // ANCHOR_END: rates
    drop(plain);
    println!(
        "\n   Forking copies the template's page tables: the more memory a template\n   \
         maps, the slower it forks. Preload what the workers share, not more."
    );

    // ---------------------------------------------------------------------
    step(
        "4. Passing a descriptor",
        "Fork::fd sends a duplicate of any descriptor to one worker: here the
         write end of a pipe this process reads.",
    );
    // ANCHOR: pass_fd
    let (reader, writer) = output_pipe()?;
    let mut worker = template.fork().fd(&writer).run(&WRITE_TO_FD).await?;
    drop(writer); // the worker holds the only write end now
    let text = read_pipe(reader).await?; // to EOF: when the worker exits
    assert!(worker.wait().await?.success());
    // ANCHOR_END: pass_fd
    print!("   read from the pipe: {text}");
    assert!(text.starts_with(&format!("hello from pid {}", worker.id())));
    summary.push((
        "descriptor passing".into(),
        "a pipe, written by a worker".into(),
    ));

    // ---------------------------------------------------------------------
    step(
        "5. An external command",
        "Template::command forks from a template and execs the program there,
         with its stdout sent to a pipe of ours. Template::shared() is the
         program-wide template: here, the early one.",
    );
    // ANCHOR: command
    let (reader, writer) = output_pipe()?;
    let mut uname = Template::shared()?
        .command("uname")
        .arg("-sr")
        .stdout(&writer)
        .spawn()
        .await?;
    drop(writer);
    let output = read_pipe(reader).await?;
    let status = uname.wait().await?;
    // ANCHOR_END: command
    println!("   `uname -sr` printed {:?}, {status}", output.trim_end());
    assert!(status.success());
    assert!(output.starts_with("Linux"));
    summary.push((
        "external command".into(),
        format!("`uname -sr`: {}", output.trim_end()),
    ));

    // ---------------------------------------------------------------------
    step(
        "6. Exit statuses",
        "The template reaps its children and reports how each ended: an exit
         code, or the signal that killed it.",
    );
    // ANCHOR: statuses
    let mut exits = template.fork().arg(&7).run(&EXIT_WITH).await?;
    let exited = exits.wait().await?;
    let mut waits = template.fork().run(&WAIT_FOR_EOF).await?;
    waits.kill().await?; // SIGKILL, through the template
    let killed = waits.wait().await?;
    // ANCHOR_END: statuses
    println!("   worker returning 7: {exited}");
    println!("   worker killed:      {killed}");
    assert_eq!(exited.code(), Some(7));
    assert_eq!(killed.signal(), Some(9));
    summary.push(("exit statuses".into(), format!("{exited}; {killed}")));

    // ---------------------------------------------------------------------
    let total = tour_start.elapsed();
    println!("\n== Summary ({total:.1?} in all)\n");
    let width = summary.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (what, result) in &summary {
        println!("   {what:<width$}  {result}");
    }
    println!("\nEvery worker was waited for; the templates exit when this process does.");
    Ok(())
}
