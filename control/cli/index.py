"""``qmdctl collection ...``, ``update``, and the index side of ``embed``."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import click

from .. import server
from ..client import QmdClient
from ..collections import CollectionConfig, check_name
from ..errors import InputError
from ..indexer import embed_pending, embedding_setup, update
from ..settings import Settings
from ..store import IndexStore
from .common import State, emit_json, pass_state


def collections_of(settings: Settings) -> CollectionConfig:
    return CollectionConfig(settings.config_file)


def open_store(settings: Settings, create: bool = False) -> IndexStore:
    return IndexStore.open(settings.index_path, create=create)


@click.group()
def collection() -> None:
    """Manage collections: named directories of markdown files."""


@collection.command("add")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", "-n", default=None, help="Collection name. [default: the directory's name]")
@click.option("--mask", "-m", "masks", multiple=True, help="Glob of files to index (repeatable). [default: **/*.md]")
@click.option("--ignore", "-i", "ignore", multiple=True, help="Glob of files to leave out (repeatable).")
@pass_state
def collection_add(state: State, path: Path, name: str | None, masks: tuple[str, ...], ignore: tuple[str, ...]) -> None:
    """Add the directory PATH as a collection (run `qmdctl update` to index it)."""
    settings = state.settings()
    added = collections_of(settings).add(name or path.expanduser().resolve().name, path, list(masks) or None,
                                         list(ignore))
    state.progress(f"added collection {added.name}: {added.path} ({', '.join(added.masks)})")


@collection.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_state
def collection_list(state: State, as_json: bool) -> None:
    """List collections with their paths, masks and document counts."""
    settings = state.settings()
    cols = collections_of(settings).list()
    counts: dict[str, Any] = {}
    if settings.index_path.exists():
        with open_store(settings) as store:
            counts = store.counts()["collections"]
    rows = [{"name": c.name, "path": str(c.path), "masks": list(c.masks), "ignore": list(c.ignore),
             "documents": counts.get(c.name, {}).get("documents", 0)} for c in cols]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        state.progress("no collections; add one with `qmdctl collection add PATH --name NAME`")
    for r in rows:
        click.echo(f"{r['name']:<16} {r['documents']:>6} docs  {r['path']}  ({', '.join(r['masks'])})")


@collection.command("remove")
@click.argument("name")
@pass_state
def collection_remove(state: State, name: str) -> None:
    """Remove collection NAME and its documents from the index (files are not touched)."""
    settings = state.settings()
    config = collections_of(settings)
    config.get(name)
    removed = 0
    if settings.index_path.exists():
        with open_store(settings) as store, store.transaction():
            removed = store.delete_collection(name)
            store.collect_garbage()
    config.remove(name)
    state.progress(f"removed collection {name} ({removed} documents dropped from the index)")


@collection.command("rename")
@click.argument("old")
@click.argument("new")
@pass_state
def collection_rename(state: State, old: str, new: str) -> None:
    """Rename collection OLD to NEW, keeping its index entries."""
    settings = state.settings()
    config = collections_of(settings)
    config.get(old)
    if new in {c.name for c in config.list()}:
        raise InputError(f"a collection named {new!r} already exists")
    check_name(new)
    if settings.index_path.exists():
        with open_store(settings) as store, store.transaction():
            store.rename_collection(old, new)
    config.rename(old, new)
    state.progress(f"renamed collection {old} to {new}")


@click.command("update")
@click.option("--collection", "-c", "names", multiple=True, help="Only these collections (repeatable).")
@click.option("--force", is_flag=True, help="Re-read every file, even those whose size and mtime are unchanged.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_state
def update_cmd(state: State, names: tuple[str, ...], force: bool, as_json: bool) -> None:
    """Scan the collections and index added, changed and removed documents."""
    settings = state.settings()
    config = collections_of(settings)
    cols = [config.get(n) for n in names] if names else config.list()
    if not cols:
        raise click.ClickException("no collections; add one with `qmdctl collection add PATH --name NAME`")
    with open_store(settings, create=True) as store:
        report = update(store, cols, force=force, warn=lambda m: click.echo(f"Warning: {m}", err=True),
                        progress=state.progress)
        pending = store.counts()
    data = {"added": report.added, "changed": report.changed, "removed": report.removed,
            "unchanged": report.unchanged, "skipped": report.skipped, "collections": report.collections}
    if as_json:
        emit_json(data)
    else:
        click.echo(f"{report.added} added, {report.changed} changed, {report.removed} removed, "
                   f"{report.unchanged} unchanged, {len(report.skipped)} skipped")
    waiting = pending["unchunked_documents"] + (pending["chunks"] - pending["embedded"])
    if waiting:
        state.progress("run `qmdctl embed` to embed the new and changed documents")


def ensure_server(state: State, settings: Settings) -> None:
    """Starts the local server when nothing answers at the configured address."""
    with QmdClient(settings.url(), settings.protocol) as client:
        if client.is_ready():
            recorded = server.read_state(settings)
            if recorded is None or recorded.http_port != settings.http_port:
                click.echo(f"Warning: the server at {settings.url()} was not started from {settings.home}; "
                           "it searches the index of the home it was started with", err=True)
            return
    state.progress(f"no server answers at {settings.url()}; starting the local one")
    server.start(settings, progress=state.progress)


def embed_index(state: State, settings: Settings, force: bool, batch_size: int, concurrency: int,
                as_json: bool) -> None:
    """The index side of `qmdctl embed`: chunk and embed everything pending."""
    setup = embedding_setup(settings.model_repository)
    with open_store(settings) as store:
        ensure_server(state, settings)
        bar: dict[str, Any] = {}

        def progress(done: int, total: int) -> None:
            if state.quiet or not total:
                return
            if "bar" not in bar:
                bar["bar"] = click.progressbar(length=total, label="embedding chunks", file=sys.stderr,
                                               show_pos=True, show_eta=True)
                bar["bar"].__enter__()
                bar["done"] = 0
            bar["bar"].update(done - bar["done"])
            bar["done"] = done

        def make():
            client = QmdClient(settings.url(), settings.protocol, settings.request_timeout_s)
            return lambda texts: client.embed(list(texts))

        stop = threading.Event()
        try:
            report = embed_pending(store, setup, make, force=force, batch_size=batch_size,
                                   concurrency=concurrency, progress=progress, stop=stop)
        finally:
            if "bar" in bar:
                bar["bar"].__exit__(None, None, None)
        counts = store.counts()
    data = {"chunked_documents": report.chunked_documents, "new_chunks": report.chunks,
            "embedded": report.embedded, "seconds": round(report.seconds, 2),
            "chunks_per_second": round(report.per_second, 1), "total_chunks": counts["chunks"],
            "total_embedded": counts["embedded"], "fingerprint": setup.id}
    if as_json:
        emit_json(data)
    else:
        click.echo(f"embedded {report.embedded} chunks in {report.seconds:.1f}s ({report.per_second:.1f}/s); "
                   f"{counts['embedded']}/{counts['chunks']} chunks have vectors")
