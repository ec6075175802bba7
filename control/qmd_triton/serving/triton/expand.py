"""``qmd_expand``: the first step of ``qmd_query`` — strong-BM25 probe, then LLM expansion.

Parameters:
    engine: onnxruntime (default) | vllm | deepspeed | none. An engine that is not
        installed fails the model's load with one clear message.
    max_new_tokens (64), timeout_ms (4000): the generation budget; what is complete
        when the deadline passes is used.
    threads: onnxruntime's intra-op threads, and torch's for deepspeed on the CPU (0 = all cores).
    device (cuda), dtype (auto), tensor_parallel_size (1), gpu_memory_utilization (0.3), max_model_len (0: the
        model's), kv_cache_memory_bytes (0: sized by gpu_memory_utilization): for vllm / deepspeed
        (:class:`qmd_triton.search.expansion.EngineOptions`). The defaults are the GPU servers'; a CPU server
        sets device cpu and dtype float32 in its copy of configs/vllm.pbtxt or configs/deepspeed.pbtxt.
    strong_signal (true): skip expansion when BM25 alone is convincing (top normalized
        score >= 0.85 and >= 0.15 ahead of #2).
    expand_by_default: whether a request that does not say (``expand`` null) is expanded. false
        in the CPU config: SmolLM2-135M's lines made the full query worse than no expansion on
        every eval set (docs/search.md, "Quality"); true in the GPU configs (a bigger LLM).
    index_path: as for qmd_search.

Expansions are cached in the index (``expansions``), keyed by the engine, its model, the
prompt, the query and the intent: a repeated query (with any ``n`` or other options) is
answered without running the engine, and ``--explain`` says ``cached``.
"""

from __future__ import annotations

import time

from qmd_triton.errors import IndexMissing, InputError, QmdError
from qmd_triton.search.coverage import ModelLanguages
from qmd_triton.search.expansion import EngineOptions, Expander, make_engine, plan_expansion, shots_for
from qmd_triton.search.fusion import strong_signal
from qmd_triton.search.hybrid import Plan, bm25_probe
from qmd_triton.serving.triton import common
from qmd_triton.serving.triton.plan import plan_response, read_request
from qmd_triton.text.tokenization import read_manifest


def engine_options(config: dict) -> EngineOptions:
    """The vllm/deepspeed settings of a config, each with :class:`EngineOptions`' default (the GPU servers')."""
    default = EngineOptions()
    raw = common.parameter(config, "gpu_memory_utilization", str(default.gpu_memory_utilization))
    try:
        share = float(raw)
    except ValueError:
        raise ValueError(f"parameter gpu_memory_utilization must be a number, got {raw!r}") from None
    return EngineOptions(
        device=common.parameter(config, "device", default.device),
        dtype=common.parameter(config, "dtype", default.dtype),
        tensor_parallel_size=common.int_parameter(config, "tensor_parallel_size", default.tensor_parallel_size),
        gpu_memory_utilization=share,
        max_model_len=common.int_parameter(config, "max_model_len", default.max_model_len),
        kv_cache_memory_bytes=common.int_parameter(config, "kv_cache_memory_bytes", default.kv_cache_memory_bytes),
    )


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        utils = common.pb()
        config, version_dir = common.load(args)
        self.engine_name = common.parameter(config, "engine", "onnxruntime")
        # the cache key's engine part: the engine and the exported model it runs
        manifest = read_manifest(version_dir)
        self.engine_id = f"{self.engine_name}:{manifest.get('onnx_sha256', '')[:16]}"
        # what the LLM reads (its export.json; hf.json for the transformers model of the GPU engines): a query in
        # another language is not expanded
        declared = manifest
        if self.engine_name in ("vllm", "deepspeed"):
            declared = read_manifest(version_dir, "hf.json")
        self.languages = ModelLanguages.from_manifest("expansion", declared)
        shots = shots_for(self.languages.languages)
        try:
            engine = make_engine(
                self.engine_name, version_dir,
                threads=common.int_parameter(config, "threads", 0),
                options=engine_options(config),
                shots=shots,
            )
        except (QmdError, ValueError, OSError) as e:
            raise utils.TritonModelException(f"qmd_expand engine {self.engine_name!r} failed to load: {e}") from None
        self.expander = Expander(
            engine,
            max_new_tokens=common.int_parameter(config, "max_new_tokens", 64),
            timeout_s=common.int_parameter(config, "timeout_ms", 4000) / 1000.0,
            shots=shots,
        )
        self.strong = common.parameter(config, "strong_signal", "true").lower() == "true"
        self.by_default = common.parameter(config, "expand_by_default", "true").lower() == "true"
        self.handle = common.served_index(config)
        self.expansions = common.Counter("qmd_expansions_total",
                                         "Query expansions of qmd_expand by how they were made (ok, cached, ...)",
                                         "status")

    def _probe(self, query: str, options) -> bool:
        if not self.strong:
            return False
        try:
            return strong_signal(bm25_probe(self.handle.get(), query, options))
        except IndexMissing:
            return False

    def _store(self):
        try:
            return self.handle.get()
        except QmdError:
            return None  # no index yet: expand without the cache

    def execute(self, requests: list) -> list:
        def handle(request):
            query, options = read_request(request)
            started = time.monotonic()
            expansion = plan_expansion(query, options, self.expander, engine_id=self.engine_id,
                                       strong=lambda: self._probe(query, options), index=self._store(),
                                       languages=self.languages, by_default=self.by_default)
            self.expansions.increment("error" if expansion.status.startswith("error") else expansion.status)
            plan = Plan(
                query=query, mode="query", lex=expansion.lex, vec=expansion.vec, hyde=expansion.hyde,
                options=options.to_dict(),
                expansion={"engine": self.engine_name, "status": expansion.status,
                           "ms": round((time.monotonic() - started) * 1000, 1),
                           **({"why": expansion.why} if expansion.why else {})},
            )
            return plan_response(plan)

        return common.respond_each(requests, handle, (InputError, QmdError))

    def finalize(self) -> None:
        self.expander.close()
        self.expansions.close()
        self.handle.close()
