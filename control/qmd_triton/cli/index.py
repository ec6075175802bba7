"""``qmdctl collection ...``, ``update``, and the index side of ``embed``."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import click

from qmd_triton.cli.common import (
    State,
    collections_of,
    emit_json,
    index_exists,
    index_of,
    open_home_index,
    pass_state,
    protocol_option,
    server_options,
    server_settings,
)
from qmd_triton.errors import InputError, QmdError
from qmd_triton.index.collections import check_name
from qmd_triton.index.update import update


@click.group()
def collection() -> None:
    """Manage collections: named directories of markdown files."""


@collection.command("add")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", "-n", default=None, help="Collection name. [default: the directory's name]")
@click.option("--mask", "--include", "-m", "masks", multiple=True,
              help="Glob of files to index (repeatable). [default: **/*.md]")
@click.option("--ignore", "--exclude", "-i", "ignore", multiple=True, help="Glob of files to leave out (repeatable).")
@click.option("--update-cmd", default="", help="Shell command run in PATH before each `qmdctl update` (e.g. "
                                                "'git pull --ff-only').")
@pass_state
def collection_add(state: State, path: Path, name: str | None, masks: tuple[str, ...], ignore: tuple[str, ...],
                   update_cmd: str) -> None:
    """Add the directory PATH as a collection (run `qmdctl update` to index it)."""
    settings = state.settings()
    added = collections_of(settings).add(name or path.expanduser().resolve().name, path, list(masks) or None,
                                         list(ignore), update_cmd)
    state.progress(f"added collection {added.name}: {added.path} ({', '.join(added.masks)})")


@collection.command("set")
@click.argument("name")
@click.option("--mask", "--include", "-m", "masks", multiple=True, help="Replace the globs of files to index.")
@click.option("--ignore", "--exclude", "-i", "ignore", multiple=True, help="Replace the globs of files to leave out.")
@click.option("--no-ignore", is_flag=True, help="Leave nothing out (drop every ignore glob).")
@click.option("--update-cmd", default=None, help="Command run before scanning; '' removes it.")
@click.option("--follow-links/--no-follow-links", default=None,
              help="Index symlinks that lead outside the collection's folder.")
@pass_state
def collection_set(state: State, name: str, masks: tuple[str, ...], ignore: tuple[str, ...], no_ignore: bool,
                   update_cmd: str | None, follow_links: bool | None) -> None:
    """Change what collection NAME indexes: include/exclude globs, update_cmd, symlinks."""
    changed = collections_of(state.settings()).set(
        name, masks=masks or None, ignore=() if no_ignore else (ignore or None), update_cmd=update_cmd,
        follow_links=follow_links)
    state.progress(f"collection {changed.name}: masks {', '.join(changed.masks)}; ignore "
                   f"{', '.join(changed.ignore) or '-'}; update_cmd {changed.update_cmd or '-'}; "
                   f"follow_links {str(changed.follow_links).lower()}")


@collection.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_state
def collection_list(state: State, as_json: bool) -> None:
    """List collections with their paths, masks and document counts."""
    settings = state.settings()
    cols = collections_of(settings).list()
    counts: dict[str, Any] = {}
    if index_exists(settings):
        with open_home_index(settings) as index:
            counts = index.counts()["collections"]
    rows = [{"name": c.name, "path": str(c.path), "masks": list(c.masks), "ignore": list(c.ignore),
             "update_cmd": c.update_cmd, "follow_links": c.follow_links,
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
    if index_exists(settings):
        with open_home_index(settings) as index, index.transaction():
            removed = index.delete_collection(name)
            index.collect_garbage()
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
    if index_exists(settings):
        with open_home_index(settings) as index, index.transaction():
            index.rename_collection(old, new)
    config.rename(old, new)
    state.progress(f"renamed collection {old} to {new}")


@click.command("update")
@click.option("--collection", "-c", "names", multiple=True, help="Only these collections (repeatable).")
@click.option("--force", is_flag=True, help="Re-read every file, even those whose size and mtime are unchanged.")
@click.option("--no-update-cmd", "no_commands", is_flag=True,
              help="Do not run the collections' update_cmd (e.g. git pull) before scanning.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_state
def update_cmd(state: State, names: tuple[str, ...], force: bool, no_commands: bool, as_json: bool) -> None:
    """Scan the collections and index added, changed and removed documents.

    A collection's update_cmd runs in its folder first. Files that cannot be indexed
    (binary, not UTF-8, links leading outside the collection, ...) are reported on
    stderr and counted as skipped; matching files under hidden folders and
    node_modules are never indexed and counted as excluded.
    """
    settings = state.settings()
    config = collections_of(settings)
    cols = [config.get(n) for n in names] if names else config.list()
    if not cols:
        raise click.ClickException("no collections; add one with `qmdctl collection add PATH --name NAME`")
    with open_home_index(settings, create=True) as index:
        report = update(index, cols, force=force, run_commands=not no_commands, warn=state.warn,
                        progress=state.progress)
        pending = index.counts()
    data = {"added": report.added, "changed": report.changed, "removed": report.removed,
            "unchanged": report.unchanged, "skipped": report.skipped, "excluded": report.excluded,
            "collections": report.collections}
    if as_json:
        emit_json(data)
    else:
        excluded = (f", {report.excluded} excluded (under hidden folders or node_modules)"
                    if report.excluded else "")
        click.echo(f"{report.added} added, {report.changed} changed, {report.removed} removed, "
                   f"{report.unchanged} unchanged, {len(report.skipped)} skipped{excluded}")
    waiting = pending["unchunked_documents"] + (pending["chunks"] - pending["embedded"])
    if waiting:
        state.progress("run `qmdctl embed` to embed the new and changed documents")


@click.group()
def context() -> None:
    """Describe collections and folders; the text comes back with every hit below them (for agents)."""


@context.command("add")
@click.argument("target")
@click.argument("text")
@pass_state
def context_add(state: State, target: str, text: str) -> None:
    """Attach TEXT to TARGET: `/` (every hit), a collection, or COLLECTION/PATH/PREFIX (replaces any earlier)."""
    where = collections_of(state.settings()).set_context(target, text)
    state.progress(f"context on {where}: {text}")


@context.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_state
def context_list(state: State, as_json: bool) -> None:
    """List every context: its target and its text."""
    rows = collections_of(state.settings()).contexts()
    if as_json:
        emit_json([{"target": t, "text": x} for t, x in rows])
        return
    if not rows:
        state.progress("no contexts; add one with `qmdctl context add COLLECTION \"what these notes are\"`")
    for target, text in rows:
        click.echo(f"{target:<30} {text}")


@context.command("rm")
@click.argument("target")
@pass_state
def context_rm(state: State, target: str) -> None:
    """Remove the context of TARGET (`/`, a collection, or COLLECTION/PATH/PREFIX)."""
    collections_of(state.settings()).remove_context(target)
    state.progress(f"removed the context on {target}")


@click.command("cleanup")
@click.option("--keep-expansions", type=click.IntRange(min=0), default=10000, show_default=True,
              help="Cached query expansions to keep (the newest).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_state
def cleanup_cmd(state: State, keep_expansions: int, as_json: bool) -> None:
    """Compact the index: drop what no document needs, prune the expansion cache, merge the FTS index, VACUUM.

    Safe while a server reads the index; it waits for writers (update, embed) to finish.
    """
    settings = state.settings()
    with open_home_index(settings) as index:
        state.progress(f"cleaning up {index.describe()}")
        report = index.cleanup(keep_expansions=keep_expansions)
    if as_json:
        emit_json(report)
        return
    click.echo(f"removed {report['contents']} unused contents, {report['vectors']} unused vectors and "
               f"{report['expansions']} old expansions; {report['bytes_before'] / 1e6:.1f} MB -> "
               f"{report['bytes_after'] / 1e6:.1f} MB ({report['bytes_reclaimed'] / 1e6:.1f} MB reclaimed)")


@click.command("watch")
@click.option("--collection", "-c", "names", multiple=True, help="Only these collections (repeatable).")
@click.option("--debounce-ms", type=click.IntRange(min=50), default=1000, show_default=True,
              help="Quiet time after the last change before re-indexing.")
@click.option("--no-embed", is_flag=True, help="Only update the index (BM25); do not embed through the server.")
@server_options
@protocol_option
@pass_state
def watch_cmd(state: State, names: tuple[str, ...], debounce_ms: int, no_embed: bool, **kwargs: Any) -> None:
    """Keep the index in step with the collections: re-index (and re-embed) when their files change.

    Runs until stopped (Ctrl-C, or SIGTERM from systemd: deploy/systemd/qmd-watch.service). One
    update and embed at start, then one per batch of changes, debounced. Starts the local server
    for embedding when none answers (unless --no-embed).
    """
    from qmd_triton.index.watch import watch_changes
    from qmd_triton.serving.client import embed_index
    from qmd_triton.serving.server import ensure_running

    settings = server_settings(state, kwargs)
    config = collections_of(settings)
    cols = [config.get(n) for n in names] if names else config.list()
    if not cols:
        raise click.ClickException("no collections; add one with `qmdctl collection add PATH --name NAME`")
    stop = threading.Event()

    def interrupted(_signum: int, _frame: Any) -> None:
        if stop.is_set():  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        stop.set()

    # Ctrl-C and SIGTERM (systemd) stop the same way: the watcher sees `stop` within its step and an embed
    # ends after the batches in flight. Both are set here, and unblocked, rather than trusted to what the
    # process inherited (a parent that ignored or blocked SIGINT left Ctrl-C without effect).
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})

    def refresh(which: list) -> None:
        with open_home_index(settings, create=True) as index:
            report = update(index, which, warn=state.warn, progress=lambda _m: None)
        click.echo(f"{time.strftime('%H:%M:%S')} {', '.join(c.name for c in which)}: {report.added} added, "
                   f"{report.changed} changed, {report.removed} removed", err=True)
        if not no_embed and (report.added or report.changed):
            ensure_running(settings, progress=state.progress, warn=state.warn)
            done = embed_index(settings, stop=stop)
            click.echo(f"{time.strftime('%H:%M:%S')} embedded {done.embedded} chunks", err=True)

    first = True
    try:
        # The first batch comes once the folders are watched, naming every collection: the initial
        # update runs then, so a file saved while the watch starts is not missed.
        for changed in watch_changes(cols, debounce_ms=debounce_ms, stop=stop):
            try:
                refresh([c for c in collections_of(settings).list() if c.name in changed])
            except QmdError as e:  # a bad moment (a file half-written, the server restarting) is not the end
                if first:
                    raise
                state.warn(str(e))
            if first:
                first = False
                state.progress(f"watching {', '.join(f'{c.name} ({c.path})' for c in cols)}; Ctrl-C stops")
    except KeyboardInterrupt:
        pass
    state.progress("stopped watching")


@click.group("index")
def index_group() -> None:
    """The index's backend: sqlite (one file, the default) or milvus (a Milvus server; Milvus Lite locally)."""


@index_group.command("migrate")
@click.option("--to", "to", type=click.Choice(["milvus", "sqlite"]), required=True, help="The backend to move to.")
@click.option("--uri", default=None, help="milvus: the server's URI (http://HOST:19530). [default: the home's own "
              "Milvus Lite, which `qmdctl up` starts]")
@click.option("--token", default=None, help="milvus: user:password or an API key.")
@click.option("--prefix", default=None, help="milvus: the collections' name prefix. [default: qmd]")
@click.option("--replace", is_flag=True, help="Overwrite what the target already holds.")
@click.option("--switch/--no-switch", default=True, show_default=True,
              help="Point the home at the new index ([index] of config.toml) once the copy is complete.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_state
def index_migrate(state: State, to: str, uri: str | None, token: str | None, prefix: str | None, replace: bool,
                  switch: bool, as_json: bool) -> None:
    """Move the index to another backend without embedding anything again.

    Copies documents, chunks with their vectors, the embedding fingerprint, the collections' last updates
    and the expansion cache; the old index is left as it was. Restart a running server afterwards
    (`qmdctl down`, `qmdctl up`): its models keep reading the index they opened.
    """
    from qmd_triton.index.config import index_config, write_index_table
    from qmd_triton.index.factory import open_index
    from qmd_triton.index.transfer import transfer

    settings = state.settings()
    source = index_config(settings.home)
    target = source.with_(backend=to, uri=uri if uri is not None else (source.uri if to == "milvus" else ""),
                          token=token if token is not None else source.token, prefix=prefix or source.prefix)
    if source.describe() == target.describe():
        raise InputError(f"the index is already in {source.describe()}")
    if not index_exists(settings):
        raise InputError(f"no index in {source.describe()} to migrate; run `qmdctl update` first")
    if target.local:
        from qmd_triton.serving import milvus_lite

        milvus_lite.ensure_running(target, progress=state.progress)
    state.progress(f"migrating {source.describe()} -> {target.describe()}")
    with open_home_index(settings) as src, open_index(target, create=True) as dst, \
            state.counter("migrating") as counter:
        report = transfer(src, dst, progress=state.progress, count=counter, replace=replace)
    if switch:
        write_index_table(settings.home, backend=to, uri=target.uri if to == "milvus" else "",
                          token=target.token if to == "milvus" else "",
                          prefix=target.prefix if target.prefix != "qmd" else "")
        state.progress(f"{settings.config_file}: index.backend = \"{to}\"; restart a running server to use it")
    data = {"from": source.describe(), "to": target.describe(), "documents": report.documents,
            "chunks": report.chunks, "vectors": report.vectors, "expansions": report.expansions, "switched": switch}
    if as_json:
        emit_json(data)
    else:
        click.echo(f"migrated {report.documents} documents, {report.chunks} chunks ({report.vectors} vectors) and "
                   f"{report.expansions} cached expansions to {target.describe()}")


@index_group.command("backup")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--force", is_flag=True, help="Replace PATH when it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_state
def index_backup(state: State, path: Path, force: bool, as_json: bool) -> None:
    """Copy the whole index into PATH, a SQLite index file, safe while a server reads and `update` writes.

    SQLite: one consistent snapshot through SQLite's backup API. Milvus: documents, chunks and vectors copied
    out (as `index migrate` does). The copy is checked (SQLite's quick_check) before it takes the name PATH;
    it restores into either backend (`qmdctl index restore`).
    """
    from qmd_triton.index.backup import backup

    config = index_of(state.settings(), state.progress)
    with state.counter("backing up") as counter:
        report = backup(config, path, force=force, progress=state.progress, count=counter)
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(f"backed up {report.documents} documents, {report.chunks} chunks ({report.vectors} with vectors) "
                   f"to {report.path} ({report.bytes / 1e6:.1f} MB, {report.seconds:.1f} s)")


@index_group.command("restore")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_state
def index_restore(state: State, path: Path, as_json: bool) -> None:
    """Put the backup PATH in place of the index, safe while a server runs: no restart needed.

    The backup is checked first (a damaged or foreign file changes nothing). SQLite: written over the index in
    one transaction, so a running server answers from the old index or the restored one, never a mix, and its
    models read the restored vectors at their next request. Milvus: the collections' contents are replaced.
    """
    from qmd_triton.index.backup import restore

    config = index_of(state.settings(), state.progress)
    with state.counter("restoring") as counter:
        report = restore(config, path, progress=state.progress, count=counter)
    if as_json:
        emit_json({**report.to_dict(), "index": config.describe()})
    else:
        click.echo(f"restored {report.documents} documents, {report.chunks} chunks ({report.vectors} with vectors) "
                   f"from {report.path} into {config.describe()} ({report.seconds:.1f} s)")
