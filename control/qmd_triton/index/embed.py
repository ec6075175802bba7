"""``embed``: chunk new content and embed every chunk that has no vector yet.

New content is chunked with the embedding model's tokenizer; pending chunks go
length-sorted, in batches, to an embedding function (the served ``qmd_embed``, or an
in-process model) from several threads; vectors are committed batch by batch, so an
interrupted run resumes where it stopped.

Example:
    >>> report = embed_pending(index, embedding_setup(repo), make_embedder)
    >>> report.embedded
    132
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from qmd_triton.errors import InputError
from qmd_triton.index.fingerprint import EmbeddingSetup, check_fingerprint, only_chunking_differs
from qmd_triton.index.interface import Index
from qmd_triton.index.rows import FINGERPRINT_KEY
from qmd_triton.progress import Count, uncounted
from qmd_triton.text.chunking import chunk_markdown


@dataclass
class EmbedReport:
    chunked_documents: int = 0
    chunks: int = 0
    embedded: int = 0
    dropped: int = 0  # vectors of chunk texts no document holds any more
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0


def chunk_pending(index: Index, setup: EmbeddingSetup) -> tuple[int, int]:
    """Chunks every content hash that has no chunks yet; returns (documents, chunks).

    An ``update`` may remove documents meanwhile (another process): content that is gone by the time its
    batch's transaction starts is skipped, not an error.
    """
    hashes = index.unchunked_hashes()
    total = done = 0
    for start in range(0, len(hashes), 200):
        batch = hashes[start : start + 200]
        with index.transaction():
            for h in index.still_indexed(batch):
                chunks = chunk_markdown(index.body(h), setup.count_tokens, max_tokens=setup.chunk_tokens)
                index.add_chunks(h, chunks)
                total += len(chunks)
                done += 1
    return done, total


EmbedFn = Callable[[Sequence[str]], np.ndarray]


def embed_pending(
    index: Index,
    setup: EmbeddingSetup,
    make_embedder: Callable[[], EmbedFn],
    *,
    force: bool = False,
    batch_size: int = 32,
    concurrency: int = 4,
    progress: Count = uncounted,
    stop: threading.Event | None = None,
) -> EmbedReport:
    """Chunks and embeds everything pending; safe to interrupt and run again."""
    started = time.monotonic()
    if force:
        with index.transaction():
            index.clear_embeddings()
    stored = index.fingerprint()
    if stored is not None and only_chunking_differs(stored, setup.fingerprint):
        with index.transaction():
            index.clear_chunks()
            index.set_meta(FINGERPRINT_KEY, json.dumps(setup.fingerprint, sort_keys=True))
    check_fingerprint(index, setup)
    if index.fingerprint() is None:
        with index.transaction():
            index.set_meta(FINGERPRINT_KEY, json.dumps(setup.fingerprint, sort_keys=True))
    report = EmbedReport()
    report.chunked_documents, report.chunks = chunk_pending(index, setup)
    pending = sorted(index.pending_chunks(), key=lambda c: (c.tokens, c.id))
    batches = [pending[i : i + batch_size] for i in range(0, len(pending), batch_size)]
    total = len(pending)
    progress(0, total)
    if not batches:
        report.seconds = time.monotonic() - started
        return report
    local = threading.local()

    def run(batch: list) -> tuple[list, np.ndarray]:
        if not hasattr(local, "embed"):
            local.embed = make_embedder()
        return batch, local.embed([c.text for c in batch])

    done = 0
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        queue = iter(batches)
        running: set[Future] = set()
        for b in queue:
            running.add(pool.submit(run, b))
            if len(running) >= concurrency * 2:
                break
        while running:
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            results = [f.result() for f in finished]
            with index.transaction():
                for batch, vectors in results:
                    if len(vectors) != len(batch):
                        raise InputError(f"server returned {len(vectors)} vectors for {len(batch)} chunks")
                    index.add_vectors([(c.text_hash, v) for c, v in zip(batch, vectors)])
                    done += len(batch)
            progress(done, total)
            if stop is not None and stop.is_set():
                break
            for b in queue:
                running.add(pool.submit(run, b))
                if len(running) >= concurrency * 2:
                    break
    report.embedded = done
    if stop is None or not stop.is_set():
        with index.transaction():
            report.dropped = index.drop_unused_vectors()
            index.after_embed()
    report.seconds = time.monotonic() - started
    return report
