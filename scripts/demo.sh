#!/usr/bin/env bash
# Build ferroloop (CPython 3.11) and run real asyncio programs on it: the seed
# document's example, unmodified, under `python -m ferroloop`, then a socket
# echo server with concurrent clients.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
py="$(scripts/build.sh 3.11)"
echo "== seed example (python -m ferroloop examples/seed_example.py)"
"$py" -m ferroloop examples/seed_example.py
echo "== socket echo (examples/sock_echo.py)"
"$py" examples/sock_echo.py
