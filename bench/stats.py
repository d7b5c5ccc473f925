"""Helpers shared by the benchmark suites (run.py, servers.py): number
formatting and the JSON report."""

import json
import math
import os
import platform
import sys
import time


def fmt_rate(x):
    if x is None:
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def geomean(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None


def write_json(path, meta, started, load_before, failures, skipped, **body):
    """The --json report: the suite's own `meta`, what every run records
    about the machine and the run, then the suite's results (`body`)."""
    doc = {
        "meta": {
            **meta,
            "python_version": platform.python_version(),
            "platform": platform.platform(),
            "skipped": skipped,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": round(time.time() - started, 1),
            "failures": failures,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        **body,
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print(f"wrote {path}", file=sys.stderr)
