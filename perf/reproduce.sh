#!/usr/bin/env bash
# Re-measures everything in perf/RESULTS.md, one step after the other on an otherwise idle machine.
# Usage: bash perf/reproduce.sh [STEP ...]   steps: embed batch batching query stress-embed stress-query soak tune latency
#        gateway rerank-budget scale interactive soak-query quality embedders
# (default: all). Results land in perf/results/ (CSV, JSON, markdown, PNG) and the logs in perf/results/logs/.
# Needs `make setup` (venv, exported models, perf_analyzer) and ../shared/datasets.
set -euo pipefail
cd "$(dirname "$0")/.."
QMDCTL=${QMDCTL:-.venv/bin/qmdctl}
DATASETS=${QMD_DATASETS:-$(cd .. && pwd)/shared/datasets}
export QMD_HOME=${QMD_BENCH_HOME:-$PWD/.qmd/bench}
EVAL_HOME=$QMD_HOME/eval/msmarco        # `qmdctl eval` indexes the set here (its own QMD home)
LOGS=perf/results/logs
mkdir -p "$LOGS"
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(embed batch batching query stress-embed stress-query soak tune latency gateway rerank-budget
                                  scale interactive soak-query quality embedders)

log() { echo "== $(date -u +%H:%M:%S) $*" >&2; }
index() {  # the msmarco index the search pipelines read (embedded through Triton)
  [ -f "$EVAL_HOME/index.sqlite" ] || "$QMDCTL" eval "$DATASETS/msmarco" --mode vsearch --no-baseline
}
serve() {  # a fresh server for HOME ($1), stopping any other this script started
  "$QMDCTL" down >/dev/null 2>&1 || true
  QMD_HOME=$EVAL_HOME "$QMDCTL" down >/dev/null 2>&1 || true
  QMD_HOME=$1 "$QMDCTL" up
}

for step in "${steps[@]}"; do
  log "$step"
  case $step in
    embed)   # qmd_embed against in-process onnxruntime, sentence-transformers, and no dynamic batching
      serve "$QMD_HOME"
      "$QMDCTL" bench qmd_embed --concurrency 1,2,4,8,16 --measurement-ms 5000 2>&1 | tee "$LOGS/embed.log" ;;
    batch)   # in-process fp32 and int8 at batch 1/8/32: does batching buy compute on this CPU?
      "$QMDCTL" down >/dev/null 2>&1 || true
      .venv/bin/python perf/batch_sizes.py 2>&1 | tee "$LOGS/batch.log" ;;
    batching) # the batcher on and off, passages and queries, the ensemble and the model alone
      "$QMDCTL" down >/dev/null 2>&1 || true
      .venv/bin/python perf/batching_by_length.py --rounds 2 2>&1 | tee "$LOGS/batching.log" ;;
    query)   # the full pipeline at concurrency 8, with the per-model split
      index; serve "$EVAL_HOME"
      QMD_HOME=$EVAL_HOME "$QMDCTL" bench qmd_query --concurrency 1,8 --measurement-ms 30000 \
        --options '{"n": 10}' 2>&1 | tee "$LOGS/query.log" ;;
    stress-embed)
      serve "$QMD_HOME"
      "$QMDCTL" bench qmd_embed --concurrency 1,100,1000 --no-baselines --measurement-ms 20000 \
        2>&1 | tee "$LOGS/stress-embed.log" ;;
    stress-query)
      index; serve "$EVAL_HOME"
      # A window must outlast one request's latency: at 1000 in flight that is 1000 / throughput seconds.
      # With 10 reranked candidates this CPU answers ~2 queries/s (8-minute latencies at 1000), so the
      # 1000 level runs the same ensemble with the reranker passing through.
      light='{"n": 10, "expand": false, "candidates": 10}'
      for c_ms in 1:20000 100:60000; do
        QMD_HOME=$EVAL_HOME "$QMDCTL" bench qmd_query --concurrency "${c_ms%%:*}" --measurement-ms "${c_ms##*:}" \
          --options "$light" 2>&1 | tee -a "$LOGS/stress-query.log"
      done
      QMD_HOME=$EVAL_HOME "$QMDCTL" bench qmd_query --concurrency 1000 --measurement-ms 180000 \
        --options '{"n": 10, "expand": false, "rerank": false}' 2>&1 | tee -a "$LOGS/stress-query.log" ;;
    soak)
      serve "$QMD_HOME"
      "$QMDCTL" soak qmd_embed --seconds 600 --concurrency 8 2>&1 | tee "$LOGS/soak.log" ;;
    tune)    # every trial serves its own copy of the repository on free ports
      "$QMDCTL" down >/dev/null 2>&1 || true
      "$QMDCTL" tune qmd_embed_model --budget-ms 500 2>&1 | tee "$LOGS/tune.log" ;;
    latency) # qmd_query on triton-docs and msmarco: cold and warm expansion, no-expand, 1 and 4 clients (own servers)
      "$QMDCTL" down >/dev/null 2>&1 || true
      .venv/bin/python perf/query_latency.py --sets triton-docs msmarco 2>&1 | tee "$LOGS/latency.log" ;;
    rerank-budget) # candidates x passage tokens for the cross-encoder: quality and time on the three shared sets
      .venv/bin/python perf/rerank_budget.py --sets triton-docs msmarco dbpedia --candidates 40 30 20 15 \
        --tokens 0 128 96 64 2>&1 | tee "$LOGS/rerank-budget.log" ;;
    scale) # BM25 and vectors at 5k and 100k chunks, `qmdctl search` end to end, the first vsearch after an edit
      "$QMDCTL" down >/dev/null 2>&1 || true
      .venv/bin/python perf/scale.py --chunks 5000 100000 2>&1 | tee "$LOGS/scale.log" ;;
    interactive) # vsearch and query while a full `qmdctl embed` runs, beside idle (own server)
      "$QMDCTL" down >/dev/null 2>&1 || true
      .venv/bin/python perf/interactive.py --set msmarco 2>&1 | tee "$LOGS/interactive.log" ;;
    soak-query) # the server's memory under 4 query clients for 10 minutes (arena shrinkage), msmarco index
      index
      serve "$EVAL_HOME"
      QMD_HOME=$EVAL_HOME "$QMDCTL" soak qmd_query --seconds 600 --concurrency 4 2>&1 | tee "$LOGS/soak-query.log" ;;
    gateway) # /vsearch through `qmdctl api` against qmd_vsearch directly, side by side (its own home and server)
      "$QMDCTL" down >/dev/null 2>&1 || true
      .venv/bin/python perf/gateway_overhead.py --rounds 20 --home "$QMD_HOME/gateway" 2>&1 | tee "$LOGS/gateway.log" ;;
    quality) # every set as served (`qmdctl eval --mode all`), then the rules compared on the same candidates
      "$QMDCTL" down >/dev/null 2>&1 || true
      for set in triton-docs msmarco dbpedia; do
        "$QMDCTL" eval "$DATASETS/$set" --mode all 2>&1 | tee "$LOGS/eval-$set.log"
      done
      for rules in served passages fusions; do
        .venv/bin/python perf/quality_lab.py --rules "$rules" 2>&1 | tee "$LOGS/quality-$rules.log"
      done
      .venv/bin/python perf/quality_lab.py --candidates 40 --no-expansion 2>&1 | tee "$LOGS/quality-40.log" ;;
    embedders) # MiniLM against bge-small-en-v1.5: the full pipeline's quality, and bulk embedding through Triton
      "$QMDCTL" down >/dev/null 2>&1 || true
      bge=$QMD_HOME/bge-repository
      rm -rf "$bge" && cp -a model_repository "$bge"
      QMD_MODEL_REPOSITORY=$bge "$QMDCTL" export --only embedding --embedding-model bge-small-en-v1.5
      .venv/bin/python perf/quality_lab.py --repo "$bge" --variant bge512 --no-expansion 2>&1 \
        | tee "$LOGS/quality-bge.log"
      .venv/bin/python perf/embed_throughput.py --repo minilm=model_repository --repo "bge=$bge" \
        --sets triton-docs msmarco 2>&1 | tee "$LOGS/embedders.log" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
"$QMDCTL" down >/dev/null 2>&1 || true
QMD_HOME=$EVAL_HOME "$QMDCTL" down >/dev/null 2>&1 || true
