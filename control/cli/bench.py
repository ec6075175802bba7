"""``qmdctl bench``: perf_analyzer against the served models, with baselines measured in the same run."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from .. import bench as b
from .. import server
from ..settings import PROJECT_ROOT, Settings
from .common import State, pass_state, protocol_option, server_options, server_settings
from .index import ensure_server

DEFAULT_DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"


def _texts(input_data: Path) -> list[str]:
    data = json.loads(input_data.read_text())["data"]
    return [row["text"]["content"][0] if isinstance(row["text"], dict) else row["text"][0] for row in data]


def embed_baselines(state: State, settings: Settings, pa: str, protocol: str, input_data: Path,
                    triton_per_s: float, concurrency: int, measurement_ms: int, work: Path) -> dict[str, Any]:
    """In-process onnxruntime (best batch), sentence-transformers, and Triton without dynamic batching."""
    from .. import baselines

    texts = _texts(input_data)
    out: dict[str, Any] = {}
    state.progress(f"baseline: in-process onnxruntime on {len(texts)} passages (batch sizes 1-64, two orders)")
    ort = baselines.onnxruntime_best(settings.model_repository, texts)
    out[f"in-process onnxruntime, best batch ({ort['best']['batch']}, {ort['best']['order']})"] = ort
    try:
        from ..exporters.embedding_onnx import default_source

        state.progress("baseline: sentence-transformers on the same model")
        out["sentence-transformers (PyTorch, batch 32)"] = baselines.sentence_transformers(default_source(), texts)
    except ImportError as e:
        state.progress(f"baseline: sentence-transformers skipped ({e})")
    state.progress("baseline: the same Triton models with dynamic batching off")
    repo = baselines.without_dynamic_batching(settings.model_repository, work / "no-batching-repo")
    http, grpc, metrics = server.free_ports(3)
    other = Settings.load(work / "no-batching-home", model_repository=repo, http_port=http, grpc_port=grpc,
                          metrics_port=metrics)
    server.start(other)
    try:
        row = b.run_once(pa, "qmd_embed", other.url(protocol), protocol, input_data, concurrency, measurement_ms, work)
    finally:
        server.stop(other)
    out[f"Triton, dynamic batching off (c={concurrency})"] = {"per_s": row.throughput, "p95_us": row.p95_us}
    for v in out.values():
        v["ratio"] = triton_per_s / v["per_s"]
        v["reference"] = {"model": "qmd_embed", "concurrency": concurrency, "per_s": triton_per_s}
    return out


@click.command("bench")
@click.argument("models", nargs=-1)
@click.option("--concurrency", "concurrency_spec", default="1,2,4,8", show_default=True,
              help="Concurrency levels: N, A:B[:STEP] or a list.")
@click.option("--input-data", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="perf_analyzer JSON input data. [default: generated from --datasets into perf/inputs/]")
@click.option("--datasets", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATASETS,
              envvar="QMD_DATASETS", show_envvar=True, help="BEIR sets the inputs are drawn from.")
@click.option("--options", "options_json", default='{"n": 10}', show_default=True,
              help="options JSON sent with each query to search models.")
@click.option("--measurement-ms", type=click.IntRange(min=500), default=4000, show_default=True,
              help="perf_analyzer's measurement window per trial.")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="For qmd_embed: measure in-process onnxruntime, sentence-transformers and Triton without "
                   "dynamic batching in the same run.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=PROJECT_ROOT / "perf" / "results",
              show_default="perf/results in the checkout", help="Where CSV, JSON, markdown and the PNG plot go.")
@server_options
@protocol_option
@pass_state
def bench(state: State, models: tuple[str, ...], concurrency_spec: str, input_data: Path | None, datasets: Path,
          options_json: str, measurement_ms: int, baselines: bool, out: Path, **kwargs: Any) -> None:
    """Benchmark MODELS (default qmd_embed) with perf_analyzer: throughput, p50/p95/p99, server split.

    Starts the local server if none answers. Results go to --out as CSV, JSON, a markdown
    summary (also printed) and a PNG of p95 latency against throughput.
    """
    protocol = kwargs.get("protocol") or "grpc"  # perf_analyzer's gRPC client costs the 2 cores least
    settings = server_settings(state, kwargs)
    pa = b.find_perf_analyzer()
    concurrencies = b.parse_concurrency(concurrency_spec)
    options = json.loads(options_json)
    ensure_server(state, settings)
    rows: list[b.Row] = []
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="qmd-bench-") as tmp:
        work = Path(tmp)
        for model in models or ("qmd_embed",):
            data = input_data or b.make_inputs(model, datasets, options=options)
            model_rows = b.run_model(pa, model, settings.url(protocol), protocol, data, concurrencies, measurement_ms,
                                     work, progress=state.progress)
            rows += model_rows
            if model == "qmd_embed" and baselines:
                # the server's number under load: its best row at concurrency >= 8 (else the highest measured)
                loaded = [r for r in model_rows if r.concurrency >= 8] or [max(model_rows, key=lambda r: r.concurrency)]
                top = max(loaded, key=lambda r: r.throughput)
                extra.update(embed_baselines(state, settings, pa, protocol, data, top.throughput, top.concurrency,
                                             measurement_ms, work))
    stem = time.strftime("%Y%m%d-%H%M%S") + "-" + "-".join(models or ("qmd_embed",))
    paths = b.write_results(rows, extra, out, stem)
    click.echo(paths["md"].read_text(), nl=False)
    state.progress("results: " + ", ".join(str(p) for p in paths.values()))


@click.command("soak")
@click.argument("model", default="qmd_embed")
@click.option("--seconds", type=click.IntRange(min=10, max=3600), default=120, show_default=True,
              help="Length of the sustained load (bounded: at most an hour).")
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True, help="Requests in flight.")
@click.option("--sample-s", type=float, default=2.0, show_default=True, help="Seconds between memory samples.")
@click.option("--datasets", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATASETS,
              envvar="QMD_DATASETS", show_envvar=True, help="BEIR sets the inputs are drawn from.")
@click.option("--options", "options_json", default='{"n": 10}', show_default=True,
              help="options JSON for search models.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=PROJECT_ROOT / "perf" / "results",
              show_default="perf/results in the checkout", help="Where the JSON report goes.")
@server_options
@protocol_option
@pass_state
def soak_cmd(state: State, model: str, seconds: int, concurrency: int, sample_s: float, datasets: Path,
             options_json: str, out: Path, **kwargs: Any) -> None:
    """Hold MODEL at a concurrency for a bounded time and sample the server's memory (RSS).

    Exits with status 1 when any request failed or memory kept growing after the
    warm-up (more than 5% from the end of the first quarter to the end).
    """
    from ..soak import soak

    protocol = kwargs.get("protocol") or "grpc"
    settings = server_settings(state, kwargs)
    pa = b.find_perf_analyzer()
    ensure_server(state, settings)
    data = b.make_inputs(model, datasets, options=json.loads(options_json))
    with tempfile.TemporaryDirectory(prefix="qmd-soak-") as tmp:
        report = soak(settings, pa, model, data, seconds=seconds, concurrency=concurrency, sample_s=sample_s,
                      protocol=protocol, work=Path(tmp), progress=state.progress)
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
