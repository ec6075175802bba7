"""Python-based ``onnxruntime`` backend for the local server (see qmd_triton.serving.triton.onnx_backend)."""

from qmd_triton.serving.triton.onnx_backend import TritonPythonModel  # noqa: F401
