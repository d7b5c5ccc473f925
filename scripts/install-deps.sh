#!/usr/bin/env bash
# Everything a fresh machine needs before building: a Rust toolchain must be
# present (rustup); crates come from crates.io through cargo, Python packages
# from PyPI into per-interpreter venvs (scripts/build.sh), Debian packages here.
set -euo pipefail
command -v cargo >/dev/null || { echo "cargo (Rust toolchain) is required" >&2; exit 1; }
command -v pyenv >/dev/null || { echo "pyenv with CPython 3.10-3.13 is required" >&2; exit 1; }
need=()
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
cd "$(dirname "$0")/.."
cargo fetch --quiet
