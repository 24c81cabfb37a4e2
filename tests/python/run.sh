#!/usr/bin/env bash
# The Python tests: makes a venv (once), installs tests/python/requirements.txt, and runs
# api_client_test.py (the API from a grpcio client) and integrated_unit_test.py (the Python
# integrated unit under `hsu agent run`) against an hsu binary.
#
#   tests/python/run.sh [PATH_TO_HSU]        (default: target/debug/hsu)
#
# HSU_PY_VENV picks the venv directory (default target/py-venv); relative paths are taken from
# the repository root. PYTHON picks the interpreter (default python3, 3.11 or later).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

hsu="${1:-target/debug/hsu}"
venv="${HSU_PY_VENV:-target/py-venv}"
python="${PYTHON:-python3}"
req="tests/python/requirements.txt"

if ! command -v "$python" >/dev/null 2>&1; then
    echo "run.sh: $python not found; install Python 3.11 (apt-get install python3 python3-venv)" >&2
    exit 2
fi
if [ ! -x "$hsu" ]; then
    echo "run.sh: no hsu binary at $hsu; build it with: cargo build -p hsu-cli" >&2
    exit 2
fi

if [ ! -x "$venv/bin/python" ]; then
    # Debian's python3 has no venv (nor ensurepip) without the python3-venv package.
    if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        echo "run.sh: '$python -m venv' is unavailable here; install it with: apt-get install python3-venv" >&2
        exit 2
    fi
    echo "run.sh: creating a venv in $venv"
    rm -rf "$venv"
    if ! "$python" -m venv "$venv"; then
        rm -rf "$venv"
        echo "run.sh: '$python -m venv $venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2
        exit 2
    fi
fi

# Reinstall only when requirements.txt changed since the last successful install.
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "run.sh: installing $req into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-virtualenv -r "$req"
    echo "$want" > "$stamp"
fi

"$venv/bin/python" tests/python/api_client_test.py --hsu "$hsu"
"$venv/bin/python" tests/python/integrated_unit_test.py --hsu "$hsu"
