"""In-process model runtimes: the same ONNX files the server serves, run with onnxruntime in this process.

Used by the Python models Triton runs, by the baselines ``bench`` and ``eval`` measure the
server against, by the exporters' parity checks and by ``perf/`` scripts.
"""
