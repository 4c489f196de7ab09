#!/usr/bin/env bash
# Lint, format and type check (also usable as .git/hooks/pre-commit).
# The type checker's file list is [tool.mypy] in pyproject.toml.
set -euo pipefail
cd "$(git rev-parse --show-toplevel 2>/dev/null || dirname "$0")/"
[ -d scripts ] || cd ..
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
