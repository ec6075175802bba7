#!/usr/bin/env bash
# Checks the layering contracts of pyproject.toml ([tool.importlinter]) with import-linter.
# The package is qmd_triton = control/, with qmd_triton.exporters = exporters/ mapped in by pyproject's
# package-dir; control/exporters is a link to ../exporters so that import-linter, which reads packages
# from the file system, sees the installed layout (plain `lint-imports` works the same).
set -euo pipefail
cd "$(dirname "$0")/.."
LINT=${LINT_IMPORTS:-.venv/bin/lint-imports}
"$LINT" --no-cache "$@"
