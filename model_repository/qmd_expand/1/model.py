"""Triton adapter for qmd_expand; the logic lives in qmd_triton.serving.triton.expand."""

from qmd_triton.serving.triton.expand import TritonPythonModel  # noqa: F401
