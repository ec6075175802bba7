"""Does batching buy compute on this CPU? In-process onnxruntime, fp32 and an int8 copy, side by side.

The served fp32 ``model.onnx`` and a dynamically quantized int8 copy (onnxruntime's
``quantize_dynamic``, written to a temporary folder, never served) run the same texts at
batch 1, 8 and 32, in corpus order and sorted by length, twice each, alternating, with the
same thread count. If batch 1 is as fast as any batch, a dynamic batcher can only save
per-request overhead on this machine.

Usage:
    .venv/bin/python perf/batch_sizes.py [--texts 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from qmd_triton.bench.baselines import onnxruntime_best
from qmd_triton.bench.datasets import passages
from qmd_triton.settings import checkout_path, default_datasets

REPO = checkout_path("model_repository")
DATASETS = default_datasets()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    texts = passages(DATASETS, args.texts)
    with tempfile.TemporaryDirectory(prefix="qmd-int8-") as tmp:
        int8 = Path(tmp)
        shutil.copytree(REPO / "qmd_tokenize", int8 / "qmd_tokenize")
        (int8 / "qmd_embed_model" / "1").mkdir(parents=True)
        quantize_dynamic(str(REPO / "qmd_embed_model" / "1" / "model.onnx"),
                         str(int8 / "qmd_embed_model" / "1" / "model.onnx"), weight_type=QuantType.QInt8)
        print("| model | round | " + " | ".join(f"batch {b} {o}" for o in ("corpus", "sorted") for b in (1, 8, 32))
              + " |")
        print("|---|---|" + "---|" * 6)
        for rnd in (1, 2):
            for name, repo in (("fp32", REPO), ("int8", int8)):
                r = onnxruntime_best(repo, texts, threads=args.threads, batch_sizes=(1, 8, 32))
                cells = [f"{x['per_s']:.1f}" for x in r["runs"]]
                print(f"| {name} | {rnd} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
