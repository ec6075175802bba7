"""``qmd_plan``: checks a search request and emits its vector queries (no expansion).

It is the first step of ``qmd_vsearch``: a bad query or bad options fail here,
before any embedding work, and the single query becomes the ``[1, 1]`` batch of
vector queries (with ``kind = "query"``) that ``qmd_tokenize`` expects. The
expanding pipeline's ``qmd_expand`` has the same outputs.
"""

from __future__ import annotations

import numpy as np

from ..contracts import KIND_QUERY, OPTIONS, QUERY, VEC_KINDS, VEC_QUERIES
from ..errors import InputError
from ..search import SearchOptions, check_query
from ..tokenization import decode_text
from . import common


def read_request(request) -> tuple[str, str]:
    """``(query, options JSON)`` of a search request, decoded and checked."""
    utils = common.pb()
    raw_q = utils.get_input_tensor_by_name(request, QUERY).as_numpy().reshape(-1)
    raw_o = utils.get_input_tensor_by_name(request, OPTIONS)
    if raw_q.size != 1:
        raise InputError(f"query must hold exactly one string, got {raw_q.size}")
    query = check_query(decode_text(raw_q[0], 0))
    options = ""
    if raw_o is not None:
        values = raw_o.as_numpy().reshape(-1)
        options = decode_text(values[0], 0) if values.size else ""
    SearchOptions.from_json(options)  # fail early on malformed options
    return query, options


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        common.route_logging()

    def execute(self, requests: list) -> list:
        utils = common.pb()

        def handle(request):
            query, _ = read_request(request)
            return utils.InferenceResponse(output_tensors=[
                utils.Tensor(VEC_QUERIES, np.array([[query.encode("utf-8")]], dtype=np.object_)),
                utils.Tensor(VEC_KINDS, np.array([[KIND_QUERY.encode()]], dtype=np.object_)),
            ])

        return common.respond_each(requests, handle, (InputError,))
