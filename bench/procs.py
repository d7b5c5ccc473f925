"""Subprocess benchmarks: spawn-and-wait rate, and pipe throughput.

Same harness as micro.py (bench/run.py runs each (loop, benchmark, repeat)
in a fresh process through ``child_run``), but one operation is a whole child
process: ``await asyncio.create_subprocess_exec('/bin/true')`` then
``await proc.wait()``.  Fork/exec and the child's own run time are the same
for every loop; what differs is how the loop starts the child (its
subprocess transport; no pipes here) and how it learns that the child
exited (a pidfd, a SIGCHLD handler, or a thread per child).

``pipe_cat`` measures the pipe transports instead: one ``communicate()`` of
n MiB through ``cat`` (written to its stdin pipe, read back from its stdout
pipe); one operation is one MiB.

    python bench/procs.py spawn_c8 ferroloop [n]
"""

import asyncio
import os
import shutil
import sys

from micro import Bench, child_run as _micro_child_run

TRUE = "/bin/true" if os.path.exists("/bin/true") else shutil.which("true")
CAT = "/bin/cat" if os.path.exists("/bin/cat") else shutil.which("cat")
MIB = os.urandom(1 << 20)
CONCURRENCY = 8


async def _spawn_and_wait(count):
    exec_ = asyncio.create_subprocess_exec
    for _ in range(count):
        proc = await exec_(TRUE)
        if await proc.wait() != 0:
            raise RuntimeError(f"{TRUE} exited with {proc.returncode}")


def bench_spawn_seq(loop, n):
    """Spawns/s: one child at a time, spawn then wait."""
    loop.run_until_complete(_spawn_and_wait(n))
    return n


def bench_spawn_c8(loop, n):
    """Spawns/s: 8 tasks, each spawning and waiting for one child after another."""
    per_task = max(1, n // CONCURRENCY)

    async def main():
        await asyncio.gather(*[_spawn_and_wait(per_task) for _ in range(CONCURRENCY)])

    loop.run_until_complete(main())
    return per_task * CONCURRENCY


def bench_pipe_cat(loop, n):
    """MiB/s: one communicate() of n MiB through cat (stdin and stdout pipes)."""
    payload = MIB * n

    async def main():
        proc = await asyncio.create_subprocess_exec(
            CAT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate(payload)
        if len(out) != len(payload):
            raise RuntimeError(f"cat returned {len(out)} bytes of {len(payload)}")

    loop.run_until_complete(main())
    return n


BENCHMARKS = {
    "spawn_seq": Bench(bench_spawn_seq, 500, 30, "spawns", "spawn /bin/true + wait, 1 at a time"),
    "spawn_c8": Bench(bench_spawn_c8, 800, 40, "spawns", "spawn /bin/true + wait, 8 at a time"),
    "pipe_cat": Bench(bench_pipe_cat, 64, 16, "MiB", "communicate() of 64 MiB through cat"),
}


def child_run(loop_name, bench_name, n):
    """Warm-up of n/10 spawns, then n timed spawns, on one fresh loop (micro.py's harness)."""
    return _micro_child_run(loop_name, bench_name, n, BENCHMARKS)


if __name__ == "__main__":
    name, loop_name = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else BENCHMARKS[name].n
    r = child_run(loop_name, name, n)
    unit = BENCHMARKS[name].unit
    print(f"{name} on {loop_name}: {r['ops_per_sec']:,.0f} {unit}/s ({r['ops']} {unit} in {r['seconds']:.3f} s)")
