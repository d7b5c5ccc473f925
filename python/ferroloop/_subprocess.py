"""Watching child processes: a pidfd per child, registered with the loop's
poller, so no thread waits per child and no SIGCHLD handler is installed.

Used when the event loop policy has no child watcher of its own (the usual
case; asyncio 3.14 does the same). When a watcher was set on the policy,
or the system has no pidfd_open, the standard loop's path through that
watcher is taken instead."""

import contextvars
import os
import sys
from asyncio import events, unix_events
from asyncio.log import logger

_stdlib_make_subprocess_transport = unix_events._UnixSelectorEventLoop._make_subprocess_transport


def _policy_has_watcher():
    return getattr(events.get_event_loop_policy(), "_watcher", None) is not None


async def make_subprocess_transport(self, protocol, args, shell, stdin, stdout, stderr,
                                    bufsize, extra=None, **kwargs):
    if _policy_has_watcher() or not hasattr(os, "pidfd_open"):
        return await _stdlib_make_subprocess_transport(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=extra, **kwargs)
    waiter = self.create_future()
    transp = unix_events._UnixSubprocessTransport(self, protocol, args, shell, stdin, stdout,
                                                  stderr, bufsize, waiter=waiter, extra=extra,
                                                  **kwargs)
    _watch(self, transp)
    try:
        await waiter
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        transp.close()
        await transp._wait()
        raise
    return transp


def _watch(loop, transp):
    pid = transp.get_pid()
    pidfd = os.pidfd_open(pid)
    loop._child_pidfds[pid] = pidfd
    loop._add_reader(pidfd, _reap, loop, transp, pid)


def _reap(loop, transp, pid):
    pidfd = loop._child_pidfds.pop(pid)
    loop._remove_reader(pidfd)
    os.close(pidfd)
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        # Reaped elsewhere (a waitpid() of the application's own).
        returncode = 255
        logger.warning("child process pid %d exit status already read: "
                       " will report returncode 255", pid)
    else:
        returncode = os.waitstatus_to_exitcode(status)
    if sys.version_info < (3, 12):
        # The default watcher there is a thread per child, whose report
        # carries the thread's empty context into process_exited() and
        # connection_lost(); 3.12+ watches a pidfd in the caller's context.
        contextvars.Context().run(loop._child_watcher_callback, pid, returncode, transp)
    else:
        loop._child_watcher_callback(pid, returncode, transp)


def close_pidfds(loop):
    """On close: stop watching children that are still running."""
    for pidfd in loop._child_pidfds.values():
        os.close(pidfd)
    loop._child_pidfds.clear()
