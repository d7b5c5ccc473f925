"""python -m ferroloop script.py [args...]  |  python -m ferroloop -m module [args...]

Runs an unmodified asyncio program with ferroloop as the loop that
asyncio.run() and asyncio.new_event_loop() create."""

import runpy
import sys

import ferroloop


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    ferroloop.install()
    if argv[0] == "-m" and len(argv) > 1:
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        sys.path[0] = __import__("os").path.dirname(__import__("os").path.abspath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
