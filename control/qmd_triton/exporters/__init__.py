"""One module per model conversion, each with a parity check against its source.

Every export manifest (``export.json``) also records what the model is (``model``, its registry name) and the
languages it reads (``languages``, from the registry or ``qmdctl export --*-languages``; ``None`` when
undeclared), which the query pipeline uses to bypass a stage whose model does not read a query
(``qmd_triton.search.coverage``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from qmd_triton.system.files import atomic_write_text


def declaration(model: str, languages: Sequence[str] | None) -> dict:
    """The manifest fields that say what a model is and which languages it reads."""
    return {"model": model, "languages": list(languages) if languages else None}


def redeclare(manifests: Sequence[Path], model: str, languages: Sequence[str] | None) -> dict:
    """Brings an up-to-date export's manifests to the caller's declaration without exporting again, and returns
    the declaration in force. A caller that declares nothing (no name, no languages) keeps the one recorded.
    Written atomically: a manifest may be hard-linked into a copy of the repository."""
    if not model and not languages:
        data = json.loads(manifests[0].read_text())
        return {"model": data.get("model", ""), "languages": data.get("languages")}
    wanted = declaration(model, languages)
    for path in manifests:
        data = json.loads(path.read_text())
        if {k: data.get(k) for k in wanted} != wanted:
            atomic_write_text(path, json.dumps({**data, **wanted}, indent=2) + "\n")
    return wanted
