"""The chunks collection: chunks, their vectors (HNSW by default), and the nearest chunks to a query."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from qmd_triton.errors import IndexCorrupt, InputError, QmdError
from qmd_triton.index.interface import Nearest
from qmd_triton.index.milvus.schema import (
    CHUNK_TEXT_BYTES,
    IN_BATCH,
    QUERY_LIMIT,
    RETIRED,
    VECTOR_INDEXES,
    _clip,
    _in,
    _key,
    _keys_in,
    _matching,
    chunk_id_of,
)
from qmd_triton.index.rows import FINGERPRINT_KEY, ChunkRow, text_hash


class _Chunks:
    """Chunks and vectors."""

    def unchunked_hashes(self) -> list[str]:
        return sorted(self._doc_hashes() - self._chunk_hashes())

    def still_indexed(self, hashes: Sequence[str]) -> list[str]:
        keep = set(self.documents_by_hash(hashes))
        return [h for h in hashes if h in keep]

    def add_chunks(self, content_hash: str, chunks: Sequence[Any]) -> None:
        """Stores a content's chunks without vectors (``embedded`` false, a zero vector)."""
        if not self._has_chunks():
            fp = self.fingerprint()
            if not fp or not int(fp.get("dim") or 0):
                raise IndexCorrupt(f"{self.describe()}: chunks need the embedding fingerprint first")
            self._create_chunks(int(fp["dim"]))
        dim = int((self.fingerprint() or {}).get("dim") or 0)
        rows = [{"id": chunk_id_of(content_hash, c.seq), "hash": content_hash, "seq": int(c.seq),
                 "start_line": int(c.start_line), "end_line": int(c.end_line), "tokens": int(c.tokens),
                 "text": _clip(c.text, CHUNK_TEXT_BYTES), "text_hash": text_hash(c.text), "embedded": False,
                 "hkey": _key(content_hash), "tkey": _key(text_hash(c.text)), "embedding": [0.0] * dim}
                for c in chunks]
        with self._errors():
            for start in range(0, len(rows), 512):
                self.client.upsert(self.chunks, rows[start : start + 512])

    _CHUNK_FIELDS = ("id", "hash", "seq", "start_line", "end_line", "tokens", "text", "text_hash", "hkey", "tkey")

    @staticmethod
    def _chunk(r: dict) -> ChunkRow:
        return ChunkRow(int(r["id"]), r["hash"], int(r["seq"]), int(r["start_line"]), int(r["end_line"]),
                        int(r["tokens"]), r["text"], r["text_hash"])

    def pending_chunks(self) -> list[ChunkRow]:
        """One chunk per distinct text that has no vector yet. Texts already embedded in another chunk (an
        edit elsewhere in a document, a renamed or copied file) get that vector here, without the model."""
        if not self._has_chunks():
            return []
        pending = self._query(self.chunks, "embedded == false", self._CHUNK_FIELDS)
        by_text: dict[str, dict] = {}
        for r in pending:
            by_text.setdefault(r["text_hash"], r)
        texts = list(by_text)
        for start in range(0, len(texts), IN_BATCH):
            part = texts[start : start + IN_BATCH]
            found = _matching(self._query(self.chunks, f"embedded == true and {_keys_in('tkey', part)}",
                                          ["text_hash", "embedding"]), "text_hash", part)
            known = {r["text_hash"]: r["embedding"] for r in found}
            if known:
                self.add_vectors(list(known.items()))
                for h in known:
                    by_text.pop(h, None)
        return [self._chunk(r) for r in by_text.values()]

    def add_vectors(self, items: Sequence[tuple[str, Any]]) -> None:
        """Gives every chunk with one of these texts (by hash) its vector."""
        import numpy as np

        vectors = {h: np.asarray(v, dtype=np.float32).tolist() for h, v in items}
        hashes = list(vectors)
        for start in range(0, len(hashes), IN_BATCH):
            part = hashes[start : start + IN_BATCH]
            rows = _matching(self._query(self.chunks, _keys_in("tkey", part), self._CHUNK_FIELDS), "text_hash", part)
            for r in rows:
                r["embedded"] = True
                r["embedding"] = vectors[r["text_hash"]]
            with self._errors():
                for s in range(0, len(rows), 512):
                    self.client.upsert(self.chunks, rows[s : s + 512])

    def insert_chunks(self, rows: Sequence[tuple[ChunkRow, Any]]) -> None:
        """Chunks with their vectors at once (``index migrate``, ``perf/``)."""
        import numpy as np

        out = [{"id": chunk_id_of(c.hash, c.seq), "hash": c.hash, "seq": int(c.seq), "start_line": int(c.start_line),
                "end_line": int(c.end_line), "tokens": int(c.tokens), "text": _clip(c.text, CHUNK_TEXT_BYTES),
                "text_hash": c.text_hash or text_hash(c.text), "embedded": v is not None, "hkey": _key(c.hash),
                "tkey": _key(c.text_hash or text_hash(c.text)),
                "embedding": (np.asarray(v, dtype=np.float32).tolist() if v is not None else None)} for c, v in rows]
        if not out:
            return
        if not self._has_chunks():
            dim = next((len(r["embedding"]) for r in out if r["embedding"] is not None), 0) or \
                int((self.fingerprint() or {}).get("dim") or 0)
            self._create_chunks(dim)
        dim = next((len(r["embedding"]) for r in out if r["embedding"] is not None), 0) or \
            int((self.fingerprint() or {}).get("dim") or 0)
        for r in out:
            if r["embedding"] is None:
                r["embedding"] = [0.0] * dim
        with self._errors():
            self._write(self.chunks, out)

    def import_chunks(self, rows: Sequence[tuple[ChunkRow, Any]]) -> None:
        self.insert_chunks(rows)

    def export_chunks(self) -> Iterator[tuple[ChunkRow, Any]]:
        import numpy as np

        if not self._has_chunks():
            return
        with self._errors():
            it = self.client.query_iterator(self.chunks, batch_size=2048, filter="",
                                            output_fields=[*self._CHUNK_FIELDS, "embedded", "embedding"])
        live = self._doc_hashes()
        try:
            while True:
                with self._errors():
                    batch = it.next()
                if not batch:
                    break
                for r in batch:
                    if r["hash"] in live:
                        yield self._chunk(r), (np.asarray(r["embedding"], dtype=np.float32) if r["embedded"] else None)
        finally:
            it.close()

    def after_embed(self) -> None:
        with self._errors():
            if self._has_chunks():
                self.client.flush(self.chunks)

    def clear_chunks(self) -> None:
        """Forgets every chunk (the next embed chunks again) but keeps the vectors for their texts: embedded
        rows move to a retired content key (``retired:HASH``) that no document holds, where the next embed
        finds them by text and then drops them."""
        if not self._has_chunks():
            return
        rows = self._query(self.chunks, f'embedded == true and not (hash like "{RETIRED}%")',
                           [*self._CHUNK_FIELDS, "embedded", "embedding"])
        for start in range(0, len(rows), 512):
            part = rows[start : start + 512]
            moved = [{**r, "hash": RETIRED + r["hash"][:55], "hkey": _key(RETIRED + r["hash"][:55]),
                      "id": chunk_id_of(RETIRED + r["hash"], r["seq"])}
                     for r in part]
            with self._errors():
                self.client.upsert(self.chunks, moved)
                self.client.delete(self.chunks, ids=[int(r["id"]) for r in part])
        with self._errors():
            self.client.delete(self.chunks, filter=f'not (hash like "{RETIRED}%")')

    def drop_chunks(self) -> None:
        self._chunks_seen = False
        with self._errors():
            if self._has_chunks():
                self.client.drop_collection(self.chunks)

    def clear_embeddings(self) -> None:
        self.drop_chunks()
        self._delete_meta([FINGERPRINT_KEY])

    def chunks_by_id(self, ids: Sequence[int]) -> dict[int, ChunkRow]:
        ids = [int(i) for i in ids]
        if not ids or not self._has_chunks():
            return {}
        out = {}
        for start in range(0, len(ids), IN_BATCH):
            for r in self._query(self.chunks, _in("id", ids[start : start + IN_BATCH]), self._CHUNK_FIELDS):
                out[int(r["id"])] = self._chunk(r)
        return out

    def chunks_of(self, content_hash: str) -> list[ChunkRow]:
        if not self._has_chunks():
            return []
        rows = _matching(self._query(self.chunks, _keys_in("hkey", [content_hash]), self._CHUNK_FIELDS), "hash",
                         [content_hash])
        return sorted((self._chunk(r) for r in rows), key=lambda c: c.seq)

    def chunks_of_many(self, hashes: Sequence[str]) -> dict[str, list[ChunkRow]]:
        """The chunks of many contents in one query, by content hash (each list by sequence)."""
        wanted = list(dict.fromkeys(hashes))
        out: dict[str, list[ChunkRow]] = {h: [] for h in wanted}
        if not wanted or not self._has_chunks():
            return out
        for start in range(0, len(wanted), IN_BATCH):
            batch = wanted[start : start + IN_BATCH]
            for r in _matching(self._query(self.chunks, _keys_in("hkey", batch), self._CHUNK_FIELDS), "hash", batch):
                out[r["hash"]].append(self._chunk(r))
        for chunks in out.values():
            chunks.sort(key=lambda c: c.seq)
        return out

    def nearest_chunks(self, query_vec: Any, k: int) -> Nearest:
        """The k chunks nearest the query (the ANN index, inner product of normalized vectors: cosine), best
        first. Nothing is held in this process: a server model's memory does not grow with the corpus."""
        dim = int((self.fingerprint() or {}).get("dim") or 0)
        if dim and query_vec.shape[-1] != dim:
            raise InputError(f"query vector has {query_vec.shape[-1]} dims but the index holds {dim}-d vectors")
        # A long-lived reader (a search model) asks Milvus whether the chunks exist only until it has seen them;
        # should another process drop them (`embed --force`), the search says so and the next one asks again.
        if not self._chunks_seen and not self._has_chunks():
            return Nearest([], exhausted=True)
        self._chunks_seen = True
        vec = [float(x) for x in query_vec]
        try:
            with self._errors():
                hits = self.client.search(
                    self.chunks, data=[vec], anns_field="embedding", limit=min(k, QUERY_LIMIT),
                    output_fields=[*self._CHUNK_FIELDS, "embedded"],
                    search_params={"metric_type": "IP",
                                   "params": VECTOR_INDEXES[self.config.vector_index][1](k)})[0]
        except QmdError as e:
            self._chunks_seen = False
            if "not found" in str(e) and not self._has_chunks():
                return Nearest([], exhausted=True)
            raise
        # Chunks still waiting for their vector hold a zero vector: dropped here rather than filtered in the
        # search (a filter over every row would cost each query more than the few rows it removes). Whether
        # more can be found is decided on what Milvus returned before that: fewer than asked, or k at its cap
        # for one search (no count(*): that scans every row).
        out = [(self._chunk({**h["entity"], "id": h["id"]}), float(h["distance"])) for h in hits
               if h["entity"].get("embedded")]
        return Nearest(out, exhausted=len(hits) < k or k >= QUERY_LIMIT)

    def embedded_count(self) -> int:
        return self._count(self.chunks, "embedded == true") if self._has_chunks() else 0

    def _chunk_hashes(self) -> set[str]:
        if not self._has_chunks():
            return set()
        return {r["hash"] for r in self._query(self.chunks, "seq == 0", ["hash"])}
