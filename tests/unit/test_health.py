"""The backend-process check the supervisor and `qmdctl status` share (no server)."""

from __future__ import annotations

from pathlib import Path

from qmd_triton.serving.health import backend_gaps, instance_count, stub_backends
from qmd_triton.serving.server import stub_model


def test_instance_count_counts_gpu_groups_per_gpu():
    assert instance_count({"instance_group": [{"count": 2, "kind": "KIND_CPU"}]}) == 2
    assert instance_count({"instance_group": [{"count": 2, "kind": "KIND_GPU", "gpus": [0, 1, 2]}]}) == 6
    assert instance_count({}) == 1


def test_backend_gaps_name_models_short_of_stubs():
    expected = {"qmd_search": 2, "qmd_retrieve": 1, "qmd_tokenize": 1}
    stubs = {10: "qmd_search", 11: "qmd_tokenize"}
    assert backend_gaps(expected, stubs) == {"qmd_retrieve": "1 of 1 backend process gone",
                                             "qmd_search": "1 of 2 backend processes gone"}
    assert backend_gaps(expected, {1: "qmd_search", 2: "qmd_search", 3: "qmd_retrieve", 4: "qmd_tokenize"}) == {}


def test_stub_backends_are_python_and_python_based_backends_without_a_native_library(tmp_path: Path):
    (tmp_path / "python").mkdir()
    (tmp_path / "onnxruntime").mkdir()
    (tmp_path / "onnxruntime" / "model.py").write_text("")
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "model.py").write_text("")
    (tmp_path / "tensorrt" / "libtriton_tensorrt.so").write_text("")
    assert stub_backends(tmp_path) == {"python", "onnxruntime"}
    assert stub_backends(tmp_path / "missing") == {"python"}


def test_a_stub_names_its_model_on_its_command_line():
    args = ["/h/run/backends/python/triton_python_backend_stub", "/repo/qmd_search/1/model.py", "region", "4194304",
            "4194304", "517", "/h/run/backends/python", "336", "qmd_search_0_1", "DEFAULT"]
    assert stub_model(args) == "qmd_search"
    assert stub_model(["/x/triton_python_backend_stub", "/repo/qmd_embed_model/1/model.onnx"]) == "qmd_embed_model"
