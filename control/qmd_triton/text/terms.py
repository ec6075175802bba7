"""Text analysis shared by the index and the queries: CJK bigrams for SQLite FTS5.

SQLite's ``unicode61`` tokenizer keeps a run of Chinese characters as one token,
so "向量搜索" would only match that exact run. Before indexing and querying, every
run of CJK characters is rewritten as overlapping bigrams ("向量 量搜 搜索"), the
scheme Lucene's CJK analyzer uses; Latin text passes through to ``porter
unicode61`` (stemming, case and diacritics folding).

Example:
    >>> for_index("BM25 与向量搜索")
    'BM25 与 向量 量搜 搜索'
    >>> query_terms("What is 向量搜索?")
    ['what', 'is', '向量', '量搜', '搜索']
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CJK = (
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # Han
    "\uac00-\ud7af"  # Hangul syllables
)
_CJK_RUN = re.compile(f"[{_CJK}]+")
_TERM = re.compile(rf"[{_CJK}]+|[^\W_]+", re.UNICODE)
MAX_QUERY_TERMS = 64


def cjk_bigrams(run: str) -> list[str]:
    if len(run) == 1:
        return [run]
    return [run[i : i + 2] for i in range(len(run) - 1)]


def cjk_runs(text: str) -> list[str]:
    """The runs of CJK characters of a text, in order."""
    return _CJK_RUN.findall(text)


def for_index(text: str) -> str:
    """Text as stored in the FTS table: CJK runs become space-separated bigrams."""
    return _CJK_RUN.sub(lambda m: " " + " ".join(cjk_bigrams(m.group(0))) + " ", text)


def query_terms(query: str, limit: int = MAX_QUERY_TERMS) -> list[str]:
    """Distinct lower-cased terms of a query, CJK runs as bigrams, first ``limit`` kept."""
    seen: dict[str, None] = {}
    for m in _TERM.finditer(query):
        token = m.group(0)
        parts = cjk_bigrams(token) if _CJK_RUN.fullmatch(token) else [token.lower()]
        for p in parts:
            seen.setdefault(p, None)
            if len(seen) >= limit:
                return list(seen)
    return list(seen)


def fts_match(terms: list[str]) -> str:
    """An FTS5 MATCH expression: any of the terms (BM25 ranks by how many and how rare).

    A term with spaces is a phrase (its words next to each other, in order).
    """
    return " OR ".join('"' + for_index(t).strip().replace('"', '""') + '"' for t in terms)


_PART = re.compile(r'(-?)"([^"]*)"|(-?)(\S+)')


@dataclass(frozen=True)
class LexicalQuery:
    """What BM25 looks for: terms and phrases (any of them; more and rarer rank higher), and what excludes a
    document (``-word``, ``-"a phrase"``)."""

    terms: tuple[str, ...]
    exclude: tuple[str, ...] = ()

    @property
    def positive_text(self) -> str:
        """The query without its exclusions (what expansion and vector search may read)."""
        return " ".join(self.terms)


def without_exclusions(query: str) -> str:
    """The query as written, less its ``-word`` and ``-"phrase"`` parts (for embedding and expansion)."""
    kept = [m.group(0) for m in _PART.finditer(query) if not (m.group(1) or (m.group(3) and query_terms(m.group(4))))]
    return " ".join(kept).strip() or query.strip()


def parse_query(query: str, limit: int = MAX_QUERY_TERMS) -> LexicalQuery:
    """``aaron -moses "exact phrase" -"not this"`` -> terms ``aaron``, the phrase, and two exclusions.

    Words become distinct lower-cased terms (CJK runs as bigrams); a quoted phrase stays one term. A ``-``
    at the start of a word or a quoted phrase excludes it. Hyphens inside words (``e-mail``) stay words.
    """
    terms: dict[str, None] = {}
    exclude: dict[str, None] = {}
    for m in _PART.finditer(query):
        negative, phrase, negative_word, word = m.group(1), m.group(2), m.group(3), m.group(4)
        target = exclude if (negative or negative_word) else terms
        if phrase is not None:
            words = query_terms(phrase, limit)
            if len(words) > 1 and not has_cjk(phrase):
                target.setdefault(" ".join(words), None)
            else:
                for w in words:
                    target.setdefault(w, None)
        elif word is not None:
            if negative_word and not query_terms(word):
                continue  # a lone "-" is punctuation
            for w in query_terms(word, limit):
                target.setdefault(w, None)
        if len(terms) >= limit:
            break
    return LexicalQuery(tuple(list(terms)[:limit]), tuple(list(exclude)[:limit]))


def has_cjk(text: str) -> bool:
    return _CJK_RUN.search(text) is not None
