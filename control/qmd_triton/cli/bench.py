"""``qmdctl bench`` and ``soak``: perf_analyzer against the served models, baselines measured in the same run."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from qmd_triton.artifacts.registry import default_source
from qmd_triton.bench import perf_analyzer as pa
from qmd_triton.bench.baselines import embed_baselines
from qmd_triton.bench.reports import write_results
from qmd_triton.cli.common import State, grpc_protocol_option, pass_state, server_options, server_settings
from qmd_triton.contracts import EMBED
from qmd_triton.errors import ArtifactMissing
from qmd_triton.serving.server import ensure_running
from qmd_triton.settings import default_datasets


def datasets_option(f):
    return click.option("--datasets", type=click.Path(file_okay=False, path_type=Path), default=None,
                        envvar="QMD_DATASETS", show_envvar=True,
                        help="Folder holding the BEIR sets msmarco/ and dbpedia/ the inputs are drawn from. "
                             "[default: ../shared/datasets beside the checkout]")(f)


def out_option(f):
    return click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="Where the reports go. [default: perf/results in a checkout, else $QMD_HOME/perf]")(f)


def _texts(input_data: Path) -> list[str]:
    data = json.loads(input_data.read_text())["data"]
    return [row["text"]["content"][0] if isinstance(row["text"], dict) else row["text"][0] for row in data]


@click.command("bench")
@click.argument("models", nargs=-1)
@click.option("--concurrency", "concurrency_spec", default="1,2,4,8", show_default=True,
              help="Concurrency levels: N, A:B[:STEP] or a list.")
@click.option("--input-data", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="perf_analyzer JSON input data. [default: generated from --datasets]")
@datasets_option
@click.option("--options", "options_json", default='{"n": 10}', show_default=True,
              help="options JSON sent with each query to search models.")
@click.option("--measurement-ms", type=click.IntRange(min=500), default=4000, show_default=True,
              help="perf_analyzer's measurement window per trial.")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="For qmd_embed: measure in-process onnxruntime, sentence-transformers and Triton without "
                   "dynamic batching in the same run.")
@out_option
@server_options
@grpc_protocol_option
@pass_state
def bench(state: State, models: tuple[str, ...], concurrency_spec: str, input_data: Path | None,
          datasets: Path | None, options_json: str, measurement_ms: int, baselines: bool, out: Path | None,
          **kwargs: Any) -> None:
    """Benchmark MODELS (default qmd_embed) with perf_analyzer: throughput, p50/p95/p99, server split.

    Starts the local server if none answers. Results go to --out as CSV, JSON, a markdown
    summary (also printed) and a PNG of p95 latency against throughput, each naming the
    machine and its load.
    """
    protocol = kwargs.get("protocol") or "grpc"
    settings = server_settings(state, kwargs)
    perf_analyzer = pa.find_perf_analyzer()
    concurrencies = pa.parse_concurrency(concurrency_spec)
    options = json.loads(options_json)
    datasets = datasets or default_datasets()
    ensure_running(settings, progress=state.progress, warn=state.warn)
    rows: list[pa.Row] = []
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="qmd-bench-") as tmp:
        work = Path(tmp)
        for model in models or (EMBED.name,):
            data = input_data or pa.make_inputs(model, datasets, work, options=options)
            model_rows = pa.run_model(perf_analyzer, model, settings.url(protocol), protocol, data, concurrencies,
                                      measurement_ms, work, progress=state.progress)
            rows += model_rows
            if model == EMBED.name and baselines:
                # the server's number under load: its best row at concurrency >= 8 (else the highest measured)
                loaded = [r for r in model_rows if r.concurrency >= 8] or [max(model_rows, key=lambda r: r.concurrency)]
                top = max(loaded, key=lambda r: r.throughput)
                try:
                    source = default_source("embedding")
                except ArtifactMissing:
                    source = None
                extra.update(embed_baselines(settings, perf_analyzer, protocol, data, _texts(data), top.throughput,
                                             top.concurrency, measurement_ms, work, source=source,
                                             progress=state.progress))
    stem = time.strftime("%Y%m%d-%H%M%S") + "-" + "-".join(models or (EMBED.name,))
    paths = write_results(rows, extra, out or settings.results_dir, stem)
    click.echo(paths["md"].read_text(), nl=False)
    state.progress("results: " + ", ".join(str(p) for p in paths.values()))


@click.command("soak")
@click.argument("model", default=EMBED.name)
@click.option("--seconds", type=click.IntRange(min=10, max=3600), default=120, show_default=True,
              help="Length of the sustained load (bounded: at most an hour).")
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True, help="Requests in flight.")
@click.option("--sample-s", type=float, default=2.0, show_default=True, help="Seconds between memory samples.")
@click.option("--tolerance", type=click.FloatRange(min=0.0), default=0.05, show_default=True,
              help="Growth of the server's memory after the warm-up that still counts as flat.")
@datasets_option
@click.option("--options", "options_json", default='{"n": 10}', show_default=True,
              help="options JSON for search models.")
@out_option
@server_options
@grpc_protocol_option
@pass_state
def soak(state: State, model: str, seconds: int, concurrency: int, sample_s: float, tolerance: float,
         datasets: Path | None, options_json: str, out: Path | None, **kwargs: Any) -> None:
    """Hold MODEL at a concurrency for a bounded time and sample the server's memory (RSS).

    Exits with status 1 when any request failed or memory kept growing after the
    warm-up (more than --tolerance from the end of the first quarter to the end).
    """
    from qmd_triton.bench.soak import run_soak

    protocol = kwargs.get("protocol") or "grpc"
    settings = server_settings(state, kwargs)
    perf_analyzer = pa.find_perf_analyzer()
    ensure_running(settings, progress=state.progress, warn=state.warn)
    with tempfile.TemporaryDirectory(prefix="qmd-soak-") as tmp:
        data = pa.make_inputs(model, datasets or default_datasets(), Path(tmp), options=json.loads(options_json))
        report = run_soak(settings, perf_analyzer, model, data, seconds=seconds, concurrency=concurrency,
                          sample_s=sample_s, tolerance=tolerance, protocol=protocol, work=Path(tmp),
                          progress=state.progress)
    out = out or settings.results_dir
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{time.strftime('%Y%m%d-%H%M%S')}-soak-{model}-c{concurrency}.json"
    path.write_text(json.dumps(report.as_dict(), indent=2))
    click.echo(f"{model} c={concurrency} {seconds}s: {report.throughput:.1f}/s, p95 {report.p95_ms:.0f} ms, "
               f"p99 {report.p99_ms:.0f} ms, {report.errors} failed; RSS {report.warm_rss / 1e6:.0f} MB after warm-up "
               f"-> {report.end_rss / 1e6:.0f} MB at the end ({report.growth:+.1%}): "
               f"{'flat' if report.flat else 'GROWING'}")
    state.progress(f"report: {path}")
    if report.errors or not report.flat:
        raise SystemExit(1)
