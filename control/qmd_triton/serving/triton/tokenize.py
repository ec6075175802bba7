"""``qmd_tokenize``: UTF-8 text -> ``input_ids``, ``attention_mask``.

Config parameters (all optional):
    max_length: tokens per text after truncation; 0 means the model's own limit.
    query_prompt / document_prompt: formats with ``{text}``; the optional ``kind``
        input ("query" or "document", default "document") picks one per row.
    length_buckets: comma-separated lengths each request is padded up to, so the
        dynamic batcher of ``qmd_embed_model`` can merge requests of similar length.

Every request is padded to its own bucket: one long text in a neighbour's
request does not make a short request pay for its padding.
"""

from __future__ import annotations

import logging
from typing import Any

from qmd_triton.contracts import ATTENTION_MASK, INPUT_IDS, KIND, KIND_DOCUMENT, PROMPT_KINDS, TEXT
from qmd_triton.errors import InputError, QmdError
from qmd_triton.serving.triton import common
from qmd_triton.text.tokenization import PromptFormats, TextEncoder, decode_text

log = logging.getLogger(__name__)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        utils = common.pb()
        try:
            config, version_dir = common.load(args)
            prompts = PromptFormats(
                query=common.parameter(config, "query_prompt", "{text}"),
                document=common.parameter(config, "document_prompt", "{text}"),
            )
            self.encoder = TextEncoder.from_dir(
                version_dir,
                max_length=common.int_parameter(config, "max_length", 0),
                prompts=prompts,
                buckets=common.parameter(config, "length_buckets", ""),
            )
            self.ids_dtype = common.output_dtype(config, INPUT_IDS)
            self.mask_dtype = common.output_dtype(config, ATTENTION_MASK)
            log.info(
                "qmd_tokenize ready: max_length=%d buckets=%s", self.encoder.max_length, self.encoder.buckets
            )
        except (QmdError, ValueError, OSError) as e:
            raise utils.TritonModelException(f"qmd_tokenize failed to initialize: {e}") from None

    def _decode(self, request: Any) -> tuple[list[str], list[str]]:
        utils = common.pb()
        raw = common.bytes_column(utils.get_input_tensor_by_name(request, TEXT).as_numpy())
        texts = [decode_text(v, i) for i, v in enumerate(raw)]
        if not texts:
            raise InputError("text has no rows")
        kind_tensor = utils.get_input_tensor_by_name(request, KIND)
        if kind_tensor is None:
            return texts, [KIND_DOCUMENT] * len(texts)
        kinds = [decode_text(v, i, KIND) for i, v in enumerate(common.bytes_column(kind_tensor.as_numpy()))]
        if len(kinds) == 1 and len(texts) > 1:
            kinds = kinds * len(texts)
        if len(kinds) != len(texts):
            raise InputError(f"kind has {len(kinds)} rows but text has {len(texts)}")
        bad = sorted({k for k in kinds if k not in PROMPT_KINDS})
        if bad:
            raise InputError(f"kind must be one of {', '.join(PROMPT_KINDS)}, got {bad[0]!r}")
        return texts, kinds

    def execute(self, requests: list) -> list:
        utils = common.pb()
        decoded: list[tuple[list[str], list[str]] | str] = []
        for request in requests:
            try:
                decoded.append(self._decode(request))
            except InputError as e:
                decoded.append(str(e))
        # One tokenizer call for all requests: encode_batch parallelizes across rows.
        texts = [t for d in decoded if not isinstance(d, str) for t in d[0]]
        kinds = [k for d in decoded if not isinstance(d, str) for k in d[1]]
        rows = self.encoder.token_ids(texts, kinds) if texts else []
        responses, start = [], 0
        for d in decoded:
            if isinstance(d, str):
                responses.append(common.error_response(f"qmd_tokenize: {d}"))
                continue
            n = len(d[0])
            ids, mask = self.encoder.pad(rows[start : start + n])
            start += n
            responses.append(
                utils.InferenceResponse(
                    output_tensors=[
                        utils.Tensor(INPUT_IDS, ids.astype(self.ids_dtype, copy=False)),
                        utils.Tensor(ATTENTION_MASK, mask.astype(self.mask_dtype, copy=False)),
                    ]
                )
            )
        return responses

    def finalize(self) -> None:
        self.encoder = None

