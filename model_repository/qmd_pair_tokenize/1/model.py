"""Triton adapter for qmd_pair_tokenize; the logic lives in qmd_triton.serving.triton.pair_tokenize."""

from qmd_triton.serving.triton.pair_tokenize import TritonPythonModel  # noqa: F401
