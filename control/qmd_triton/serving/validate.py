"""``qmdctl validate``: a model repository checked before any server loads it.

Every problem is one line ``path:field: message`` (a ``Problem``). Checks, per model:
config syntax (protobuf text format) and name; backend or platform known and
available on the target; version folders and artifacts; ONNX inputs and outputs
against the config (names, dtypes, ranks, fixed dims); dynamic batching (preferred
sizes within ``max_batch_size``, a queue delay set, none without batching);
instance groups against the target; python models import. Per ensemble: every
composing model exists, every mapped tensor exists with a matching dtype and
shape, every required input is fed, no step output is left dangling, and no cycle.

Targets: ``local`` (the pytriton tritonserver on a CPU: python and the project's
Python-based onnxruntime backend) and ``gpu`` (the NGC image: native onnxruntime,
TensorRT plans, python; models may carry ``configs/gpu.pbtxt``, which the server
uses with ``--model-config-name=gpu`` and which this check reads for that target).

Example:
    >>> [str(p) for p in validate_repository(Path("model_repository"), "gpu")]
    []
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from qmd_triton.errors import ConfigError
from qmd_triton.model_config import CONFIG_FILE, ConfigSyntaxError
from qmd_triton.serving.repository import GPU_CONFIG, RepoModel, model_folders, read_model

TARGETS = ("local", "gpu")
BACKENDS = {
    "local": {"python", "onnxruntime", "ensemble"},
    "gpu": {"python", "onnxruntime", "onnxruntime_onnx", "tensorrt_plan", "tensorrt", "ensemble"},
}
ONNX_BACKENDS = {"onnxruntime", "onnxruntime_onnx"}
_ONNX_DTYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL", 8: "TYPE_STRING"}


@dataclass(frozen=True, order=True)
class Problem:
    path: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.field}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "field": self.field, "message": self.message}


def _dtype(value: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.DataType.Name(value)


def _kind(value: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.ModelInstanceGroup.Kind.Name(value)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root.parent))
    except ValueError:
        return str(path)


def validate_repository(repo: Path, target: str = "local", gpus: int | None = None) -> list[Problem]:
    """All problems of a repository for a target, sorted by path."""
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    repo = Path(repo)
    if not repo.is_dir():
        return [Problem(str(repo), "repository", "does not exist")]
    problems: list[Problem] = []
    models: dict[str, RepoModel] = {}
    for folder in model_folders(repo):
        if not (folder / CONFIG_FILE).is_file():
            problems.append(Problem(_rel(folder, repo), "config", "no config.pbtxt"))
            continue
        cfg_path = folder / GPU_CONFIG if target == "gpu" and (folder / GPU_CONFIG).is_file() else folder / CONFIG_FILE
        try:
            m = read_model(folder, target)
        except ConfigSyntaxError as e:
            problems.append(Problem(_rel(cfg_path, repo), f"{e.line}:{e.column}", e.message))
            continue
        except ConfigError as e:
            problems.append(Problem(_rel(cfg_path, repo), "config", str(e)))
            continue
        if m.config.name and m.config.name != folder.name:
            problems.append(Problem(_rel(cfg_path, repo), "name",
                                    f"{m.config.name!r} differs from its folder {folder.name!r}"))
        models[folder.name] = m
    if not models and not problems:
        problems.append(Problem(str(repo), "repository", "holds no model"))
    for m in models.values():
        problems += _check_model(m, repo, target)
        if gpus is not None and target == "gpu":
            from qmd_triton.serving.placement import check_placement

            problems += [Problem(_rel(m.config_path, repo), f, msg) for f, msg in check_placement(m.config, gpus)]
    for m in models.values():
        if m.backend == "ensemble":
            problems += _check_ensemble(m, models, repo)
    return sorted(set(problems))


def _check_model(m: RepoModel, repo: Path, target: str) -> list[Problem]:
    out: list[Problem] = []
    path = _rel(m.config_path, repo)
    cfg = m.config
    backend = m.backend
    if not backend:
        return [Problem(path, "backend", "names neither a backend nor a platform")]
    if backend not in BACKENDS[target]:
        hint = (" (TensorRT plans are built and served in the NGC image; use --target gpu)"
                if "tensorrt" in backend else "")
        out.append(Problem(path, "backend", f"{backend!r} is not available on the {target} target{hint}"))
    # version folders and artifacts
    versions = m.versions()
    if not versions:
        out.append(Problem(_rel(m.path, repo), "version", "no version folder (e.g. 1/)"))
    artifact = m.model_file
    for v in versions:
        if artifact and not (v / artifact).is_file():
            out.append(Problem(_rel(v / artifact, repo), "artifact", "missing (run `qmdctl export`)"))
    # batching
    mbs = cfg.max_batch_size
    if mbs < 0:
        out.append(Problem(path, "max_batch_size", f"must be >= 0, got {mbs}"))
    if cfg.HasField("dynamic_batching"):
        db = cfg.dynamic_batching
        if mbs == 0:
            out.append(Problem(path, "dynamic_batching", "set on a model with max_batch_size 0 (no batching)"))
        for size in db.preferred_batch_size:
            if mbs and size > mbs:
                out.append(Problem(path, "dynamic_batching.preferred_batch_size",
                                   f"{size} exceeds max_batch_size {mbs}"))
        if db.max_queue_delay_microseconds == 0:
            out.append(Problem(path, "dynamic_batching.max_queue_delay_microseconds",
                               "not set: requests are never held to form a batch"))
    # tensors
    names = [t.name for t in list(cfg.input) + list(cfg.output)]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        out.append(Problem(path, "input/output", f"tensor {dup!r} is declared twice"))
    for io in ("input", "output"):
        for t in getattr(cfg, io):
            if not t.dims and not (mbs and io == "output"):
                out.append(Problem(path, f"{io}.{t.name}.dims", "empty"))
            if any(d == 0 or d < -1 for d in t.dims):
                out.append(Problem(path, f"{io}.{t.name}.dims", f"must be positive or -1, got {list(t.dims)}"))
    # instance groups
    for g in cfg.instance_group:
        kind = _kind(g.kind)
        if target == "local" and kind == "KIND_GPU":
            out.append(Problem(path, "instance_group", "KIND_GPU on the local target (no GPU); use KIND_CPU"))
        if target == "gpu" and kind == "KIND_CPU" and backend in ONNX_BACKENDS | {"tensorrt_plan"}:
            out.append(Problem(path, "instance_group", f"KIND_CPU for a {backend} model on the gpu target"))
        if target == "gpu" and kind == "KIND_CPU" and g.gpus:
            out.append(Problem(path, "instance_group", "gpus listed for a KIND_CPU group"))
        if g.count < 0:
            out.append(Problem(path, "instance_group", f"count must be >= 0, got {g.count}"))
    if backend in ONNX_BACKENDS:
        for v in versions:
            if artifact and (v / artifact).is_file():
                out += _check_onnx(m, v / artifact, repo)
    if backend == "python":
        for v in versions:
            if (v / "model.py").is_file():
                out += _check_python_import(v / "model.py", repo)
    return out


def _check_onnx(m: RepoModel, onnx_path: Path, repo: Path) -> list[Problem]:
    """Inputs and outputs of the ONNX graph against the config: names, dtypes, ranks, fixed dims."""
    out: list[Problem] = []
    path = _rel(m.config_path, repo)
    try:
        import onnx

        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except ImportError:
        return []  # onnx comes with the export extra; without it the check is skipped
    except Exception as e:  # noqa: BLE001 - any parse failure is the finding
        return [Problem(_rel(onnx_path, repo), "onnx", f"not a readable ONNX model ({str(e).splitlines()[0][:120]})")]
    initializers = {i.name for i in graph.initializer}
    tensors = {
        "input": {i.name: i for i in graph.input if i.name not in initializers},
        "output": {o.name: o for o in graph.output},
    }
    batch = 1 if m.config.max_batch_size > 0 else 0
    for io in ("input", "output"):
        declared = {t.name: t for t in getattr(m.config, io)}
        for name, t in declared.items():
            g = tensors[io].get(name)
            if g is None:
                out.append(Problem(path, f"{io}.{name}",
                                   f"not in the ONNX graph (it has {', '.join(sorted(tensors[io]))})"))
                continue
            tt = g.type.tensor_type
            want = _dtype(t.data_type)
            have = _ONNX_DTYPES.get(tt.elem_type, f"onnx type {tt.elem_type}")
            if want != have:
                out.append(Problem(path, f"{io}.{name}.data_type", f"config says {want}, ONNX has {have}"))
            if tt.HasField("shape"):
                gdims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
                cdims = ([-1] if batch else []) + list(t.dims)
                if len(gdims) != len(cdims):
                    out.append(Problem(path, f"{io}.{name}.dims",
                                       f"rank {len(cdims)} (with batch) in the config, {len(gdims)} in ONNX"))
                else:
                    for i, (c, g_) in enumerate(zip(cdims, gdims)):
                        if c != -1 and g_ != -1 and c != g_:
                            out.append(Problem(path, f"{io}.{name}.dims",
                                               f"dim {i} is {c} in the config, {g_} in ONNX"))
        for name in sorted(set(tensors["input"]) - set(declared)) if io == "input" else []:
            out.append(Problem(path, "input", f"ONNX input {name!r} is not declared"))
    return out


def _check_python_import(model_py: Path, repo: Path) -> list[Problem]:
    """Imports model.py in a fresh interpreter with Triton's python backend utilities on the path."""
    code = (
        "import importlib.util, sys\n"
        "try:\n"
        "    import triton_python_backend_utils\n"
        "except ImportError:\n"
        "    from qmd_triton.serving.tritonserver import pytriton_dir\n"
        "    sys.path.insert(0, str(pytriton_dir() / 'backends' / 'python'))\n"
        "spec = importlib.util.spec_from_file_location('model', sys.argv[1])\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "assert hasattr(mod, 'TritonPythonModel'), 'defines no TritonPythonModel'\n"
    )
    try:
        r = subprocess.run([sys.executable, "-c", code, str(model_py)], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return [Problem(_rel(model_py, repo), "import", "importing took more than 120 s")]
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        return [Problem(_rel(model_py, repo), "import", lines[-1] if lines else f"exit status {r.returncode}")]
    return []


def _full_shape(dims: Iterable[int], batching: bool) -> list[int]:
    return ([-1] if batching else []) + list(dims)


def _compatible(a: list[int], b: list[int]) -> bool:
    return len(a) == len(b) and all(x == -1 or y == -1 or x == y for x, y in zip(a, b))


def _check_ensemble(m: RepoModel, models: dict[str, RepoModel], repo: Path) -> list[Problem]:
    out: list[Problem] = []
    path = _rel(m.config_path, repo)
    cfg = m.config
    steps = list(cfg.ensemble_scheduling.step)
    if not steps:
        return [Problem(path, "ensemble_scheduling", "has no step")]
    ens_batch = cfg.max_batch_size > 0
    # tensor name -> (dtype, full shape, producer)
    produced: dict[str, tuple[str, list[int], str]] = {
        t.name: (_dtype(t.data_type), _full_shape(t.dims, ens_batch), "input") for t in cfg.input
    }
    consumed: set[str] = set()
    producers: dict[str, int] = {}
    for i, step in enumerate(steps):
        field = f"step[{i}]"
        target = models.get(step.model_name)
        if target is None:
            out.append(Problem(path, f"{field}.model_name", f"{step.model_name!r} is not in the repository"))
            continue
        if target is m:
            out.append(Problem(path, f"{field}.model_name", "an ensemble cannot call itself"))
            continue
        tb = target.config.max_batch_size > 0
        if ens_batch and target.config.max_batch_size < cfg.max_batch_size:
            out.append(Problem(path, f"{field}.model_name",
                               f"{step.model_name} has max_batch_size {target.config.max_batch_size} < the "
                               f"ensemble's {cfg.max_batch_size}"))
        for key, value in step.output_map.items():
            spec = next((t for t in target.config.output if t.name == key), None)
            if spec is None:
                out.append(Problem(path, f"{field}.output_map.{key}", f"{step.model_name} has no output {key!r}"))
                continue
            if value in producers or value in {t.name for t in cfg.input}:
                out.append(Problem(path, f"{field}.output_map.{key}", f"tensor {value!r} is produced twice"))
            producers[value] = i
            produced[value] = (_dtype(spec.data_type), _full_shape(spec.dims, tb), step.model_name)
    for i, step in enumerate(steps):
        field = f"step[{i}]"
        target = models.get(step.model_name)
        if target is None or target is m:
            continue
        tb = target.config.max_batch_size > 0
        inputs = {t.name: t for t in target.config.input}
        for key, value in step.input_map.items():
            consumed.add(value)
            spec = inputs.get(key)
            if spec is None:
                out.append(Problem(path, f"{field}.input_map.{key}", f"{step.model_name} has no input {key!r}"))
                continue
            if value not in produced:
                out.append(Problem(path, f"{field}.input_map.{key}",
                                   f"tensor {value!r} is produced by no step or input"))
                continue
            dtype, shape, source = produced[value]
            if dtype != _dtype(spec.data_type):
                out.append(Problem(path, f"{field}.input_map.{key}",
                                   f"{value!r} is {dtype} (from {source}) but {step.model_name} takes "
                                   f"{_dtype(spec.data_type)}"))
            want = _full_shape(spec.dims, tb)
            if not _compatible(shape, want):
                out.append(Problem(path, f"{field}.input_map.{key}",
                                   f"{value!r} has shape {shape} (from {source}) but {step.model_name} takes {want}"))
        for name, spec in inputs.items():
            if not spec.optional and name not in step.input_map:
                out.append(Problem(path, f"{field}.input_map",
                                   f"required input {name!r} of {step.model_name} is not fed"))
    outputs = {t.name: t for t in cfg.output}
    for name, spec in outputs.items():
        if name not in produced or produced[name][2] == "input":
            out.append(Problem(path, f"output.{name}", "produced by no step"))
            continue
        dtype, shape, source = produced[name]
        if dtype != _dtype(spec.data_type):
            out.append(Problem(path, f"output.{name}", f"declared {_dtype(spec.data_type)}, {source} gives {dtype}"))
    for name, i in sorted(producers.items()):
        if name not in consumed and name not in outputs:
            out.append(Problem(path, f"step[{i}].output_map", f"tensor {name!r} is produced but never used"))
    cycle = _cycle(steps, producers)
    if cycle:
        out.append(Problem(path, "ensemble_scheduling", "steps form a cycle: " + " -> ".join(cycle)))
    return out


def _cycle(steps: list, producers: dict[str, int]) -> list[str]:
    """A cycle among steps (step -> steps whose outputs it reads), as model names, or []."""
    edges = {i: {producers[v] for v in s.input_map.values() if v in producers} for i, s in enumerate(steps)}
    state: dict[int, int] = {}
    stack: list[int] = []

    def visit(i: int) -> list[int]:
        state[i] = 1
        stack.append(i)
        for j in sorted(edges[i]):
            if state.get(j) == 1:
                return stack[stack.index(j):] + [j]
            if j not in state:
                found = visit(j)
                if found:
                    return found
        stack.pop()
        state[i] = 2
        return []

    for i in edges:
        if i not in state:
            found = visit(i)
            if found:
                return [steps[k].model_name for k in found]
    return []
