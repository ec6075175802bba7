"""``qmd_search``: BM25 full-text search of the index, served.

Parameters: ``index_path`` (empty: the index of ``$QMD_HOME`` on its backend, as the CLI uses; a path: that
SQLite file).
The index is opened on the first request and reopened when it is rebuilt, so the
model loads before any index exists and picks up every ``qmdctl update``.
"""

from __future__ import annotations

import numpy as np

from qmd_triton.contracts import RESULTS
from qmd_triton.errors import QmdError
from qmd_triton.search.lexical import search_bm25
from qmd_triton.serving.triton import common
from qmd_triton.serving.triton.plan import read_request


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config, _ = common.load(args)
        self.handle = common.served_index(config)

    def execute(self, requests: list) -> list:
        utils = common.pb()

        def handle(request):
            query, options = read_request(request)
            hits = search_bm25(self.handle.get(), query, options, self.handle.contexts())
            payload = common.json_bytes([h.to_dict() for h in hits])
            return utils.InferenceResponse(
                output_tensors=[utils.Tensor(RESULTS, np.array([payload], dtype=np.object_))])

        return common.respond_each(requests, handle, (QmdError,))

    def finalize(self) -> None:
        self.handle.close()
