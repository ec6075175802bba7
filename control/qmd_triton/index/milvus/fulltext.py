"""BM25 in Milvus: the documents' text (Latin) and CJK runs (jieba) fields, phrases and exclusions."""

from __future__ import annotations

import re
from collections.abc import Sequence

from qmd_triton.index.milvus.schema import QUERY_LIMIT, _in, _quote
from qmd_triton.index.rows import DocRow
from qmd_triton.text.terms import has_cjk


class _FullText:
    """Full-text search of the docs collection."""

    def bm25(self, terms: Sequence[str], limit: int, collections: Sequence[str] | None = None,
             exclude: Sequence[str] = ()) -> list[tuple[DocRow, float]]:
        """The ``limit`` best documents matching any term, with their BM25 score (negative, lower is better,
        as the SQLite backend's).

        Milvus scores: Latin words through the ``standard`` analyzer (lower-cased, no stemming), CJK runs
        through ``jieba`` (the query's CJK bigrams are joined back into runs first), k1 = 1.2 and b = 0.75
        (``BM25_PARAMS``). A document scores its best part plus, for a query with both scripts, its best part in
        the CJK field. A phrase (a term with spaces) is searched as its words and kept only where the words
        stand together; ``exclude`` drops documents holding any excluded word or phrase.
        """
        terms = list(dict.fromkeys(t for t in terms if t.strip()))
        if not terms:
            return []
        latin = " ".join(t for t in terms if not has_cjk(t))
        cjk = " ".join(_join_bigrams([t for t in terms if has_cjk(t)]))
        phrases = [t.lower() for t in terms if " " in t.strip()]
        only_phrases = phrases and all(" " in t.strip() for t in terms)
        expr = self._filter(collections, exclude)
        want = limit
        while True:
            k = min(QUERY_LIMIT, max(want * 2, 20))
            scores: dict[int, float] = {}
            rows: dict[int, dict] = {}
            full = True
            for field, text in (("sparse", latin), ("sparse_zh", cjk)):
                if not text:
                    continue
                fields = list(self._DOC_FIELDS) + (["text"] if phrases else [])
                with self._errors():
                    hits = self.client.search(self.docs, data=[text], anns_field=field, limit=k, filter=expr,
                                              output_fields=fields, search_params={"metric_type": "BM25"})[0]
                full = full and len(hits) < k
                best: dict[int, float] = {}
                for h in hits:
                    e = h["entity"]
                    if only_phrases and not any(_has_phrase(e.get("text", ""), p) for p in phrases):
                        continue
                    doc = int(e["doc"])
                    score = abs(float(h["distance"]))
                    if score > best.get(doc, 0.0):
                        best[doc] = score
                        rows[doc] = e
                for doc, s in best.items():
                    scores[doc] = scores.get(doc, 0.0) + s
            ranked = sorted(scores.items(), key=lambda x: (-x[1], x[0]))
            if len(ranked) >= limit or full or k >= QUERY_LIMIT:
                return [(self._row(rows[d]), -s) for d, s in ranked[:limit]]
            want *= 4

    def _filter(self, collections: Sequence[str] | None, exclude: Sequence[str] = ()) -> str:
        parts = []
        if collections:
            parts.append(_in("collection", collections))
        for term in (e for e in exclude if e.strip()):
            field = "text_zh" if has_cjk(term) else "text"
            words = " ".join(_join_bigrams(term.split())) if has_cjk(term) else term
            if " " in term.strip() and not has_cjk(term):
                continue  # phrases are checked on the text (see matching)
            parts.append(f"not text_match({field}, {_quote(words)})")
        return " and ".join(parts)

    def matching(self, terms: Sequence[str]) -> set[int]:
        """Ids of the documents that hold any of the terms or phrases."""
        out: set[int] = set()
        for term in (t for t in terms if t.strip()):
            cjk = has_cjk(term)
            field = "text_zh" if cjk else "text"
            words = " ".join(_join_bigrams(term.split())) if cjk else term
            fields = ["doc", "text"] if " " in term.strip() and not cjk else ["doc"]
            for r in self._query(self.docs, f"text_match({field}, {_quote(words)})", fields):
                if len(fields) == 1 or _has_phrase(r["text"], term.lower()):
                    out.add(int(r["doc"]))
        return out


def _has_phrase(text: str, phrase: str) -> bool:
    words = re.findall(r"\w+", phrase.lower())
    return bool(words) and re.search(r"\W+".join(map(re.escape, words)), text.lower()) is not None


def _join_bigrams(terms: Sequence[str]) -> list[str]:
    """CJK bigrams (``向量 量检 检索``) joined back into the runs they came from (``向量检索``), for jieba."""
    runs: list[str] = []
    for t in terms:
        t = t.replace(" ", "")
        if runs and len(t) == 2 and runs[-1][-1] == t[0] and len(runs[-1]) >= 2:
            runs[-1] += t[1]
        else:
            runs.append(t)
    return runs
