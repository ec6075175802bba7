"""``qmd_plan``: checks a search request and plans a vector search (no expansion).

It is the first step of ``qmd_vsearch``: a bad query or bad options fail here,
before any embedding work. Its outputs are those of ``qmd_expand``: the plan as
JSON, and the texts to embed as a ``[K, 1]`` batch with ``kind = "query"`` per row
(ensembles cannot hold constants, so the kind travels as a tensor).
"""

from __future__ import annotations

import numpy as np

from qmd_triton.contracts import KIND_QUERY, OPTIONS, PLAN_JSON, QUERY, VEC_KINDS, VEC_QUERIES
from qmd_triton.errors import InputError
from qmd_triton.search.hybrid import Plan
from qmd_triton.search.options import SearchOptions, check_query
from qmd_triton.serving.triton import common
from qmd_triton.text.tokenization import decode_text


def read_request(request) -> tuple[str, SearchOptions]:
    """``(query, options)`` of a search request, decoded and checked."""
    utils = common.pb()
    raw_q = utils.get_input_tensor_by_name(request, QUERY).as_numpy().reshape(-1)
    raw_o = utils.get_input_tensor_by_name(request, OPTIONS)
    if raw_q.size != 1:
        raise InputError(f"query must hold exactly one string, got {raw_q.size}")
    query = check_query(decode_text(raw_q[0], None, QUERY))
    options = ""
    if raw_o is not None:
        values = raw_o.as_numpy().reshape(-1)
        if values.size > 1:
            raise InputError(f"options must hold exactly one string, got {values.size}")
        options = decode_text(values[0], None, OPTIONS) if values.size else ""
    return query, SearchOptions.from_json(options)


def plan_response(plan: Plan):
    utils = common.pb()
    texts = plan.vec_texts()
    return utils.InferenceResponse(output_tensors=[
        utils.Tensor(PLAN_JSON, np.array([plan.to_json().encode("utf-8")], dtype=np.object_)),
        utils.Tensor(VEC_QUERIES, np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)),
        utils.Tensor(VEC_KINDS, np.array([[KIND_QUERY.encode()] for _ in texts], dtype=np.object_)),
    ])


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        common.load(args)

    def execute(self, requests: list) -> list:
        def handle(request):
            query, options = read_request(request)
            return plan_response(Plan(query=query, mode="vsearch", options=options.to_dict()))

        return common.respond_each(requests, handle, (InputError,))
