"""Triton adapter for qmd_tokenize; the logic lives in qmd_triton.triton_models.tokenize."""

from qmd_triton.triton_models.tokenize import TritonPythonModel  # noqa: F401
