"""Retrieval quality on BEIR-format sets: nDCG@10 (graded), Recall@10/100, MRR@10.

A set (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``) is written out as a
collection of markdown files (``# title`` then the text) in a workspace of its
own, indexed with the normal ``update`` / ``embed`` path, and queried with the
normal search code, so the numbers measure what users get.

Example:
    >>> s = load_beir(Path("shared/datasets/msmarco"))
    >>> ndcg_at_k(["d1", "d7"], s.qrels["q1"], 10)
    0.63
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from .errors import InputError

METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")


@dataclass
class BeirSet:
    name: str
    corpus: dict[str, tuple[str, str]]  # id -> (title, text)
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: grade}

    def judged_queries(self) -> list[str]:
        """Queries with at least one relevant (grade > 0) document, in file order."""
        return [q for q in self.queries if any(g > 0 for g in self.qrels.get(q, {}).values())]


def load_beir(directory: Path, split: str = "test") -> BeirSet:
    directory = Path(directory)
    files = {"corpus": directory / "corpus.jsonl", "queries": directory / "queries.jsonl",
             "qrels": directory / "qrels" / f"{split}.tsv"}
    for what, path in files.items():
        if not path.is_file():
            raise InputError(f"{directory} is not a BEIR set: {path.relative_to(directory)} is missing")
    corpus: dict[str, tuple[str, str]] = {}
    for n, line in enumerate(files["corpus"].read_text(encoding="utf-8").split("\n"), 1):
        if line.strip():
            try:
                row = json.loads(line)
                corpus[str(row["_id"])] = (row.get("title") or "", row.get("text") or "")
            except (ValueError, KeyError) as e:
                raise InputError(f"{files['corpus']}:{n}: not a corpus row ({e})") from None
    queries = {}
    for line in files["queries"].read_text(encoding="utf-8").split("\n"):
        if line.strip():
            row = json.loads(line)
            queries[str(row["_id"])] = row["text"]
    qrels: dict[str, dict[str, int]] = {}
    for n, line in enumerate(files["qrels"].read_text(encoding="utf-8").split("\n"), 1):
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 3 or (n == 1 and not parts[2].strip().lstrip("-").isdigit()):
            continue  # header row or blank
        qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return BeirSet(directory.name, corpus, queries, qrels)


def ndcg_at_k(ranked: Sequence[str], grades: Mapping[str, int], k: int = 10) -> float:
    """Graded nDCG with linear gains (as pytrec_eval / BEIR compute it)."""
    dcg = sum(grades.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at_k(ranked: Sequence[str], grades: Mapping[str, int], k: int) -> float:
    relevant = {d for d, g in grades.items() if g > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at_k(ranked: Sequence[str], grades: Mapping[str, int], k: int = 10) -> float:
    for i, d in enumerate(ranked[:k]):
        if grades.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def score_run(beir: BeirSet, run: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Mean of each metric over the judged queries (a query with no results scores 0)."""
    qs = beir.judged_queries()
    totals = dict.fromkeys(METRICS, 0.0)
    for q in qs:
        ranked, grades = run.get(q, []), beir.qrels[q]
        totals["ndcg@10"] += ndcg_at_k(ranked, grades, 10)
        totals["recall@10"] += recall_at_k(ranked, grades, 10)
        totals["recall@100"] += recall_at_k(ranked, grades, 100)
        totals["mrr@10"] += mrr_at_k(ranked, grades, 10)
    return {m: round(v / len(qs), 4) if qs else 0.0 for m, v in totals.items()}


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def file_name(doc_id: str) -> str:
    """A file name for a corpus id that is safe and unique (a hash suffix keeps ids apart)."""
    stem = _UNSAFE.sub("_", doc_id).strip("._")[:60] or "doc"
    return f"{stem}-{hashlib.sha1(doc_id.encode()).hexdigest()[:8]}.md"


def as_markdown(title: str, text: str) -> str:
    return f"# {title}\n\n{text}\n" if title else f"{text}\n"


def write_collection(beir: BeirSet, target: Path, progress: Callable[[str], None] = lambda _m: None) -> dict[str, str]:
    """Writes the corpus as markdown files (only those missing or different); returns path -> id."""
    target.mkdir(parents=True, exist_ok=True)
    mapping = {}
    written = 0
    for doc_id, (title, text) in beir.corpus.items():
        name = file_name(doc_id)
        mapping[name] = doc_id
        path = target / name
        body = as_markdown(title, text)
        if not path.exists() or path.read_text(encoding="utf-8") != body:
            path.write_text(body, encoding="utf-8")
            written += 1
    if written:
        progress(f"wrote {written} markdown files to {target}")
    return mapping


def tokenize_plain(text: str) -> list[str]:
    """The plain baseline's analyzer: lower-cased alphanumeric runs."""
    return re.findall(r"\w+", text.lower())


def bm25_baseline(beir: BeirSet, k: int = 100) -> dict[str, list[str]]:
    """rank_bm25's BM25Okapi over title + text: what a user would try first."""
    from rank_bm25 import BM25Okapi

    ids = list(beir.corpus)
    bm25 = BM25Okapi([tokenize_plain(f"{t} {x}") for t, x in beir.corpus.values()])
    run = {}
    for q in beir.judged_queries():
        scores = bm25.get_scores(tokenize_plain(beir.queries[q]))
        top = sorted(range(len(ids)), key=lambda i: -scores[i])[:k]
        run[q] = [ids[i] for i in top]
    return run


def top_ids(scores: Iterable[float], ids: Sequence[str], k: int) -> list[str]:
    ranked = sorted(zip(scores, range(len(ids))), key=lambda x: -x[0])[:k]
    return [ids[i] for _, i in ranked]
