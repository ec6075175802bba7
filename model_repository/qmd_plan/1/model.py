"""Triton adapter for qmd_plan; the logic lives in qmd_triton.serving.triton.plan."""

from qmd_triton.serving.triton.plan import TritonPythonModel  # noqa: F401
