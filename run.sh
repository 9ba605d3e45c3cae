#!/usr/bin/env bash
# One entry point that sets itself up: a virtual environment in .venv with certify installed
# (editable, with the test extra) and the Fashion-MNIST data from Debian's dataset-fashion-mnist.
# Each step is skipped when it is already done, so every command can be run again at any time.
#
#   ./run.sh quickstart [OPTIONS]   train or reuse a model, certify test images, plot (certify quickstart)
#   ./run.sh test [PYTEST ARGS]     the linters (ruff, mypy), then the test suite
#   ./run.sh lint                   the linters alone
#   ./run.sh certify ARGS...        any certify command inside the environment
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV=${CERTIFY_VENV:-.venv}
PYTHON=${PYTHON:-python3}
FMNIST=/usr/share/datasets/fashion-mnist

say() { printf '==> %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else say "need root for: $*"; return 1; fi
}

ensure_data() {
    [ -f "$FMNIST/t10k-images-idx3-ubyte.gz" ] && return 0
    say "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
            || { say "certify needs Python 3.10 or newer ($PYTHON is older)"; exit 1; }
        "$PYTHON" -m venv --help >/dev/null 2>&1 || as_root apt-get install -y -qq python3-venv >/dev/null
        say "creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    # reinstall only when the project's requirements changed since the last install
    local stamp="$VENV/.certify-installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        say "installing certify and its dependencies into $VENV (PyTorch is large: a few minutes)"
        "$VENV/bin/python" -m pip install -q -e ".[test]"
        touch "$stamp"
    fi
}

command=${1:-help}
shift || true
case "$command" in
    quickstart)
        ensure_data
        ensure_venv
        exec "$VENV/bin/certify" quickstart "$@"
        ;;
    lint)
        ensure_venv
        "$VENV/bin/ruff" check certify tests benchmarks
        exec "$VENV/bin/mypy"
        ;;
    test)
        ensure_data
        ensure_venv
        say "lint: ruff (style, import order) and mypy (types) on the package"
        "$VENV/bin/ruff" check certify tests benchmarks
        "$VENV/bin/mypy"
        exec "$VENV/bin/python" -m pytest -q "$@"
        ;;
    certify)
        ensure_venv
        exec "$VENV/bin/certify" "$@"
        ;;
    *)
        [ "$command" = help ] || [ "$command" = -h ] || [ "$command" = --help ] \
            || say "unknown command '$command'; the commands are:"
        sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
        [ "$command" = help ] || [ "$command" = -h ] || [ "$command" = --help ] || exit 2
        ;;
esac
