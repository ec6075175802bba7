"""`qmdctl eval` on the shared BEIR sets: search and vsearch at least as good as plain baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from qmd_triton.cli import cli

from ..conftest import SHARED

SETS = ["msmarco", "dbpedia"]


@pytest.mark.parametrize("name", SETS)
def test_eval_scores_search_and_vsearch_at_least_as_well_as_baselines(name: str, exported_repo: Path, tmp_path: Path):
    dataset = SHARED / "datasets" / name
    if not dataset.is_dir():
        pytest.skip(f"{dataset} is not here")
    result = CliRunner().invoke(cli, ["eval", str(dataset), "--json"], env={"QMD_HOME": str(tmp_path)},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = {r["mode"].split(":")[0]: r for r in report["rows"]}
    search, vsearch = rows["search"], rows["vsearch"]
    bm25_base, vec_base = [r for r in report["rows"] if r["mode"].startswith("baseline")]
    print(f"\n{name}: " + json.dumps(report["rows"]))
    assert report["documents"] == 5000 and report["queries"] >= 40
    assert search["ndcg@10"] >= bm25_base["ndcg@10"] and search["recall@100"] >= bm25_base["recall@100"]
    assert vsearch["ndcg@10"] >= vec_base["ndcg@10"] and vsearch["recall@100"] >= vec_base["recall@100"]
    assert vsearch["ndcg@10"] > 0.3 and search["ndcg@10"] > 0.3
