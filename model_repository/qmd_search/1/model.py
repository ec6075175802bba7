"""Triton adapter for qmd_search; the logic lives in qmd_triton.serving.triton.search."""

from qmd_triton.serving.triton.search import TritonPythonModel  # noqa: F401
