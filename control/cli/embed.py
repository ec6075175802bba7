"""``qmdctl embed``: embed the index's pending chunks, or print vectors for TEXTS."""

from __future__ import annotations

import sys
from typing import Any

import click
import numpy as np

from ..client import QmdClient
from ..contracts import KIND_DOCUMENT, PROMPT_KINDS
from ..errors import InputError
from .common import State, emit_json, pass_state, protocol_option, server_options, server_settings
from .index import embed_index


@click.command()
@click.argument("texts", nargs=-1)
@click.option("--kind", type=click.Choice(PROMPT_KINDS), default=KIND_DOCUMENT, show_default=True,
              help="Prompt format TEXTS are embedded with.")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read one text per line from standard input.")
@click.option("-f", "--force", is_flag=True, help="Index mode: drop every vector and embed all chunks again.")
@click.option("--batch-size", type=click.IntRange(1, 64), default=32, show_default=True,
              help="Index mode: chunks per request.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Index mode: requests in flight.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@server_options
@protocol_option
@pass_state
def embed(state: State, texts: tuple[str, ...], kind: str, from_stdin: bool, force: bool, batch_size: int,
          concurrency: int, as_json: bool, **kwargs: Any) -> None:
    """Embed the index's new chunks through Triton, or print the vectors of TEXTS.

    Without TEXTS: chunks every new or changed document and embeds the chunks that
    have no vector yet (length-sorted batches, several in flight), starting the
    local server if none answers. Interrupted runs resume where they stopped.

    With TEXTS (or --stdin): prints one vector per line, or {text, embedding} JSON.
    """
    settings = server_settings(state, kwargs)
    items = list(texts)
    if from_stdin:
        items.extend(line.rstrip("\n") for line in sys.stdin)
        if not items:
            raise InputError("no text on standard input")
    if not items:
        embed_index(state, settings, force, batch_size, concurrency, as_json)
        return
    with QmdClient(settings.url(), settings.protocol, settings.request_timeout_s) as client:
        vectors = client.embed(items, kind=kind)
    if as_json:
        emit_json([{"text": t, "embedding": [round(float(x), 7) for x in v]} for t, v in zip(items, vectors)], None)
        return
    for v in vectors:
        click.echo(" ".join(np.format_float_positional(float(x), precision=7, trim="-") for x in v))
