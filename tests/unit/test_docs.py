"""The docs stay true: the CLI reference is the commands' own help, and every command has help."""

from pathlib import Path

import click
import pytest

from qmd_triton.cli import cli
from qmd_triton.cli.gendocs import iter_commands, render

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_cli_reference_matches_the_commands_help():
    assert (DOCS / "cli.md").read_text() == render(), (
        "docs/cli.md is stale: python -m qmd_triton.cli.gendocs > docs/cli.md"
    )


@pytest.mark.parametrize("path, command", [(p, c) for p, c, _ in iter_commands(cli)], ids=lambda v: str(v))
def test_every_command_has_help_text_and_a_docs_section(path: str, command: click.Command):
    assert command.help and len(command.help.strip()) > 10
    assert f"## `{path}`" in (DOCS / "cli.md").read_text()


ROOT = DOCS.parent


def test_the_schema_history_names_every_version_the_migrations_know():
    from qmd_triton.index.sqlite import migrations

    history = migrations.__doc__.split("History:")[1].split("Example:")[0]
    numbered = [int(line.split()[0]) for line in history.splitlines() if line.strip()[:1].isdigit()
                and line.startswith("    ") and not line.startswith("       ")]
    assert numbered == list(range(1, migrations.SCHEMA_VERSION + 1))
    assert sorted(migrations.MIGRATIONS) == list(range(2, migrations.SCHEMA_VERSION + 1))


def test_the_milvus_collections_named_in_the_index_config_comment_are_the_ones_made(tmp_path: Path):
    import re

    from qmd_triton.index import config
    from qmd_triton.index.milvus.index import MilvusIndex

    index = MilvusIndex(None, config.IndexConfig(home=tmp_path, backend="milvus", prefix="PREFIX"))  # no server
    made = [index.docs, index.chunks, index.meta_table, index.keys]
    comment = next(line for line in config.__doc__.splitlines() if "the Milvus collections are" in line)
    assert sorted(made) == sorted(re.findall(r"PREFIX_\w+", comment)) and len(set(made)) == 4


def test_what_the_docs_say_of_the_response_cache_and_the_expansion_precision_holds():
    from qmd_triton.exporters import decoder_onnx

    cached = sorted(p.parent.name for p in (ROOT / "model_repository").glob("*/config.pbtxt")
                    if "response_cache" in "".join(ln.split("#")[0] for ln in p.read_text().splitlines()))
    bench = " ".join((DOCS / "benchmarks.md").read_text().split())
    assert ("none does today" in bench) == (cached == []), cached
    row = next(line for line in (DOCS / "operations.md").read_text().splitlines() if line.startswith("| expansion LLM"))
    assert f"an {decoder_onnx.PRECISION} onnxruntime-genai decoder" in row
