"""The one place that names Triton models and tensors.

Every model.py, ``qmdctl validate``, perf input files and the tests import these
specs; nothing else spells a tensor name or a dtype.

Example:
    >>> from qmd_triton.contracts import EMBED, TensorSpec
    >>> EMBED.output("embedding").dtype
    'TYPE_FP32'
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class DataType(str, enum.Enum):
    """Triton data types; values equal the config.pbtxt spelling."""

    BOOL = "TYPE_BOOL"
    INT32 = "TYPE_INT32"
    INT64 = "TYPE_INT64"
    FP16 = "TYPE_FP16"
    FP32 = "TYPE_FP32"
    STRING = "TYPE_STRING"

    @property
    def numpy(self) -> type:
        import numpy as np  # only where tensors are made: `qmdctl search` never needs numpy

        return {"TYPE_BOOL": np.bool_, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64, "TYPE_FP16": np.float16,
                "TYPE_FP32": np.float32, "TYPE_STRING": np.object_}[self.value]

    @property
    def wire(self) -> str:
        """The name used on the KServe v2 wire protocol (``"BYTES"``, ``"FP32"``)."""
        return "BYTES" if self is DataType.STRING else self.value.removeprefix("TYPE_")




@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor as the config declares it (batch dim excluded)."""

    name: str
    dtype: DataType
    dims: tuple[int, ...]
    optional: bool = False

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum() or self.name != self.name.lower():
            raise ValueError(f"tensor name must be snake_case: {self.name!r}")
        if any(d == 0 or d < -1 for d in self.dims):
            raise ValueError(f"{self.name}: dims must be positive or -1, got {self.dims}")


class ModelKind(str, enum.Enum):
    PYTHON = "python"
    ONNX = "onnxruntime"
    ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class ModelSpec:
    """A Triton model of the pipeline: its name, kind and tensors."""

    name: str
    kind: ModelKind
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0
    artifacts: tuple[str, ...] = ()
    doc: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.name.startswith("qmd_"):
            raise ValueError(f"model names start with qmd_: {self.name!r}")
        names = [t.name for t in self.inputs + self.outputs]
        if len(names) != len(set(names)):
            raise ValueError(f"{self.name}: duplicate tensor names {names}")

    def input(self, name: str) -> TensorSpec:
        return _find(self.inputs, name, self.name)

    def output(self, name: str) -> TensorSpec:
        return _find(self.outputs, name, self.name)


def _find(tensors: tuple[TensorSpec, ...], name: str, model: str) -> TensorSpec:
    for t in tensors:
        if t.name == name:
            return t
    raise KeyError(f"{model} has no tensor {name!r}")


# Tensor names (the only spelling in the project).
TEXT = "text"
KIND = "kind"
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TOKEN_TYPE_IDS = "token_type_ids"
EMBEDDING = "embedding"
# The pooled embedding before its L2 normalization (TEI's `normalize: false`); equal to EMBEDDING for a model
# that does not normalize.
EMBEDDING_RAW = "embedding_raw"
QUERY = "query"
OPTIONS = "options"
RESULTS = "results"
VEC_QUERIES = "vec_queries"
VEC_KINDS = "vec_kinds"
QUERY_EMBEDDINGS = "query_embeddings"
PLAN_JSON = "plan"
CANDIDATES = "candidates"
PAIR_INPUT_IDS = "pair_input_ids"
PAIR_ATTENTION_MASK = "pair_attention_mask"
PAIR_TOKEN_TYPE_IDS = "pair_token_type_ids"
LOGIT = "logit"
TEXTS = "texts"

# Values of the tokenizer's ``kind`` input: which prompt format wraps the text.
KIND_QUERY = "query"
KIND_DOCUMENT = "document"
PROMPT_KINDS = (KIND_QUERY, KIND_DOCUMENT)

MAX_BATCH = 64
# Pairs one qmd_rerank_model request may carry (its max_batch_size); qmd_rerank refuses more texts per request.
RERANK_MAX_PAIRS = 256

TOKENIZE = ModelSpec(
    name="qmd_tokenize",
    kind=ModelKind.PYTHON,
    inputs=(
        TensorSpec(TEXT, DataType.STRING, (1,)),
        TensorSpec(KIND, DataType.STRING, (1,), optional=True),
    ),
    outputs=(
        TensorSpec(INPUT_IDS, DataType.INT64, (-1,)),
        TensorSpec(ATTENTION_MASK, DataType.INT64, (-1,)),
    ),
    max_batch_size=MAX_BATCH,
    artifacts=("model.py", "tokenizer.json"),
    doc="UTF-8 text -> token ids padded to a length bucket, with the prompt format applied.",
)

EMBED_MODEL = ModelSpec(
    name="qmd_embed_model",
    kind=ModelKind.ONNX,
    inputs=(
        TensorSpec(INPUT_IDS, DataType.INT64, (-1,)),
        TensorSpec(ATTENTION_MASK, DataType.INT64, (-1,)),
    ),
    outputs=(TensorSpec(EMBEDDING, DataType.FP32, (-1,)), TensorSpec(EMBEDDING_RAW, DataType.FP32, (-1,))),
    max_batch_size=MAX_BATCH,
    artifacts=("model.onnx",),
    doc="Token ids -> pooled, L2-normalized sentence embedding (and the pooled one before normalization).",
)

EMBED = ModelSpec(
    name="qmd_embed",
    kind=ModelKind.ENSEMBLE,
    inputs=(TensorSpec(TEXT, DataType.STRING, (1,)),),
    outputs=(TensorSpec(EMBEDDING, DataType.FP32, (-1,)),),
    max_batch_size=MAX_BATCH,
    doc="Ensemble: document text -> embedding (qmd_tokenize -> qmd_embed_model).",
)

_QUERY_IN = (TensorSpec(QUERY, DataType.STRING, (1,)), TensorSpec(OPTIONS, DataType.STRING, (1,)))
_RESULTS_OUT = (TensorSpec(RESULTS, DataType.STRING, (1,)),)

_PLAN_OUT = (
    TensorSpec(PLAN_JSON, DataType.STRING, (1,)),
    TensorSpec(VEC_QUERIES, DataType.STRING, (-1, 1)),
    TensorSpec(VEC_KINDS, DataType.STRING, (-1, 1)),
)

PLAN = ModelSpec(
    name="qmd_plan",
    kind=ModelKind.PYTHON,
    inputs=_QUERY_IN,
    outputs=_PLAN_OUT,
    artifacts=("model.py",),
    doc="Checks query and options; a plan with the query as the only vector query (qmd_vsearch).",
)

EXPAND = ModelSpec(
    name="qmd_expand",
    kind=ModelKind.PYTHON,
    inputs=_QUERY_IN,
    outputs=_PLAN_OUT,
    artifacts=("model.py", "genai/genai_config.json", "genai/model.onnx", "genai/tokenizer.json", "generation.json"),
    doc="Query expansion (lex/vec/hyde lines) by an LLM engine; the original query always first.",
)

SEARCH = ModelSpec(
    name="qmd_search",
    kind=ModelKind.PYTHON,
    inputs=_QUERY_IN,
    outputs=_RESULTS_OUT,
    artifacts=("model.py",),
    doc="BM25 full-text search over the index; results as JSON.",
)

RETRIEVE = ModelSpec(
    name="qmd_retrieve",
    kind=ModelKind.PYTHON,
    inputs=(
        TensorSpec(PLAN_JSON, DataType.STRING, (1,)),
        TensorSpec(QUERY_EMBEDDINGS, DataType.FP32, (-1, -1)),
    ),
    outputs=(
        TensorSpec(CANDIDATES, DataType.STRING, (1,)),
        TensorSpec(PAIR_INPUT_IDS, DataType.INT64, (-1, -1)),
        TensorSpec(PAIR_ATTENTION_MASK, DataType.INT64, (-1, -1)),
        TensorSpec(PAIR_TOKEN_TYPE_IDS, DataType.INT64, (-1, -1)),
    ),
    artifacts=("model.py",),
    doc="Vector search (vsearch) or BM25 + vector lists fused by RRF (query), with reranker pair tokens.",
)

RERANK_MODEL = ModelSpec(
    name="qmd_rerank_model",
    kind=ModelKind.ONNX,
    inputs=(
        TensorSpec(INPUT_IDS, DataType.INT64, (-1,)),
        TensorSpec(ATTENTION_MASK, DataType.INT64, (-1,)),
        TensorSpec(TOKEN_TYPE_IDS, DataType.INT64, (-1,)),
    ),
    outputs=(TensorSpec(LOGIT, DataType.FP32, (1,)),),
    max_batch_size=RERANK_MAX_PAIRS,
    artifacts=("model.onnx", "tokenizer.json"),
    doc="Cross-encoder: (query, passage) pair tokens -> relevance logit.",
)

FUSE = ModelSpec(
    name="qmd_fuse",
    kind=ModelKind.PYTHON,
    inputs=(
        TensorSpec(CANDIDATES, DataType.STRING, (1,)),
        TensorSpec(LOGIT, DataType.FP32, (-1, 1)),
    ),
    outputs=_RESULTS_OUT,
    artifacts=("model.py",),
    doc="Blends RRF positions with reranker scores (or orders by the reranker); results as JSON.",
)

VSEARCH = ModelSpec(
    name="qmd_vsearch",
    kind=ModelKind.ENSEMBLE,
    inputs=_QUERY_IN,
    outputs=_RESULTS_OUT,
    doc="Ensemble: qmd_plan -> qmd_tokenize (query prompt) -> qmd_embed_model -> qmd_retrieve.",
)

QUERY_PIPELINE = ModelSpec(
    name="qmd_query",
    kind=ModelKind.ENSEMBLE,
    inputs=_QUERY_IN,
    outputs=_RESULTS_OUT,
    doc="Ensemble: qmd_expand -> qmd_tokenize -> qmd_embed_model -> qmd_retrieve -> qmd_rerank_model -> qmd_fuse.",
)

_PAIRS_IN = (TensorSpec(QUERY, DataType.STRING, (1,)), TensorSpec(TEXTS, DataType.STRING, (-1,)))

PAIR_TOKENIZE = ModelSpec(
    name="qmd_pair_tokenize",
    kind=ModelKind.PYTHON,
    inputs=_PAIRS_IN,
    outputs=(
        TensorSpec(PAIR_INPUT_IDS, DataType.INT64, (-1, -1)),
        TensorSpec(PAIR_ATTENTION_MASK, DataType.INT64, (-1, -1)),
        TensorSpec(PAIR_TOKEN_TYPE_IDS, DataType.INT64, (-1, -1)),
    ),
    artifacts=("model.py",),
    doc="A query and up to RERANK_MAX_PAIRS texts -> cross-encoder pair tokens (the reranker's own tokenizer).",
)

RERANK = ModelSpec(
    name="qmd_rerank",
    kind=ModelKind.ENSEMBLE,
    inputs=_PAIRS_IN,
    outputs=(TensorSpec(LOGIT, DataType.FP32, (-1, 1)),),
    doc="Ensemble: qmd_pair_tokenize -> qmd_rerank_model; one raw logit per text (sigmoid(logit) is the "
        "relevance probability).",
)

MODEL_SPECS: tuple[ModelSpec, ...] = (
    TOKENIZE, EMBED_MODEL, EMBED, PLAN, EXPAND, SEARCH, RETRIEVE, RERANK_MODEL, FUSE, VSEARCH, QUERY_PIPELINE,
    PAIR_TOKENIZE, RERANK,
)


def model(name: str) -> ModelSpec:
    """Looks a model spec up by name."""
    for m in MODEL_SPECS:
        if m.name == name:
            return m
    raise KeyError(f"unknown model {name!r}; known: {', '.join(m.name for m in MODEL_SPECS)}")
