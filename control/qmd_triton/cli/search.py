"""``qmdctl search``, ``vsearch``, ``get``, ``multi-get``, ``ls``."""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from qmd_triton.cli.common import (
    State,
    collections_of,
    emit_json,
    index_exists,
    open_home_index,
    pass_state,
    protocol_option,
    server_options,
    server_settings,
)
from qmd_triton.contracts import QUERY_PIPELINE, VSEARCH
from qmd_triton.index.collections import ContextMap
from qmd_triton.index.refs import fetch, fetch_many
from qmd_triton.search.formats import FORMATS, render
from qmd_triton.search.lexical import search_bm25
from qmd_triton.search.options import CANDIDATES, MAX_RESULTS, Hit, SearchOptions, check_query, typed_query
from qmd_triton.settings import Settings


@dataclass
class Output:
    """What every search command is asked to return and how to show it (``result_options``)."""

    n: int
    everything: bool
    collections: tuple[str, ...]
    min_score: float
    full: bool
    line_numbers: bool
    fmt: str
    full_path: bool

    def options(self, **extra: Any) -> SearchOptions:
        n = MAX_RESULTS if self.everything else self.n
        return SearchOptions(n=n, collections=self.collections, min_score=self.min_score, full=self.full, **extra)

    def emit(self, hits: list[Hit], settings: Settings) -> None:
        roots = {c.name: c.path for c in collections_of(settings).list()} if self.full_path else None
        color = self.fmt == "cli" and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        click.echo(render(hits, self.fmt, line_numbers=self.line_numbers, color=color, roots=roots), nl=False)


def result_options(f: Callable) -> Callable:
    """``-n``, ``--all``, ``-c``, ``--min-score``, ``--full``, ``--line-numbers``, ``--format``, ``--json``,
    ``--full-path``: bundled into one ``out: Output`` argument."""
    options = [
        click.option("-n", "n", type=int, default=10, show_default=True, help="Number of results (1-1000)."),
        click.option("--all", "everything", is_flag=True,
                     help=f"Every match above --min-score (up to {MAX_RESULTS}), not just the top -n."),
        click.option("-c", "--collection", "collections", multiple=True,
                     help="Search only this collection (repeatable)."),
        click.option("--min-score", type=float, default=0.0, show_default=True,
                     help="Drop results scoring below this (0-1; what a score means in each mode: docs/search.md)."),
        click.option("--full", is_flag=True, help="Show whole documents instead of snippets."),
        click.option("--line-numbers", is_flag=True, help="Number the lines shown."),
        click.option("--full-path", is_flag=True, help="Show files as absolute paths, not collection/path."),
        click.option("--format", "fmt", type=click.Choice(FORMATS), default="cli", show_default=True,
                     help="Output format (no colors when NO_COLOR is set or stdout is not a terminal)."),
        click.option("--json", "as_json", is_flag=True, help="Same as --format json."),
    ]

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = kwargs.pop("as_json")
        out = Output(n=kwargs.pop("n"), everything=kwargs.pop("everything"),
                     collections=tuple(kwargs.pop("collections")), min_score=kwargs.pop("min_score"),
                     full=kwargs.pop("full"), line_numbers=kwargs.pop("line_numbers"),
                     fmt="json" if as_json else kwargs.pop("fmt"), full_path=kwargs.pop("full_path"))
        kwargs.pop("fmt", None)
        return f(*args, out=out, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


@click.command()
@click.argument("query")
@result_options
@pass_state
def search(state: State, query: str, out: Output) -> None:
    """BM25 full-text search of the index (no server needed).

    Every word counts (more and rarer words rank higher); "a quoted phrase" must appear as
    written; -word and -"a phrase" leave out the documents that hold them.
    """
    settings = state.settings()
    with open_home_index(settings) as index:
        hits = search_bm25(index, query, out.options(), ContextMap.load(settings.config_file))
    out.emit(hits, settings)


def _served(state: State, settings: Settings, model: str, query: str, options: SearchOptions) -> list[Hit]:
    """A search model's hits, starting the local server when none answers."""
    from qmd_triton.serving.client import QmdClient
    from qmd_triton.serving.server import ensure_running

    q = check_query(query)
    ensure_running(settings, progress=state.progress, warn=state.warn)
    waiting = threading.Timer(5.0, lambda: state.progress(f"waiting for {model} (the first query after a start "
                                                          "loads the models; later ones are faster) ..."))
    waiting.daemon = True
    waiting.start()
    try:
        with QmdClient(settings.url(), settings.protocol, settings.request_timeout_s) as client:
            return [Hit.from_dict(d) for d in client.search(model, q, options.to_json())]
    finally:
        waiting.cancel()


@click.command()
@click.argument("query")
@result_options
@server_options
@protocol_option
@pass_state
def vsearch(state: State, query: str, out: Output, **kwargs: Any) -> None:
    """Vector search through Triton's qmd_vsearch (starts the local server if none answers).

    -word and -"a phrase" leave out the documents that hold them.
    """
    settings = server_settings(state, kwargs)
    out.emit(_served(state, settings, VSEARCH.name, query, out.options()), settings)


@click.command()
@click.argument("query")
@result_options
@click.option("--expand/--no-expand", "expand", default=None,
              help="Run (or skip) LLM query expansion. [default: the server's: off on the CPU, where the 135M "
                   "model made results worse on every eval set]")
@click.option("--no-rerank", is_flag=True, help="Skip cross-encoder reranking (RRF order).")
@click.option("--no-vectors", is_flag=True, help="Leave out the vector lists (BM25 lists only; an ablation).")
@click.option("-C", "--candidate-limit", "candidates", type=int, default=CANDIDATES, show_default=True,
              help="Candidates sent to the reranker (clamped to n..200).")
@click.option("--fusion", type=click.Choice(["prior", "rerank", "blend"]), default=None,
              help="How reranker scores meet the retrieval order. [default: the server's qmd_fuse setting]")
@click.option("--intent", default="", help="What you mean, to tell apart words with several senses "
                                           "(e.g. 'the Triton inference server'); used by expansion and reranking.")
@click.option("--lex", "lex", multiple=True, help="Your own keyword search (repeatable); replaces the LLM's.")
@click.option("--vec", "vec", multiple=True, help="Your own question for vector search (repeatable).")
@click.option("--hyde", "hyde", multiple=True, help="Your own hypothetical answer, embedded (repeatable).")
@click.option("--explain", is_flag=True, help="Show each hit's lists, ranks, RRF, rerank score and blend weight.")
@server_options
@protocol_option
@pass_state
def query(state: State, query: str, out: Output, expand: bool | None, no_rerank: bool, no_vectors: bool,
          candidates: int,
          fusion: str | None, intent: str, lex: tuple[str, ...], vec: tuple[str, ...], hyde: tuple[str, ...],
          explain: bool, **kwargs: Any) -> None:
    """Hybrid search through Triton's qmd_query: expansion, BM25 + vectors, RRF, reranking.

    QUERY may hold lines starting with lex:, vec: or hyde: (your own searches, as --lex/--vec/--hyde);
    -word and -"a phrase" leave out documents and never reach the expansion. Starts the local server
    if none answers.
    """
    settings = server_settings(state, kwargs)
    flags = tuple(("lex", t) for t in lex) + tuple(("vec", t) for t in vec) + tuple(("hyde", t) for t in hyde)
    text, typed = typed_query(query, flags)
    opts = out.options(expand=expand, rerank=not no_rerank, vectors=not no_vectors, candidates=candidates,
                       explain=explain,
                       fusion=fusion, intent=intent, searches=typed)
    out.emit(_served(state, settings, QUERY_PIPELINE.name, text, opts), settings)


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
    with open_home_index(settings) as index:
        doc = fetch(index, collections_of(settings).list(), ref, start, count)
    first_line, text = doc["from"], doc["text"]
    if as_json:
        emit_json(doc)
        return
    if line_numbers:
        text = "".join(f"{first_line + i:>5}  {ln}\n" for i, ln in enumerate(text.splitlines()))
    click.echo(text, nl=False)


DOC_FORMATS = ("cli", "json", "csv", "md", "xml")


@click.command("multi-get")
@click.argument("pattern")
@click.option("--max-bytes", type=click.IntRange(min=1), default=10240, show_default=True,
              help="Skip documents larger than this (listed on stderr).")
@click.option("-l", "--max-lines", type=click.IntRange(min=1), default=None,
              help="Show at most this many lines of each document.")
@click.option("--line-numbers", is_flag=True, help="Number the lines.")
@click.option("--format", "fmt", type=click.Choice(DOC_FORMATS), default="cli", show_default=True,
              help="Output format.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@pass_state
def multi_get(state: State, pattern: str, max_bytes: int, max_lines: int | None, line_numbers: bool, fmt: str,
              as_json: bool) -> None:
    """Print several documents: comma-separated globs over collection/path and references (path, #docid),
    each reference optionally ending in :FROM[:COUNT]."""
    settings = state.settings()
    with open_home_index(settings) as index:
        out = fetch_many(index, collections_of(settings).list(), pattern, max_bytes, max_lines)
    for d in out:
        if "skipped" in d:
            state.progress(f"skipped {d['file']}: {d['skipped']} > --max-bytes {max_bytes}")
    emit_documents(out, "json" if as_json else fmt, line_numbers)


def emit_documents(docs: list[dict], fmt: str, line_numbers: bool) -> None:
    """Documents (``get``/``multi-get``) in a format; skipped ones only in the structured formats."""
    import csv
    import io

    from qmd_triton.search.formats import escape, quoteattr

    def numbered(d: dict) -> str:
        if not line_numbers:
            return d["text"]
        return "".join(f"{d['from'] + i:>5}  {ln}\n" for i, ln in enumerate(d["text"].splitlines()))

    shown = [d for d in docs if "text" in d]
    if fmt == "json":
        emit_json(docs)
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["docid", "file", "title", "from", "text"])
        for d in shown:
            w.writerow([d["docid"], d["file"], d["title"], d["from"], numbered(d)])
        click.echo(buf.getvalue(), nl=False)
    elif fmt == "xml":
        click.echo("<documents>")
        for d in shown:
            click.echo(f"  <document docid={quoteattr(d['docid'])} file={quoteattr(d['file'])} "
                       f"title={quoteattr(d['title'])} from={quoteattr(str(d['from']))}>{escape(numbered(d))}"
                       "</document>")
        click.echo("</documents>")
    elif fmt == "md":
        for d in shown:
            fence = "````" if "```" in d["text"] else "```"
            click.echo(f"## {d['title'] or d['file']}\n\n`{d['file']}` ({d['docid']})\n\n{fence}markdown\n"
                       f"{numbered(d).rstrip()}\n{fence}\n")
    else:
        for d in shown:
            more = "  (truncated)" if d.get("truncated") else ""
            click.echo(f"==> {d['file']} ({d['docid']}) <=={more}\n{numbered(d).rstrip()}\n")


@click.command("ls")
@click.argument("where", required=False)
@pass_state
def ls(state: State, where: str | None) -> None:
    """List collections, or the documents of COLLECTION[/PREFIX]."""
    settings = state.settings()
    cols = collections_of(settings).list()
    if not index_exists(settings):
        docs = []
    else:
        with open_home_index(settings) as index:
            docs = index.documents()
    if not where:
        counts: dict[str, int] = {}
        for d in docs:
            counts[d.collection] = counts.get(d.collection, 0) + 1
        for c in cols:
            click.echo(f"{c.name}/  {counts.get(c.name, 0)} documents  {c.path}")
        return
    name, _, prefix = where.partition("/")
    collections_of(settings).get(name)
    listed = [d for d in docs if d.collection == name and d.path.startswith(prefix)]
    docids: dict[str, str] = {}
    if listed:
        with open_home_index(settings) as index:
            docids = index.unique_docids([d.hash for d in listed])
    for d in listed:
        click.echo(f"{d.display_path}  #{docids[d.hash]}  {d.title}")
