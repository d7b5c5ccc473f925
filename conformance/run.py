#!/usr/bin/env python3
"""Run CPython's own test.test_asyncio suite against ferroloop (or the stdlib loop).

    python conformance/run.py [FILE ...] [--loop ferroloop|asyncio] [-k PAT]
                              [--jobs N] [--timeout S] [--json OUT] [--compare]
                              [--update-expected]

Run it with the interpreter under test (e.g. .venvs/py3.12/bin/python).  See README.md.
"""
import argparse
import collections
import concurrent.futures
import importlib.util
import json
import re
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKER = HERE / 'worker.py'
PYVER = '%d.%d' % sys.version_info[:2]
# Files that only test stdlib internals (mocked selectors, proactor, base loop
# internals, ...): runnable when named explicitly but not part of the default set.
STDLIB_INTERNAL = {
    'test_base_events', 'test_selector_events', 'test_proactor_events',
    'test_windows_events', 'test_windows_utils', 'test_pep492', 'test_runners',
    'test_protocols', 'test_transports', 'test_futures',
}
# Longest files first so --jobs packs well.
SLOW_FIRST = ['test_events', 'test_tasks', 'test_subprocess', 'test_streams',
              'test_sslproto', 'test_ssl', 'test_sendfile', 'test_unix_events',
              'test_sock_lowlevel', 'test_locks', 'test_server']
# Files that legitimately never create a real loop on some versions (they only use
# test_utils.TestLoop), so the "loop under test never created" check is waived.
TESTLOOP_ONLY = {('3.10', 'test_queues')}
FAILING = ('fail', 'error', 'timeout')
GRACE = 5.0           # seconds between the worker's faulthandler dump and the kill
MAX_RESTARTS = 100
print_lock = threading.Lock()


def log(*a):
    with print_lock:
        print(*a, flush=True)


# ---------------------------------------------------------------- test files

def all_files():
    spec = importlib.util.find_spec('test.test_asyncio')
    if spec is None:
        sys.exit(f'{sys.executable} has no test.test_asyncio (install the test package)')
    d = Path(list(spec.submodule_search_locations)[0])
    return sorted(p.stem for p in d.glob('test_*.py'))


def select_files(names):
    available = all_files()
    if not names:
        files = [f for f in available if f not in STDLIB_INTERNAL]
    else:
        files = []
        for n in names:
            n = Path(n).stem if n.endswith('.py') else n.rsplit('.', 1)[-1]
            if n in available:
                files.append(n)
            else:   # e.g. test_taskgroups on 3.10: warn, so one list works on all versions
                print(f'warning: no {n!r} in Python {PYVER}; available: {" ".join(available)}',
                      file=sys.stderr)
        if not files:
            sys.exit('no test files to run')
    rank = {f: i for i, f in enumerate(SLOW_FIRST)}
    return sorted(dict.fromkeys(files), key=lambda f: (rank.get(f, len(rank)), f))


# ---------------------------------------------------------------- expected failures

def expected_path(loop, override=None):
    if override:
        return Path(override)
    name = f'{PYVER}.txt' if loop == 'ferroloop' else f'{loop}-{PYVER}.txt'
    return HERE / 'expected' / name


def load_expected(path):
    """{test id: reason} from lines 'test_x.Cls.test_y  # reason'."""
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            tid, _, reason = line.partition('#')
            if tid.strip():
                out[tid.strip()] = reason.strip()
    return out


# Loop methods that later issues implement; a test that fails because one of
# them raises NotImplementedError gets this reason in --update-expected.
PENDING_WORK = {
    **dict.fromkeys(['create_connection', 'create_server', 'create_unix_connection',
                     'create_unix_server', 'connect_accepted_socket',
                     'create_datagram_endpoint', 'sendfile', 'sock_sendfile'],
                    'transports/servers not implemented yet (issue 3)'),
    **dict.fromkeys(['subprocess_exec', 'subprocess_shell', 'connect_read_pipe',
                     'connect_write_pipe', 'start_tls'],
                    'pipes/subprocesses/TLS not implemented yet (issue 4)'),
}


def pending_reason(tid, test):
    m = re.search(r'NotImplementedError in (\w+)', headline(test))
    if not (m and m.group(1) in PENDING_WORK):
        return None
    if 'ssl' in tid.lower() or 'tls' in tid.lower():
        return 'TLS not implemented yet (issue 4)'
    return f'{PENDING_WORK[m.group(1)]}: {m.group(1)}'


def write_expected(path, loop, expected, results, patterns):
    """Replace the entries of the tests that ran with the current failures."""
    ran = {tid for fr in results.values() for tid in fr['tests']}
    new = {}
    for tid, reason in expected.items():
        module = tid.split('.', 1)[0]
        if module not in results or (patterns and tid not in ran):
            new[tid] = reason                       # not covered by this run: keep
    for fr in results.values():
        for tid, t in fr['tests'].items():
            if t['status'] in FAILING:
                new[tid] = expected.get(tid) or pending_reason(tid, t) or f'TODO reason ({t["status"]})'
    path.parent.mkdir(parents=True, exist_ok=True)
    width = max((len(t) for t in new), default=0)
    lines = [f'# Expected failures of test.test_asyncio on Python {PYVER} with loop={loop}.',
             '# One test id per line, then "# reason". Maintained by humans; refresh with',
             f'#   python conformance/run.py --loop {loop} --update-expected',
             *(f'{tid:<{width}}  # {new[tid]}' for tid in sorted(new))]
    path.write_text('\n'.join(lines) + '\n')
    log(f'wrote {len(new)} entries to {path}')


# ---------------------------------------------------------------- running one file

def _tail_of_log(log_path, tid, limit=3000):
    text = log_path.read_text(errors='replace')
    i = text.rfind(f'--- {tid}\n')
    return text[i:][-limit:] if i >= 0 else text[-limit:]


def run_file(module, loop, timeout, patterns, logdir):
    """Run one file in worker subprocesses; restart past hung or crashed tests."""
    tests = {}                  # id -> {'status', 'msg', 'dur'}
    target, other = 0, collections.Counter()
    file_error = None
    t_start = time.monotonic()
    log_path = logdir / f'{module}.log'
    with open(log_path, 'w') as logf:
        for _ in range(MAX_RESTARTS):
            cfg = {'module': module, 'loop': loop, 'timeout': timeout,
                   'skip': list(tests), 'patterns': patterns}
            outcome, cur, snap, progressed, rc = _run_worker(cfg, tests, logf, timeout)
            target += snap.get('target', 0)
            other.update(snap.get('other', {}))
            if outcome == 'done':
                break
            logf.flush()
            if outcome == 'timeout':
                what = f'hung for more than {timeout}s; killed. Stack dump:\n'
            else:
                what = f'worker died (exit code {rc}) during this test. Log tail:\n'
            status = 'timeout' if outcome == 'timeout' else 'error'
            if cur is not None:
                tests[cur] = {'status': status, 'msg': what + _tail_of_log(log_path, cur),
                              'dur': timeout}
                progressed = True
            elif progressed:   # between tests: a class/module fixture hung or crashed
                tests[f'{module}.<fixture>'] = {
                    'status': status, 'msg': what + _tail_of_log(log_path, '@@'), 'dur': 0}
            if not progressed:
                file_error = (f'worker {"hung" if outcome == "timeout" else f"died (rc={rc})"}'
                              f' outside any test; see {log_path}')
                break
            print(f'=== restarting worker after {outcome} ===', file=logf, flush=True)
        else:
            file_error = 'too many worker restarts'
        # tests whose worker was started at least once but never reached are absent.
    return {'tests': tests, 'target_loops': target, 'other_loops': dict(other),
            'file_error': file_error, 'seconds': round(time.monotonic() - t_start, 1),
            'log': str(log_path)}


def _run_worker(cfg, sink, logf, timeout):
    """Run one worker; store its results in sink.

    -> (outcome 'done'|'timeout'|'crash', id of the unfinished test or None,
        last loop-count snapshot, whether any result arrived, exit code)
    """
    r, w = os.pipe()
    cwd = tempfile.mkdtemp(prefix=f'conf-{cfg["module"]}-')
    env = dict(os.environ, CONFORMANCE_FD=str(w))
    proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE,
                            stdout=logf, stderr=subprocess.STDOUT, pass_fds=(w,),
                            env=env, cwd=cwd, start_new_session=True)
    os.close(w)
    cur, snap, progressed, outcome, buf = None, {}, False, None, b''
    last = time.monotonic()
    try:
        proc.stdin.write(json.dumps(cfg).encode())
        proc.stdin.close()
        while outcome is None:
            left = last + timeout + GRACE - time.monotonic()
            if left <= 0:
                outcome = 'timeout'
                break
            if not select.select([r], [], [], min(left, 1.0))[0]:
                if proc.poll() is not None:
                    outcome = 'crash'     # died, but a forked child keeps the pipe open
                continue
            data = os.read(r, 1 << 16)
            if not data:
                outcome = 'crash'
                break
            *lines, buf = (buf + data).split(b'\n')
            for line in lines:
                msg = json.loads(line)
                last = time.monotonic()
                snap = msg.get('loops', snap)
                if msg['ev'] == 'start':
                    cur = msg['id']
                elif msg['ev'] == 'result':
                    sink[msg['id']] = {k: msg[k] for k in ('status', 'msg', 'dur')}
                    cur, progressed = None, True
                elif msg['ev'] == 'done':
                    outcome = 'done'
        if outcome == 'done':
            try:
                proc.wait(timeout=30)     # let it run atexit handlers
            except subprocess.TimeoutExpired:
                pass
    finally:
        os.close(r)
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # worker and anything it left behind
        except ProcessLookupError:
            pass
        rc = proc.wait()
        shutil.rmtree(cwd, ignore_errors=True)
    return outcome, cur, snap, progressed, rc


# ---------------------------------------------------------------- summarising

def summarise(module, fr, expected):
    """Add per-file counts. fail/error/timeout count only tests NOT in the expected list."""
    c = collections.Counter()
    for tid, t in fr['tests'].items():
        st = t['status']
        if st in FAILING and tid in expected:
            c['xfail'] += 1
        else:
            c[st] += 1
            if st == 'pass' and tid in expected:
                c['xpass'] += 1
    ran = c['pass'] + c['fail'] + c['error'] + c['timeout'] + c['xfail']
    counted = module not in STDLIB_INTERNAL
    if fr['file_error']:
        status = 'ERROR'
    elif (counted and ran and not fr['target_loops'] and
          not ((PYVER, module) in TESTLOOP_ONLY and set(fr['other_loops']) <= {'TestLoop'})):
        status = 'ERROR'
        fr['file_error'] = ('the loop under test was never created: the file ran '
                            'entirely on other loops')
    elif c['fail'] or c['error'] or c['timeout']:
        status = 'FAIL'
    else:
        status = 'ok'
    fr.update(counts=dict(c), status=status, counted=counted)
    return fr


COLS = ['pass', 'fail', 'error', 'skip', 'xfail', 'timeout', 'xpass']


def print_table(results, loop):
    head = ['file'] + COLS + [f'{loop}-loops', 'other-loops', 'secs', 'status']
    rows, tot = [], collections.Counter()
    for module, fr in results.items():
        c = fr['counts']
        other = sum(fr['other_loops'].values())
        row = [module + ('' if fr['counted'] else ' (stdlib-internal)')]
        row += [c.get(k, 0) for k in COLS] + [fr['target_loops'], other, fr['seconds'],
                                             fr['status']]
        rows.append(row)
        tot.update({k: c.get(k, 0) for k in COLS})
        tot.update(target=fr['target_loops'], other=other, secs=fr['seconds'])
    bad = sum(fr['status'] != 'ok' for fr in results.values())
    rows.append(['TOTAL'] + [tot[k] for k in COLS] +
                [tot['target'], tot['other'], round(tot['secs'], 1),
                 'ok' if not bad else f'{bad} bad'])
    _print_rows(head, rows)


def _print_rows(head, rows):
    rows = [head] + [[str(x) for x in r] for r in rows]
    w = [max(len(r[i]) for r in rows) for i in range(len(head))]
    fmt = lambda r: '  '.join(x.ljust(w[0]) if i == 0 else x.rjust(w[i])
                              for i, x in enumerate(r))
    print(fmt(rows[0]))
    print('-' * len(fmt(rows[0])))
    for r in rows[1:-1]:
        print(fmt(r))
    print('-' * len(fmt(rows[0])))
    print(fmt(rows[-1]))


def headline(t):
    """One line for a failure: the exception line, or our own note for hangs/crashes."""
    lines = [l for l in t['msg'].strip().splitlines() if l.strip()]
    if not lines:
        return ''
    if t['status'] == 'timeout' or lines[0].startswith('worker died'):
        return lines[0].strip()[:160]
    line = lines[-1].strip()
    frames = [l.strip() for l in lines if l.strip().startswith('File "')]
    if ':' not in line and frames:      # bare "NotImplementedError": say where
        line += ' in ' + frames[-1].rsplit(' in ', 1)[-1]
    return line[:160]


def print_details(results, expected, verbose, limit=50):
    for module, fr in results.items():
        if fr['file_error']:
            print(f'FILE ERROR {module}: {fr["file_error"]} (log: {fr["log"]})')
        odd = set(fr['other_loops']) - {'TestLoop'}
        if odd:
            print(f'NOTE {module}: loops created outside the loop under test: '
                  + ', '.join(f'{k}={fr["other_loops"][k]}' for k in sorted(odd)))
    bad = [(tid, t) for fr in results.values() for tid, t in fr['tests'].items()
           if t['status'] in FAILING and tid not in expected]
    for fr in results.values():
        for tid, t in fr['tests'].items():
            if t['status'] == 'pass' and tid in expected:
                print(f'XPASS    {tid}: unexpectedly passing — remove from the expected list')
    if len(bad) > limit and not verbose:
        print(f'{len(bad)} unexpected failures; most common causes:')
        for line, n in collections.Counter(headline(t) for _, t in bad).most_common(15):
            print(f'  {n:5} x {line}')
        print(f'first {limit} (all of them: -v or --json):')
        bad = bad[:limit]
    for tid, t in bad:
        print(f'{t["status"].upper():8} {tid}: {headline(t)}')
        if verbose:
            print('    ' + t['msg'].rstrip().replace('\n', '\n    '))


def run_all(files, loop, args):
    logdir = HERE / 'results' / f'{loop}-py{PYVER}'
    logdir.mkdir(parents=True, exist_ok=True)
    log(f'# {loop} loop, Python {sys.version.split()[0]}, {len(files)} files, '
        f'jobs={args.jobs}, timeout={args.timeout}s, logs in {logdir}')
    results = {}

    def one(module):
        fr = run_file(module, loop, args.timeout, args.k, logdir)
        c = collections.Counter(t['status'] for t in fr['tests'].values())
        log(f'  [{loop}] {module}: ' + ' '.join(f'{k}={v}' for k, v in sorted(c.items())) +
            f' loops={fr["target_loops"]}/{sum(fr["other_loops"].values())}'
            f' ({fr["seconds"]}s)' + (f' ERROR: {fr["file_error"]}' if fr['file_error'] else ''))
        return module, fr

    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for module, fr in pool.map(one, files):
            results[module] = fr
    return results


def check_loop_importable(loop):
    if loop == 'ferroloop':
        try:
            import ferroloop  # noqa: F401
        except ImportError as exc:
            sys.exit(f'cannot import ferroloop with {sys.executable}: {exc}\n'
                     f'build it first: scripts/build.sh {PYVER}')


def print_compare(base, ours, verbose, limit=50):
    """Side-by-side counts; 'lost' = passes on asyncio but not on ferroloop."""
    head = ['file', 'asyncio p/f/e/s/t', 'ferroloop p/f/e/s/t', 'lost', 'gained']
    rows, lost_ids, tot = [], [], collections.Counter()

    def pfest(fr):
        c = collections.Counter(t['status'] for t in fr['tests'].values())
        return [c['pass'], c['fail'], c['error'], c['skip'], c['timeout']]

    for module in base:
        b, o = base[module]['tests'], ours[module]['tests']
        lost = sorted(t for t, r in b.items()
                      if r['status'] == 'pass' and o.get(t, {}).get('status') != 'pass')
        gained = sorted(t for t, r in o.items()
                        if r['status'] == 'pass' and b.get(t, {}).get('status') != 'pass')
        lost_ids += [(t, o.get(t, {}).get('status', 'missing')) for t in lost]
        pb, po = pfest(base[module]), pfest(ours[module])
        tot.update({f'b{i}': v for i, v in enumerate(pb)})
        tot.update({f'o{i}': v for i, v in enumerate(po)})
        tot.update(lost=len(lost), gained=len(gained))
        rows.append([module, '/'.join(map(str, pb)), '/'.join(map(str, po)),
                     len(lost), len(gained)])
    rows.append(['TOTAL', '/'.join(str(tot[f'b{i}']) for i in range(5)),
                 '/'.join(str(tot[f'o{i}']) for i in range(5)), tot['lost'], tot['gained']])
    print('\n# asyncio vs ferroloop (p/f/e/s/t = pass/fail/error/skip/timeout)')
    _print_rows(head, rows)
    for tid, st in lost_ids if verbose else lost_ids[:limit]:
        print(f'LOST     {tid}: passes on asyncio, {st} on ferroloop')
    if len(lost_ids) > limit and not verbose:
        print(f'... {len(lost_ids) - limit} more LOST tests (-v or --json for all)')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('files', nargs='*', help='test files (default: all but stdlib-internal)')
    ap.add_argument('--loop', choices=['ferroloop', 'asyncio'], default='ferroloop',
                    help='loop under test; asyncio = the standard loop (baseline)')
    ap.add_argument('-k', action='append', default=[], metavar='PAT',
                    help='only tests whose id contains PAT (or matches the glob); repeatable')
    ap.add_argument('--jobs', '-j', type=int, default=2, help='files run in parallel')
    ap.add_argument('--timeout', type=float, default=60.0, help='per-test timeout (s)')
    ap.add_argument('--json', metavar='OUT', help='write all results as JSON')
    ap.add_argument('--expected', metavar='FILE',
                    help='expected-failure list (default: expected/X.Y.txt for ferroloop, '
                         'expected/asyncio-X.Y.txt for asyncio)')
    ap.add_argument('--update-expected', action='store_true',
                    help='rewrite the expected list from this run (humans only, not CI)')
    ap.add_argument('--compare', action='store_true',
                    help='run with asyncio and ferroloop, show side by side')
    ap.add_argument('-v', '--verbose', action='store_true', help='print tracebacks')
    args = ap.parse_args(argv)

    files = select_files(args.files)
    loops = ['asyncio', 'ferroloop'] if args.compare else [args.loop]
    for loop in loops:
        check_loop_importable(loop)
    runs, rc = {}, 0
    for loop in loops:
        exp_path = expected_path(loop, None if args.compare else args.expected)
        expected = load_expected(exp_path)
        results = run_all(files, loop, args)
        for module, fr in results.items():
            summarise(module, fr, expected)
        print(f'\n# {loop} loop on Python {PYVER} (expected failures: {exp_path})')
        print_table(results, loop)
        print_details(results, expected, args.verbose)
        runs[loop] = results
        if args.update_expected:
            write_expected(exp_path, loop, expected, results, args.k)
        tot = collections.Counter()
        for fr in results.values():
            tot.update(fr['counts'])
        bad_files = sum(fr['status'] == 'ERROR' for fr in results.values())
        unexpected = tot['fail'] + tot['error'] + tot['timeout']
        print(f'{loop}: {tot["xfail"]} expected failures, {tot["xpass"]} unexpectedly '
              f'passing, {bad_files} files in ERROR')
        if unexpected or bad_files:
            rc = 1
    if args.compare:
        print_compare(runs['asyncio'], runs['ferroloop'], args.verbose)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {'python': sys.version.split()[0], 'runs': runs}, indent=1))
    # Closing line in the plain "N passed, N failed, N skipped" form CI reads.
    last = runs[loops[-1]]
    tot = collections.Counter()
    for fr in last.values():
        tot.update(fr['counts'])
    failed = tot['fail'] + tot['error'] + tot['timeout'] + sum(
        fr['status'] == 'ERROR' for fr in last.values())
    print(f'conformance: {tot["pass"]} passed, {failed} failed, {tot["skip"]} skipped')
    return rc


if __name__ == '__main__':
    sys.exit(main())
