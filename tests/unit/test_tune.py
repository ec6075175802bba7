"""The tune sweep's logic: the grid, the choice under a budget, the config a point writes."""

from __future__ import annotations

from qmd_triton.bench.tune import RAGGED, Grid, Trial, choose


def test_grid_is_the_cartesian_product():
    points = Grid(max_batch=(8, 64), instances=(1,), queue_delay_us=(500, 2000), lengths=(RAGGED,)).points()
    assert len(points) == 4
    assert points[0] == {"max_batch": 8, "instances": 1, "queue_delay_us": 500, "lengths": RAGGED}


def test_choose_prefers_throughput_within_budget_then_lowest_p95():
    a = Trial({"id": "a"}, throughput=50, p95_ms=400)
    b = Trial({"id": "b"}, throughput=80, p95_ms=600)
    c = Trial({"id": "c"}, throughput=60, p95_ms=450)
    broken = Trial({"id": "x"}, throughput=999, p95_ms=1, failure="server did not start")
    lossy = Trial({"id": "y"}, throughput=999, p95_ms=1, errors=3)
    assert choose([a, b, c, broken, lossy], budget_ms=500) is c
    assert choose([a, b, c], budget_ms=100) is a
    assert choose([broken], budget_ms=500) is None


def test_a_max_batch_below_what_one_request_carries_never_wins():
    from qmd_triton.bench.tune import Trial, min_batch

    assert min_batch("qmd_embed_model") == 64 and min_batch("qmd_rerank_model") == 200
    small = Trial({"max_batch": 16, "instances": 2, "queue_delay_us": 500, "lengths": RAGGED}, 90.0, 100.0)
    big = Trial({"max_batch": 64, "instances": 2, "queue_delay_us": 500, "lengths": RAGGED}, 80.0, 100.0)
    assert choose([small, big], 500.0) is small
    assert choose([small, big], 500.0, smallest_batch=64) is big
    assert choose([small], 500.0, smallest_batch=64) is None
