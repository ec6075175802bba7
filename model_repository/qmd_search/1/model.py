"""Triton adapter for qmd_search; the logic lives in qmd_triton.triton_models.search."""

from qmd_triton.triton_models.search import TritonPythonModel  # noqa: F401
