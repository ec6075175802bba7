"""Triton adapter for qmd_expand; the logic lives in qmd_triton.triton_models.expand."""

from qmd_triton.triton_models.expand import TritonPythonModel  # noqa: F401
