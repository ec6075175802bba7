"""``qmd_pair_tokenize``: a query and texts -> the cross-encoder's pair tokens (the first step of ``qmd_rerank``).

The tokenizer is the reranker's own (``qmd_rerank_model/1/tokenizer.json``, copied there by the exporter), and
the encoding is :class:`~qmd_triton.text.tokenization.PairEncoder`, the one ``qmd_retrieve`` uses for
``qmd_query``'s candidates and the in-process reranker uses: only the text is truncated, the query is cut to a
quarter of the window, and the rows of one request are padded to its longest pair (or to a length bucket).

Config parameters (optional):
    max_length: tokens per pair (default 512, the reranker's window).
    length_buckets: comma-separated lengths each request is padded up to (the GPU config sets them so the
        native backend's batcher can merge equal shapes); empty means the longest pair of the request.
"""

from __future__ import annotations

from typing import Any

from qmd_triton.contracts import (
    PAIR_ATTENTION_MASK,
    PAIR_INPUT_IDS,
    PAIR_TOKEN_TYPE_IDS,
    QUERY,
    RERANK_MAX_PAIRS,
    RERANK_MODEL,
    TEXTS,
)
from qmd_triton.errors import InputError, QmdError
from qmd_triton.search.options import MAX_QUERY_BYTES
from qmd_triton.serving.triton import common
from qmd_triton.text.tokenization import PairEncoder, decode_text


def decode_pairs(query_raw: list[bytes], texts_raw: list[bytes]) -> tuple[str, list[str]]:
    """The request's query and texts, with one clear error for each way they can be unusable."""
    if len(query_raw) != 1:
        raise InputError(f"query must hold exactly one string, got {len(query_raw)}")
    query = decode_text(query_raw[0], 0)
    size = len(query.encode("utf-8"))
    if size > MAX_QUERY_BYTES:
        raise InputError(f"query is {size} bytes; the limit is {MAX_QUERY_BYTES}")
    if not query.strip():
        raise InputError("query is empty")
    if not texts_raw:
        raise InputError("texts is empty: send at least one text to score")
    if len(texts_raw) > RERANK_MAX_PAIRS:
        raise InputError(f"{len(texts_raw)} texts in one request; qmd_rerank takes at most {RERANK_MAX_PAIRS} "
                         "(split the list)")
    return query, [decode_text(v, i) for i, v in enumerate(texts_raw)]


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        utils = common.pb()
        config, version_dir = common.load(args)
        repo = version_dir.parent.parent
        try:
            self.pairs = PairEncoder(repo / RERANK_MODEL.name / "1" / "tokenizer.json",
                                     max_length=common.int_parameter(config, "max_length", 512),
                                     buckets=common.parameter(config, "length_buckets", ""))
        except (QmdError, OSError, ValueError) as e:
            raise utils.TritonModelException(f"qmd_pair_tokenize failed to initialize: {e}") from None

    def execute(self, requests: list) -> list:
        utils = common.pb()

        def handle(request: Any) -> Any:
            query, texts = decode_pairs(
                common.bytes_column(utils.get_input_tensor_by_name(request, QUERY).as_numpy()),
                common.bytes_column(utils.get_input_tensor_by_name(request, TEXTS).as_numpy()))
            ids, mask, types = self.pairs.encode(query, texts)
            return utils.InferenceResponse(output_tensors=[
                utils.Tensor(PAIR_INPUT_IDS, ids),
                utils.Tensor(PAIR_ATTENTION_MASK, mask),
                utils.Tensor(PAIR_TOKEN_TYPE_IDS, types),
            ])

        return common.respond_each(requests, handle, (QmdError,))

    def finalize(self) -> None:
        self.pairs = None
