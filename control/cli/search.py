"""``qmdctl search``, ``vsearch``, ``get``, ``multi-get``, ``ls``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from qmd_triton.cli.common import (
    State,
    collections_of,
    emit_json,
    open_store,
    pass_state,
    protocol_option,
    server_options,
    server_settings,
)
from qmd_triton.contracts import QUERY_PIPELINE, VSEARCH
from qmd_triton.index.refs import line_range, parse_ref, resolve, select
from qmd_triton.search.formats import FORMATS, render
from qmd_triton.search.lexical import search_bm25
from qmd_triton.search.options import Hit, SearchOptions, check_query
from qmd_triton.serving.client import QmdClient
from qmd_triton.serving.server import ensure_running
from qmd_triton.settings import Settings


def result_options(f: Callable) -> Callable:
    """``-n``, ``-c``, ``--min-score``, ``--full``, ``--line-numbers``, ``--format``, ``--json``."""
    options = [
        click.option("-n", "n", type=int, default=10, show_default=True, help="Number of results (1-1000)."),
        click.option("-c", "--collection", "collections", multiple=True,
                     help="Search only this collection (repeatable)."),
        click.option("--min-score", type=float, default=0.0, show_default=True,
                     help="Drop results scoring below this (0-1)."),
        click.option("--full", is_flag=True, help="Show whole documents instead of snippets."),
        click.option("--line-numbers", is_flag=True, help="Number the lines shown."),
        click.option("--format", "fmt", type=click.Choice(FORMATS), default="cli", show_default=True,
                     help="Output format."),
        click.option("--json", "as_json", is_flag=True, help="Same as --format json."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _options(n: int, collections: tuple[str, ...], min_score: float, full: bool) -> SearchOptions:
    return SearchOptions(n=n, collections=tuple(collections), min_score=min_score, full=full)


def _emit(hits: list[Hit], fmt: str, as_json: bool, line_numbers: bool) -> None:
    fmt = "json" if as_json else fmt
    click.echo(render(hits, fmt, line_numbers=line_numbers, color=fmt == "cli" and sys.stdout.isatty()), nl=False)


@click.command()
@click.argument("query")
@result_options
@pass_state
def search(state: State, query: str, n: int, collections: tuple[str, ...], min_score: float, full: bool,
           line_numbers: bool, fmt: str, as_json: bool) -> None:
    """BM25 full-text search of the index (no server needed)."""
    settings = state.settings()
    opts = _options(n, collections, min_score, full)
    with open_store(settings) as store:
        hits = search_bm25(store, query, opts)
    _emit(hits, fmt, as_json, line_numbers)


def _served(state: State, settings: Settings, model: str, query: str, options: SearchOptions) -> list[Hit]:
    """A search model's hits, starting the local server when none answers."""
    q = check_query(query)
    ensure_running(settings, progress=state.progress, warn=state.warn)
    with QmdClient(settings.url(), settings.protocol, settings.request_timeout_s) as client:
        return [Hit.from_dict(d) for d in client.search(model, q, options.to_json())]


@click.command()
@click.argument("query")
@result_options
@server_options
@protocol_option
@pass_state
def vsearch(state: State, query: str, n: int, collections: tuple[str, ...], min_score: float, full: bool,
            line_numbers: bool, fmt: str, as_json: bool, **kwargs: Any) -> None:
    """Vector search through Triton's qmd_vsearch (starts the local server if none answers)."""
    settings = server_settings(state, kwargs)
    hits = _served(state, settings, VSEARCH.name, query, _options(n, collections, min_score, full))
    _emit(hits, fmt, as_json, line_numbers)


@click.command()
@click.argument("query")
@result_options
@click.option("--no-expand", is_flag=True, help="Skip LLM query expansion.")
@click.option("--no-rerank", is_flag=True, help="Skip cross-encoder reranking (RRF order).")
@click.option("-C", "--candidate-limit", "candidates", type=int, default=40, show_default=True,
              help="Candidates sent to the reranker (clamped to n..200).")
@click.option("--explain", is_flag=True, help="Show each hit's lists, ranks, RRF, rerank score and blend weight.")
@server_options
@protocol_option
@pass_state
def query(state: State, query: str, n: int, collections: tuple[str, ...], min_score: float, full: bool,
          line_numbers: bool, fmt: str, as_json: bool, no_expand: bool, no_rerank: bool, candidates: int,
          explain: bool, **kwargs: Any) -> None:
    """Hybrid search through Triton's qmd_query: expansion, BM25 + vectors, RRF, reranking.

    Starts the local server if none answers.
    """
    settings = server_settings(state, kwargs)
    opts = SearchOptions(n=n, collections=tuple(collections), min_score=min_score, full=full, expand=not no_expand,
                         rerank=not no_rerank, candidates=candidates, explain=explain)
    _emit(_served(state, settings, QUERY_PIPELINE.name, query, opts), fmt, as_json, line_numbers)


@click.command()
@click.argument("ref")
@click.option("-l", "--lines", "count", type=click.IntRange(min=1), default=None,
              help="Number of lines to show (with a start line in REF or --from).")
@click.option("--from", "start", type=click.IntRange(min=1), default=None, help="First line to show.")
@click.option("--line-numbers", is_flag=True, help="Number the lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the document as JSON.")
@pass_state
def get(state: State, ref: str, count: int | None, start: int | None, line_numbers: bool, as_json: bool) -> None:
    """Print a document by path, collection/path or #docid; REF may end in :FROM[:COUNT]."""
    settings = state.settings()
    parsed = parse_ref(ref)
    with open_store(settings) as store:
        doc = resolve(store, collections_of(settings).list(), parsed.target)
        body = store.body(doc.hash)
    first = start or parsed.start
    first_line, text = line_range(body, first, count or parsed.count)
    if as_json:
        emit_json({"docid": "#" + doc.docid, "file": doc.display_path, "title": doc.title, "from": first_line,
                   "text": text})
        return
    if line_numbers:
        text = "".join(f"{first_line + i:>5}  {ln}\n" for i, ln in enumerate(text.splitlines()))
    click.echo(text, nl=False)


@click.command("multi-get")
@click.argument("pattern")
@click.option("--max-bytes", type=click.IntRange(min=1), default=10240, show_default=True,
              help="Skip documents larger than this (listed on stderr).")
@click.option("--json", "as_json", is_flag=True, help="Print the documents as JSON.")
@pass_state
def multi_get(state: State, pattern: str, max_bytes: int, as_json: bool) -> None:
    """Print several documents: a glob over collection/path, or a comma-separated list of refs."""
    settings = state.settings()
    out = []
    with open_store(settings) as store:
        for doc in select(store, pattern):
            body = store.body(doc.hash)
            size = len(body.encode("utf-8"))
            if size > max_bytes:
                state.progress(f"skipped {doc.display_path}: {size} bytes > --max-bytes {max_bytes}")
                out.append({"docid": "#" + doc.docid, "file": doc.display_path, "title": doc.title,
                            "skipped": f"{size} bytes"})
                continue
            out.append({"docid": "#" + doc.docid, "file": doc.display_path, "title": doc.title, "text": body})
    if as_json:
        emit_json(out)
        return
    for d in out:
        if "text" in d:
            click.echo(f"==> {d['file']} ({d['docid']}) <==\n{d['text'].rstrip()}\n")


@click.command("ls")
@click.argument("where", required=False)
@pass_state
def ls(state: State, where: str | None) -> None:
    """List collections, or the documents of COLLECTION[/PREFIX]."""
    settings = state.settings()
    cols = collections_of(settings).list()
    if not settings.index_path.exists():
        docs = []
    else:
        with open_store(settings) as store:
            docs = store.documents()
    if not where:
        counts: dict[str, int] = {}
        for d in docs:
            counts[d.collection] = counts.get(d.collection, 0) + 1
        for c in cols:
            click.echo(f"{c.name}/  {counts.get(c.name, 0)} documents  {c.path}")
        return
    name, _, prefix = where.partition("/")
    collections_of(settings).get(name)
    for d in docs:
        if d.collection == name and d.path.startswith(prefix):
            click.echo(f"{d.display_path}  #{d.docid}  {d.title}")
