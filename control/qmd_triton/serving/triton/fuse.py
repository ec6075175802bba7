"""``qmd_fuse``: the last step of ``qmd_query`` — reranker scores meet the RRF order.

Parameter ``fusion``: ``prior`` (the cross-encoder's logit plus retrieval's evidence, weighted by how much of
the document it did not read), ``rerank`` (order by the cross-encoder's probability) or ``blend`` (tobi/qmd's
position-aware mix of RRF rank and reranker probability). The default is what ``qmdctl eval`` and
``perf/quality_lab.py`` measured best on every set (docs/search.md). With
``rerank: false`` in the options, or no candidates, the RRF order stands; so it
does when the reranker was bypassed (it does not read the query's language) or its
scores are flat (all equal: they order nothing). Candidates the reranker did not
read (``payload["reranked"]`` leaves them out) keep their fused place.
"""

from __future__ import annotations

import json

import numpy as np

from qmd_triton.contracts import CANDIDATES, LOGIT, RESULTS
from qmd_triton.errors import InputError, parse_json_input
from qmd_triton.search.fusion import FUSIONS, blend_weight, final_order, flat, prior, sigmoid
from qmd_triton.search.options import SearchOptions
from qmd_triton.serving.triton import common

UNSURE_LOGIT = -4.6  # below this for every candidate (1%), the cross-encoder recognized no answer

_SHAPE = 'a JSON object {"plan": {"options": {...}}, "candidates": [{..., "explain": {"rrf_rank": N}}]}'


def read_payload(raw: bytes | str) -> dict:
    """``candidates`` as qmd_retrieve sends it, checked: anything else is one clear request error."""
    payload = parse_json_input(raw, "candidates")
    plan = payload.get("plan") if isinstance(payload, dict) else None
    cands = payload.get("candidates") if isinstance(payload, dict) else None
    if not isinstance(plan, dict) or not isinstance(plan.get("options", {}), dict) or not isinstance(cands, list):
        raise InputError(f"candidates must be {_SHAPE}")
    for c in cands:
        rank = c.get("explain", {}).get("rrf_rank") if isinstance(c, dict) and isinstance(c.get("explain"), dict) \
            else None
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise InputError(f"candidates must be {_SHAPE}")
    reranked = payload.get("reranked")
    if reranked is not None and (not isinstance(reranked, list) or any(
            isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(cands) for i in reranked)):
        raise InputError("candidates' reranked must be a list of candidate indices")
    plan["options"] = SearchOptions.from_json(json.dumps(plan.get("options", {}))).to_dict()
    return payload


def fuse(payload: dict, logits: np.ndarray, fusion: str) -> list[dict]:
    """Final hits (dicts) from retrieve's payload and the reranker's logits."""
    plan, cands = payload["plan"], payload["candidates"]
    options = plan["options"]
    if not cands:
        return []
    values = [float(x) for x in logits.reshape(-1)]
    read = payload.get("reranked")
    if read is None:  # a payload without the list: every candidate was reranked, or none
        read = list(range(len(cands))) if options.get("rerank", True) and len(values) == len(cands) else []
    stages = dict(plan.get("stages") or {})
    scores: list[float | None] | None = None  # the reranker's logit per candidate (None: not read)
    if read and len(values) == len(read):
        scores = [None] * len(cands)
        if flat(values):  # equal scores order nothing: the fused order stands
            values = [sum(values) / len(values)] * len(values)
            stages["rerank"] = {"status": "flat", "why": "every reranked candidate got the same score"}
        for i, x in zip(read, values):
            scores[i] = x
    fusion = options.get("fusion") or fusion
    top_rrf = max(float(c["explain"].get("rrf") or 0.0) for c in cands)
    priors = [prior(float(c["explain"].get("rrf") or 0.0), top_rrf, float(c["explain"].get("unread") or 0.0))
              for c in cands]
    order = final_order([c["explain"]["rrf_rank"] for c in cands], scores, fusion, priors)
    known = [x for x in (scores or []) if x is not None]
    if fusion == "prior" and known and max(known) < UNSURE_LOGIT and stages.get("rerank", {}).get("status") == "ran":
        stages["rerank"] = {"status": "ran", "why": f"no candidate reached {sigmoid(UNSURE_LOGIT):.0%} with the "
                                                    "cross-encoder: retrieval's prior decided their order"}
    # the lines that were searched beside the query, fresh from the LLM, from the cache or typed by the caller
    lines = {k: plan.get(k) for k in ("lex", "vec", "hyde") if plan.get(k)}
    expansion = {**plan.get("expansion", {}), **({"lines": lines} if lines else {})}
    out = []
    for i, score in order:
        hit = dict(cands[i])
        explain = hit.pop("explain")
        if scores is not None:
            if scores[i] is None:
                explain["rerank"] = None  # the reranker does not read this passage: it kept its fused place
            else:
                explain["rerank"] = round(sigmoid(scores[i]), 5)
                explain["logit"] = round(scores[i], 3)
            explain["fusion"] = fusion
            if fusion == "prior":
                explain["prior"] = round(priors[i], 3)  # logits retrieval added to the cross-encoder's
            # the share of the score that the retrieval position carries (0 when the reranker alone orders)
            explain["blend_weight"] = blend_weight(explain["rrf_rank"]) if fusion == "blend" else 0.0
        explain["expansion"] = expansion
        explain["stages"] = {"expansion": {k: v for k, v in expansion.items() if k in ("status", "why")}, **stages}
        explain["candidates"] = len(cands)
        if "candidate_limit" in payload:
            explain["candidate_limit"] = payload["candidate_limit"]
        hit["score"] = round(min(1.0, score), 4)
        if hit["score"] < options.get("min_score", 0.0):
            continue
        if options.get("explain"):
            hit["explain"] = explain
        out.append(hit)
        if len(out) >= options.get("n", 10):
            break
    return out


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        utils = common.pb()
        config, _ = common.load(args)
        self.fusion = common.parameter(config, "fusion", "prior")
        if self.fusion not in FUSIONS:
            raise utils.TritonModelException(f"qmd_fuse: fusion must be one of {', '.join(FUSIONS)}")

    def execute(self, requests: list) -> list:
        utils = common.pb()

        def handle(request):
            raw = common.bytes_column(utils.get_input_tensor_by_name(request, CANDIDATES).as_numpy())[0]
            payload = read_payload(raw)
            logits = utils.get_input_tensor_by_name(request, LOGIT).as_numpy()
            if not np.isfinite(logits).all():
                raise InputError("logit holds values that are not finite (NaN or infinity)")
            hits = fuse(payload, logits, self.fusion)
            body = common.json_bytes(hits)
            return utils.InferenceResponse(output_tensors=[utils.Tensor(RESULTS, np.array([body], dtype=np.object_))])

        return common.respond_each(requests, handle, (InputError,))
