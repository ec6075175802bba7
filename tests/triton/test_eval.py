"""`qmdctl eval` on the shared BEIR sets: every served mode at least as good as its plain baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from qmd_triton.cli import cli

from ..conftest import dataset

SETS = ["msmarco", "dbpedia"]


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", SETS)
def test_eval_scores_each_mode_at_least_as_well_as_its_baseline(name: str, exported_repo: Path, tmp_path: Path):
    args = ["eval", str(dataset(name)), "--mode", "search", "--mode", "vsearch", "--mode", "query-no-rerank",
            "--mode", "query", "--json"]
    result = CliRunner().invoke(cli, args, env={"QMD_HOME": str(tmp_path)}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = {r["mode"]: r for r in report["rows"]}
    print(f"\n{name}: " + json.dumps(report["rows"]))
    bm25 = next(r for m, r in rows.items() if m.startswith("baseline: rank_bm25"))
    vec = next(r for m, r in rows.items() if m.startswith("baseline: in-process embedding"))
    hybrid = next(r for m, r in rows.items() if m.startswith("baseline: in-process BM25 + embedding"))
    assert report["documents"] == 5000 and report["queries"] >= 40
    assert rows["search"]["ndcg@10"] >= bm25["ndcg@10"] and rows["search"]["recall@100"] >= bm25["recall@100"]
    # vsearch serves the very vectors the baseline computes (msmarco: one chunk per passage), so the two tie up
    # to float noise in near-equal cosines; 1e-3 is that noise, far below any real difference.
    assert rows["vsearch"]["ndcg@10"] >= vec["ndcg@10"] - 1e-3
    assert rows["vsearch"]["recall@100"] >= vec["recall@100"] - 1e-3
    assert rows["query"]["ndcg@10"] >= hybrid["ndcg@10"] - 0.005
    assert rows["query"]["ndcg@10"] > rows["search"]["ndcg@10"]
    assert rows["query"]["ndcg@10"] > rows["query-no-rerank"]["ndcg@10"]  # the cross-encoder earns its cost
