#!/usr/bin/env python3
"""Draw the performance chapter's summary chart from benchmark output.

    python3 book/tools/chart.py benches/results/spawn.txt \
        benches/results/rpc.txt benches/results/pool.txt [OUT.svg]

Reads the markdown result tables that `cargo bench -p benches --bench
spawn|rpc|pool` print and writes an SVG bar chart (by default
book/src/img/performance.svg, next to this script's book). Every bar is a
ratio, never an absolute time: spawns against a raw fork from the same run,
fork-rpc against plain tarpc from the same run and against Perl's published
rates, the pool against Perl's pool and against a direct worker.
Standard library only.
"""

import html
import pathlib
import sys

# Published rates of the Perl modules this project replaces (see the
# performance chapters); not measured by the benchmarks.
PERL_RPC_SERIAL = 21_000
PERL_RPC_PIPELINED = 230_000
PERL_POOL = {2: 50_000, 10: 107_000}
# The targets, in the same units.
SPAWN_TARGET = 0.9  # × raw fork, and × small parent for the 1 GiB rows
RPC_PIPELINED_TARGET = 460_000  # calls/s, 2× Perl
POOL_LOAD10_TARGET = 300_000  # jobs/s, about 3× Perl


def read_tables(path):
    """Every row of every `| measurement |` table in a file, by measurement."""
    rows, header = {}, None
    for line in pathlib.Path(path).read_text().splitlines():
        line = line.strip()
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "measurement" or cells[:2] == ["part", "measurement"]:
            header = cells
        elif header and not set(line) <= set("|-: "):
            row = dict(zip(header, cells))
            if "measurement" in row:
                rows[row["measurement"]] = row
    if not rows:
        sys.exit(f"{path}: no `| measurement |` table found")
    return rows


def rate(rows, name, path):
    """The median rate (first numeric column after the name) of one row."""
    if name not in rows:
        sys.exit(f"{path}: no row {name!r}")
    row = rows[name]
    for key, value in row.items():
        if "(median)" in key:
            return float(value)
    sys.exit(f"{path}: row {name!r} has no median column")


def collect(spawn_path, rpc_path, pool_path):
    """The chart as sections of groups of rows of (series, ratio) bars."""
    s = read_tables(spawn_path)
    r = read_tables(rpc_path)
    p = read_tables(pool_path)
    sp = lambda name: rate(s, name, spawn_path)
    rp = lambda name: rate(r, name, rpc_path)
    pp = lambda name: rate(p, name, pool_path)

    raw = sp("raw fork, small parent (the limit)")
    templates = [("exec'd template", "exec'd"), ("early template", "early")]
    spawn_rows = []
    for label, mode in [("one at a time", "sequential"), ("4 in flight", "4 in flight"),
                        ("16 in flight", "16 in flight")]:
        spawn_rows.append((label, [sp(f"spawn, {t}, {mode}") / raw for t, _ in templates]))
    big_rows = []
    for label, mode in [("one at a time", "sequential"), ("16 in flight", "16 in flight")]:
        big_rows.append((label, [sp(f"spawn, {t}, {mode}, 1 GiB parent") / sp(f"spawn, {t}, {mode}")
                                 for t, _ in templates]))

    kinds = ["fork-rpc sync", "fork-rpc async"]
    setups = [("serial, multi-thread", "one at a time, multi-thread parent"),
              ("64 in flight, multi-thread", "64 in flight, multi-thread parent"),
              ("256 in flight, multi-thread", "256 in flight, multi-thread parent"),
              ("serial, current_thread", "one at a time, current_thread parent"),
              ("256 in flight, current_thread", "256 in flight, current_thread parent")]
    tarpc_rows = [(label, [rp(f"{k}, {setup}") / rp(f"plain tarpc, {setup}") for k in kinds])
                  for setup, label in setups]
    serial = [x for x in setups if x[0].startswith("serial")]
    piped = [x for x in setups if not x[0].startswith("serial")]
    perl_serial_rows = [(label, [rp(f"{k}, {setup}") / PERL_RPC_SERIAL for k in kinds])
                        for setup, label in serial]
    perl_piped_rows = [(label, [rp(f"{k}, {setup}") / PERL_RPC_PIPELINED for k in kinds])
                       for setup, label in piped]

    runtimes = ["multi-thread", "current_thread"]
    pool = lambda load, rt: pp(f"pool, 2 workers, load {load}, 256 in flight, {rt}")
    direct = lambda rt: pp(f"direct worker, 256 in flight, {rt}")
    pool_perl_rows = [(f"load {load}", [pool(load, rt) / PERL_POOL[load] for rt in runtimes])
                      for load in (2,)]
    pool_perl10_rows = [("load 10", [pool(10, rt) / PERL_POOL[10] for rt in runtimes])]
    pool_direct_rows = [(f"load {load}", [pool(load, rt) / direct(rt) for rt in runtimes])
                        for load in (1, 2, 10)]

    blue, orange = "#3b6fb6", "#e08a2c"
    return [
        dict(title="Spawning a worker (spawn.txt)",
             series=[("exec'd template", blue), ("early template", orange)],
             groups=[
                 dict(caption="spawns/s ÷ raw fork()+waitpid from a small parent, same run",
                      rows=spawn_rows,
                      target=(SPAWN_TARGET, f"target ≥ {SPAWN_TARGET:g}× raw", 0)),
                 dict(caption="spawns/s with a 1 GiB parent ÷ the same spawn with a small parent",
                      rows=big_rows,
                      target=(SPAWN_TARGET, f"target ≥ {SPAWN_TARGET:g}× small parent", 0)),
             ]),
        dict(title="Calling a worker: fork-rpc (rpc.txt)",
             series=[("fork-rpc sync", blue), ("fork-rpc async", orange)],
             groups=[
                 dict(caption="calls/s ÷ plain tarpc over the same socket, same run",
                      rows=tarpc_rows),
                 dict(caption=f"calls/s ÷ Perl AnyEvent::Fork::RPC (published: {PERL_RPC_SERIAL // 1000}k/s "
                              f"serial, {PERL_RPC_PIPELINED // 1000}k/s pipelined)",
                      rows=perl_serial_rows + perl_piped_rows,
                      target=(RPC_PIPELINED_TARGET / PERL_RPC_PIPELINED,
                              f"target {RPC_PIPELINED_TARGET // 1000}k/s = "
                              f"{RPC_PIPELINED_TARGET / PERL_RPC_PIPELINED:g}× Perl (pipelined)",
                              len(perl_serial_rows))),
             ]),
        dict(title="A pool of 2 workers, 256 jobs at once (pool.txt)",
             series=[("multi-thread parent", blue), ("current_thread parent", orange)],
             groups=[
                 dict(caption=f"jobs/s ÷ Perl AnyEvent::Fork::Pool at the same load (published: "
                              f"{PERL_POOL[2] // 1000}k/s at load 2, {PERL_POOL[10] // 1000}k/s at load 10)",
                      rows=pool_perl_rows + pool_perl10_rows,
                      target=(POOL_LOAD10_TARGET / PERL_POOL[10],
                              f"target {POOL_LOAD10_TARGET // 1000}k/s at load 10 ≈ 3× Perl "
                              f"({POOL_LOAD10_TARGET / PERL_POOL[10]:.1f}×)",
                              len(pool_perl_rows))),
                 dict(caption="jobs/s ÷ one worker called directly (no pool), same run",
                      rows=pool_direct_rows),
             ]),
    ]


def render(sections):
    W = 900
    LABEL_W = 300  # row labels end here
    X0, X1 = LABEL_W + 12, W - 60
    CAPTION_X = 120  # group captions may run left of the bars
    XMAX = 3.0
    BAR_H, BAR_GAP, ROW_GAP = 12, 2, 9
    ROW_H = 2 * BAR_H + BAR_GAP + ROW_GAP
    FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"
    x = lambda ratio: X0 + (X1 - X0) * min(ratio, XMAX) / XMAX
    esc = lambda text: html.escape(text, quote=True)
    out = []
    add = out.append
    y = 34
    add(f"<text x='{W / 2}' y='{y}' text-anchor='middle' font-size='19' font-weight='bold' "
        f"fill='#222'>fork-core performance, as ratios (1× = as fast as the reference)</text>")
    y += 20
    add(f"<text x='{W / 2}' y='{y}' text-anchor='middle' font-size='12.5' fill='#555'>"
        f"medians from one full run of each benchmark; red dashes: the project's targets; "
        f"bars longer than {XMAX:g}× are cut</text>")
    y += 14
    for section in sections:
        y += 36
        add(f"<text x='16' y='{y}' font-size='16' font-weight='bold' fill='#222'>"
            f"{esc(section['title'])}</text>")
        # Legend, right-aligned on the title line.
        lx = W - 20
        for name, colour in reversed(section["series"]):
            tw = 7.0 * len(name)
            lx -= tw
            add(f"<text x='{lx:.1f}' y='{y}' font-size='12.5' fill='#333'>{esc(name)}</text>")
            lx -= 18
            add(f"<rect x='{lx:.1f}' y='{y - 10}' width='13' height='11' fill='{colour}'/>")
            lx -= 16
        for group in section["groups"]:
            y += 24
            add(f"<text x='{CAPTION_X}' y='{y}' font-size='13' font-style='italic' fill='#333'>"
                f"{esc(group['caption'])}</text>")
            y += 8
            top = y
            bottom = top + len(group["rows"]) * ROW_H - ROW_GAP + 4
            # Axis ticks: light grid every 0.5×, the 1× reference darker.
            t = 0.0
            while t <= XMAX + 1e-9:
                stroke = "#777" if t == 1 else "#e3e3e3"
                width = 1.3 if t == 1 else 1
                add(f"<line x1='{x(t):.1f}' y1='{top - 2}' x2='{x(t):.1f}' y2='{bottom}' "
                    f"stroke='{stroke}' stroke-width='{width}'/>")
                t += 0.5
            for label, ratios in group["rows"]:
                add(f"<text x='{LABEL_W}' y='{y + BAR_H + 4}' text-anchor='end' font-size='13' "
                    f"fill='#222'>{esc(label)}</text>")
                for (name, colour), ratio in zip(section["series"], ratios):
                    w = x(ratio) - X0
                    add(f"<rect x='{X0}' y='{y}' width='{w:.1f}' height='{BAR_H}' fill='{colour}'>"
                        f"<title>{esc(label)}, {esc(name)}: {ratio:.2f}×</title></rect>")
                    add(f"<text x='{x(ratio) + 4:.1f}' y='{y + BAR_H - 2}' font-size='11' "
                        f"fill='#222' stroke='#fcfcfa' stroke-width='3' paint-order='stroke'>{ratio:.2f}×</text>")
                    y += BAR_H + BAR_GAP
                y += ROW_GAP - BAR_GAP
            if "target" in group:
                # The line spans the rows from `first` on (a target may hold
                # for only some of a group's rows).
                value, text, first = group["target"]
                ty = top + first * ROW_H
                tx = x(value)
                add(f"<line x1='{tx:.1f}' y1='{ty - 4}' x2='{tx:.1f}' y2='{bottom + 2}' "
                    f"stroke='#d62728' stroke-width='2' stroke-dasharray='6,3'/>")
                anchor, lx = ("end", tx - 5) if tx > X1 - 200 else ("start", tx + 5)
                add(f"<text x='{lx:.1f}' y='{bottom + 14}' text-anchor='{anchor}' font-size='11.5' "
                    f"fill='#d62728'>{esc(text)}</text>")
            y = bottom + (12 if "target" in group else 0)
    # The shared axis at the bottom.
    y += 14
    add(f"<line x1='{X0}' y1='{y}' x2='{X1}' y2='{y}' stroke='#555'/>")
    t = 0.0
    while t <= XMAX + 1e-9:
        add(f"<line x1='{x(t):.1f}' y1='{y}' x2='{x(t):.1f}' y2='{y + 5}' stroke='#555'/>")
        add(f"<text x='{x(t):.1f}' y='{y + 19}' text-anchor='middle' font-size='12' "
            f"fill='#333'>{t:g}×</text>")
        t += 0.5
    y += 40
    head = (f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{y}' "
            f"viewBox='0 0 {W} {y}' {FONT}>\n"
            f"<title>fork-core performance as ratios</title>\n"
            f"<rect width='100%' height='100%' fill='#fcfcfa'/>\n")
    return head + "\n".join(out) + "\n</svg>\n"


def main(argv):
    if len(argv) not in (4, 5):
        sys.exit(__doc__)
    out = pathlib.Path(argv[4]) if len(argv) == 5 else \
        pathlib.Path(__file__).resolve().parent.parent / "src" / "img" / "performance.svg"
    svg = render(collect(*argv[1:4]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(svg)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv)
