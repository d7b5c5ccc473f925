#!/usr/bin/env bash
# Build ferroloop and run the whole test suite:
#   1. cargo tests of the plain-Rust modules,
#   2. the pytest suite on CPython 3.11, 3.10, 3.12 and 3.13,
#   3. the conformance gate: CPython's own test.test_asyncio on ferroloop,
#      per version, against conformance/expected/<version>.txt,
#   4. a smoke run of the benchmark command.
# FERROLOOP_PYTHONS="3.11" limits the interpreters.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
versions="${FERROLOOP_PYTHONS:-3.11 3.10 3.12 3.13}"
status=0

echo "== cargo test"
PYO3_PYTHON="$(pyenv prefix 3.11.7 2>/dev/null || pyenv prefix "$(pyenv versions --bare | grep '^3\.11' | tail -n1)")/bin/python" \
    cargo test --release --quiet

for v in $versions; do
    py="$(scripts/build.sh "$v")"
    "$py" -m pip install -q pytest hypothesis uvloop aiohttp
    echo "== pytest on $("$py" -V)"
    "$py" -m pytest -q -p no:cacheprovider tests || status=1
    echo "== conformance on $("$py" -V)"
    "$py" conformance/run.py --loop ferroloop || status=1
done

echo "== benchmark smoke run"
"$(scripts/build.sh 3.11)" bench/run.py --quick || status=1

if [ "$status" -ne 0 ]; then
    echo "FAILED"
fi
exit "$status"
