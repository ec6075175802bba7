"""Triton adapter for qmd_retrieve; the logic lives in qmd_triton.triton_models.retrieve."""

from qmd_triton.triton_models.retrieve import TritonPythonModel  # noqa: F401
