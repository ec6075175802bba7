"""Embeddings through a real tritonserver equal in-process onnxruntime on the same ONNX file."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from qmd_triton.contracts import KIND_QUERY
from qmd_triton.errors import InferenceError
from qmd_triton.runtime.onnx import InProcessEmbedder
from qmd_triton.serving.client import QmdClient
from qmd_triton.settings import Settings
from qmd_triton.system.net import WaitTimeout, wait_until
from qmd_triton.text.tokenization import TextEncoder

TEXTS = [
    "hello",
    "BM25 ranks documents by term frequency, saturation and inverse document frequency.",
    "向量搜索把文本映射到嵌入空间，再按余弦相似度排序。",
    "Triton's dynamic batcher merges concurrent requests into one batch. " * 12,
    "混合检索：BM25 与向量检索的结果用 RRF 融合。",
    "a",
]


@pytest.fixture(scope="module")
def local(exported_repo: Path):
    """In-process reference: the same tokenizer files and the same ONNX file."""
    model = InProcessEmbedder.from_repository(exported_repo)

    def embed(texts: list[str], kind: str = "document") -> np.ndarray:
        return model.embed(texts, kind)

    embed.encoder = model.encoder  # type: ignore[attr-defined]
    embed.model = model  # type: ignore[attr-defined]
    return embed


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_embed_equals_in_process_onnxruntime_when_batch_mixes_lengths_and_languages(
    triton: Settings, local, protocol: str
):
    with QmdClient(triton.url(protocol), protocol) as client:
        got = client.embed(TEXTS)
    want = local(TEXTS)
    assert got.shape == (len(TEXTS), 384)
    assert np.abs(got - want).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_query_kind_goes_through_tokenizer_and_model(triton: Settings, local):
    with QmdClient(triton.url("grpc"), "grpc") as client:
        got = client.embed(TEXTS[:3], kind=KIND_QUERY)
    assert np.abs(got - local(TEXTS[:3], KIND_QUERY)).max() < 1e-5


def test_tokenizer_round_trips_known_ids_when_served(triton: Settings, local):
    """Catches numpy 2 in the stub: it turns [101, 7592, ...] into repeats of the first value."""
    texts = ["hello world", "向量"]
    column = np.array([t.encode() for t in texts], dtype=object).reshape(-1, 1)
    with QmdClient(triton.url()) as client:
        out = client.infer("qmd_tokenize", {"text": column}, ["input_ids", "attention_mask"])
    ids, mask = local.encoder.encode(texts)
    assert out["input_ids"].tolist() == ids.tolist()
    assert out["attention_mask"].tolist() == mask.tolist()
    assert len(set(ids[0, :4].tolist())) == 4  # distinct values, so corruption to repeats would show


def test_embed_model_answers_token_ids_sent_directly(triton: Settings, local):
    ids = np.array([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    with QmdClient(triton.url()) as client:
        got = client.infer("qmd_embed_model", {"input_ids": ids, "attention_mask": mask}, ["embedding"])["embedding"]
    assert np.abs(got - local.model.run(ids, mask)).max() < 1e-5


def test_empty_string_embeds_like_in_process(triton: Settings, local):
    with QmdClient(triton.url()) as client:
        got = client.embed([""])
    assert np.abs(got - local([""])).max() < 1e-5


def test_one_megabyte_text_is_truncated_to_max_length(triton: Settings, local):
    big = ("Notes about search engines and 笔记。 " * 40000)[: 1 << 20]
    truncated = local.encoder._tok.decode(local.encoder.encode([big])[0][0].tolist(), skip_special_tokens=True)
    with QmdClient(triton.url()) as client:
        got = client.embed([big])
    assert np.abs(got - local([big])).max() < 1e-5
    assert len(truncated) < len(big) // 100


def test_invalid_utf8_fails_that_request_only_and_server_stays_ready(triton: Settings):
    column = np.array([b"fine", b"bad \xff\xfe bytes"], dtype=object).reshape(-1, 1)
    with QmdClient(triton.url()) as client:
        with pytest.raises(InferenceError, match=r"text\[1\] is not valid UTF-8 \(byte 0xff at offset 4\)"):
            client.infer("qmd_embed", {"text": column}, ["embedding"])
        assert client.is_ready()
        assert client.embed(["still works"]).shape == (1, 384)


@pytest.mark.parametrize(
    "ids, match",
    [
        (np.ones((1, 4), dtype=np.float32), "data-type|datatype|FP32"),
        (np.ones((1, 2, 4), dtype=np.int64), "shape|dims"),
    ],
    ids=["wrong-dtype", "wrong-shape"],
)
def test_embed_model_rejects_wrong_dtype_or_shape_and_stays_ready(triton: Settings, ids, match):
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    client = http.InferenceServerClient(triton.http_url)
    tensors = []
    for name in ("input_ids", "attention_mask"):
        t = http.InferInput(name, list(ids.shape), "FP32" if ids.dtype == np.float32 else "INT64")
        t.set_data_from_numpy(ids)
        tensors.append(t)
    with pytest.raises(InferenceServerException, match=match):
        client.infer("qmd_embed_model", tensors)
    assert client.is_server_ready()


def test_out_of_vocabulary_ids_fail_that_request_with_a_message(triton: Settings):
    ids = np.array([[101, 10_000_000, 102]], dtype=np.int64)
    with QmdClient(triton.url()) as client:
        with pytest.raises(InferenceError, match="qmd_embed_model"):
            client.infer("qmd_embed_model", {"input_ids": ids, "attention_mask": np.ones_like(ids)}, ["embedding"])
        assert client.is_ready()


def test_concurrent_requests_are_batched_by_the_dynamic_batcher(triton: Settings, local):
    # More clients than the model has instances (3 on the CPU), each keeping its connection, so requests
    # queue and the batcher has something to merge.
    texts = [f"note number {i} about {'search ' * (i % 7)}" for i in range(96)]
    with QmdClient(triton.url()) as stats_client:
        before = _counts(stats_client.statistics("qmd_embed_model"))
    local_client, opened = threading.local(), []

    def one(t: str) -> np.ndarray:
        if not hasattr(local_client, "c"):
            local_client.c = QmdClient(triton.url())
            opened.append(local_client.c)
        return local_client.c.embed([t])[0]

    try:
        with ThreadPoolExecutor(16) as pool:
            got = np.stack(list(pool.map(one, texts)))
    finally:
        for c in opened:
            c.close()
    # a composing model's statistics are recorded just after the ensemble's response: poll them (on a loaded
    # machine the last requests' counts land a moment after the last answer)
    with QmdClient(triton.url()) as stats_client:
        def after_all() -> bool:
            nonlocal after
            after = _counts(stats_client.statistics("qmd_embed_model"))
            return after[0] - before[0] >= len(texts)

        after = before
        try:
            wait_until(after_all, 30, interval_s=0.1)
        except WaitTimeout:
            pass  # the assertion below says how many arrived
    assert np.abs(got - local(texts)).max() < 1e-5
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == len(texts)
    assert executions < inferences


def _counts(stats: dict) -> tuple[int, int]:
    s = stats["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


def test_prompt_formats_in_the_config_wrap_queries_and_documents(copy_repo, tmp_path: Path):
    """E5/BGE-style models want prompts: the tokenizer's config parameters apply them on the server."""
    from qmd_triton.serving import server
    from qmd_triton.text.tokenization import PromptFormats

    from ..conftest import make_settings

    repo = copy_repo(("qmd_tokenize", "qmd_embed_model", "qmd_embed"))
    cfg = repo / "qmd_tokenize" / "config.pbtxt"
    text = cfg.read_text()
    for key, prompt in (("query_prompt", "query: {text}"), ("document_prompt", "passage: {text}")):
        old = f'key: "{key}", value: {{ string_value: "{{text}}" }}'
        assert old in text
        text = text.replace(old, f'key: "{key}", value: {{ string_value: "{prompt}" }}')
    cfg.write_text(text)
    encoder = TextEncoder.from_dir(repo / "qmd_tokenize" / "1", buckets="",
                                   prompts=PromptFormats(query="query: {text}", document="passage: {text}"))
    model = InProcessEmbedder(encoder, repo / "qmd_embed_model" / "1" / "model.onnx")

    def want(kind: str) -> np.ndarray:
        return model.embed(TEXTS[:3], kind)

    settings = make_settings(tmp_path / "home", repo)
    server.start(settings)
    try:
        with QmdClient(settings.url()) as client:
            query, document = client.embed(TEXTS[:3], kind=KIND_QUERY), client.embed(TEXTS[:3])
    finally:
        server.stop(settings)
    assert np.abs(query - want(KIND_QUERY)).max() < 1e-5
    assert np.abs(document - want("document")).max() < 1e-5
    assert np.abs(query - document).max() > 1e-2  # the two prompts really differ on the server


def test_ctrl_c_stops_embed_after_the_batches_in_flight_and_the_next_run_resumes(triton: Settings, tmp_path: Path):
    """A real SIGINT to a real `qmdctl embed`: what was embedded is kept, nothing is half-written."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from click.testing import CliRunner

    from qmd_triton.cli import cli
    from qmd_triton.index.sqlite.index import SqliteIndex

    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(240):
        (notes / f"note{i:03d}.md").write_text(f"# Note {i}\n\nThe batcher merges request {i} with others. " * 3)
    env = {**os.environ, "QMD_HOME": str(tmp_path / "home"), "QMD_MODEL_REPOSITORY": str(triton.model_repository),
           "QMD_HTTP_PORT": str(triton.http_port), "QMD_GRPC_PORT": str(triton.grpc_port),
           "QMD_METRICS_PORT": str(triton.metrics_port)}
    runner_env = {k: env[k] for k in ("QMD_HOME", "QMD_MODEL_REPOSITORY", "QMD_HTTP_PORT", "QMD_GRPC_PORT",
                                      "QMD_METRICS_PORT")}
    for args in (["collection", "add", str(notes), "--name", "notes"], ["update"]):
        assert CliRunner().invoke(cli, args, env=runner_env).exit_code == 0
    index = tmp_path / "home" / "index.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", "from qmd_triton.cli import main; main()", "embed",
                             "--batch-size", "4", "--concurrency", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        embedded = 0
        while embedded == 0 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            with SqliteIndex.open(index) as store:
                embedded = store.counts()["embedded"]
        assert proc.poll() is None, "embed finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "stopping after the batches in flight" in err and "run `qmdctl embed` again to resume" in err
    assert "Traceback" not in err
    with SqliteIndex.open(index) as store:
        counts = store.counts()
    assert 0 < counts["embedded"] < counts["chunks"] == 240
    result = CliRunner().invoke(cli, ["embed", "--json"], env=runner_env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["embedded"] == counts["chunks"] - counts["embedded"]  # only the rest
    assert report["in_flight"] == 2  # the shipped three CPU instances: one stays free for searches
    assert report["total_embedded"] == report["total_chunks"] == 240


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bulk_embedding_leaves_one_of_the_served_cpu_instances_free(triton: Settings, protocol: str):
    from qmd_triton.serving.client import TritonEmbedder, bulk_in_flight

    with QmdClient(triton.url(protocol), protocol) as client:
        served = client.model_config("qmd_embed_model")
    groups = [(g["kind"], int(g["count"])) for g in served["instance_group"]]
    assert groups == [("KIND_CPU", 3)]
    assert bulk_in_flight(served) == 2
    assert TritonEmbedder(triton).in_flight() == 2
