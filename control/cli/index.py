"""``qmdctl collection ...``, ``update``, and the index side of ``embed``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from qmd_triton.cli.common import State, collections_of, emit_json, open_store, pass_state
from qmd_triton.errors import InputError
from qmd_triton.index.collections import check_name
from qmd_triton.index.update import update


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
        report = update(store, cols, force=force, warn=state.warn, progress=state.progress)
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
