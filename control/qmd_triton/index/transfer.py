"""``qmdctl index migrate``: move an index to the other backend without embedding anything again.

Documents (with their bodies, titles, sizes and mtimes, so the next ``update`` finds nothing changed),
chunks with their vectors, the embedding fingerprint, the last update of each collection and the expansion
cache are copied; the source is left as it was (switching back is a matter of ``index.backend``).

Example:
    >>> with open_index(sqlite_config) as source, open_index(milvus_config, create=True) as target:
    ...     report = transfer(source, target)
    >>> report.chunks
    117546
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from qmd_triton.errors import InputError
from qmd_triton.index.interface import Index
from qmd_triton.index.rows import FINGERPRINT_KEY, ChunkRow
from qmd_triton.progress import Count, Progress, silent, uncounted

BATCH = 512


@dataclass
class TransferReport:
    documents: int = 0
    chunks: int = 0
    vectors: int = 0
    expansions: int = 0


def transfer(source: Index, target: Index, *, progress: Progress = silent, count: Count = uncounted,
             replace: bool = False) -> TransferReport:
    """Copies everything of ``source`` into ``target`` (which must be empty unless ``replace``)."""
    if target.counts()["documents"] and not replace:
        raise InputError(f"the target index {target.describe()} already holds documents; move it aside or pass "
                         "--replace to overwrite what it holds")
    report = TransferReport()
    fp = source.fingerprint()
    with target.transaction():
        if replace:
            target.delete_documents([d.id for d in target.documents()])
        target.clear_embeddings()  # with no documents left, any chunks there belong to none
        if fp is not None:
            target.set_meta(FINGERPRINT_KEY, json.dumps(fp, sort_keys=True))
    # The target holds nothing now (checked above, or emptied): Milvus can take plain inserts.
    with target.bulk_load():
        _copy(source, target, report, progress, count)
    for key, value in source.export_expansions():
        target.remember_expansion(key, value)
        report.expansions += 1
    target.after_embed()
    return report


def _copy(source: Index, target: Index, report: TransferReport, progress: Progress, count: Count) -> None:
    docs = source.documents()
    progress(f"copying {len(docs)} documents")
    count(0, len(docs))
    for start in range(0, len(docs), BATCH):
        part = docs[start : start + BATCH]
        texts = source.bodies([d.hash for d in part])  # milvus: a batch's texts in one round trip
        with target.transaction():
            target.upsert_documents([(d.collection, d.path, d.title, d.hash,
                                      texts[d.hash], d.size, d.mtime_ns)
                                     for d in part])
        report.documents += len(part)
        count(report.documents, len(docs))
    with target.transaction():
        for name, when in source.last_updates().items():
            target.mark_updated(name, when)
    total = source.counts()["chunks"]
    progress(f"copying {total} chunks and their vectors (nothing is embedded again)")
    count(0, total)
    batch: list[tuple[ChunkRow, object]] = []
    for chunk, vector in source.export_chunks():
        batch.append((chunk, vector))
        if len(batch) >= BATCH:
            _flush(target, batch, report)
            count(report.chunks, total)
    _flush(target, batch, report)
    count(report.chunks, total)


def _flush(target: Index, batch: list[tuple[ChunkRow, object]], report: TransferReport) -> None:
    if not batch:
        return
    with target.transaction():
        target.import_chunks(batch)
    report.chunks += len(batch)
    report.vectors += sum(1 for _, v in batch if v is not None)
    batch.clear()
