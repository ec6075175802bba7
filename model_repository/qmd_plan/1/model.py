"""Triton adapter for qmd_plan; the logic lives in qmd_triton.triton_models.plan."""

from qmd_triton.triton_models.plan import TritonPythonModel  # noqa: F401
