"""``qmdctl embed TEXT...``: embeddings through the server."""

from __future__ import annotations

import sys
from typing import Any

import click
import numpy as np

from ..client import QmdClient
from ..contracts import KIND_DOCUMENT, PROMPT_KINDS
from ..errors import InputError
from .common import State, emit_json, pass_state, protocol_option, server_options, server_settings


@click.command()
@click.argument("texts", nargs=-1)
@click.option("--kind", type=click.Choice(PROMPT_KINDS), default=KIND_DOCUMENT, show_default=True,
              help="Prompt format the texts are embedded with.")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read one text per line from standard input.")
@click.option("--json", "as_json", is_flag=True, help="Print {text, embedding} objects as JSON.")
@server_options
@protocol_option
@pass_state
def embed(state: State, texts: tuple[str, ...], kind: str, from_stdin: bool, as_json: bool, **kwargs: Any) -> None:
    """Embed TEXTS with qmd_embed and print one vector per line (or JSON)."""
    settings = server_settings(state, kwargs)
    items = list(texts)
    if from_stdin:
        items.extend(line.rstrip("\n") for line in sys.stdin)
    if not items:
        raise InputError("give at least one TEXT (or --stdin)")
    with QmdClient(settings.url(), settings.protocol, settings.request_timeout_s) as client:
        vectors = client.embed(items, kind=kind)
    if as_json:
        emit_json([{"text": t, "embedding": [round(float(x), 7) for x in v]} for t, v in zip(items, vectors)], None)
        return
    for v in vectors:
        click.echo(" ".join(np.format_float_positional(float(x), precision=7, trim="-") for x in v))
