"""Conformance worker: runs ONE test.test_asyncio module with a given loop.

Started by run.py (never by hand).  Reads a JSON config from stdin:
    {"module": "test_tasks", "loop": "ferroloop"|"asyncio", "timeout": 60,
     "skip": [short ids already done], "patterns": [-k patterns]}
and writes one JSON object per line to the fd named by $CONFORMANCE_FD:
    {"ev": "ready", "total": N}
    {"ev": "start", "id": ..., "loops": {...}}
    {"ev": "result", "id": ..., "status": pass|fail|error|skip, "msg": ..., "dur": s, "loops": {...}}
    {"ev": "done", "loops": {...}}
Everything the tests print (and faulthandler dumps) goes to stdout/stderr,
which run.py sends to a log file.
"""
import collections
import faulthandler
import fnmatch
import importlib
import json
import os
import re
import sys
import threading
import time
import traceback
import unittest

PKG = 'test.test_asyncio.'
STATUS_RANK = {'pass': 0, 'skip': 1, 'fail': 2, 'error': 3}


class Counters:
    def __init__(self):
        self.target = 0
        self.other = collections.Counter()
        self.local = threading.local()

    def snapshot(self):
        return {'target': self.target, 'other': dict(self.other)}


def install_loop(loop_name, counters):
    """Make every way the tests create a "real" loop produce the loop under test.

    - the default policy class's _loop_factory (survives set_event_loop_policy(None)),
      which also covers asyncio.new_event_loop(), asyncio.run(), asyncio.Runner and
      IsolatedAsyncioTestCase;
    - asyncio.SelectorEventLoop / asyncio.EventLoop (3.13), which tests call directly
      with a selector argument (ignored for ferroloop).
    Loops created any other way (test_utils.TestLoop, BaseEventLoop(), ...) are
    counted as "other" through a hook on BaseEventLoop.__init__.
    """
    import asyncio
    from asyncio import base_events, unix_events

    stdlib_cls = unix_events._UnixSelectorEventLoop
    if loop_name == 'ferroloop':
        import ferroloop
        make = lambda selector=None: ferroloop.Loop()
    elif loop_name == 'asyncio':
        make = lambda selector=None: stdlib_cls(selector)
    else:
        raise SystemExit(f'unknown loop {loop_name!r}')

    local = counters.local

    def loop_under_test(selector=None):
        local.inside = getattr(local, 'inside', 0) + 1
        try:
            loop = make(selector)
        finally:
            local.inside -= 1
        counters.target += 1
        return loop

    unix_events._UnixDefaultEventLoopPolicy._loop_factory = staticmethod(loop_under_test)
    for mod in (asyncio, unix_events):
        mod.SelectorEventLoop = loop_under_test
        if hasattr(mod, 'EventLoop'):      # 3.13+
            mod.EventLoop = loop_under_test

    orig_init = base_events.BaseEventLoop.__init__

    def counting_init(self, *args, **kwargs):
        if not getattr(local, 'inside', 0):
            counters.other[type(self).__name__] += 1
        orig_init(self, *args, **kwargs)

    base_events.BaseEventLoop.__init__ = counting_init


def short_id(test, module):
    """'test.test_asyncio.test_x.Cls.test_y' -> 'test_x.Cls.test_y'; fixtures too."""
    tid = test.id()
    m = re.fullmatch(r'(\w+) \((.+)\)', tid)     # _ErrorHolder: 'setUpClass (mod.Cls)'
    if m:
        tid = f'{m.group(2)}.{m.group(1)}'
    if tid.startswith(PKG):
        tid = tid[len(PKG):]
    if not tid.startswith(module + '.'):
        tid = f'{module}.{tid}'
    return tid


def iter_tests(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from iter_tests(t)
        else:
            yield t


class JsonResult(unittest.TestResult):
    """Folds subtests into their test; emits one 'result' line per test."""

    def __init__(self, emit, module, counters, err_file, timeout):
        super().__init__()
        self.emit, self.module, self.counters = emit, module, counters
        self.err_file, self.timeout = err_file, timeout
        self.cur = None

    def _arm(self):
        # Dumps all thread stacks to the log shortly before run.py kills us.
        faulthandler.dump_traceback_later(self.timeout, exit=False, file=self.err_file)

    def startTest(self, test):
        super().startTest(test)
        sid = short_id(test, self.module)
        self.cur = {'id': sid, 'status': 'pass', 'msg': '', 't0': time.monotonic()}
        self.emit(ev='start', id=sid, loops=self.counters.snapshot())
        print(f'--- {sid}', file=sys.stderr, flush=True)
        self._arm()

    def stopTest(self, test):
        super().stopTest(test)
        cur, self.cur = self.cur, None
        if cur is not None:
            self.emit(ev='result', id=cur['id'], status=cur['status'], msg=cur['msg'],
                      dur=round(time.monotonic() - cur['t0'], 3),
                      loops=self.counters.snapshot())
        self._arm()   # also guards class/module fixtures that follow

    def _record(self, test, status, msg=''):
        if self.cur is None:  # fixture error (setUpClass etc.): no start/stop
            print(f'--- {short_id(test, self.module)}: {status}\n{msg}',
                  file=sys.stderr, flush=True)
            self.emit(ev='result', id=short_id(test, self.module), status=status,
                      msg=msg[-4000:], dur=0, loops=self.counters.snapshot())
            return
        if STATUS_RANK[status] > STATUS_RANK[self.cur['status']]:
            self.cur['status'] = status
        if msg and status != 'pass':
            self.cur['msg'] = (self.cur['msg'] + msg)[-4000:]

    def _tb(self, test, err):
        return self._exc_info_to_string(err, test)

    def addSuccess(self, test):
        super().addSuccess(test)

    def addError(self, test, err):
        super().addError(test, err)
        self._record(test, 'error', self._tb(test, err))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record(test, 'fail', self._tb(test, err))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        if isinstance(test, unittest.case._SubTest):
            return  # a skipped subtest does not make the whole test a skip
        self._record(test, 'skip', str(reason))

    def addExpectedFailure(self, test, err):   # @unittest.expectedFailure in CPython
        super().addExpectedFailure(test, err)

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._record(test, 'fail', 'unexpected success\n')

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            status = 'fail' if issubclass(err[0], test.failureException) else 'error'
            self._record(test, status, f'[{subtest._subDescription()}] ' + self._tb(test, err))


def main():
    cfg = json.loads(sys.stdin.read())
    out = os.fdopen(int(os.environ['CONFORMANCE_FD']), 'w', buffering=1)
    os.set_inheritable(out.fileno(), False)
    my_pid = os.getpid()

    def emit(**msg):
        if os.getpid() == my_pid:          # never from a forked child
            out.write(json.dumps(msg) + '\n')
            out.flush()

    err_file = os.fdopen(os.dup(2), 'w')   # survives tests swapping sys.stderr
    faulthandler.enable(file=err_file, all_threads=True)

    from test import support
    # Enable regrtest resources except network (use_resources=None would mean "all").
    support.use_resources = ['cpu', 'subprocess', 'decimal', 'walltime', 'tzdata']

    module = cfg['module']
    counters = Counters()
    install_loop(cfg['loop'], counters)
    result = JsonResult(emit, module, counters, err_file, cfg['timeout'])
    faulthandler.dump_traceback_later(cfg['timeout'], exit=False, file=err_file)

    try:
        mod = importlib.import_module(PKG + module)
    except unittest.SkipTest as exc:
        emit(ev='ready', total=1)
        emit(ev='result', id=f'{module}.<module>', status='skip', msg=str(exc), dur=0,
             loops=counters.snapshot())
        emit(ev='done', loops=counters.snapshot())
        return
    except Exception:
        emit(ev='ready', total=1)
        emit(ev='result', id=f'{module}.<import>', status='error',
             msg=traceback.format_exc()[-4000:], dur=0, loops=counters.snapshot())
        emit(ev='done', loops=counters.snapshot())
        return

    tests = list(iter_tests(unittest.defaultTestLoader.loadTestsFromModule(mod)))
    patterns = [p if '*' in p else f'*{p}*' for p in cfg.get('patterns') or []]
    if patterns:
        tests = [t for t in tests
                 if any(fnmatch.fnmatchcase(short_id(t, module), p) for p in patterns)]
    skip = set(cfg.get('skip') or ())
    tests = [t for t in tests if short_id(t, module) not in skip]
    emit(ev='ready', total=len(tests))

    # One flat suite: unittest's own machinery runs setUpModule/tearDownModule
    # and setUpClass/tearDownClass at the right points.
    unittest.TestSuite(tests).run(result)
    faulthandler.cancel_dump_traceback_later()
    emit(ev='done', loops=counters.snapshot())


if __name__ == '__main__':
    main()
