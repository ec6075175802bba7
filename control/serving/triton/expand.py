"""``qmd_expand``: the first step of ``qmd_query`` — strong-BM25 probe, then LLM expansion.

Parameters:
    engine: onnxruntime (default) | vllm | deepspeed | none. An engine that is not
        installed fails the model's load with one clear message.
    max_new_tokens (64), timeout_ms (4000): the generation budget; what is complete
        when the deadline passes is used.
    threads: onnxruntime intra-op threads (0 = all cores).
    tensor_parallel_size, gpu_memory_utilization: for vllm / deepspeed.
    strong_signal (true): skip expansion when BM25 alone is convincing (top normalized
        score >= 0.85 and >= 0.15 ahead of #2).
    index_path: as for qmd_search.

The response cache is enabled in the config: a repeated (query, options) is
answered without running the engine.
"""

from __future__ import annotations

import time

from qmd_triton.errors import IndexMissing, InputError, QmdError
from qmd_triton.index.store import IndexHandle
from qmd_triton.search.expansion import Expander, Expansion, make_engine
from qmd_triton.search.fusion import strong_signal
from qmd_triton.search.hybrid import Plan, bm25_probe
from qmd_triton.serving.triton import common
from qmd_triton.serving.triton.plan import plan_response, read_request


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        utils = common.pb()
        config, version_dir = common.load(args)
        self.engine_name = common.parameter(config, "engine", "onnxruntime")
        try:
            engine = make_engine(
                self.engine_name, version_dir,
                threads=common.int_parameter(config, "threads", 0),
                tensor_parallel_size=common.int_parameter(config, "tensor_parallel_size", 1),
                gpu_memory_utilization=float(common.parameter(config, "gpu_memory_utilization", "0.3")),
            )
        except (QmdError, ValueError, OSError) as e:
            raise utils.TritonModelException(f"qmd_expand engine {self.engine_name!r} failed to load: {e}") from None
        self.expander = Expander(
            engine,
            max_new_tokens=common.int_parameter(config, "max_new_tokens", 64),
            timeout_s=common.int_parameter(config, "timeout_ms", 4000) / 1000.0,
        )
        self.strong = common.parameter(config, "strong_signal", "true").lower() == "true"
        self.handle = IndexHandle(common.index_path(config))

    def _probe(self, query: str, options) -> bool:
        if not self.strong:
            return False
        try:
            return strong_signal(bm25_probe(self.handle.get(), query, options))
        except IndexMissing:
            return False

    def execute(self, requests: list) -> list:
        def handle(request):
            query, options = read_request(request)
            started = time.monotonic()
            if not options.expand:
                expansion = Expansion(status="disabled")
            elif self._probe(query, options):
                expansion = Expansion(status="strong-bm25")
            else:
                expansion = self.expander.expand(query)
            plan = Plan(
                query=query, mode="query", lex=expansion.lex, vec=expansion.vec, hyde=expansion.hyde,
                options=options.to_dict(),
                expansion={"engine": self.engine_name, "status": expansion.status,
                           "ms": round((time.monotonic() - started) * 1000, 1)},
            )
            return plan_response(plan)

        return common.respond_each(requests, handle, (InputError, QmdError))

    def finalize(self) -> None:
        self.handle.close()
