"""Triton adapter for qmd_fuse; the logic lives in qmd_triton.serving.triton.fuse."""

from qmd_triton.serving.triton.fuse import TritonPythonModel  # noqa: F401
