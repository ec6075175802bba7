"""``qmd_retrieve``: the index side of ``qmd_vsearch`` and ``qmd_query``.

For a ``vsearch`` plan: exact vector search with the query's embedding; the
``candidates`` output is the final result list. For a ``query`` plan: a BM25 list
per lexical query and a vector list per embedded query, fused by RRF into at most
``candidates`` documents, each with its best chunk; the output is
``{"plan", "candidates"}`` for ``qmd_fuse``, and the (query, best chunk) pairs are
tokenized for ``qmd_rerank_model`` with the reranker's own tokenizer. When the
plan says ``rerank: false`` a single placeholder pair is sent instead (ensembles
are static: the reranker step always runs).

Languages (``qmd_triton.search.coverage``): the vector list of a query text the
embedder does not read is left out; a query the reranker does not read is not
reranked (the placeholder pair again), and only the candidates whose passages it
reads are sent to it (``payload["reranked"]`` lists them; the others keep their
fused place). ``plan.stages`` records what ran and why, for ``--explain``, and
``qmd_stages_total{stage, outcome}`` counts it on Triton's /metrics. Each reranked candidate carries the share of
its document the cross-encoder did not read (``explain.unread``), which ``qmd_fuse``'s ``prior`` fusion weighs.

The index must have been embedded with the model this server serves: its
fingerprint is compared with this repository's on every request.
"""

from __future__ import annotations

import json

import numpy as np

from qmd_triton.contracts import (
    CANDIDATES,
    PAIR_ATTENTION_MASK,
    PAIR_INPUT_IDS,
    PAIR_TOKEN_TYPE_IDS,
    PLAN_JSON,
    QUERY_EMBEDDINGS,
    RERANK_MODEL,
)
from qmd_triton.errors import ArtifactMissing, InputError, QmdError
from qmd_triton.index.fingerprint import embedding_setup, fingerprint_id, mismatch
from qmd_triton.index.interface import Index
from qmd_triton.search.coverage import repository_languages, stage
from qmd_triton.search.hybrid import Plan, clamp_candidates, hybrid_candidates
from qmd_triton.search.vectors import VectorSearch
from qmd_triton.serving.triton import common
from qmd_triton.text.terms import parse_query
from qmd_triton.text.tokenization import PairEncoder


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        utils = common.pb()
        config, version_dir = common.load(args)
        self.handle = common.served_index(config)
        repo = version_dir.parent.parent
        try:
            self.fingerprint = embedding_setup(repo).fingerprint
            self.pairs = PairEncoder(repo / RERANK_MODEL.name / "1" / "tokenizer.json",
                                     max_length=common.int_parameter(config, "rerank_max_length", 512),
                                     buckets=common.parameter(config, "rerank_length_buckets", ""))
            # each candidate's best window of this many tokens is what the cross-encoder reads (0: the chunk)
            self.passage_tokens = common.int_parameter(config, "rerank_passage_tokens", 0)
        except (QmdError, OSError) as e:
            raise utils.TritonModelException(f"qmd_retrieve cannot read the models' setup: {e}") from None
        self.fingerprint_id = fingerprint_id(self.fingerprint)
        self.languages = repository_languages(repo)
        self.stages = common.Counter("qmd_stages_total", "Stages of qmd_query by outcome: ran, partial, bypassed "
                                     "(the model does not read the language), off", ("stage", "outcome"))

    def _index(self) -> Index:
        index = self.handle.get()
        stored = index.fingerprint()
        if stored is None:
            raise ArtifactMissing("the index has no vectors yet; run `qmdctl embed`")
        if fingerprint_id(stored) != self.fingerprint_id:
            raise mismatch(stored, self.fingerprint, "this server's model")
        return index

    def _response(self, payload: object, pairs: tuple[np.ndarray, np.ndarray, np.ndarray]):
        utils = common.pb()
        ids, mask, types = pairs
        return utils.InferenceResponse(output_tensors=[
            utils.Tensor(CANDIDATES, np.array([common.json_bytes(payload)], dtype=np.object_)),
            utils.Tensor(PAIR_INPUT_IDS, ids),
            utils.Tensor(PAIR_ATTENTION_MASK, mask),
            utils.Tensor(PAIR_TOKEN_TYPE_IDS, types),
        ])

    def execute(self, requests: list) -> list:
        utils = common.pb()

        def handle(request):
            plan = Plan.from_json(common.bytes_column(
                utils.get_input_tensor_by_name(request, PLAN_JSON).as_numpy())[0])
            embeddings = utils.get_input_tensor_by_name(request, QUERY_EMBEDDINGS).as_numpy()
            if embeddings.ndim != 2 or embeddings.shape[0] < 1:
                raise InputError(f"query_embeddings must hold at least one row, got shape {list(embeddings.shape)}")
            if not np.isfinite(embeddings).all():
                raise InputError("query_embeddings holds values that are not finite (NaN or infinity)")
            index = self._index()
            if plan.mode == "vsearch":
                hits = VectorSearch(index).search(embeddings[0], plan.search_options, self.handle.contexts(),
                                      parse_query(plan.query).exclude)
                return self._response([h.to_dict() for h in hits], self.pairs.encode("", ["-"]))
            cands = hybrid_candidates(index, plan, embeddings, self.handle.contexts(),
                                      embedder=self.languages["embedding"])
            read, passages = self._rerank_stage(plan, [c.passage for c in cands])
            if read:
                for c, n in zip([cands[i] for i in read], self.pairs.count([passages[i] for i in read])):
                    c.unread = max(0.0, 1.0 - min(n, self.pairs.max_length) / c.tokens) if c.tokens else 0.0
            payload = {"plan": json.loads(plan.to_json()), "candidates": [c.to_dict() for c in cands],
                       "candidate_limit": clamp_candidates(plan.search_options), "reranked": read}
            for name, record in plan.stages.items():
                self.stages.increment((name, record["status"]))
            if read:
                pairs = self.pairs.encode(plan.rerank_query(), [passages[i] for i in read])
            else:
                pairs = self.pairs.encode("", ["-"])
            return self._response(payload, pairs)

        return common.respond_each(requests, handle, (QmdError, InputError))

    def _rerank_stage(self, plan: Plan, chunks: list[str]) -> tuple[list[int], list[str]]:
        """Which candidates go to the reranker (indices) and what it reads of each (the best window of the
        chunk, or the chunk), with ``plan.stages["rerank"]`` saying why. A passage's language is judged on the
        text the cross-encoder reads, not on the whole chunk."""
        reranker = self.languages["reranker"]
        query = plan.rerank_query()
        if not plan.search_options.rerank:
            plan.stages["rerank"] = stage("off", "rerank: false (--no-rerank)")
            return [], []
        if not chunks:
            plan.stages["rerank"] = stage("off", "no candidates")
            return [], []
        if not reranker.reads(query):
            plan.stages["rerank"] = stage("bypassed", f"{reranker.why_not(query)}; the fused order stands")
            return [], []
        terms = plan.terms()
        passages = [self.pairs.window(c, terms, self.passage_tokens) for c in chunks]
        read = [i for i, p in enumerate(passages) if reranker.reads(p)]
        if not read:
            plan.stages["rerank"] = stage("bypassed", f"{reranker.name} reads {reranker.label}, none of the "
                                                      "candidates' passages; the fused order stands")
        elif len(read) < len(passages):
            plan.stages["rerank"] = stage("partial", f"{len(passages) - len(read)} of {len(passages)} candidates are "
                                                     f"in scripts {reranker.name} does not read ({reranker.label}); "
                                                     "they keep their fused place")
        else:
            plan.stages["rerank"] = stage("ran")
        return read, passages

    def finalize(self) -> None:
        self.stages.close()
        self.handle.close()
