#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Emulated Raspberry Pi OS userlands (aarch64, armhf) for the `emulated` tests: minutes on a
# fresh machine, seconds once cached. EDGEFL_SKIP_EMULATION=1 skips it (then deselect them
# with -m "not emulated").
[ -n "${EDGEFL_SKIP_EMULATION:-}" ] || scripts/board-emulation.sh build >/dev/null
exec .venv/bin/python -m pytest "$@"
