"""``qmdctl eval SET``: retrieval quality on a BEIR or known-item set, beside plain baselines."""

from __future__ import annotations

import json
from pathlib import Path

import click

from qmd_triton.bench.datasets import load_set
from qmd_triton.bench.evaluation import ABLATIONS, DEFAULT_MODES, MODES, evaluate
from qmd_triton.bench.scoring import metrics_for
from qmd_triton.cli.common import State, emit_json, pass_state


@click.command("eval")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--mode", "modes", type=click.Choice(MODES + ("all",)), multiple=True,
              help="Modes to score (repeatable; `all` for every one). [default: search and vsearch]")
@click.option("--no-expand", is_flag=True, help="With --mode query: score query-no-expand instead.")
@click.option("--no-rerank", is_flag=True, help="With --mode query: score query-no-rerank instead.")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also score the plain baselines: rank_bm25, the embedding model in-process, and both fused and "
                   "reranked in-process.")
@click.option("--per-query", "per_query", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write each query's rank of its first relevant document, per mode, to this TSV file "
                   "('-' for stdout), so failures can be read.")
@click.option("--queries", "max_queries", type=click.IntRange(min=1), default=None,
              help="Score only the first N judged queries (a quick guard; the full set is what users get).")
@click.option("--documents", "max_documents", type=click.IntRange(min=1), default=None,
              help="BEIR: index only the documents judged for the scored queries plus others, N in all.")
@click.option("--json", "as_json", is_flag=True, help="Print the scores (and per-query ranks) as JSON.")
@pass_state
def evaluate_cmd(state: State, dataset: Path, modes: tuple[str, ...], no_expand: bool, no_rerank: bool,
                 baseline: bool, per_query: Path | None, max_queries: int | None, max_documents: int | None,
                 as_json: bool) -> None:
    """Score search modes on DATASET: a BEIR set (nDCG@10, Recall@10, Recall@100, MRR@10) or a known-item
    set of markdown notes (hit@1, hit@3, MRR@10, Recall@10).

    A BEIR set has corpus.jsonl, queries.jsonl and qrels/test.tsv; a known-item set has a
    corpus/ folder of markdown files and queries.tsv (query<TAB>expected_file). The set is
    indexed in its own workspace ($QMD_HOME/eval/NAME, reused by later runs); served modes
    (vsearch, query*) start a server of its own on free ports for the run. Modes: search,
    vsearch, query (expansion + hybrid + rerank), query-no-expand, query-no-rerank,
    query-blend (the position-aware blend fusion).
    """
    if "all" in modes:
        modes = MODES
    if "query" in modes and (no_expand or no_rerank):
        swapped = "query-no-expand" if no_expand else "query-no-rerank"
        modes = tuple(swapped if m == "query" else m for m in modes)
    data = load_set(dataset).sample(max_queries, max_documents)
    result = evaluate(data, state.settings(), modes or DEFAULT_MODES, baseline=baseline, progress=state.progress)
    if per_query is not None:
        text = per_query_table(result)
        if str(per_query) == "-":
            click.echo(text, nl=False)
        else:
            per_query.write_text(text)
            state.progress(f"per-query ranks: {per_query}")
    if as_json:
        emit_json(result)
        return
    click.echo(report_text(result), nl=False)


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def report_text(result: dict) -> str:
    """The scores as markdown: a row per mode, what each query stage did (how many queries expanded, timed out,
    were reranked or bypassed), and with the full query and an ablation beside it, each ablation's difference."""
    metrics = metrics_for(result["kind"])
    lines = [f"{result['set']}: {result['documents']} documents, {result['queries']} judged queries",
             f"| mode | {' | '.join(metrics)} |", f"|---|{'---|' * len(metrics)}"]
    rows = {r["mode"]: r for r in result["rows"]}
    for r in result["rows"]:
        lines.append(f"| {r['mode']} | " + " | ".join(_cell(r.get(m)) for m in metrics) + " |")
    staged = [r for r in result["rows"] if r.get("stages")]
    if staged:
        lines += ["", "| mode | what each stage did (queries) |", "|---|---|"]
        for r in staged:
            said = "; ".join(f"{stage}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                             for stage, counts in sorted(r["stages"].items()))
            lines.append(f"| {r['mode']} | {said} |")
    full = rows.get("query")
    ablations = [rows[m] for m in ABLATIONS if m in rows]
    if full and ablations:
        main, second = metrics[0], "mrr@10"
        lines += ["", f"| ablation (one setting changed from the served defaults) | {main} | Δ vs query | "
                      f"{second} | Δ |", "|---|---|---|---|---|"]
        for r in ablations:
            lines.append(f"| {r['mode']} | {r[main]:.4f} | {r[main] - full[main]:+.4f} | {r[second]:.4f} | "
                         f"{r[second] - full[second]:+.4f} |")
    return "\n".join(lines) + "\n"


def per_query_table(result: dict) -> str:
    """TSV: query id, query, then the rank of the first relevant document in each mode ('-' when missing)."""
    modes = list(result["per_query"])
    lines = ["\t".join(["query_id", "query", *modes])]
    for qid, text in result["query_text"].items():
        ranks = [result["per_query"][m].get(qid) for m in modes]
        lines.append("\t".join([qid, json.dumps(text, ensure_ascii=False)[1:-1]]
                               + ["-" if r is None else str(r) for r in ranks]))
    return "\n".join(lines) + "\n"
