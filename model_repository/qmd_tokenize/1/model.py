"""Triton adapter for qmd_tokenize; the logic lives in qmd_triton.serving.triton.tokenize."""

from qmd_triton.serving.triton.tokenize import TritonPythonModel  # noqa: F401
