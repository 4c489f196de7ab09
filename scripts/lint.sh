#!/usr/bin/env bash
# Lint and format check (also usable as .git/hooks/pre-commit).
set -euo pipefail
cd "$(git rev-parse --show-toplevel 2>/dev/null || dirname "$0")/"
[ -d scripts ] || cd ..
.venv/bin/ruff check .
.venv/bin/ruff format --check .
