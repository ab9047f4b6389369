#!/usr/bin/env bash
# One entry point for a fresh machine:
#   bash scripts/dev.sh demo   set everything up, then run the demo
#   bash scripts/dev.sh test   set everything up, then run every test (Rust + Python), the linters and
#                              the fuzzers (DEATHTENSORS_FUZZ_SECONDS per target, default 60)
#   bash scripts/dev.sh setup  only set up (.venv with the package built from source, torch, pytest)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${DEATHTENSORS_VENV:-$ROOT/.venv}
PY=$VENV/bin/python

setup() {
    command -v cargo >/dev/null || { echo "cargo (Rust >= 1.85) is required: https://rustup.rs" >&2; exit 1; }
    if [ ! -x "$PY" ]; then
        python3 -m venv "$VENV"
    fi
    "$PY" -m pip install --quiet --upgrade pip
    # Builds the Rust extension with maturin (release) and installs torch, numpy, pytest, safetensors, ruff.
    "$PY" -m pip install --quiet "$ROOT/python[dev]"
    "$PY" -c "import deathtensors, torch; print('deathtensors', deathtensors.__version__, '| torch', torch.__version__)"
}

run_tests() {
    echo "== cargo fmt / clippy"
    cargo fmt --all -- --check
    cargo clippy --workspace --exclude deathtensors-python --all-targets --quiet -- -D warnings
    PYO3_PYTHON="$PY" cargo clippy -p deathtensors-python --all-targets --quiet -- -D warnings
    echo "== cargo test"
    cargo test --workspace --exclude deathtensors-python --quiet
    echo "== ruff"
    "$PY" -m ruff check python/python tests/python bench examples
    "$PY" -m ruff format --check python/python tests/python bench examples
    echo "== mypy / stubtest (the package's types, and _core.pyi against the built extension)"
    # 3.12 rules so that the stub's PEP 688 buffer methods count (the extension has them in C)
    "$PY" -m mypy --python-version 3.12 python/python/deathtensors
    "$PY" -m mypy.stubtest deathtensors._core
    echo "== pytest"
    "$PY" -m pytest tests/python -q
    echo "== fuzz (cargo-fuzz, every target; see docs/security.md)"
    bash fuzz/run.sh "${DEATHTENSORS_FUZZ_SECONDS:-60}"
}

case "${1:-}" in
    setup) setup ;;
    demo) setup; "$PY" examples/demo.py ;;
    test) setup; run_tests ;;
    *) echo "usage: bash scripts/dev.sh setup|demo|test" >&2; exit 2 ;;
esac
