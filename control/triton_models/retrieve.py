"""``qmd_retrieve``: vector search of the index with the query embeddings.

The vector matrix is held in memory and reloaded when the index changes (see
``VectorIndex``). The index must have been embedded with the model this server
serves: its fingerprint (model file, prompt formats, chunking) is compared with
this repository's on every request, and a mismatch is a clear error, never
silently wrong neighbours.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..contracts import QUERY_EMBEDDINGS, RESULTS
from ..errors import ArtifactMissing, FingerprintMismatch, QmdError
from ..indexer import embedding_setup, fingerprint_id
from ..search import IndexHandle, SearchOptions, VectorIndex
from . import common
from .plan import read_request


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        utils = common.pb()
        common.route_logging()
        config = common.parse_model_config(args)
        self.handle = IndexHandle(common.index_path(config))
        repo = Path(args["model_repository"]).parent
        try:
            self.fingerprint = embedding_setup(repo).fingerprint
        except (QmdError, OSError) as e:
            raise utils.TritonModelException(f"qmd_retrieve cannot read the embedding model's setup: {e}") from None
        self.fingerprint_id = fingerprint_id(self.fingerprint)
        self.vectors: VectorIndex | None = None

    def _index(self) -> VectorIndex:
        store = self.handle.get()
        if self.vectors is None or self.vectors.store is not store:
            self.vectors = VectorIndex(store)
        stored = store.fingerprint()
        if stored is None:
            raise ArtifactMissing("the index has no vectors yet; run `qmdctl embed`")
        if fingerprint_id(stored) != self.fingerprint_id:
            diff = sorted(k for k in set(stored) | set(self.fingerprint) if stored.get(k) != self.fingerprint.get(k))
            raise FingerprintMismatch(
                f"the index was embedded with a different {', '.join(diff)} than this server's model; "
                "run `qmdctl embed --force`"
            )
        return self.vectors

    def execute(self, requests: list) -> list:
        utils = common.pb()

        def handle(request):
            _, options = read_request(request)
            vectors = utils.get_input_tensor_by_name(request, QUERY_EMBEDDINGS).as_numpy()
            hits = self._index().search(vectors[0], SearchOptions.from_json(options))
            payload = json.dumps([h.to_dict() for h in hits], ensure_ascii=False).encode("utf-8")
            return utils.InferenceResponse(output_tensors=[utils.Tensor(RESULTS, np.array([payload], dtype=np.object_))])

        return common.respond_each(requests, handle, (QmdError,))

    def finalize(self) -> None:
        self.handle.close()
