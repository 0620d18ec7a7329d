#!/usr/bin/env bash
# Create .venv in the repository and install sfumato into it.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --test   plus the test extra (pytest, diffusers as the oracle)
# torch==2.13.0 is installed first when no torch is present: a bare "torch"
# requirement would otherwise pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    pip install "torch==2.13.0"
fi
pip install -e ".${extra}"
.venv/bin/python -c "import sfumato" || { echo "setup failed: sfumato does not import" >&2; exit 1; }
