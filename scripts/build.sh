#!/usr/bin/env bash
# Build ferroloop for one interpreter and install it into that interpreter's venv.
#   scripts/build.sh [X.Y]       (default 3.11)  -> .venvs/pyX.Y/bin/python has ferroloop
set -euo pipefail
cd "$(dirname "$0")/.."
ver="${1:-3.11}"
venv=".venvs/py$ver"
if [ ! -x "$venv/bin/python" ]; then
    base="$(pyenv prefix "$(pyenv versions --bare | grep -E "^$ver(\.|$)" | sort -V | tail -n1)")"
    "$base/bin/python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$venv/bin/python" -m pip install -q "maturin>=1.7,<2"
fi
rm -rf "dist/py$ver"
"$venv/bin/python" -m maturin build --release -q -i "$venv/bin/python" -o "dist/py$ver" >&2
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps "dist/py$ver"/ferroloop-*.whl
echo "$venv/bin/python"
