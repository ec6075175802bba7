"""BM25 over SQLite's FTS5, rescaled to Lucene's weights and pruned to the rarest terms first."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from qmd_triton.index.rows import DocRow
from qmd_triton.text.terms import fts_match

# Column weights of bm25(fts, title, body): a title match counts this many body matches.
TITLE_WEIGHT = 2.0


ANCHOR_SHARE = 0.01  # terms in at most 1% of the rows join the first anchor (fewest second passes, measured)


BM25_TF_MAX = 2.2  # k1 + 1: FTS5's bm25() bounds a term's saturated frequency by it (k1 = 1.2)


def _lucene_weight(n: int, rows_total: int) -> float:
    """Lucene's IDF over SQLite's (floored) one: multiplies a term's bm25() into Lucene's BM25."""
    ratio = (rows_total - n + 0.5) / (n + 0.5)
    return math.log1p(ratio) / max(1e-6, math.log(ratio)) if ratio > 0 else 0.0


class _FullText:
    """Full-text search of the fts table."""

    def bm25(self, terms: Sequence[str], limit: int, collections: Sequence[str] | None = None,
             exclude: Sequence[str] = (), *, exhaustive: bool = False) -> list[tuple[DocRow, float]]:
        """The ``limit`` best documents matching any term (a term with spaces is a phrase) and none of
        ``exclude``, with their BM25 score (negative, lower is better, as SQLite's).

        Scoring: SQLite's bm25() weighs a term by log((N - n + 0.5) / (n + 0.5)) and floors that at 1e-6,
        so a term found in half the rows or more counts for nothing: in a small collection about one
        topic, the topic's own words score 0 and the order is arbitrary. Each term is therefore scored
        alone, and its bm25() (a saturated, length-normalized frequency, title weighted, times SQLite's
        weight) is rescaled to Lucene's weight log(1 + (N - n + 0.5) / (n + 0.5)), positive for every
        term and within log(2) of SQLite's for rare ones.

        Cost: scoring a row costs a few microseconds, and common words match most rows ("a" is in 93% of
        msmarco's passages), so scoring every match of every term grows with the collection. A term's
        contribution is at most (k1 + 1) = 2.2 times its weight, so the exact top ``limit`` is found from
        the rarest terms (the anchor) alone whenever the ``limit``-th anchored score beats what the other
        terms could add up to: those terms are scored only on documents that hold an anchor term.
        The anchor starts as the rarest terms: enough to match ``limit`` documents, and every term in at
        most 1% of the rows (measured: fewest second passes for the time); if the bound is not
        met, it grows once to the terms the bound requires (at most two statements per query).
        ``exhaustive=True`` scores every match of every term: the reference the pruned search equals.
        """
        terms = list(dict.fromkeys(t for t in terms if t.strip()))
        if not terms:
            return []
        with self.snapshot():  # the counts and the scoring statements see one state of the index
            return self._bm25(terms, limit, collections, exclude, exhaustive)

    def _bm25(self, terms: list[str], limit: int, collections: Sequence[str] | None, exclude: Sequence[str],
              exhaustive: bool) -> list[tuple[DocRow, float]]:
        rows_total = self._row_count()
        counts = {i: self._match_count(t) for i, t in enumerate(terms)}
        live = sorted((i for i, n in counts.items() if n), key=lambda i: (counts[i], i))
        if not live:
            return []
        weight = {i: math.log1p((rows_total - counts[i] + 0.5) / (counts[i] + 0.5)) for i in live}
        anchor = len(live) if exhaustive else 1
        while anchor < len(live) and (sum(counts[i] for i in live[:anchor]) < limit
                                      or counts[live[anchor]] <= ANCHOR_SHARE * rows_total):
            anchor += 1
        while True:
            rows = self._bm25_rows(terms, live[:anchor], live[anchor:], counts, rows_total, limit,
                                   collections, exclude)
            kth = -rows[-1][1] if len(rows) >= limit else 0.0
            if anchor == len(live) or BM25_TF_MAX * sum(weight[i] for i in live[anchor:]) <= kth:
                return rows
            while anchor < len(live) and BM25_TF_MAX * sum(weight[i] for i in live[anchor:]) > kth:
                anchor += 1

    def _match_count(self, term: str) -> int:
        """Rows holding a term or phrase: FTS5 counts a doclist without reading positions (cheap)."""
        return int(self.conn.execute("SELECT COUNT(*) FROM fts WHERE fts MATCH ?", (fts_match([term]),))
                   .fetchone()[0])

    def _bm25_rows(self, terms: list[str], anchor: list[int], rest: list[int], counts: dict[int, int],
                   rows_total: int, limit: int, collections: Sequence[str] | None,
                   exclude: Sequence[str]) -> list[tuple[DocRow, float]]:
        """Anchor terms scored on all their matches; the rest only on documents holding an anchor term.

        A rest term is matched as ``term AND (anchor terms)``, whose bm25() is the sum of every present
        phrase's own part (each phrase's weight comes from the whole table): the term's part is that sum
        less the anchor terms' parts in the same document. Restricting by rowid instead would run the
        MATCH once per document (measured 4x slower than scoring every match).
        """
        anchored = fts_match([terms[i] for i in anchor])
        arm = f"SELECT ? AS t, rowid AS id, bm25(fts, {TITLE_WEIGHT}, 1.0) AS s FROM fts WHERE fts MATCH ?"
        args: list[Any] = []
        for i in anchor:
            args += [i, fts_match([terms[i]])]
        for i in rest:
            args += [i, f"({fts_match([terms[i]])}) AND ({anchored})"]
        live = anchor + rest
        args += [x for i in live for x in (i, _lucene_weight(counts[i], rows_total))]
        # MATERIALIZED: a flattened arm would put bm25() in a join, where SQLite refuses it
        sql = (f"WITH a(t, id, s) AS MATERIALIZED ({' UNION ALL '.join([arm] * len(anchor))}), "
               + (f"r(t, id, s) AS MATERIALIZED ({' UNION ALL '.join([arm] * len(rest))}), " if rest else "")
               + f"w(t, m) AS (VALUES {', '.join(['(?, ?)'] * len(live))}), "
               "scored(id, s) AS (SELECT a.id, a.s * w.m FROM a JOIN w ON w.t = a.t"
               + (" UNION ALL SELECT r.id, (r.s - x.s) * w.m FROM r JOIN w ON w.t = r.t "
                  "JOIN (SELECT id, SUM(s) AS s FROM a GROUP BY id) x ON x.id = r.id" if rest else "")
               + ") SELECT d.id, d.collection, d.path, d.title, d.hash, d.size, d.mtime_ns, t.score FROM "
               "(SELECT id, SUM(s) AS score FROM scored GROUP BY id) t JOIN documents d ON d.id = t.id")
        where = []
        if collections:
            where.append(f"d.collection IN ({','.join('?' * len(collections))})")
            args += list(collections)
        excluded = [e for e in exclude if e.strip()]
        if excluded:
            where.append("d.id NOT IN (SELECT rowid FROM fts WHERE fts MATCH ?)")
            args.append(fts_match(excluded))
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY t.score, d.id LIMIT ?"
        args.append(limit)
        return [(DocRow(*r[:7]), float(r[7])) for r in self.conn.execute(sql, args)]

    def matching(self, terms: Sequence[str]) -> set[int]:
        """Ids of the documents that hold any of the terms (for excluding them from vector lists)."""
        terms = [t for t in terms if t.strip()]
        if not terms:
            return set()
        return {int(r[0]) for r in self.conn.execute("SELECT rowid FROM fts WHERE fts MATCH ?", (fts_match(terms),))}

    def _row_count(self) -> int:
        """Rows of the FTS table (one per document), cached until the index changes."""
        version = self.data_version()
        if getattr(self, "_rows", None) is None or self._rows[0] != version:
            self._rows = (version, int(self.conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0]))
        return self._rows[1]
