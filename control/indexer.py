"""Keeping the index in step with the collections: ``update`` (scan, hash, FTS) and ``embed``.

``update`` reads every selected file first and then applies all changes in one
transaction, so a reader never sees half an update and a failure changes nothing.
``embed`` chunks new content with the embedding model's tokenizer and sends
length-sorted batches of chunks to ``qmd_embed`` from several threads; vectors are
committed batch by batch, so an interrupted run resumes where it stopped.

Example:
    >>> report = update(store, config.list(), warn=print)
    >>> report.added
    12
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .chunking import CHUNK_OVERLAP, chunk_markdown, chunk_size_for
from .collections import Collection
from .errors import ArtifactMissing, FingerprintMismatch, InputError
from .markdown import SkippedFile, read_document, title_of
from .repository import parse_config
from .store import FINGERPRINT_KEY, IndexStore
from .tokenization import PromptFormats, TextEncoder, read_manifest

Warn = Callable[[str], None]
Progress = Callable[[int, int], None]


@dataclass
class UpdateReport:
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)
    collections: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class _Seen:
    path: str
    full: Path
    size: int
    mtime_ns: int


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def update(store: IndexStore, collections: Sequence[Collection], *, force: bool = False,
           warn: Warn = lambda _m: None, progress: Callable[[str], None] = lambda _m: None) -> UpdateReport:
    """Scans collections and records added, changed and removed documents in one transaction."""
    for c in collections:
        if not c.path.is_dir():
            raise InputError(f"collection {c.name}: path {c.path} does not exist or is not a directory")
    report = UpdateReport()
    plans = []
    for c in collections:
        progress(f"scanning {c.name} ({c.path})")
        known = {d.path: d for d in store.documents(c.name)}
        seen: dict[str, tuple[str, str, int, int] | None] = {}
        stats = {"added": 0, "changed": 0, "removed": 0, "unchanged": 0, "skipped": 0}
        for rel, full in c.files():
            try:
                st = full.stat()
            except FileNotFoundError:
                continue  # vanished between listing and stat: it is simply not there
            doc = known.get(rel)
            if doc and not force and doc.size == st.st_size and doc.mtime_ns == st.st_mtime_ns:
                seen[rel] = None
                stats["unchanged"] += 1
                continue
            try:
                text = read_document(full)
            except SkippedFile as e:
                warn(f"skipped {c.name}/{rel}: {str(e).split(': ', 1)[-1]}")
                report.skipped.append(f"{c.name}/{rel}")
                stats["skipped"] += 1
                continue
            h = content_hash(text)
            if doc and doc.hash == h:
                seen[rel] = ("touch", "", st.st_size, st.st_mtime_ns)
                stats["unchanged"] += 1
            else:
                title = title_of(text, Path(rel).stem)
                seen[rel] = (text, title, st.st_size, st.st_mtime_ns)
                stats["changed" if doc else "added"] += 1
        removed = [d.id for p, d in known.items() if p not in seen]
        stats["removed"] = len(removed)
        plans.append((c, known, seen, removed))
        report.collections[c.name] = stats
        for key in ("added", "changed", "removed", "unchanged"):
            setattr(report, key, getattr(report, key) + stats[key])
    with store.transaction():
        for c, known, seen, removed in plans:
            for rel, item in seen.items():
                if item is None:
                    continue
                text, title, size, mtime = item
                if text == "touch":
                    store.touch_document(known[rel].id, size, mtime)
                else:
                    store.upsert_document(c.name, rel, title, content_hash(text), text, size, mtime)
            store.delete_documents(removed)
        store.collect_garbage()
        store.set_meta("last_update", str(time.time()))
    return report


# -- embedding --------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingSetup:
    """What the index must agree on with the served model: the fingerprint and the tokenizer."""

    fingerprint: dict
    encoder: TextEncoder

    @property
    def id(self) -> str:
        return fingerprint_id(self.fingerprint)

    @property
    def chunk_tokens(self) -> int:
        return int(self.fingerprint["chunk_tokens"])


def fingerprint_id(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def embedding_setup(repo: Path) -> EmbeddingSetup:
    """Reads the model repository: export manifest, tokenizer config and prompt formats."""
    version_dir = repo / "qmd_tokenize" / "1"
    manifest = read_manifest(version_dir)
    if not manifest:
        raise ArtifactMissing(f"{version_dir}/export.json is missing; run `qmdctl export`")
    cfg = parse_config(repo / "qmd_tokenize" / "config.pbtxt")
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    prompts = PromptFormats(query=params.get("query_prompt") or "{text}",
                            document=params.get("document_prompt") or "{text}")
    requested = int(params.get("max_length") or 0)
    encoder = TextEncoder.from_dir(version_dir, max_length=requested or None, prompts=prompts, buckets="")
    prompt_tokens = encoder.count_tokens(prompts.document.replace("{text}", ""))
    fp = {
        "model": str(manifest.get("onnx_sha256", ""))[:16],
        "source": Path(str(manifest.get("source", ""))).name,
        "dim": int(manifest.get("dim", 0)),
        "max_length": encoder.max_length,
        "query_prompt": prompts.query,
        "document_prompt": prompts.document,
        "chunk_tokens": chunk_size_for(encoder.max_length, prompt_tokens),
        "chunk_overlap": CHUNK_OVERLAP,
    }
    return EmbeddingSetup(fp, encoder)


def check_fingerprint(store: IndexStore, setup: EmbeddingSetup) -> None:
    stored = store.fingerprint()
    if stored is not None and fingerprint_id(stored) != setup.id:
        diff = sorted(k for k in set(stored) | set(setup.fingerprint) if stored.get(k) != setup.fingerprint.get(k))
        raise FingerprintMismatch(
            f"the index was embedded with a different {', '.join(diff)} than the model repository has; "
            "run `qmdctl embed --force` to embed it again"
        )


@dataclass
class EmbedReport:
    chunked_documents: int = 0
    chunks: int = 0
    embedded: int = 0
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0


def chunk_pending(store: IndexStore, setup: EmbeddingSetup) -> tuple[int, int]:
    """Chunks every content hash that has no chunks yet; returns (documents, chunks)."""
    hashes = store.unchunked_hashes()
    total = 0
    for start in range(0, len(hashes), 200):
        batch = hashes[start : start + 200]
        with store.transaction():
            for h in batch:
                chunks = chunk_markdown(store.body(h), _counter(setup.encoder), max_tokens=setup.chunk_tokens)
                store.add_chunks(h, chunks)
                total += len(chunks)
    return len(hashes), total


def _counter(encoder: TextEncoder) -> Callable[[Sequence[str]], list[int]]:
    def count(texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        rows = encoder._count.encode_batch(list(texts), add_special_tokens=False)
        return [len(r.ids) for r in rows]

    return count


EmbedFn = Callable[[Sequence[str]], np.ndarray]


def embed_pending(
    store: IndexStore,
    setup: EmbeddingSetup,
    make_embedder: Callable[[], EmbedFn],
    *,
    force: bool = False,
    batch_size: int = 32,
    concurrency: int = 4,
    progress: Progress = lambda _d, _t: None,
    stop: threading.Event | None = None,
) -> EmbedReport:
    """Chunks and embeds everything pending; safe to interrupt and run again."""
    started = time.monotonic()
    if force:
        with store.transaction():
            store.clear_embeddings()
    check_fingerprint(store, setup)
    if store.fingerprint() is None:
        with store.transaction():
            store.set_meta(FINGERPRINT_KEY, json.dumps(setup.fingerprint, sort_keys=True))
    report = EmbedReport()
    report.chunked_documents, report.chunks = chunk_pending(store, setup)
    pending = sorted(store.pending_chunks(), key=lambda c: (c.tokens, c.id))
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
            with store.transaction():
                for batch, vectors in results:
                    if len(vectors) != len(batch):
                        raise InputError(f"server returned {len(vectors)} vectors for {len(batch)} chunks")
                    store.add_vectors([(c.id, v) for c, v in zip(batch, vectors)])
                    done += len(batch)
            progress(done, total)
            if stop is not None and stop.is_set():
                break
            for b in queue:
                running.add(pool.submit(run, b))
                if len(running) >= concurrency * 2:
                    break
    report.embedded = done
    report.seconds = time.monotonic() - started
    return report

