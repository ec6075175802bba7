"""Triton adapter for qmd_fuse; the logic lives in qmd_triton.triton_models.fuse."""

from qmd_triton.triton_models.fuse import TritonPythonModel  # noqa: F401
