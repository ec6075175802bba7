"""TensorRT plans: config switch and profiles here; the build itself on a GPU (gpu marker)."""

from __future__ import annotations

from qmd_triton.exporters.onnx_tensorrt import profiles_for


def test_one_profile_per_length_bucket():
    assert profiles_for([64, 16, 256]) == [(1, 16), (17, 64), (65, 256)]
