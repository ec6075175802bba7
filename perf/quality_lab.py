"""Which rules make the hybrid query put the right document first? Rules compared on the same candidates.

``qmdctl eval`` measures what the served pipeline does; this lab measures what it *would* do under other rules
(the passage the cross-encoder reads, when its scores are trusted, when expansion runs), on all three sets at
once, so that a rule is chosen by what it does everywhere rather than on single queries.

Stage 1 (slow, cached): each set is indexed in a lab home of its own (``$QMD_HOME/lab/SET-VARIANT``) with the
project's own ``update`` and an in-process ``embed`` of the given model repository; every judged query is
expanded (the index's expansion cache, else the LLM with a generous deadline: the lab measures what an
expansion says, not whether it came in time), embedded, and its BM25 and vector lists fused by the project's
``hybrid_candidates``. What every later rule needs is kept per query: the fused candidates (up to 40) with their
lists and ranks, each candidate's chunks with their cosine to the query, and its title and body.

Stage 2 (fast): a rule is a passage selector and a fusion; the cross-encoder's logits are cached per (query,
passages) batch, each query's pairs one padded batch as the server runs them.

Stage 2 prints hit@1 (triton-docs), nDCG@10 (msmarco, dbpedia) and triton-docs' MRR@10 for every rule, with
expansion off, on, and on only where BM25's and the vectors' first hits disagree ("disagree").

Usage:
    QMD_HOME=... .venv/bin/python perf/quality_lab.py [--sets triton-docs msmarco dbpedia]
        [--repo model_repository --variant minilm] [--rules served|passages|fusions] [--candidates 20]
        [--no-expansion] [--stage1-only]
    (perf/reproduce.sh quality runs the tables of perf/RESULTS.md, "The right page first")
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qmd_triton.bench.datasets import load_set
from qmd_triton.bench.evaluation import index_set
from qmd_triton.bench.scoring import first_relevant_rank, score_run
from qmd_triton.contracts import KIND_QUERY
from qmd_triton.index import embedders
from qmd_triton.index.embed import embed_pending
from qmd_triton.index.sqlite.index import SqliteIndex
from qmd_triton.runtime.onnx import InProcessEmbedder, InProcessReranker
from qmd_triton.search.expansion import Expander, make_engine, plan_expansion
from qmd_triton.search.fusion import strong_signal
from qmd_triton.search.hybrid import Plan, bm25_probe, hybrid_candidates
from qmd_triton.search.options import SearchOptions
from qmd_triton.settings import Settings, default_datasets

WIDEST = 40


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Cand:
    key: str  # the set's document id
    path: str
    title: str
    rrf: float
    rrf_rank: int
    ranks: dict[str, int]
    passage: str  # what today's pipeline gives the reranker before windowing (its best chunk)
    chunks: list[tuple[int, int, str, float]]  # (seq, start_line, text, cosine to the query)
    body: str


@dataclass
class Query:
    qid: str
    text: str
    plan: dict
    expansion: str  # status
    cands: list[Cand] = field(default_factory=list)
    bm25_top: list[float] = field(default_factory=list)


def lab_settings(base: Settings, name: str, variant: str, repo: Path) -> Settings:
    return Settings.load(base.home / "lab" / f"{name}-{variant}", model_repository=repo)


def stage1(name: str, base: Settings, repo: Path, variant: str, expand: bool) -> list[Query]:
    """Candidates of every judged query of a set (cached on disk by set, variant and expansion)."""
    dataset = load_set(default_datasets() / name)
    settings = lab_settings(base, name, variant, repo)
    cache = settings.home / f"stage1-{'expand' if expand else 'plain'}.pkl"
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    mapping = index_set(dataset, settings, say)
    embedder = embedders.load("onnxruntime", settings)
    query_model = InProcessEmbedder.from_repository(repo)
    out: list[Query] = []
    with SqliteIndex.open(settings.index_path) as store:
        started = time.monotonic()
        report = embed_pending(store, embedder.setup(), lambda: embedder.embed, batch_size=16, concurrency=1,
                               progress=lambda d, t: None)
        if report.embedded:
            say(f"{name}/{variant}: embedded {report.embedded} chunks in-process in "
                f"{time.monotonic() - started:.0f} s")
        _borrow_expansions(store, base, name)
        options = SearchOptions(n=10, candidates=WIDEST, expand=expand)
        expander = _expander(repo) if expand else None
        engine_id = _engine_id(repo)
        for n, q in enumerate(dataset.judged_queries()):
            text = dataset.queries[q]
            if expand:
                def strong(text: str = text) -> bool:
                    return strong_signal(bm25_probe(store, text, options))

                expansion = plan_expansion(text, options, expander, engine_id=engine_id, index=store, strong=strong)
            else:
                expansion = plan_expansion(text, options, Expander(None))
            plan = Plan(query=text, lex=expansion.lex, vec=expansion.vec, hyde=expansion.hyde,
                        options=options.to_dict())
            emb = query_model.embed(plan.vec_texts(), KIND_QUERY)
            cands = hybrid_candidates(store, plan, emb)
            vectors = store.vector_matrix  # the matrix the candidates came from
            query = Query(q, text, json.loads(plan.to_json()), expansion.status)
            for c in cands:
                doc_hash = c.hit.hash
                chunks = store.chunks_of(doc_hash)
                rows = [vectors._row_of.get(ch.id) for ch in chunks]
                sims = [float(vectors.matrix[r] @ emb[0]) if r is not None else -1.0 for r in rows]
                query.cands.append(Cand(mapping[c.hit.path], c.hit.path, c.hit.title, c.rrf, c.rrf_rank,
                                        dict(c.ranks), c.passage,
                                        [(ch.seq, ch.start_line, ch.text, s) for ch, s in zip(chunks, sims)],
                                        store.body(doc_hash)))
            out.append(query)
            if (n + 1) % 20 == 0:
                say(f"{name}/{variant}: {n + 1} queries")
    cache.write_bytes(pickle.dumps(out))
    return out


def _engine_id(repo: Path) -> str:
    manifest = json.loads((repo / "qmd_expand" / "1" / "export.json").read_text())
    return f"onnxruntime:{manifest.get('onnx_sha256', '')[:16]}"


_EXPANDER: list[Expander] = []


def _expander(repo: Path) -> Expander:
    if not _EXPANDER:
        engine = make_engine("onnxruntime", repo / "qmd_expand" / "1", threads=2)
        _EXPANDER.append(Expander(engine, max_new_tokens=64, timeout_s=60.0))
    return _EXPANDER[0]


def _borrow_expansions(store: SqliteIndex, base: Settings, name: str) -> None:
    """The expansions ``qmdctl eval`` already made for this set (same engine, prompt and queries)."""
    source = base.home / "eval" / name / "index.sqlite"
    if not source.is_file():
        return
    import sqlite3

    with sqlite3.connect(source) as other:
        rows = other.execute("SELECT key, value, created FROM expansions").fetchall()
    with store.transaction():
        store.conn.executemany("INSERT OR IGNORE INTO expansions VALUES (?, ?, ?)", rows)


# -- stage 2 -----------------------------------------------------------------------------------------------


class Reranker:
    """The repository's cross-encoder with its logits cached per (query, passages) batch."""

    def __init__(self, repo: Path, cache: Path) -> None:
        self.model = InProcessReranker.from_repository(repo, threads=2)
        self.cache_path = cache
        self.cache: dict[str, list[float]] = json.loads(cache.read_text()) if cache.exists() else {}
        self.new = 0

    def logits(self, query: str, passages: Sequence[str]) -> list[float]:
        key = hashlib.sha1(json.dumps([query, list(passages)]).encode()).hexdigest()
        if key not in self.cache:
            self.cache[key] = [float(x) for x in self.model.run(*self.model.pairs.encode(query, list(passages)))]
            self.new += 1
        return self.cache[key]

    def save(self) -> None:
        if self.new:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            self.cache_path.write_text(json.dumps(self.cache))
            self.new = 0


Passages = Callable[[Query, list[Cand]], list[str]]
Fusion = Callable[[Query, list[Cand], list[float] | None], list[int]]


_PASSAGES: dict[tuple, list[str]] = {}
_SETS: dict[str, Any] = {}


def evaluate(name: str, queries: list[Query], passages: Passages | None, fusion: Fusion, reranker: Reranker,
             candidates: int = 20) -> tuple[dict[str, float], dict[str, int | None]]:
    if name not in _SETS:
        _SETS[name] = load_set(default_datasets() / name)
    dataset = _SETS[name]
    run: dict[str, list[str]] = {}
    for q in queries:
        cands = q.cands[:candidates]
        logits = None
        if passages is not None and cands:
            key = (id(passages), name, q.qid, json.dumps(q.plan, sort_keys=True), candidates)
            if key not in _PASSAGES:
                _PASSAGES[key] = passages(q, cands)
            logits = reranker.logits(rerank_query(q), _PASSAGES[key])
        order = fusion(q, cands, logits)
        run[q.qid] = [cands[i].key for i in order]
    ranks = {q.qid: first_relevant_rank(run[q.qid], dataset.qrels[q.qid]) for q in queries}
    return score_run(dataset, run), ranks


def rerank_query(q: Query) -> str:
    return Plan(**q.plan).rerank_query()


# -- the rules under study -----------------------------------------------------------------------------------

BUDGET = 128


class Windows:
    """Passage selectors over a candidate's chunks, with the reranker's own tokenizer."""

    def __init__(self, repo: Path, budget: int = BUDGET) -> None:
        from qmd_triton.runtime.onnx import version_dir
        from qmd_triton.text.tokenization import PairEncoder

        self.pairs = PairEncoder(version_dir(repo, "qmd_rerank_model") / "tokenizer.json")
        self.budget = budget
        self._heads: dict[str, Any] = {}

    def today(self, q: Query, cands: list[Cand]) -> list[str]:
        terms = Plan(**q.plan).terms()
        return [self.pairs.window(c.passage, terms, self.budget) for c in cands]

    def _weights(self, q: Query, cands: list[Cand]) -> dict[str, float]:
        from qmd_triton.text.terms import has_cjk

        terms = Plan(**q.plan).terms()
        stems = {t[:5] if not has_cjk(t) and len(t) > 5 else t for t in terms if t.strip()}
        n = len(cands)
        lows = [c.body.lower() for c in cands]
        out = {}
        for s in stems:
            df = sum(1 for b in lows if s in b)
            out[s] = float(np.log(1 + (n - df + 0.5) / (df + 0.5)))
        return out

    def _best(self, text: str, weights: dict[str, float]) -> tuple[float, int, int]:
        """(score, start, end) of the budget-token window with the most weight of distinct terms."""
        import re

        enc = self.pairs._single.encode(text, add_special_tokens=False)
        offsets = enc.offsets
        if not offsets:
            return 0.0, 0, len(text)
        low = text.lower()
        hits = sorted((m.start(), s) for s in weights for m in re.finditer(re.escape(s), low))
        if len(offsets) <= self.budget or not hits:
            present = {s for _, s in hits}
            end = len(text) if len(offsets) <= self.budget else offsets[self.budget - 1][1]
            return sum(weights[s] for s in present) + 0.01 * len(hits), 0, end
        import bisect

        starts = [o[0] for o in offsets]
        positions = [h[0] for h in hits]
        best = (-1.0, 0, 0)
        for i in range(0, len(offsets) - self.budget + 1, 4):
            begin, end = starts[i], offsets[i + self.budget - 1][1]
            lo, hi = bisect.bisect_left(positions, begin), bisect.bisect_left(positions, end)
            inside = {s for _, s in hits[lo:hi]}
            score = sum(weights[s] for s in inside) + 0.01 * (hi - lo)
            if score > best[0]:
                best = (score, begin, end)
        return best

    def _path(self, c: Cand, line: int) -> list[str]:
        from qmd_triton.text.markdown import headings, section_path

        if c.path not in self._heads:
            self._heads[c.path] = headings(c.body)
        path = section_path(self._heads[c.path], line)
        title = c.title
        stem = Path(c.path).stem
        if title == stem and sum(ch.isalpha() for ch in stem) < len(stem) / 2:
            title = ""  # a file name that is no title (msmarco's ids)
        if title and (not path or path[0] != title):
            path = [title, *path]
        return path

    def doc_tokens(self, c: Cand) -> int:
        from qmd_triton.text.markdown import reader_view

        key = ("tokens", c.path)
        if key not in self._heads:
            texts = [ch[2] for ch in c.chunks] or [reader_view(c.body)]
            self._heads[key] = sum(len(e.ids) for e in self.pairs._single.encode_batch(texts, add_special_tokens=False))
        return self._heads[key]

    def select(self, q: Query, cands: list[Cand], how: str, path: bool | str) -> list[str]:
        weights = self._weights(q, cands)
        if how == "wide":  # every term counts one: the window with the most distinct terms, then occurrences
            weights = dict.fromkeys(weights, 1.0)
        out = []
        for c in cands:
            if how == "today":
                text = self.today(q, [c])[0]
                chunk = next((ch for ch in c.chunks if text and text[:40] in ch[2]), None)
                line = (chunk[1] + chunk[2][: chunk[2].find(text[:40])].count("\n")) if chunk else 1
            else:
                scored = []
                for seq, start_line, ctext, cos in c.chunks:
                    score, a, b = self._best(ctext, weights)
                    scored.append((score, cos, seq, start_line, ctext, a, b))
                if not scored:
                    out.append(c.title)
                    continue
                if how in ("idf", "wide"):
                    pick = max(scored, key=lambda x: (x[0], -x[2]))
                elif how == "vec":
                    pick = max(scored, key=lambda x: (x[1], -x[2]))
                else:  # mix: the best lexical window among the two chunks nearest the query, else lexical
                    near = sorted(scored, key=lambda x: -x[1])[:2]
                    pick = max(near, key=lambda x: (x[0], x[1]))
                _, _, _, start_line, ctext, a, b = pick
                text = ctext[a:b]
                line = start_line + ctext[:a].count("\n")
            text = " ".join(text.split())
            if path:
                trail = self._path(c, line)
                if path == "title":
                    trail = trail[:1] if trail and trail[0] == c.title else []
                text = (" > ".join(trail) + "\n" + text) if trail else text
            out.append(text)
        return out


def _disagree(q: Query) -> bool:
    """BM25 and the vectors put different documents first (the original query's lists)."""
    first = {src: next((c.key for c in q.cands if c.ranks.get(src) == 1), None)
             for src in ("bm25:original", "vec:original")}
    return first["bm25:original"] != first["vec:original"]


def fuse_rrf(q: Query, cands: list[Cand], logits: list[float] | None) -> list[int]:
    return list(range(len(cands)))


def fuse_rerank(q: Query, cands: list[Cand], logits: list[float] | None) -> list[int]:
    if logits is None:
        return fuse_rrf(q, cands, logits)
    return sorted(range(len(cands)), key=lambda i: (-logits[i], i))


def fuse_floor(tau: float) -> Fusion:
    """The reranker's order only when some candidate gets a probability of at least ``tau``."""
    def fuse(q: Query, cands: list[Cand], logits: list[float] | None) -> list[int]:
        if logits is None or max(logits) < np.log(tau / (1 - tau)):
            return fuse_rrf(q, cands, logits)
        return fuse_rerank(q, cands, logits)
    return fuse


def fuse_rank_rrf(w_rerank: float, k: int = 5) -> Fusion:
    """RRF of the fused rank and the reranker's rank (weights 1 and ``w_rerank``)."""
    def fuse(q: Query, cands: list[Cand], logits: list[float] | None) -> list[int]:
        if logits is None:
            return fuse_rrf(q, cands, logits)
        by_rr = sorted(range(len(cands)), key=lambda i: (-logits[i], i))
        rr_rank = {i: r for r, i in enumerate(by_rr)}
        score = {i: 1 / (k + i + 1) + w_rerank / (k + rr_rank[i] + 1) for i in range(len(cands))}
        return sorted(score, key=lambda i: (-score[i], i))
    return fuse


def fuse_logit_blend(alpha: float) -> Fusion:
    """Reranker logit plus ``alpha`` x the RRF score scaled to the first candidate's."""
    def fuse(q: Query, cands: list[Cand], logits: list[float] | None) -> list[int]:
        if logits is None:
            return fuse_rrf(q, cands, logits)
        top = cands[0].rrf or 1.0
        score = {i: logits[i] + alpha * cands[i].rrf / top for i in range(len(cands))}
        return sorted(score, key=lambda i: (-score[i], i))
    return fuse


def fuse_adaptive(alpha: float, windows: Windows) -> Fusion:
    """Reranker logit plus ``alpha`` x the RRF score scaled to the first's, weighted by how much of the document
    the reranker did not read: a passage read whole is judged by the reranker alone."""
    def fuse(q: Query, cands: list[Cand], logits: list[float] | None) -> list[int]:
        if logits is None:
            return fuse_rrf(q, cands, logits)
        top = cands[0].rrf or 1.0
        unread = [max(0.0, 1.0 - windows.budget / max(1, windows.doc_tokens(c))) for c in cands]
        score = {i: logits[i] + alpha * unread[i] * cands[i].rrf / top for i in range(len(cands))}
        return sorted(score, key=lambda i: (-score[i], i))
    return fuse


def fuse_cosine(beta: float, alpha: float, windows: Windows) -> Fusion:
    """Reranker logit plus ``beta`` x the document's best-chunk cosine to the query (relative to the best
    candidate's), plus the adaptive RRF prior with ``alpha``."""
    def fuse(q: Query, cands: list[Cand], logits: list[float] | None) -> list[int]:
        if logits is None:
            return fuse_rrf(q, cands, logits)
        top = cands[0].rrf or 1.0
        cos = [max((ch[3] for ch in c.chunks), default=0.0) for c in cands]
        best = max(cos)
        unread = [max(0.0, 1.0 - windows.budget / max(1, windows.doc_tokens(c))) for c in cands]
        score = {i: logits[i] + beta * (cos[i] - best) + alpha * unread[i] * cands[i].rrf / top
                 for i in range(len(cands))}
        return sorted(score, key=lambda i: (-score[i], i))
    return fuse


def fuse_prior_guard(alpha: float, windows: Windows, floor: float = 0.0, spread: float = 0.0) -> Fusion:
    """The adaptive prior, except that the fused order stands outright when no candidate's probability reaches
    ``floor`` or the logits of the candidates lie within ``spread`` of each other."""
    adaptive = fuse_adaptive(alpha, windows)

    def fuse(q: Query, cands: list[Cand], logits: list[float] | None) -> list[int]:
        if logits is None:
            return fuse_rrf(q, cands, logits)
        if floor and max(logits) < np.log(floor / (1 - floor)):
            return fuse_rrf(q, cands, logits)
        if spread and max(logits) - min(logits) < spread:
            return fuse_rrf(q, cands, logits)
        return adaptive(q, cands, logits)
    return fuse


def rule_groups(windows: Windows) -> dict[str, tuple[dict[str, Passages], dict[str, Fusion]]]:
    """The rules compared (docs/search.md, "Quality"), by group: passage selectors x fusions."""
    sel = windows.select
    today = {"today": lambda q, c: sel(q, c, "today", False)}
    passages: dict[str, Passages] = {
        **today,
        "today+title": lambda q, c: sel(q, c, "today", "title"),
        "today+path": lambda q, c: sel(q, c, "today", True),
        "wide": lambda q, c: sel(q, c, "wide", False),
        "idf": lambda q, c: sel(q, c, "idf", False),
        "idf+path": lambda q, c: sel(q, c, "idf", True),
        "vec+path": lambda q, c: sel(q, c, "vec", True),
        "mix+path": lambda q, c: sel(q, c, "mix", True),
    }
    fusions: dict[str, Fusion] = {"rerank": fuse_rerank}
    for a in (2.0, 3.0, 4.0, 6.0):
        fusions[f"logit+{a}rrf"] = fuse_logit_blend(a)
        fusions[f"prior{a}"] = fuse_adaptive(a, windows)
    for f in (0.001, 0.01, 0.1):
        fusions[f"floor{f}"] = fuse_floor(f)
        fusions[f"prior4+floor{f}"] = fuse_prior_guard(4.0, windows, floor=f)
    for d in (0.5, 1.0, 2.0):
        fusions[f"prior4+spread{d}"] = fuse_prior_guard(4.0, windows, spread=d)
    for w in (1.0, 2.0, 4.0):
        fusions[f"rankrrf{w}"] = fuse_rank_rrf(w)
    for b in (5.0, 10.0, 20.0):
        fusions[f"cos{b}"] = fuse_cosine(b, 0.0, windows)
        fusions[f"cos{b}+prior3"] = fuse_cosine(b, 3.0, windows)
    served = {"rerank": fuse_rerank, "prior4.0": fusions["prior4.0"]}
    return {
        "served": (today, served),
        "passages": (passages, served),
        "fusions": (today, fusions),
    }


def run_rules(sets: list[str], base: Settings, repo: Path, variant: str, expand_modes: Sequence[bool],
              group: str = "served", candidates: int = 20) -> None:
    reranker = Reranker(repo, base.home / "lab" / f"rerank-cache-{variant}.json")
    windows = Windows(repo)
    passages, fusions = rule_groups(windows)[group]
    rows: dict[tuple, dict[str, float]] = {}
    modes: list[Any] = list(expand_modes)
    if len(expand_modes) == 2:
        modes.append("disagree")
    for expand in modes:
        for name in sets:
            if expand == "disagree":
                plain = stage1(name, base, repo, variant, False)
                full = {q.qid: q for q in stage1(name, base, repo, variant, True)}
                qs = [full[q.qid] if _disagree(q) else q for q in plain]
            else:
                qs = stage1(name, base, repo, variant, expand)
            metric = "hit@1" if name == "triton-docs" else "ndcg@10"
            combos = [("no rerank", None, "rrf", fuse_rrf)] + [
                (pname, pfn, fname, ffn) for pname, pfn in passages.items() for fname, ffn in fusions.items()]
            for pname, pfn, fname, ffn in combos:
                scores, _ = evaluate(name, qs, pfn, ffn, reranker, candidates=candidates)
                row = rows.setdefault((expand, pname, fname), {})
                row[name] = scores[metric]
                if name == "triton-docs":
                    row["td-mrr"] = scores["mrr@10"]
            reranker.save()
            say(f"{name} expand={expand}: done")
    cols = [*sets, "td-mrr"]
    print(f"{variant}, {candidates} candidates: hit@1 (triton-docs), nDCG@10 (the BEIR sets), MRR@10 (td-mrr)\n")
    print("| expansion | passage | fusion | " + " | ".join(cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    for (expand, pname, fname), row in rows.items():
        label = {False: "off", True: "on"}.get(expand, expand)
        print(f"| {label} | {pname} | {fname} | " + " | ".join(f"{row.get(c, float('nan')):.4f}" for c in cols)
              + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["triton-docs", "msmarco", "dbpedia"])
    parser.add_argument("--repo", type=Path, default=None)
    parser.add_argument("--variant", default="minilm")
    parser.add_argument("--stage1-only", action="store_true")
    parser.add_argument("--no-expansion", action="store_true", help="Stage 2 without the expanded plans.")
    parser.add_argument("--rules", choices=("served", "passages", "fusions"), default="served",
                        help="served: the reranker alone against the served prior; passages: every passage "
                             "selector; fusions: every fusion rule")
    parser.add_argument("--candidates", type=int, default=20)
    args = parser.parse_args()
    base = Settings.load()
    repo = (args.repo or base.model_repository).resolve()
    for name in args.sets:
        for expand in (False,) if args.no_expansion else (False, True):
            started = time.monotonic()
            qs = stage1(name, base, repo, args.variant, expand)
            say(f"{name}/{args.variant} expand={expand}: {len(qs)} queries ({time.monotonic() - started:.0f} s)")
    if args.stage1_only:
        return
    run_rules(args.sets, base, repo, args.variant, (False,) if args.no_expansion else (False, True), args.rules,
              args.candidates)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
