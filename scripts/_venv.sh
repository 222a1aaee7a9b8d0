# Sourced by scripts/demo and scripts/test: make sure .venv exists and is up to date.
# Creates it with `python3 -m venv .venv` and `pip install -e '.[dev]'` when missing, and
# reinstalls when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    echo "error: hivemesh needs Python 3.11 or newer as '$PY' (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
STAMP=".venv/.hivemesh-installed"
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv" >&2
    "$PY" -m venv .venv
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "installing hivemesh and its dependencies into .venv (first run takes a minute or two)" >&2
    LOG=.venv/install.log
    if ! .venv/bin/python -m pip install -e '.[dev]' > "$LOG" 2>&1 \
        || ! .venv/bin/python -c 'import node.cli, ray, libp2p' >> "$LOG" 2>&1; then
        grep -v '^WARNING: Location' "$LOG" | tail -40 >&2
        echo "error: installing into .venv failed (full log: $LOG)" >&2
        exit 1
    fi
    echo "$WANT" > "$STAMP"
fi
