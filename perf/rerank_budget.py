"""How many candidates, and how much of each, should the cross-encoder read? Quality against time.

For every judged query of each set, the hybrid pipeline's candidates are built as ``qmd_retrieve``
builds them (the index of ``qmdctl eval``'s workspace, expansion from the index's cache or the
LLM, BM25 + vector lists, RRF, best chunk per document), then reranked in-process by the same
INT8 cross-encoder for every (candidates, passage tokens) option: the top C by RRF, each passage
cut to its best window of W tokens (0: the whole chunk), one padded batch per query as the server
runs it. Quality is scored by the set's own metrics; time is the reranker's alone, options
alternated per query so machine noise spreads evenly.

Usage:
    .venv/bin/python perf/rerank_budget.py [--sets msmarco dbpedia triton-docs] [--candidates 40 20]
        [--tokens 0 128 64] [--out perf/results/rerank_budget.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from qmd_triton.bench.datasets import load_set
from qmd_triton.bench.evaluation import index_set, workspace
from qmd_triton.bench.reports import machine, machine_line
from qmd_triton.bench.scoring import metrics_for, score_run
from qmd_triton.contracts import KIND_QUERY
from qmd_triton.index import embedders
from qmd_triton.index.embed import embed_pending
from qmd_triton.index.sqlite.index import SqliteIndex
from qmd_triton.runtime.onnx import InProcessEmbedder, InProcessReranker
from qmd_triton.search.expansion import Expander, make_engine, plan_expansion
from qmd_triton.search.fusion import sigmoid
from qmd_triton.search.hybrid import Plan, hybrid_candidates
from qmd_triton.search.options import SearchOptions
from qmd_triton.settings import Settings, default_datasets


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(name: str, base: Settings, candidates: list[int], tokens: list[int], expander: Expander,
            engine_id: str) -> dict:
    dataset = load_set(default_datasets() / name)
    settings = workspace(base, dataset)
    mapping = index_set(dataset, settings, say)
    embedder = embedders.load("onnxruntime", settings)
    query_model = InProcessEmbedder.from_repository(settings.model_repository)
    reranker = InProcessReranker.from_repository(settings.model_repository, threads=2)
    runs: dict[tuple[int, int], dict[str, list[str]]] = {(c, t): {} for c in candidates for t in tokens}
    seconds = dict.fromkeys(runs, 0.0)
    widest = max(candidates)
    with SqliteIndex.open(settings.index_path) as store:
        report = embed_pending(store, embedder.setup(), lambda: embedder.embed, batch_size=16, concurrency=1,
                               progress=lambda d, t: None)
        if report.embedded:
            say(f"{name}: embedded {report.embedded} chunks in-process")
        options = SearchOptions(n=10, candidates=widest)
        queries = dataset.judged_queries()
        for n, q in enumerate(queries):
            text = dataset.queries[q]
            expansion = plan_expansion(text, options, expander, engine_id=engine_id, index=store)
            plan = Plan(query=text, lex=expansion.lex, vec=expansion.vec, hyde=expansion.hyde,
                        options=options.to_dict())
            emb = query_model.embed(plan.vec_texts(), KIND_QUERY)
            cands = hybrid_candidates(store, plan, emb)
            order = list(runs) if n % 2 == 0 else list(runs)[::-1]
            for c, t in order:
                chosen = cands[:c]
                started = time.perf_counter()
                logits = reranker.run(*reranker.pairs.encode(plan.rerank_query(), [x.passage for x in chosen],
                                                             plan.terms(), t))
                seconds[(c, t)] += time.perf_counter() - started
                probs = [sigmoid(float(x)) for x in logits]
                ranked = sorted(range(len(chosen)), key=lambda i: (-probs[i], i))
                runs[(c, t)][q] = [mapping[chosen[i].hit.path] for i in ranked]
            if (n + 1) % 20 == 0:
                say(f"{name}: {n + 1}/{len(queries)} queries")
    metrics = metrics_for(dataset.kind)
    rows = []
    for (c, t), run in runs.items():
        scores = score_run(dataset, run)
        rows.append({"set": name, "candidates": c, "passage_tokens": t, **{m: scores[m] for m in metrics},
                     "seconds": round(seconds[(c, t)], 2), "ms_per_query": round(1000 * seconds[(c, t)] / len(run), 1)})
    return {"set": name, "kind": dataset.kind, "queries": len(dataset.judged_queries()), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["msmarco", "dbpedia", "triton-docs"])
    parser.add_argument("--candidates", nargs="+", type=int, default=[40, 20])
    parser.add_argument("--tokens", nargs="+", type=int, default=[0, 128, 64])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    base = Settings.load()
    engine = make_engine("onnxruntime", base.model_repository / "qmd_expand" / "1", threads=2)
    manifest = json.loads((base.model_repository / "qmd_expand" / "1" / "export.json").read_text())
    engine_id = f"onnxruntime:{manifest.get('onnx_sha256', '')[:16]}"
    expander = Expander(engine, max_new_tokens=64, timeout_s=4.0)
    started_machine = machine()
    results = [measure(name, base, args.candidates, args.tokens, expander, engine_id) for name in args.sets]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": started_machine, "results": results}, indent=2))
    print(f"Measured on {machine_line(started_machine)} (load at the end: {machine()['load_avg_1m']:.1f}).\n")
    for result in results:
        metrics = [k for k in result["rows"][0] if k not in ("set", "candidates", "passage_tokens", "seconds",
                                                             "ms_per_query")]
        full = max(result["rows"], key=lambda r: r["seconds"])
        print(f"| {result['set']} ({result['queries']} queries) | candidates | passage tokens | "
              + " | ".join(metrics) + " | rerank ms/query | time ÷ slowest |")
        print("|---|---|---|" + "---|" * len(metrics) + "---|---|")
        for r in result["rows"]:
            print(f"| | {r['candidates']} | {r['passage_tokens'] or 'whole chunk'} | "
                  + " | ".join(f"{r[m]:.4f}" for m in metrics)
                  + f" | {r['ms_per_query']:.0f} | {r['seconds'] / full['seconds']:.2f} |")
        print()


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
