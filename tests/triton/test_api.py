"""The HTTP gateway (`qmdctl api`) as a real process in front of the real tritonserver: QMD-Python's requests
sent verbatim with httpx, OpenAI's client on /v1/embeddings, TEI's /rerank against the in-process reranker,
errors as JSON with their status, and the token."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from qmd_triton.runtime.onnx import InProcessReranker
from qmd_triton.serving.client import QmdClient
from qmd_triton.settings import Settings

from ..conftest import ASSETS, need
from ..doors import TOKEN, Door, door_env, sample_notes_indexed

DIM = 384  # all-MiniLM-L6-v2, the exported embedding model
COLLECTION = "gwnotes"


@pytest.fixture(scope="module")
def indexed(triton: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    with sample_notes_indexed(triton, tmp_path_factory.mktemp("gateway") / "notes", COLLECTION) as settings:
        yield settings


@pytest.fixture(scope="module")
def gateway(indexed: Settings, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`qmdctl api` on a free loopback port, no token (loopback)."""
    log = tmp_path_factory.mktemp("gateway-log") / "api.log"
    with Door(["api"], door_env(indexed), log) as door:
        yield door.url


def post(url: str, path: str, body, **kw) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=120, **kw)


# -- QMD-Python's requests, verbatim --------------------------------------------------------------------------


def test_health_answers_in_qmd_pythons_shape(gateway: str):
    r = httpx.get(f"{gateway}/health")
    assert r.status_code == 200
    assert r.json()["status"] == "healthy" and r.json()["model_loaded"] is True


def test_embed_returns_one_vector_per_text_with_the_models_dimension(gateway: str):
    r = httpx.post(f"{gateway}/embed", json={"texts": ["First text", "Second text", "第三段文字"]})
    assert r.status_code == 200
    embeddings = r.json()["embeddings"]
    assert len(embeddings) == 3 and all(len(v) == DIM for v in embeddings)
    assert r.json()["dim"] == DIM
    assert np.allclose(np.linalg.norm(np.array(embeddings), axis=1), 1.0, atol=1e-5)


def test_vsearch_returns_ranked_hits_with_path_docid_score_snippet(gateway: str):
    r = httpx.post(f"{gateway}/vsearch", json={"query": "how are concurrent inference calls grouped together",
                                                "top_k": 3}, timeout=60)
    assert r.status_code == 200
    results = r.json()["results"]
    assert 0 < len(results) <= 3 and results[0]["path"] == "guide/batching.md"
    for hit in results:
        assert {"path", "docid", "score", "snippet"} <= set(hit) and hit["docid"].startswith("#")
    assert [h["score"] for h in results] == sorted((h["score"] for h in results), reverse=True)


def test_query_returns_ranked_hits_with_path_docid_score_snippet(gateway: str):
    r = httpx.post(f"{gateway}/query", json={"query": "how are concurrent inference requests merged into a batch",
                                              "top_k": 3}, timeout=120)
    assert r.status_code == 200
    results = r.json()["results"]
    assert 0 < len(results) <= 3 and results[0]["path"] == "guide/batching.md"
    for hit in results:
        assert {"path", "docid", "score", "snippet"} <= set(hit)
    assert [h["score"] for h in results] == sorted((h["score"] for h in results), reverse=True)


# -- the rest of the gateway ----------------------------------------------------------------------------------


def test_query_takes_typed_searches_and_an_intent_without_a_query(gateway: str):
    r = post(gateway, "/query", {"searches": [{"type": "lex", "query": "sourdough"},
                                              {"type": "vec", "query": "how do I bake bread"}],
                                 "intent": "baking at home", "collections": [COLLECTION], "top_k": 2})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["file"] == f"{COLLECTION}/recipes.md"


def test_search_get_multi_get_and_status(gateway: str):
    hits = post(gateway, "/search", {"query": "向量检索", "collection": COLLECTION}).json()["results"]
    assert hits[0]["file"] == f"{COLLECTION}/zh/向量检索.md"
    doc = post(gateway, "/get", {"file": hits[0]["docid"]}).json()
    assert doc["file"] == hits[0]["file"] and doc["text"].startswith("# 向量检索入门")
    part = post(gateway, "/get", {"file": f"{COLLECTION}/recipes.md:3", "max_lines": 2}).json()
    assert part["from"] == 3 and len(part["text"].splitlines()) == 2
    docs = post(gateway, "/multi_get", {"pattern": f"{COLLECTION}/guide/*.md"}).json()["documents"]
    assert sorted(d["file"] for d in docs) == [f"{COLLECTION}/guide/batching.md", f"{COLLECTION}/guide/operations.md"]
    status = httpx.get(f"{gateway}/status").json()
    assert status["triton"]["ready"] and status["index"]["collections"][COLLECTION]["documents"] == 4


def test_embed_splits_any_number_of_texts_and_equals_qmd_embed(gateway: str, indexed: Settings):
    texts = [f"note {i}: dynamic batching merges requests number {i}" for i in range(150)]  # > 64 = MAX_BATCH
    r = post(gateway, "/embed", {"texts": texts})
    assert r.status_code == 200
    served = np.array(r.json()["embeddings"], dtype=np.float32)
    with QmdClient(indexed.url()) as client:
        direct = client.embed(texts)
    assert served.shape == (150, DIM) and np.abs(served - direct).max() < 1e-6
    tei = post(gateway, "/embed", {"inputs": "one text"}).json()  # TEI's form: a bare list of vectors
    assert len(tei) == 1 and len(tei[0]) == DIM


def test_openai_client_embeddings_equal_qmd_embed(gateway: str, indexed: Settings):
    from openai import OpenAI

    texts = ["Dynamic batching merges requests into one batch.", "向量检索把文本映射到嵌入空间", "sourdough bread"]
    client = OpenAI(base_url=f"{gateway}/v1", api_key="not-needed-on-loopback")
    with QmdClient(indexed.url()) as qc:
        direct = qc.embed(texts)
    def vector(embedding) -> np.ndarray:  # an explicit base64 request comes back undecoded
        if isinstance(embedding, str):
            return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
        return np.array(embedding)

    # None: the client's own default, which asks for base64 and decodes it
    for fmt in (None, "float", "base64"):
        kwargs = {"encoding_format": fmt} if fmt else {}
        response = client.embeddings.create(model="qmd-embed", input=texts, **kwargs)
        got = np.array([vector(d.embedding) for d in sorted(response.data, key=lambda d: d.index)], dtype=np.float64)
        cosine = (got * direct).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(direct, axis=1)
        assert got.shape == (3, DIM) and np.all(np.abs(cosine - 1.0) < 1e-5), (fmt, cosine)
        assert response.usage.prompt_tokens > 0
    one = client.embeddings.create(model="qmd-embed", input="sourdough bread")
    assert len(one.data) == 1 and len(one.data[0].embedding) == DIM


def test_rerank_scores_equal_the_in_process_reranker(gateway: str, indexed: Settings):
    query = "how do requests get batched together"
    texts = [p.read_text() for p in sorted((ASSETS / "notes").rglob("*.md"))] + [
        "Dynamic batching merges requests into one batch.", "Bread needs flour, water and salt.", "", "短文本"]
    raw = post(gateway, "/rerank", {"query": query, "texts": texts, "raw_scores": True}).json()
    probs = post(gateway, "/rerank", {"query": query, "texts": texts, "return_text": True}).json()
    reference = InProcessReranker.from_repository(indexed.model_repository, threads=2).scores(query, texts)
    logits = np.zeros(len(texts))
    for item in raw:
        logits[item["index"]] = item["score"]
    assert np.abs(logits - reference).max() < 1e-4
    sigmoid = 1 / (1 + np.exp(-reference.astype(np.float64)))
    assert all(abs(p["score"] - sigmoid[p["index"]]) < 1e-4 and p["text"] == texts[p["index"]] for p in probs)
    assert [p["index"] for p in probs] == list(np.argsort(-sigmoid, kind="stable"))  # best first


def test_rerank_splits_lists_longer_than_one_triton_request(gateway: str):
    texts = [f"passage {i} about batching" for i in range(300)]  # > RERANK_MAX_PAIRS (256)
    r = post(gateway, "/rerank", {"query": "batching", "texts": texts})
    assert r.status_code == 200 and sorted(p["index"] for p in r.json()) == list(range(300))


@pytest.mark.parametrize("path, body, status, message", [
    ("/vsearch", b"{nope", 400, "not valid JSON"),
    ("/vsearch", {"query": "x", "top_k": 0}, 400, "top_k"),
    ("/vsearch", {"query": "x", "colections": ["a"]}, 400, "colections: Extra inputs are not permitted"),
    ("/vsearch", {"query": ""}, 400, "query is empty"),
    ("/search", {"query": "x", "collection": "nope"}, 400, "unknown collection 'nope'"),
    ("/query", {"top_k": 3}, 400, "give a query or typed searches"),
    ("/get", {"file": f"{COLLECTION}/nope.md"}, 404, "not in the index"),
    ("/get", {"file": "#ffffff"}, 404, "no document with docid"),
    ("/embed", {"texts": []}, 400, "empty"),
    ("/embed", {"texts": ["x"] * 3000}, 413, "the limit is 2048"),
    ("/embed", {"texts": ["x" * 1024 * 1024] * 17}, 413, "the limit is 16777216"),
    ("/rerank", {"query": "", "documents": [{"content": "a"}]}, 400, "query is empty"),
    ("/search", {"query": "x", "top_k": 5, "limit": 3}, 400, "top_k=5 and limit=3 name one option (top_k)"),
    ("/rerank", {"query": "x", "documents": [{"id": 1}]}, 400, "documents[0] has no text to score"),
    ("/v1/embeddings", {"input": "x", "model": "text-embedding-3-small"}, 400,
     "model 'text-embedding-3-small' is not served here"),
    ("/v1/embeddings", {"input": [[1, 2, 3]]}, 400, "input"),
    ("/v1/embeddings", {"input": "x", "dimensions": 7}, 400, "dimensions must be 384"),
], ids=["bad-json", "top_k-0", "unknown-key", "empty-query", "unknown-collection", "query-nothing", "no-doc",
        "no-docid", "no-texts", "too-many-texts", "body-too-large", "rerank-empty-query", "aliases-disagree",
        "rerank-no-text", "foreign-model", "token-arrays", "dimensions"])
def test_bad_requests_get_json_errors_with_their_status(gateway: str, path: str, body, status: int, message: str):
    if isinstance(body, bytes):
        r = httpx.post(gateway + path, content=body, headers={"content-type": "application/json"})
    else:
        r = post(gateway, path, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["code"] == status
    assert "Traceback" not in r.text


# -- QMD-Python, TEI and OpenAI clients, verbatim -----------------------------------------------------------


def test_qmd_python_vsearch_hits_carry_its_fields_and_the_body(gateway: str):
    body = {"query": "how are concurrent inference calls grouped together", "limit": 3, "collection": COLLECTION}
    hits = post(gateway, "/vsearch", body).json()["results"]  # QMD-Python's client body
    first = hits[0]
    assert first["filepath"] == f"qmd://{COLLECTION}/guide/batching.md"
    assert first["display_path"] == f"{COLLECTION}/guide/batching.md" and len(first["hash"]) == 64
    assert first["body"].startswith("---\ntitle: Dynamic batching on Triton\n")  # the file as written
    assert {"title", "score", "collection", "path"} <= set(first)
    lean = post(gateway, "/vsearch", {**body, "full": False}).json()["results"][0]
    assert "body" not in lean and lean["hash"] == first["hash"]
    searched = post(gateway, "/search", {"query": "batching", "collection": COLLECTION}).json()["results"][0]
    assert "body" not in searched and searched["filepath"].startswith("qmd://")


def test_qmd_python_rerank_returns_its_documents_best_first_with_a_score(gateway: str):
    documents = [{"id": "a", "content": "Bread needs flour, water and salt."},
                 {"id": "b", "content": "Dynamic batching merges inference requests into one batch.", "extra": 1},
                 {"id": "c", "title": "Batching requests on the server"}]
    r = post(gateway, "/rerank", {"query": "how are requests batched", "documents": documents, "top_k": 2})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [d["id"] for d in results][0] == "b" and len(results) == 2
    assert results[0]["extra"] == 1 and 0 < results[1]["rerank_score"] < results[0]["rerank_score"] <= 1
    default = post(gateway, "/rerank", {"query": "batching", "documents": documents * 3}).json()["results"]
    assert len(default) == 5  # QMD-Python's top_k default
    assert post(gateway, "/rerank", {"query": "x", "documents": []}).json() == {"results": []}


def test_tei_embed_honours_truncate_and_normalize_and_answers_in_teis_shape(gateway: str):
    long_text = "batching " * 600  # past the embedder's 256-token window
    cut = post(gateway, "/embed", {"inputs": long_text})  # TEI's default here: truncate
    assert cut.status_code == 200 and len(cut.json()[0]) == DIM
    refused = post(gateway, "/embed", {"inputs": [long_text], "truncate": False})
    assert refused.status_code == 413 and refused.json()["error_type"] == "Validation"
    message = refused.json()["error"]
    assert message.startswith("Input validation error: `inputs` must have less than 256 tokens. Given: ")
    assert int(message.rsplit(" ", 1)[1]) > 600
    fits = post(gateway, "/embed", {"inputs": "short", "truncate": False, "normalize": True})
    assert fits.status_code == 200
    texts = ["Dynamic batching merges requests.", "Bread needs flour, water and salt."]
    raw = post(gateway, "/embed", {"inputs": texts, "normalize": False})
    unit = np.array(post(gateway, "/embed", {"inputs": texts}).json())
    assert raw.status_code == 200, raw.text
    vectors = np.array(raw.json())
    norms = np.linalg.norm(vectors, axis=1)
    assert vectors.shape == (2, DIM) and np.all(np.abs(norms - 1.0) > 0.1)  # the pooled vectors themselves
    assert np.abs(vectors / norms[:, None] - unit).max() < 1e-5  # ... whose direction is the served embedding
    empty = post(gateway, "/embed", {"inputs": []})
    assert empty.status_code == 400 and empty.json() == {"error": "`inputs` cannot be empty", "error_type": "Empty"}
    unknown = post(gateway, "/embed", {"inputs": "x", "pooling": "cls"})
    assert unknown.status_code == 422 and "pooling" in unknown.json()["error"]


def test_tei_rerank_errors_are_teis_shape(gateway: str):
    empty = post(gateway, "/rerank", {"query": "x", "texts": []})
    assert empty.status_code == 400 and empty.json() == {"error": "`texts` cannot be empty", "error_type": "Empty"}
    long = post(gateway, "/rerank", {"query": "batching", "texts": ["word " * 700], "truncate": False})
    assert long.status_code == 413 and long.json()["error"].startswith("Input validation error: `inputs` must have "
                                                                       "less than 512 tokens. Given: ")
    no_query = post(gateway, "/rerank", {"query": "", "texts": ["a"]})
    assert no_query.status_code == 422 and no_query.json()["error_type"] == "Validation"


def test_openai_client_lists_the_served_model_and_embeds_with_it(gateway: str):
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=f"{gateway}/v1", api_key="not-needed-on-loopback")
    models = [m.id for m in client.models.list()]
    assert models == ["all-MiniLM-L6-v2", "qmd-embed"]
    assert len(client.embeddings.create(model=models[0], input="bread").data[0].embedding) == DIM
    with pytest.raises(BadRequestError, match="is not served here"):
        client.embeddings.create(model="text-embedding-3-small", input="bread")


def test_api_on_a_busy_port_says_so_before_any_banner(indexed: Settings, gateway: str):
    import subprocess

    from ..doors import QMDCTL

    port = gateway.rsplit(":", 1)[1]
    r = subprocess.run([QMDCTL, "api", "--port", port], env=door_env(indexed), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"Error: port {port} on 127.0.0.1 is already in use; pick another "
                                             "with --port"]


def test_the_ipv6_banner_puts_the_address_in_brackets(indexed: Settings, tmp_path: Path):
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        need(False, "this machine has no IPv6 loopback")
    log = tmp_path / "api6.log"
    with Door(["api", "--host", "::1"], door_env(indexed), log, host="::1") as door:
        assert httpx.get(f"http://[::1]:{door.port}/health").status_code == 200
    assert f"qmd gateway on http://[::1]:{door.port} " in log.read_text()


def test_unknown_routes_and_methods_are_json_errors(gateway: str):
    r = httpx.get(f"{gateway}/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == 404
    r = httpx.get(f"{gateway}/vsearch")
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"


def test_metrics_count_requests_by_route_and_status(gateway: str):
    post(gateway, "/vsearch", {"query": "batching", "top_k": 1})
    text = httpx.get(f"{gateway}/metrics").text
    assert 'qmd_http_requests_total{door="api",route="/vsearch",status="200"}' in text
    assert 'qmd_triton_call_duration_seconds_count{model="qmd_vsearch",outcome="ok"}' in text


def test_openapi_documents_every_endpoint(gateway: str):
    paths = httpx.get(f"{gateway}/openapi.json").json()["paths"]
    assert {"/health", "/embed", "/search", "/vsearch", "/query", "/get", "/multi_get", "/status", "/rerank",
            "/v1/embeddings", "/v1/models"} <= set(paths)


def test_a_token_guards_every_route_but_health_and_metrics(indexed: Settings, tmp_path: Path):
    with Door(["api"], door_env(indexed, QMD_API_TOKEN=TOKEN), tmp_path / "api.log") as door:
        body = {"query": "batching", "top_k": 1}
        assert post(door.url, "/vsearch", body).status_code == 401
        wrong = post(door.url, "/vsearch", body, headers={"Authorization": "Bearer not-the-token-at-all"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
        right = post(door.url, "/vsearch", body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200 and right.json()["results"]
        foreign = post(door.url, "/vsearch", body, headers={"Authorization": f"Bearer {TOKEN}",
                                                            "Origin": "https://evil.example"})
        assert foreign.status_code == 403 and "Origin" in foreign.json()["error"]["message"]
        assert httpx.get(f"{door.url}/health").status_code == 200
        assert httpx.get(f"{door.url}/metrics").status_code == 200


def test_triton_down_is_503_not_a_traceback(indexed: Settings, tmp_path: Path):
    from qmd_triton.system.net import free_ports

    (dead,) = free_ports(1)
    with Door(["api", "--triton-url", f"127.0.0.1:{dead}"], door_env(indexed), tmp_path / "api.log") as door:
        r = post(door.url, "/vsearch", {"query": "batching"})
        assert r.status_code == 503 and "no Triton server answers" in r.json()["error"]["message"]
        health = httpx.get(f"{door.url}/health")
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
        assert post(door.url, "/embed", {"texts": ["x"]}).status_code == 503
    assert "Traceback" not in (tmp_path / "api.log").read_text()


def test_results_json_is_the_triton_models_own(gateway: str, indexed: Settings):
    options = {"n": 3, "collections": [COLLECTION]}
    via_gateway = post(gateway, "/search", {"query": "batching", "top_k": 3, "collections": [COLLECTION]}).json()
    with QmdClient(indexed.url()) as client:
        direct = client.search("qmd_search", "batching", json.dumps(options))
    assert via_gateway["results"] == direct
