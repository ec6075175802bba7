"""Embedders: what turns chunk texts into vectors for ``embed``, chosen by name.

An embedder gives the index its setup (the fingerprint and how tokens are counted, so
chunks fit the model) and embeds batches of texts. Two ship with qmd-triton:
``triton`` (the served ``qmd_embed``, what ``qmdctl embed`` uses) and ``onnxruntime``
(the same exported model in-process). Others register themselves, from code with
:func:`register` or from an installed package through the ``qmd_triton.embedders``
entry-point group (a factory taking the settings), e.g. a test double that needs no
exported model.

Example:
    >>> embedder = load("onnxruntime", settings)
    >>> report = embed_pending(index, embedder.setup(), lambda: embedder.embed)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any, Protocol

import numpy as np

from qmd_triton.errors import ConfigError
from qmd_triton.index.fingerprint import EmbeddingSetup

ENTRY_POINT_GROUP = "qmd_triton.embedders"


class Embedder(Protocol):
    name: str

    def setup(self) -> EmbeddingSetup:
        """The fingerprint the index records and the token counter chunking uses."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Document vectors ``[len(texts), dim]``, L2-normalized."""

    def embed_query(self, text: str) -> np.ndarray:
        """One query vector ``[dim]`` (with the query prompt where the model has one)."""


Factory = Callable[..., Embedder]
_REGISTRY: dict[str, Factory] = {}


def register(name: str, factory: Factory) -> None:
    """Makes an embedder available under ``name`` (a later registration replaces an earlier one)."""
    _REGISTRY[name] = factory


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def available() -> list[str]:
    names = set(_REGISTRY)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def load(name: str, *args: Any, **kwargs: Any) -> Embedder:
    """An embedder by name: registered in code, else from the entry points."""
    factory = _REGISTRY.get(name)
    if factory is None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == name:
                factory = ep.load()
                break
    if factory is None:
        raise ConfigError(f"no embedder named {name!r} (available: {', '.join(available()) or 'none'})")
    return factory(*args, **kwargs)


class OnnxEmbedder:
    """The model repository's exported embedding model, run in this process (no server)."""

    name = "onnxruntime"

    def __init__(self, settings: Any, threads: int = 0) -> None:
        from qmd_triton.index.fingerprint import embedding_setup
        from qmd_triton.runtime.onnx import InProcessEmbedder

        self._setup = embedding_setup(settings.model_repository)
        self._model = InProcessEmbedder.from_repository(settings.model_repository, threads=threads)

    def setup(self) -> EmbeddingSetup:
        return self._setup

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        from qmd_triton.contracts import KIND_DOCUMENT

        return self._model.embed(list(texts), KIND_DOCUMENT)

    def embed_query(self, text: str) -> np.ndarray:
        from qmd_triton.contracts import KIND_QUERY

        return self._model.embed([text], KIND_QUERY)[0]
