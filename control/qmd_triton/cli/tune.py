"""``qmdctl tune``: sweep a model's batching and instances under a p95 budget."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click

from qmd_triton.bench import perf_analyzer as pa
from qmd_triton.bench.tune import ENTRY, Grid, apply, choose, default_max_batch, min_batch, sweep
from qmd_triton.cli.bench import datasets_option
from qmd_triton.cli.common import State, emit_json, pass_state
from qmd_triton.settings import default_datasets


def _ints(spec: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in spec.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{name} must be comma-separated integers, got {spec!r}") from None
    if not values or any(v < 0 for v in values):
        raise click.BadParameter(f"{name} must list at least one non-negative integer")
    return values


@click.command("tune")
@click.argument("model", default="qmd_embed_model", type=click.Choice(sorted(ENTRY)))
@click.option("--budget-ms", type=float, default=500.0, show_default=True, help="p95 latency budget.")
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True, help="Load during each trial.")
@click.option("--max-batch", "max_batch", default=None,
              help="max_batch_size values; values below what one request carries are measured, never applied. "
                   "[default: 64,128; 256,512 for qmd_rerank_model]")
@click.option("--instances", default="1,2", show_default=True, help="Instance counts.")
@click.option("--queue-delay-us", default="500,2000", show_default=True, help="max_queue_delay_microseconds values.")
@click.option("--lengths", default="ragged;16,32,64,128,256", show_default=True,
              help="Length handling, ';'-separated: `ragged` (ragged batching) or a bucket list for qmd_tokenize.")
@click.option("--measurement-ms", type=click.IntRange(min=500), default=2000, show_default=True,
              help="perf_analyzer's measurement window per trial.")
@click.option("--input-data", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="perf_analyzer input data. [default: generated from --datasets]")
@datasets_option
@click.option("--apply", "do_apply", is_flag=True, help="Write the winner into the model repository's configs.")
@click.option("--json", "as_json", is_flag=True, help="Print every trial as JSON.")
@pass_state
def tune(state: State, model: str, budget_ms: float, concurrency: int, max_batch: str, instances: str,
         queue_delay_us: str, lengths: str, measurement_ms: int, input_data: Path | None, datasets: Path | None,
         do_apply: bool, as_json: bool) -> None:
    """Sweep max_batch_size, instances, queue delay and length buckets of MODEL under a p95 budget.

    Each point is served from a copy of the repository on free ports and measured with
    perf_analyzer through the ensemble that uses the model; the table lists every
    trial. --apply writes the best point (highest throughput within the budget).
    """
    settings = state.settings()
    grid = Grid(max_batch=_ints(max_batch, "--max-batch") if max_batch else default_max_batch(model),
                instances=_ints(instances, "--instances"),
                queue_delay_us=_ints(queue_delay_us, "--queue-delay-us"),
                lengths=tuple(v.strip() for v in lengths.split(";") if v.strip()))
    perf_analyzer = pa.find_perf_analyzer()
    entry = ENTRY[model]
    options: dict[str, Any] = {"n": 10, "expand": False}
    with tempfile.TemporaryDirectory(prefix="qmd-tune-") as tmp:
        data = input_data or pa.make_inputs(entry, datasets or default_datasets(), Path(tmp), options=options)
        trials = sweep(settings, grid, model, data, Path(tmp), perf_analyzer=perf_analyzer, concurrency=concurrency,
                       measurement_ms=measurement_ms, progress=state.progress)
    floor = min_batch(model)
    best = choose(trials, budget_ms, floor)
    if as_json:
        emit_json({"model": model, "budget_ms": budget_ms, "concurrency": concurrency, "min_batch": floor,
                   "trials": [t.as_dict() for t in trials], "best": best.as_dict() if best else None})
    else:
        click.echo("| max_batch | instances | queue delay us | lengths | infer/s | p95 ms | |\n"
                   "|---|---|---|---|---|---|---|")
        for t in trials:
            p = t.point
            mark = "best" if t is best else ("failed: " + t.failure if t.failure else
                                            (f"not applicable: requests carry up to {floor}"
                                             if int(p["max_batch"]) < floor else
                                             ("over budget" if t.p95_ms > budget_ms else "")))
            click.echo(f"| {p['max_batch']} | {p['instances']} | {p['queue_delay_us']} | {p['lengths']} | "
                       f"{t.throughput:.1f} | {t.p95_ms:.1f} | {mark} |")
    if best is None:
        raise click.ClickException("no trial ran; see the failures above")
    if best.p95_ms > budget_ms:
        state.progress(f"no point met the {budget_ms:.0f} ms budget; the lowest p95 is marked best")
    if do_apply:
        changed = apply(settings.model_repository, model, best.point)
        state.progress("applied to " + (", ".join(str(p) for p in changed) or "nothing (already the best)"))
