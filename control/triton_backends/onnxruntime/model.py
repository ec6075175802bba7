"""Python-based ``onnxruntime`` backend for the local server (see qmd_triton.triton_models.onnx_backend)."""

from qmd_triton.triton_models.onnx_backend import TritonPythonModel  # noqa: F401
