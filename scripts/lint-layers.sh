#!/usr/bin/env bash
# Checks the layering contracts of pyproject.toml ([tool.importlinter]) with import-linter.
# The package is control/qmd_triton/ (its import path is its folder path), so import-linter reads the same tree
# Python imports; plain `lint-imports` works the same.
set -euo pipefail
cd "$(dirname "$0")/.."
LINT=${LINT_IMPORTS:-.venv/bin/lint-imports}
"$LINT" --no-cache "$@"
