#!/usr/bin/env bash
# Checks the layering contracts of pyproject.toml ([tool.importlinter]) with import-linter.
# The package is qmd_triton = control/ with qmd_triton.exporters = exporters/ mapped in by pyproject's
# package-dir; import-linter reads packages from the file system, so it is shown the installed layout:
# a temporary qmd_triton/ of links to control/'s entries plus exporters/.
set -euo pipefail
cd "$(dirname "$0")/.."
LINT=${LINT_IMPORTS:-.venv/bin/lint-imports}
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/qmd_triton"
for entry in control/*; do
  case $(basename "$entry") in __pycache__) continue ;; esac
  ln -s "$PWD/$entry" "$tree/qmd_triton/"
done
ln -s "$PWD/exporters" "$tree/qmd_triton/exporters"
PYTHONPATH="$tree${PYTHONPATH:+:$PYTHONPATH}" "$LINT" --no-cache "$@"
