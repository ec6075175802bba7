"""Languages: the scripts of a text, what each model reads, and how the query pipeline degrades without them:
stages bypassed for a language their model does not read, the fused order kept by flat or unread scores, and
the blend monotone in the fused rank (a property test).

The tests of languages that need the languages the exported repository records: the integration tier (DESIGN.md
section 6); the rest are in tests/unit/test_languages.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from qmd_triton.cli import cli
from qmd_triton.search.coverage import repository_languages


def test_the_exported_repository_records_what_its_models_read(exported_repo: Path):
    langs = repository_languages(exported_repo)
    assert {role: m.languages for role, m in langs.items()} == {"expansion": ("en",), "embedding": ("en",),
                                                                "reranker": ("en",)}
    assert langs["embedding"].name == "all-MiniLM-L6-v2"


def test_an_export_that_declares_nothing_keeps_the_recorded_languages(exported_repo: Path):
    from qmd_triton.artifacts.registry import default_source
    from qmd_triton.exporters.embedding_onnx import export_embedding

    again = export_embedding(default_source("embedding"), exported_repo)
    assert again.skipped and again.languages == ["en"] and again.model == "all-MiniLM-L6-v2"
    assert repository_languages(exported_repo)["embedding"].languages == ("en",)


# --- expansion ------------------------------------------------------------------------------------------------


def test_status_shows_each_stage_s_model_and_languages(tmp_path: Path, exported_repo: Path):
    result = CliRunner().invoke(cli, ["--model-repository", str(exported_repo), "status", "--json"],
                                env={"QMD_HOME": str(tmp_path), "QMD_HTTP_PORT": "9"})
    data = json.loads(result.stdout)
    assert result.exit_code == 1 and not data["ready"]
    assert {s["stage"]: s["languages"] for s in data["stages"]} == {"expansion": ["en"], "vectors": ["en"],
                                                                   "rerank": ["en"]}
