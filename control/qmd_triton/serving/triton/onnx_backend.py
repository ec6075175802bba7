"""The project's Python-based ``onnxruntime`` backend for the local server.

Triton 2.51 uses ``<backend-dir>/onnxruntime/model.py`` as a Python-based backend
when ``libtriton_onnxruntime.so`` is absent, so the same ``backend: "onnxruntime"``
configs run on a CPU box (this module, onnxruntime CPU) and in the NGC image
(Triton's native backend). Parameters use the native backend's keys so one
config serves both: ``intra_op_thread_count``, ``inter_op_thread_count``,
``enable_mem_arena``, ``enable_mem_pattern`` and ``memory.enable_memory_arena_shrinkage``
(``cpu:0`` gives the CPU arena's growth back after every run).

A batch from the dynamic batcher arrives as several requests. Requests whose
non-batch shapes match are concatenated and run in one ``session.run``; the
outputs are split back by each request's batch size. A failing group is retried
request by request, so one bad request fails alone.

Inputs marked ``allow_ragged_batch`` let the batcher merge requests of different
sequence lengths (Triton's batcher otherwise cuts a batch at the first request
whose shape differs). This backend then sorts those requests by length and pads
them (with ``ragged_pad_value``, default 0) into sub-batches whose padded size
stays within ``ragged_padding_slack`` (default 0.25) of the real tokens, so the
merge does not buy batching with wasted compute.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from qmd_triton.runtime.onnx import make_session, run_options
from qmd_triton.serving.triton import common

log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(bool)": np.bool_,
}


def check_io(session: Any, config: dict[str, Any]) -> None:
    """The ONNX file's inputs and outputs must be the ones the config names."""
    utils = common.pb()
    graph_inputs = {i.name: i for i in session.get_inputs()}
    graph_outputs = {o.name: o for o in session.get_outputs()}
    for io, graph in (("input", graph_inputs), ("output", graph_outputs)):
        for tensor in config.get(io, []):
            name = tensor["name"]
            if name not in graph:
                raise ValueError(f"{io} {name!r} is not in the ONNX graph (it has {sorted(graph)})")
            want = utils.triton_string_to_numpy(tensor["data_type"])
            have = _ORT_TYPES.get(graph[name].type)
            if have is not None and np.dtype(have) != np.dtype(want):
                raise ValueError(f"{io} {name!r}: config says {tensor['data_type']}, ONNX has {graph[name].type}")


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        utils = common.pb()
        try:
            config, version_dir = common.load(args)
            self.name = config["name"]
            filename = config.get("default_model_filename") or "model.onnx"
            path = version_dir / filename
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing; run `qmdctl export`")
            self.session = make_session(
                path,
                intra_threads=common.int_parameter(config, "intra_op_thread_count", 0),
                inter_threads=common.int_parameter(config, "inter_op_thread_count", 0),
                spinning=_flag(config, "allow_spinning", True),
                arena=_flag(config, "enable_mem_arena", True),
                mem_pattern=_flag(config, "enable_mem_pattern", True),
            )
            self.run_options = run_options(common.parameter(config, "memory.enable_memory_arena_shrinkage", ""))
            check_io(self.session, config)
            self.inputs = [t["name"] for t in config["input"]]
            self.optional = {t["name"] for t in config["input"] if t.get("optional")}
            self.outputs = [(t["name"], utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]]
            self.ragged = any(t.get("allow_ragged_batch") for t in config["input"])
            self.pad_value = common.int_parameter(config, "ragged_pad_value", 0)
            self.slack = float(common.parameter(config, "ragged_padding_slack", "0.25"))
            log.info("%s: loaded %s (%d inputs)", self.name, path.name, len(self.inputs))
        except (ValueError, OSError, KeyError) as e:
            raise utils.TritonModelException(f"onnxruntime backend failed to load model: {e}") from None
        except Exception as e:  # onnxruntime raises its own exception types on bad files
            raise utils.TritonModelException(f"onnxruntime could not load the model: {e}") from None

    def _feeds(self, request: Any) -> dict[str, np.ndarray]:
        utils = common.pb()
        feeds = {}
        for name in self.inputs:
            tensor = utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                feeds[name] = tensor.as_numpy()
        return feeds

    def _run(self, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
        """Runs requests with equal shapes as one batch and splits the outputs."""
        if len(feeds) == 1:
            merged = feeds[0]
        else:
            merged = {k: np.concatenate([f[k] for f in feeds], axis=0) for k in feeds[0]}
        results = self.session.run([name for name, _ in self.outputs], merged, self.run_options)
        sizes = np.cumsum([len(next(iter(f.values()))) for f in feeds])[:-1]
        per_output = [np.split(r, sizes, axis=0) for r in results]
        return [[per_output[o][i] for o in range(len(self.outputs))] for i in range(len(feeds))]

    def _ragged_groups(self, feeds: list[dict[str, np.ndarray]]) -> list[list[int]]:
        """Requests sorted by length, cut where padding would exceed the slack."""
        width = [max((v.shape[1] for v in f.values() if v.ndim > 1), default=0) for f in feeds]
        rows = [len(next(iter(f.values()))) for f in feeds]
        order = sorted(range(len(feeds)), key=lambda i: width[i])
        groups: list[list[int]] = []
        current: list[int] = []
        real = 0
        for i in order:
            # Sorted ascending, so adding i pads every member up to width[i].
            padded = width[i] * (sum(rows[j] for j in current) + rows[i])
            if current and padded > (1.0 + self.slack) * (real + width[i] * rows[i]):
                groups.append(current)
                current, real = [], 0
            current.append(i)
            real += width[i] * rows[i]
        if current:
            groups.append(current)
        return groups

    def _pad(self, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        width = max(v.shape[1] for f in feeds for v in f.values() if v.ndim > 1)
        padded = []
        for f in feeds:
            padded.append({
                k: v if v.ndim < 2 or v.shape[1] == width
                else np.pad(v, [(0, 0), (0, width - v.shape[1])] + [(0, 0)] * (v.ndim - 2),
                            constant_values=self.pad_value)
                for k, v in f.items()
            })
        return padded

    def execute(self, requests: list) -> list:
        utils = common.pb()
        feeds = [self._feeds(r) for r in requests]
        groups: dict[tuple, list[int]] = {}
        if self.ragged:
            for n, members in enumerate(self._ragged_groups(feeds)):
                groups[(n,)] = members
                for i, f in zip(members, self._pad([feeds[i] for i in members])):
                    feeds[i] = f
        else:
            for i, f in enumerate(feeds):
                key = tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(f.items()))
                groups.setdefault(key, []).append(i)
        outputs: list[list[np.ndarray] | str] = [""] * len(requests)
        for members in groups.values():
            try:
                for i, out in zip(members, self._run([feeds[i] for i in members])):
                    outputs[i] = out
            except Exception as e:  # noqa: BLE001 - isolate the request that broke the group
                if len(members) == 1:
                    outputs[members[0]] = f"{self.name}: {_first_line(e)}"
                    continue
                for i in members:
                    try:
                        outputs[i] = self._run([feeds[i]])[0]
                    except Exception as single:  # noqa: BLE001
                        outputs[i] = f"{self.name}: {_first_line(single)}"
        responses = []
        for out in outputs:
            if isinstance(out, str):
                responses.append(common.error_response(out))
            else:
                tensors = [
                    utils.Tensor(name, np.ascontiguousarray(arr, dtype=dtype))
                    for (name, dtype), arr in zip(self.outputs, out)
                ]
                responses.append(utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self.session = None


def _flag(config: dict[str, Any], key: str, default: bool) -> bool:
    raw = common.parameter(config, key, "1" if default else "0").strip().lower()
    if raw not in ("1", "0", "true", "false"):
        raise ValueError(f"parameter {key} must be 1/0 or true/false, got {raw!r}")
    return raw in ("1", "true")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:500]
