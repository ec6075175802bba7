"""``qmdctl embed``: embed the index's pending chunks, or print vectors for TEXTS."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import click
import numpy as np

from qmd_triton.cli.common import (
    State,
    emit_json,
    open_home_index,
    pass_state,
    protocol_option,
    server_options,
    server_settings,
)
from qmd_triton.contracts import KIND_DOCUMENT, PROMPT_KINDS
from qmd_triton.errors import InputError
from qmd_triton.serving.client import QmdClient, TritonEmbedder, embed_index
from qmd_triton.serving.server import ensure_running
from qmd_triton.settings import Settings

EXIT_INTERRUPTED = 130


@click.command()
@click.argument("texts", nargs=-1)
@click.option("--kind", type=click.Choice(PROMPT_KINDS), default=KIND_DOCUMENT, show_default=True,
              help="Prompt format TEXTS are embedded with.")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read one text per line from standard input.")
@click.option("-f", "--force", is_flag=True, help="Index mode: drop every vector and embed all chunks again.")
@click.option("--batch-size", type=click.IntRange(1, 64), default=32, show_default=True,
              help="Index mode: chunks per request.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=None,
              help="Index mode: requests in flight. Default: one less than the running embedder's CPU instances "
                   "(2 of the shipped 3, leaving one free for searches; at least 1), 2 on a GPU. Raise it when "
                   "nobody searches.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@server_options
@protocol_option
@pass_state
def embed(state: State, texts: tuple[str, ...], kind: str, from_stdin: bool, force: bool, batch_size: int,
          concurrency: int | None, as_json: bool, **kwargs: Any) -> None:
    """Embed the index's new chunks through Triton, or print the vectors of TEXTS.

    Without TEXTS: chunks every new or changed document and embeds the chunks that
    have no vector yet (length-sorted batches, several in flight), starting the
    local server if none answers. Ctrl-C stops after the batches in flight are
    stored; the next run resumes where it stopped.

    With TEXTS (or --stdin): prints one vector per line, or {text, embedding} JSON.
    """
    settings = server_settings(state, kwargs)
    items = list(texts)
    if from_stdin:
        items.extend(stdin_lines())
        if not items:
            raise InputError("no text on standard input")
    if not items:
        embed_pending_chunks(state, settings, force, batch_size, concurrency, as_json)
        return
    with QmdClient(settings.url(), settings.protocol, settings.request_timeout_s) as client:
        vectors = client.embed(items, kind=kind)
    if as_json:
        emit_json([{"text": t, "embedding": [round(float(x), 7) for x in v]} for t, v in zip(items, vectors)], None)
        return
    for v in vectors:
        click.echo(" ".join(np.format_float_positional(float(x), precision=7, trim="-") for x in v))


def stdin_lines() -> list[str]:
    """Standard input's lines as text; bytes that are not UTF-8 are one error naming the line."""
    out = []
    for n, raw in enumerate(sys.stdin.buffer, 1):
        try:
            out.append(raw.decode("utf-8").rstrip("\r\n"))
        except UnicodeDecodeError as e:
            raise InputError(f"standard input line {n} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset "
                             f"{e.start})") from None
    return out


def embed_pending_chunks(state: State, settings: Settings, force: bool, batch_size: int, concurrency: int | None,
                         as_json: bool) -> None:
    """Index mode: chunk and embed everything pending; the first Ctrl-C stops cleanly, a second at once."""
    embedder = TritonEmbedder(settings)  # reads the repository first: a missing export fails before the server
    open_home_index(settings).close()  # and so does a missing index (or a Milvus that is down)
    ensure_running(settings, progress=state.progress, warn=state.warn)
    concurrency = concurrency or embedder.in_flight()
    stop = threading.Event()

    def interrupted(_signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo("\nstopping after the batches in flight (Ctrl-C again to stop at once)", err=True)

    previous = signal.signal(signal.SIGINT, interrupted) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        with state.counter("embedding chunks") as counter:
            report = embed_index(settings, embedder=embedder, force=force, batch_size=batch_size,
                                 concurrency=concurrency, progress=counter, stop=stop)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    with open_home_index(settings) as index:
        counts = index.counts()
    data = {"chunked_documents": report.chunked_documents, "new_chunks": report.chunks,
            "embedded": report.embedded, "seconds": round(report.seconds, 2),
            "chunks_per_second": round(report.per_second, 1), "total_chunks": counts["chunks"],
            "total_embedded": counts["embedded"], "fingerprint": embedder.setup().id,
            "in_flight": concurrency, "interrupted": stop.is_set()}
    if as_json:
        emit_json(data)
    else:
        click.echo(f"embedded {report.embedded} chunks in {report.seconds:.1f}s ({report.per_second:.1f}/s); "
                   f"{counts['embedded']}/{counts['chunks']} chunks have vectors")
    if stop.is_set():
        state.warn(f"interrupted: {counts['chunks'] - counts['embedded']} chunks still have no vector; "
                   "run `qmdctl embed` again to resume")
        raise SystemExit(EXIT_INTERRUPTED)
