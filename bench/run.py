#!/usr/bin/env python3
"""Benchmark driver: ferroloop vs uvloop vs stdlib asyncio.

    python bench/run.py                      # all benchmarks, 5 repeats
    python bench/run.py --quick              # CI smoke run (seconds, not numbers)
    python bench/run.py --only call_soon,queue --repeats 9 --json out.json

Every (loop, benchmark, repeat) runs in a fresh child process (this same
script with --child), so no loop inherits another one's heap, caches or
imports.  Repeats are interleaved across loops (A B C A B C ...) so slow
drifts of the machine hit every loop alike; the median of the repeats is
reported.  See bench/README.md.

Suites: micro.py (the loop's own overhead) and procs.py (subprocess
spawn-and-wait rate), each with its own geometric means.  Every module named
in SUITES lives in bench/ and provides ``BENCHMARKS`` (name -> object with
.n, .quick_n, .unit, .what) and
``child_run(loop_name, bench_name, n) -> {"ops", "seconds", "ops_per_sec"}``,
which runs inside the child process and may itself start more processes
(e.g. a server pinned with taskset and a load generator).
"""

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import loops  # noqa: E402
from stats import fmt_rate, geomean, write_json  # noqa: E402

# Modules in bench/ that hold benchmarks, in report order.
SUITES = ("micro", "procs")

# The ratios reported per benchmark and as geometric means: (numerator, denominator).
RATIOS = (("ferroloop", "uvloop"), ("ferroloop", "asyncio"), ("uvloop", "asyncio"))
SHORT = {"ferroloop": "fl", "uvloop": "uv", "asyncio": "aio"}


# --------------------------------------------------------------------------
# Child side
# --------------------------------------------------------------------------


def _child_main(argv):
    """--child SUITE BENCH LOOP N [CPU]  -> one JSON line on stdout.
    --probe LOOP                        -> loop description on stdout."""
    if argv[0] == "--probe":
        loop = loops.new_loop(argv[1])
        loop.run_until_complete(_probe_coro())
        loop.close()
        print(loops.describe(argv[1]))
        return 0
    suite, bench, loop_name, n = argv[1], argv[2], argv[3], int(argv[4])
    if len(argv) > 5:
        os.sched_setaffinity(0, {int(argv[5])})
    mod = importlib.import_module(suite)
    result = mod.child_run(loop_name, bench, n)
    sys.stdout.flush()
    print(json.dumps(result))
    return 0


async def _probe_coro():
    import asyncio

    await asyncio.sleep(0)


# --------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------


def _last_line(text):
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def probe(python, loop_name):
    """Return (ok, description-or-reason)."""
    try:
        p = subprocess.run(
            [python, os.path.abspath(__file__), "--probe", loop_name],
            capture_output=True, text=True, timeout=60,
        )
    except subprocess.TimeoutExpired:
        return False, "timed out creating a loop"
    if p.returncode != 0:
        return False, _last_line(p.stderr) or f"exit code {p.returncode}"
    return True, _last_line(p.stdout)


def run_child(python, suite, bench, loop_name, n, pin, timeout):
    """Return (result dict or None, error string or None)."""
    cmd = [python, os.path.abspath(__file__), "--child", suite, bench, loop_name, str(n)]
    if pin is not None:
        cmd.append(str(pin))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:g} s"
    for ln in p.stderr.strip().splitlines():
        print(f"    [{loop_name} {bench}] {ln}", file=sys.stderr)
    if p.returncode != 0:
        why = f"exit code {p.returncode}"
        if p.returncode < 0:
            why = f"killed by signal {-p.returncode}"
        return None, f"{why}: {_last_line(p.stderr)}"
    try:
        return json.loads(_last_line(p.stdout)), None
    except ValueError:
        return None, f"no result in output: {_last_line(p.stdout)!r}"


def fmt_cell(stats):
    if not stats or stats.get("value") is None:
        return "FAILED" if stats and stats.get("errors") else "-"
    return f"{fmt_rate(stats['value'])} ±{stats['spread_pct']:.0f}%"


def summarize(samples, errors, stat):
    st = {"samples": samples, "errors": errors}
    if samples:
        med = statistics.median(samples)
        st.update(
            median=med,
            min=min(samples),
            max=max(samples),
            # Half the min-max range, relative to the median.
            spread_pct=100.0 * (max(samples) - min(samples)) / 2 / med,
        )
        st["value"] = med if stat == "median" else max(samples)
    else:
        st.update(median=None, value=None)
    return st


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="Event-loop benchmarks: ferroloop vs uvloop vs asyncio "
        "(fresh process per run, repeats interleaved, medians reported).",
    )
    ap.add_argument("--loops", default=",".join(loops.LOOP_NAMES),
                    help="comma-separated loops to compare (default: %(default)s)")
    ap.add_argument("--only", default="",
                    help="comma-separated benchmark names (default: all; see --list)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs per (loop, benchmark); median reported (default 5, 2 with --quick)")
    ap.add_argument("--stat", choices=("median", "best"), default="median",
                    help="statistic of the repeats to report and compare: median (default) "
                    "or best (highest throughput; steadier on a machine with background load)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny runs: checks that everything works, numbers are meaningless")
    ap.add_argument("--json", metavar="FILE", help="also write all samples and results as JSON")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter for the child processes (default: this one)")
    ap.add_argument("--pin", type=int, metavar="CPU",
                    help="pin each child process to this CPU (sched_setaffinity)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply every benchmark's operation count (default 1)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds before a child run counts as hung (default 120, 60 with --quick)")
    ap.add_argument("--require", action="store_true",
                    help="fail instead of skipping when a requested loop cannot be imported")
    ap.add_argument("--list", action="store_true", help="list benchmarks and exit")
    ap.add_argument("--suite", choices=("micro", "servers"), default="micro",
                    help="micro (default): these microbenchmarks; servers: the server suite "
                    "of bench/servers.py, with its own options (see --suite servers --help)")
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.timeout is None:
        args.timeout = 60.0 if args.quick else 120.0
    return ap, args


def main(argv):
    # --suite servers hands everything else to bench/servers.py (its own options).
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--suite", choices=("micro", "servers"), default="micro")
    suite, argv = pre.parse_known_args(argv)
    if suite.suite == "servers":
        import servers

        return servers.main(argv)
    ap, args = parse_args(argv)

    benches = []  # (suite, name, bench)
    for suite in SUITES:
        mod = importlib.import_module(suite)
        for name, b in mod.BENCHMARKS.items():
            benches.append((suite, name, b))

    if args.list:
        for suite, name, b in benches:
            print(f"{name:14} {suite:6} n={b.n:<10,} {b.unit:10} {b.what}")
        return 0

    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        known = {name for _, name, _ in benches}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            ap.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        benches = [t for t in benches if t[1] in wanted]

    requested = [x.strip() for x in args.loops.split(",") if x.strip()]
    bad = [x for x in requested if x not in loops.FACTORIES]
    if bad:
        ap.error(f"unknown loop(s): {', '.join(bad)}; known: {', '.join(loops.FACTORIES)}")

    descriptions, skipped = {}, {}
    for name in requested:
        ok, info = probe(args.python, name)
        if ok:
            descriptions[name] = info
        else:
            skipped[name] = info
            print(f"skipping {name}: not usable with {args.python}: {info}", file=sys.stderr)
    if "ferroloop" in skipped:
        venv_py = os.path.join(os.path.dirname(HERE), ".venvs", "py3.11", "bin", "python")
        if os.path.exists(venv_py) and os.path.abspath(venv_py) != os.path.abspath(args.python):
            print(f"  (hint: scripts/build.sh installs ferroloop into {venv_py}; "
                  f"run the driver with that interpreter or pass --python)", file=sys.stderr)
    active = [x for x in requested if x in descriptions]
    if not active:
        print("no usable event loop", file=sys.stderr)
        return 1
    if skipped and args.require:
        return 1

    print(f"python: {args.python} ({platform.python_implementation()} "
          f"{platform.python_version()} driver), {os.cpu_count()} CPUs, "
          f"{args.repeats} repeats{', QUICK' if args.quick else ''}", file=sys.stderr)
    for name in active:
        print(f"  {name}: {descriptions[name]}", file=sys.stderr)

    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        print(f"warning: load average {load_before[0]:.2f} on {os.cpu_count()} CPUs before "
              f"starting: other work is running, expect noisy numbers", file=sys.stderr)
    started = time.time()
    results = {}
    failures = 0
    for i, (suite, name, b) in enumerate(benches, 1):
        n = max(1, int((b.quick_n if args.quick else b.n) * args.scale))
        samples = {lp: [] for lp in active}
        seconds = {lp: [] for lp in active}
        errors = {lp: [] for lp in active}
        t0 = time.perf_counter()
        for _rep in range(args.repeats):
            for lp in active:  # interleaved: A B C A B C ...
                if errors[lp]:
                    continue  # failed once: don't spend more time on it
                res, err = run_child(args.python, suite, name, lp, n, args.pin, args.timeout)
                if err:
                    failures += 1
                    errors[lp].append(err)
                    print(f"  {name} on {lp} FAILED: {err} (no more repeats of it)",
                          file=sys.stderr)
                else:
                    samples[lp].append(res["ops_per_sec"])
                    seconds[lp].append(res["seconds"])
        entry = {"suite": suite, "n": n, "unit": b.unit, "what": b.what, "loops": {}}
        for lp in active:
            st = summarize(samples[lp], errors[lp], args.stat)
            st["seconds"] = seconds[lp]
            entry["loops"][lp] = st
        entry["ratios"] = {}
        for a, c in RATIOS:
            ma = entry["loops"].get(a, {}).get("value")
            mc = entry["loops"].get(c, {}).get("value")
            if ma and mc:
                entry["ratios"][f"{a}/{c}"] = ma / mc
        results[name] = entry
        cells = "  ".join(f"{lp} {fmt_cell(entry['loops'][lp])}" for lp in active)
        print(f"[{i}/{len(benches)}] {name}: {cells}  ({time.perf_counter() - t0:.1f} s)",
              file=sys.stderr)

    # ---- report --------------------------------------------------------
    # One block of rows per suite, each with its own geometric means: a suite's
    # ratios (e.g. procs' spawn rates) say nothing about another suite's.
    ratio_keys = [f"{a}/{c}" for a, c in RATIOS if a in active and c in active]
    ran = [s for s in SUITES if any(r["suite"] == s for r in results.values())]
    gm = {s: {k: geomean([r["ratios"].get(k) for r in results.values() if r["suite"] == s])
              for k in ratio_keys} for s in ran}

    head = ["benchmark", "unit"] + [f"{lp} /s" for lp in active] + [
        "/".join(SHORT[p] for p in k.split("/")) for k in ratio_keys]
    blocks = []  # (rows, geomean row or None) per suite
    for s in ran:
        rows = []
        for name, r in results.items():
            if r["suite"] == s:
                row = [name, r["unit"]] + [fmt_cell(r["loops"][lp]) for lp in active]
                row += [f"{r['ratios'][k]:.2f}" if k in r["ratios"] else "-" for k in ratio_keys]
                rows.append(row)
        foot = ([f"geomean {s}" if len(ran) > 1 else "geomean", ""] + [""] * len(active) +
                [f"{gm[s][k]:.2f}" if gm[s][k] else "-" for k in ratio_keys]) if ratio_keys else None
        blocks.append((rows, foot))
    every = [head] + [x for rows, foot in blocks for x in rows + [foot] if x]
    widths = [max(len(str(x[j])) for x in every) for j in range(len(head))]

    def line(cols):
        return "  ".join(str(c).ljust(w) if j < 2 else str(c).rjust(w)
                         for j, (c, w) in enumerate(zip(cols, widths)))

    print()
    print(f"{args.stat} throughput (ops/s) of {args.repeats} runs (±: half the min-max spread)"
          + ("  [--quick: not meaningful]" if args.quick else ""))
    print(line(head))
    print("  ".join("-" * w for w in widths))
    for i, (rows, foot) in enumerate(blocks):
        if i:
            print()
        for row in rows:
            print(line(row))
        if foot:
            print("  ".join("-" * w for w in widths))
            print(line(foot))
    print()
    for s in ran:
        label = f" ({s})" if len(ran) > 1 else ""
        g = gm[s].get("ferroloop/uvloop")
        if "ferroloop/uvloop" not in gm[s]:
            print(f"geometric mean ferroloop/uvloop{label}: n/a (needs both loops)")
        else:
            print(f"geometric mean ferroloop/uvloop{label}: " + (f"{g:.3f}" if g else "n/a"))
    if skipped:
        print("skipped: " + ", ".join(f"{k} ({v})" for k, v in skipped.items()))
    if failures:
        print(f"{failures} run(s) FAILED (see above)")

    if args.json:
        meta = {
            "python": args.python,
            "cpu_count": os.cpu_count(),
            "repeats": args.repeats,
            "stat": args.stat,
            "quick": args.quick,
            "scale": args.scale,
            "pin": args.pin,
            "loops": descriptions,
        }
        write_json(args.json, meta, started, load_before, failures, skipped,
                   benchmarks=results, geomean=gm)

    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("--child", "--probe"):
        sys.exit(_child_main(sys.argv[1:]))
    sys.exit(main(sys.argv[1:]))
