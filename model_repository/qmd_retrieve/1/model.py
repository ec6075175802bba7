"""Triton adapter for qmd_retrieve; the logic lives in qmd_triton.serving.triton.retrieve."""

from qmd_triton.serving.triton.retrieve import TritonPythonModel  # noqa: F401
