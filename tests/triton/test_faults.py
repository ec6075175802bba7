"""Fault injection against a running server: real signals, real requests, real files.

The module starts its own supervised server (`qmdctl up`) on free loopback ports, over an index of the test notes,
and signals only processes of that server (its own stubs, found through the server's state, and the server
itself). Each fault is followed by a good request; the seconds from the fault to the first good answer are
recorded in `fault_recovery.json` under pytest's base temp folder (and printed), and only bounded by 30 s here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qmd_triton.cli import cli
from qmd_triton.ops.prometheus import QmdCollector
from qmd_triton.serving import health, server, shm, supervisor_daemon, tritonserver
from qmd_triton.settings import Settings
from qmd_triton.system import procs
from qmd_triton.system.net import WaitTimeout, wait_until

from ..conftest import ASSETS, make_settings

RECOVERY_BOUND_S = 30.0
RECOVERY: dict[str, float] = {}
EXPECTED: dict[str, Counter] = {}  # stub processes per model of the healthy server
TMP: dict[str, Path] = {}
VSEARCH_QUERY = "how do requests get merged into one batch"


def env_of(settings: Settings) -> dict[str, str]:
    return {"QMD_HOME": str(settings.home), "QMD_MODEL_REPOSITORY": str(settings.model_repository),
            "QMD_HTTP_PORT": str(settings.http_port), "QMD_GRPC_PORT": str(settings.grpc_port),
            "QMD_METRICS_PORT": str(settings.metrics_port)}


def qmd(settings: Settings, *args: str):
    return CliRunner().invoke(cli, list(args), env=env_of(settings), catch_exceptions=False)


def base(settings: Settings) -> str:
    return f"http://{settings.http_url}"


def infer(settings: Settings, model: str, inputs: list[dict], timeout: float = 30.0) -> tuple[int, dict]:
    body = json.dumps({"inputs": inputs}).encode()
    req = urllib.request.Request(f"{base(settings)}/v2/models/{model}/infer", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except (urllib.error.URLError, OSError) as e:
        return 0, {"error": str(e)}


def text_input(name: str, value: str) -> dict:
    return {"name": name, "shape": [1], "datatype": "BYTES", "data": [value]}


def search_request(settings: Settings, model: str, query: str = VSEARCH_QUERY, options: str | None = None):
    if options is None:  # no LLM expansion: the pipeline's other steps are what is tested
        options = '{"n": 3, "expand": false}' if model == "qmd_query" else '{"n": 3}'
    return infer(settings, model, [text_input("query", query), text_input("options", options)])


def good(settings: Settings, model: str) -> bool:
    """A good request answered: the batching note among the hits."""
    code, body = search_request(settings, model, "dynamic batching merges requests" if model == "qmd_search"
                                else VSEARCH_QUERY)
    if code != 200:
        return False
    hits = json.loads(body["outputs"][0]["data"][0])
    return any(h["file"].endswith("guide/batching.md") for h in hits)


def every_pipeline_answers(settings: Settings) -> bool:
    return all(good(settings, m) for m in health.PROBE_MODELS)


def wait_good(settings: Settings, since: float, bound_s: float = 60.0) -> float:
    """Seconds from ``since`` until every pipeline answers a good request (several times: each instance)."""
    while time.monotonic() - since < bound_s:
        if every_pipeline_answers(settings) and every_pipeline_answers(settings):
            return time.monotonic() - since
        time.sleep(0.2)
    pytest.fail(f"no good answer within {bound_s:.0f}s of the fault")


def left_after(members: list[int], bound_s: float = 30.0) -> list[int]:
    """The members of a stopped server still running once they are all gone or ``bound_s`` has passed (a stub
    killed with its group exits a moment after `down` returns; a zombie is not running)."""
    def left() -> list[int]:
        return [p for p in members if procs.start_ticks(p) is not None and not procs.is_zombie(p)]

    try:
        wait_until(lambda: not left(), bound_s, interval_s=0.1)
    except WaitTimeout:
        pass
    return left()


def record(name: str, seconds: float, tmp_root: Path) -> None:
    RECOVERY[name] = round(seconds, 2)
    (tmp_root / "fault_recovery.json").write_text(json.dumps(RECOVERY, indent=2))
    print(f"\nrecovery {name}: {seconds:.2f}s")


def stubs_of(settings: Settings, model: str) -> list[int]:
    state = server.read_state(settings)
    return sorted(pid for pid, m in state.stubs().items() if m == model)


def stub_counts(settings: Settings) -> Counter:
    return Counter(server.read_state(settings).stubs().values())


@pytest.fixture(scope="module")
def served(exported_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """A supervised server of this module's own, over the test notes (indexed and embedded)."""
    root = tmp_path_factory.mktemp("faults")
    settings = make_settings(root / "home", exported_repo)
    notes = root / "notes"
    shutil.copytree(ASSETS / "notes", notes)
    assert qmd(settings, "collection", "add", str(notes), "--name", "notes").exit_code == 0
    assert qmd(settings, "update").exit_code == 0
    up = qmd(settings, "up")
    assert up.exit_code == 0, up.output
    try:
        assert qmd(settings, "embed").exit_code == 0
        assert supervisor_daemon.supervisor_state(settings) is not None
        EXPECTED["stubs"] = stub_counts(settings)
        TMP["root"] = tmp_path_factory.getbasetemp()
        yield settings
    finally:
        state = server.read_state(settings)
        supervisor = supervisor_daemon.supervisor_state(settings)
        members = state.members() if state else []
        down = qmd(settings, "down")
        assert down.exit_code == 0, down.output
        assert left_after(members) == [] and (supervisor is None or not procs.is_running(supervisor))
        assert shm.home_regions(settings.home) == []  # stubs killed and reloaded in this module left theirs


@pytest.fixture
def supervised(served: Settings) -> Settings:
    """The server with its supervisor running and every pipeline answering."""
    supervisor_daemon.start_supervisor(served)
    wait_good(served, time.monotonic())
    return served


def test_a_dead_backend_is_named_by_status_health_and_the_exporter_while_triton_says_ready(served: Settings):
    supervisor_daemon.stop_supervisor(served)  # so that nothing heals it while we look
    [victim, _] = stubs_of(served, "qmd_search")
    os.kill(victim, signal.SIGKILL)  # a stub of this module's own server
    killed = time.monotonic()
    # the instance fails once Triton's side notices its stub gone: ask until one request gets that 500
    wait_until(lambda: search_request(served, "qmd_search")[0] == 500, 30, interval_s=0.1)
    with urllib.request.urlopen(f"{base(served)}/v2/health/ready", timeout=5) as r:
        assert r.status == 200  # Triton's own readiness does not see it
    codes = [search_request(served, "qmd_search")[0] for _ in range(4)]
    assert 500 in codes  # the dead instance fails every request it gets, for good

    status = qmd(served, "status")
    assert status.exit_code == 1
    assert "Warning: qmd_search: 1 of 2 backend processes gone" in status.stderr
    assert "ready, but not every model answers" in status.stdout
    data = json.loads(qmd(served, "status", "--json").stdout)
    assert data["ready"] is True and data["healthy"] is False and "qmd_search" in data["problems"]

    probe = qmd(served, "health", "--model", "qmd_search")
    assert probe.exit_code == 1
    assert probe.output.startswith("Error: qmd_search: answers HTTP 500: Stub process 'qmd_search_0_")

    collector = QmdCollector(served, served.http_url, server.admin_headers(served)[server.ADMIN_HEADER])
    scrapes = [{s.labels["model"]: s.value for s in collector._models()[1].samples} for _ in range(2)]
    assert min(v["qmd_search"] for v in scrapes) == 0.0  # one probe per scrape: the dead instance every other one
    assert all(v["qmd_vsearch"] == 1.0 for v in scrapes)

    supervisor_daemon.start_supervisor(served)  # the supervisor finds it and reloads the model
    record("qmd_search stub SIGKILL, supervisor started afterwards", wait_good(served, killed), TMP["root"])
    assert qmd(served, "status").exit_code == 0
    assert stub_counts(served) == EXPECTED["stubs"]


@pytest.mark.parametrize("model, sig", [
    ("qmd_search", signal.SIGKILL),
    ("qmd_retrieve", signal.SIGKILL),
    ("qmd_embed_model", signal.SIGKILL),
    ("qmd_tokenize", signal.SIGKILL),
    ("qmd_fuse", signal.SIGKILL),
    ("qmd_retrieve", signal.SIGSEGV),  # what a segfault does
])
def test_a_dead_backend_is_reloaded_and_answers_within_30_seconds(supervised: Settings, model: str, sig: int):
    victims = stubs_of(supervised, model)
    os.kill(victims[0], sig)  # a stub of this module's own server
    killed = time.monotonic()
    seconds = wait_good(supervised, killed)
    record(f"{model} stub {signal.Signals(sig).name}", seconds, TMP["root"])
    assert seconds <= RECOVERY_BOUND_S
    assert stub_counts(supervised) == EXPECTED["stubs"]  # no stub of the old instances left behind
    assert victims[0] not in stubs_of(supervised, model)
    log = (supervised.run_dir / supervisor_daemon.SUPERVISOR_LOG).read_text()
    assert f"{model}: 1 of {EXPECTED['stubs'][model]} backend process" in log
    assert qmd(supervised, "status").exit_code == 0


def test_a_killed_server_is_restarted_by_the_supervisor_within_30_seconds(supervised: Settings):
    state = server.read_state(supervised)
    assert procs.is_running(state.owned)
    old_stubs = set(state.stubs())
    os.kill(state.pid, signal.SIGKILL)  # this module's own server
    killed = time.monotonic()
    seconds = wait_good(supervised, killed)
    record("tritonserver SIGKILL", seconds, TMP["root"])
    assert seconds <= RECOVERY_BOUND_S
    new = server.read_state(supervised)
    assert new.pid != state.pid and procs.is_running(new.owned)
    assert not any(procs.start_ticks(p) is not None and not procs.is_zombie(p) and procs.argv(p)[5:6] == [str(state.pid)]
                   for p in old_stubs)  # the dead server's stubs are gone
    assert stub_counts(supervised) == EXPECTED["stubs"]


def test_up_while_the_supervisor_brings_a_killed_server_back_waits_for_it(supervised: Settings):
    state = server.read_state(supervised)
    os.kill(state.pid, signal.SIGKILL)  # this module's own server
    up = qmd(supervised, "up")
    assert up.exit_code == 0, up.output
    assert "is bringing this home's server back; waiting for it" in up.stderr
    assert "down" not in up.output
    new = server.read_state(supervised)
    assert new.pid != state.pid and procs.is_running(new.owned)
    assert supervisor_daemon.supervisor_state(supervised) is not None  # still kept up
    wait_good(supervised, time.monotonic())
    again = qmd(supervised, "up")  # a server that runs and answers: up says so, as before
    assert again.exit_code == 1 and "a qmd-triton server is already running" in again.output


def test_a_killed_server_group_leaves_no_shared_memory_behind(supervised: Settings):
    """SIGKILL to the server and every stub at once: nothing of it unlinks their /dev/shm regions, qmd does
    (the supervisor when it restarts the server; `qmdctl up` when it replaces a dead server's record)."""
    state = server.read_state(supervised)
    before = shm.regions(state.shm_prefix)
    assert shm.is_ours(state.shm_prefix) and len(before) >= len(state.stubs()) > 0
    os.killpg(state.pgid, signal.SIGKILL)  # this module's own server and its stubs
    wait_good(supervised, time.monotonic())
    new = server.read_state(supervised)
    assert new.pid != state.pid and new.shm_prefix != state.shm_prefix
    assert shm.regions(state.shm_prefix) == []  # unlinked by the supervisor before it restarted the server
    assert len(shm.regions(new.shm_prefix)) == len(new.stubs())
    print(f"\nregions of the killed server: {len(before)} before, {len(shm.regions(state.shm_prefix))} after")

    supervisor_daemon.stop_supervisor(supervised)  # nothing brings it back now
    os.killpg(new.pgid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while procs.is_running(new.owned) and time.monotonic() < deadline:  # SIGKILL takes effect asynchronously
        time.sleep(0.05)
    left = shm.regions(new.shm_prefix)
    assert left  # what a killed server leaves
    up = qmd(supervised, "up")
    assert up.exit_code == 0, up.output
    assert shm.regions(new.shm_prefix) == []
    print(f"regions of the second killed server: {len(left)} before `qmdctl up`, 0 after")
    wait_good(supervised, time.monotonic())


def register_region(settings: Settings, region: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    body = json.dumps({"key": region, "offset": 0, "byte_size": 4096}).encode()
    req = urllib.request.Request(f"{base(settings)}/v2/systemsharedmemory/region/attack/register", data=body,
                                 method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_registering_a_backend_shared_memory_region_is_refused_on_both_protocols(supervised: Settings):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    state = server.read_state(supervised)
    [tokenizer] = stubs_of(supervised, "qmd_tokenize")
    region = procs.argv(tokenizer)[2]  # visible to anyone in `ps`
    assert region.startswith("triton_python_backend_shm_region_")
    assert register_region(supervised, region) == (403, '{"error":"This API is restricted, expecting header '
                                                        '\'admin-key\'"}')
    client = grpcclient.InferenceServerClient(supervised.grpc_url)
    with pytest.raises(InferenceServerException, match="This protocol is restricted, expecting header "
                                                       "'triton-grpc-protocol-admin-key'"):
        client.register_system_shared_memory("attack", region, 4096)
    with pytest.raises(InferenceServerException, match="restricted"):
        client.get_system_shared_memory_status()
    # the output the attack would have sent into the stub's region: refused, and the server lives on
    code, body = infer(supervised, "qmd_tokenize", [{"name": "text", "shape": [1, 1], "datatype": "BYTES",
                                                     "data": ["hello"]}])
    assert code == 200
    assert procs.is_running(state.owned) and every_pipeline_answers(supervised)


def test_admin_apis_need_the_key_on_both_protocols(supervised: Settings):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    def http(path: str, method: str = "POST", headers: dict | None = None) -> int:
        req = urllib.request.Request(f"{base(supervised)}{path}", data=b"{}" if method == "POST" else None,
                                     method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    for path, method in (("/v2/repository/index", "POST"), ("/v2/repository/models/qmd_search/unload", "POST"),
                         ("/v2/repository/models/qmd_search/load", "POST"), ("/v2/logging", "GET"),
                         ("/v2/logging", "POST"), ("/v2/trace/setting", "GET"), ("/v2/trace/setting", "POST"),
                         ("/v2/systemsharedmemory/status", "GET"), ("/v2/cudasharedmemory/status", "GET")):
        assert http(path, method) == 403, path
    assert http("/v2/repository/index", headers=server.admin_headers(supervised)) == 200
    assert http("/v2/repository/index", headers={server.ADMIN_HEADER: "wrong"}) == 403

    client = grpcclient.InferenceServerClient(supervised.grpc_url)
    for call in (client.get_model_repository_index, lambda: client.unload_model("qmd_search"),
                 lambda: client.load_model("qmd_search"), client.get_log_settings,
                 lambda: client.update_log_settings({"log_verbose_level": 1}), client.get_trace_settings,
                 client.get_system_shared_memory_status, client.get_cuda_shared_memory_status):
        with pytest.raises(InferenceServerException, match="restricted"):
            call()
    key = server.admin_headers(supervised)[server.ADMIN_HEADER]
    assert client.get_model_repository_index(headers={"triton-grpc-protocol-admin-key": key})
    assert stub_counts(supervised) == EXPECTED["stubs"] and every_pipeline_answers(supervised)
    assert (supervised.run_dir / server.KEY_FILE).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("model", ["qmd_search", "qmd_vsearch", "qmd_query"])
def test_options_nested_5000_deep_are_a_400(supervised: Settings, model: str):
    code, body = search_request(supervised, model, options="[" * 5000 + "]" * 5000)
    prefix = "" if model == "qmd_search" else f"in ensemble '{model}', "
    assert (code, body) == (400, {"error": f"{prefix}options is nested too deeply"})
    code, body = search_request(supervised, model, options='{"n":' * 5000 + "1" + "}" * 5000)
    assert (code, body) == (400, {"error": f"{prefix}options is nested too deeply"})


def binary_infer(settings: Settings, model: str, arrays: dict[str, np.ndarray]) -> tuple[int, object]:
    """A request with raw tensors (invalid UTF-8, NaN), which the JSON protocol cannot carry: (200, result) or
    (status, error message)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    client = httpclient.InferenceServerClient(settings.http_url, network_timeout=60)
    inputs = []
    for name, array in arrays.items():
        item = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        item.set_data_from_numpy(array, binary_data=True)
        inputs.append(item)
    try:
        return 200, client.infer(model, inputs)
    except InferenceServerException as e:
        return int(e.status() or 0), e.message()


def obj(*values: bytes) -> np.ndarray:
    return np.array(list(values), dtype=np.object_)


PLAN = json.dumps({"query": "batching", "mode": "vsearch", "options": {}}).encode()
CANDIDATES = json.dumps({"plan": {"options": {}}, "candidates": [{"docid": "a", "explain": {"rrf_rank": 1}}]}).encode()
EMBEDDING = np.full((1, 384), 0.05, dtype=np.float32)

MALFORMED = {
    "query not UTF-8": ("qmd_search", {"query": obj(b"a\xff"), "options": obj(b"")},
                        "query is not valid UTF-8 (byte 0xff at offset 1)"),
    "options not UTF-8": ("qmd_search", {"query": obj(b"batching"), "options": obj(b'{"n": "\xc3("}')},
                          "options is not valid UTF-8 (byte 0xc3 at offset 7)"),
    "query not UTF-8 (ensemble)": ("qmd_vsearch", {"query": obj(b"\xfe"), "options": obj(b"")},
                                   "in ensemble 'qmd_vsearch', query is not valid UTF-8 (byte 0xfe at offset 0)"),
    "plan not JSON": ("qmd_retrieve", {"plan": obj(b"nope"), "query_embeddings": EMBEDDING},
                      "plan is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    "plan a list": ("qmd_retrieve", {"plan": obj(b"[1, 2]"), "query_embeddings": EMBEDDING},
                    "malformed plan: must be a JSON object"),
    "no query embedding": ("qmd_retrieve", {"plan": obj(PLAN), "query_embeddings": np.zeros((0, 384), np.float32)},
                           "query_embeddings must hold at least one row, got shape [0, 384]"),
    "NaN query embedding": ("qmd_retrieve", {"plan": obj(PLAN),
                                             "query_embeddings": np.full((1, 384), np.nan, np.float32)},
                            "query_embeddings holds values that are not finite (NaN or infinity)"),
    "candidates a list": ("qmd_fuse", {"candidates": obj(b"[1]"), "logit": np.zeros((1, 1), np.float32)},
                          'candidates must be a JSON object {"plan": {"options": {...}}, "candidates": '
                          '[{..., "explain": {"rrf_rank": N}}]}'),
    "candidates of the wrong shape": ("qmd_fuse", {"candidates": obj(b'{"plan": 1, "candidates": [1]}'),
                                                   "logit": np.zeros((1, 1), np.float32)},
                                      'candidates must be a JSON object {"plan": {"options": {...}}, "candidates": '
                                      '[{..., "explain": {"rrf_rank": N}}]}'),
    "NaN logit": ("qmd_fuse", {"candidates": obj(CANDIDATES), "logit": np.full((1, 1), np.nan, np.float32)},
                  "logit holds values that are not finite (NaN or infinity)"),
    "kind not UTF-8": ("qmd_tokenize", {"text": np.array([[b"hello"]], dtype=np.object_),
                                        "kind": np.array([[b"\xff"]], dtype=np.object_)},
                       "qmd_tokenize: kind[0] is not valid UTF-8 (byte 0xff at offset 0)"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_internal_models_answer_malformed_inputs_with_one_line_400s(supervised: Settings, case: str):
    model, arrays, message = MALFORMED[case]
    code, text = binary_infer(supervised, model, arrays)
    assert (code, text) == (400, message)
    assert "Traceback" not in text and "At:" not in text and "site-packages" not in text


def test_no_served_json_holds_nan(supervised: Settings):
    code, result = binary_infer(supervised, "qmd_fuse", {"candidates": obj(CANDIDATES),
                                                         "logit": np.full((1, 1), 1e30, np.float32)})
    assert code == 200
    raw = result.as_numpy("results").reshape(-1)[0]
    assert b"NaN" not in raw
    results = json.loads(raw)
    assert results[0]["score"] == 1.0  # a huge logit is a certain match, not a NaN


def test_a_damaged_index_is_one_line_from_a_live_server_and_nothing_is_lost(supervised: Settings):
    index = supervised.index_path
    with urllib.request.urlopen(f"{base(supervised)}/v2/health/ready", timeout=5):
        pass
    backup = index.with_name("index.backup.sqlite")
    from qmd_triton.index.sqlite.index import SqliteIndex

    with SqliteIndex.open(index) as store:
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.conn.backup(__import__("sqlite3").connect(backup))
    damaged = index.with_name("index.damaged.sqlite")
    shutil.copy(backup, damaged)
    pages = damaged.stat().st_size // 4096
    with damaged.open("r+b") as f:  # everything after the first pages (header and schema) overwritten
        for page in range(pages // 2, pages):
            f.seek(page * 4096)
            f.write(bytes(range(256)) * 16)
    os.replace(damaged, index)  # the served models see a new file and reopen it
    try:
        refused = []
        for model in ("qmd_vsearch", "qmd_search", "qmd_query"):
            code, body = search_request(supervised, model)
            message = body.get("error", "")
            if code == 200:
                continue  # what this model read was intact
            refused.append(model)
            assert code == 400 and message.startswith(f"{'' if model == 'qmd_search' else f'in ensemble {model!r}, '}"
                                                      f"{index} is damaged ("), body
            assert message.endswith(f"move it aside (mv {index} {index}.damaged) and rebuild it with `qmdctl update` "
                                    "and `qmdctl embed`")
            assert "\n" not in message and "Traceback" not in message and "site-packages" not in message
        assert refused == ["qmd_vsearch", "qmd_search", "qmd_query"]
        assert qmd(supervised, "search", "batching").output.startswith(f"Error: {index} is damaged")
    finally:
        os.replace(backup, index)
    wait_good(supervised, time.monotonic())  # the restored index serves again


RESTORE_NOTE = ("# Axolotl regeneration\n\nThe axolotl regrows a lost limb within weeks; salamanders of this kind keep "
                "their larval gills for life.\n")


def answers(settings: Settings, with_note: bool) -> list[str]:
    """20 requests (BM25 and vectors, two at a time so both qmd_search instances answer): what was wrong."""
    import concurrent.futures

    def one(i: int) -> str | None:
        model = ("qmd_search", "qmd_vsearch")[i % 2]
        query = "axolotl regrows limb" if model == "qmd_search" else "which animal grows back a lost leg"
        code, body = search_request(settings, model, query, '{"n": 5}')
        if code != 200:
            return f"{model}: HTTP {code} {body.get('error', '')[:200]}"
        files = [h["file"] for h in json.loads(body["outputs"][0]["data"][0])]
        if any(f.endswith("axolotl.md") for f in files) != with_note:
            return f"{model}: {files}"
        return None

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return [w for w in pool.map(one, range(20)) if w]


def test_a_backup_restored_under_the_running_server_by_cp_or_by_restore_is_served_at_once(supervised: Settings):
    """Backups restored while the server runs (two qmd_search instances, vectors held in memory): every
    request after the restore answers from the restored index, with no restart; status and health stay 0."""
    folder = supervised.home.parent / "backups"
    folder.mkdir(exist_ok=True)
    before, after = folder / "before.sqlite", folder / "after.sqlite"
    note = supervised.home.parent / "notes" / "axolotl.md"
    assert qmd(supervised, "index", "backup", str(before)).exit_code == 0
    try:
        note.write_text(RESTORE_NOTE)
        assert qmd(supervised, "update").exit_code == 0
        assert qmd(supervised, "embed").exit_code == 0
        assert answers(supervised, with_note=True) == []
        made = qmd(supervised, "index", "backup", str(after), "--json")
        assert made.exit_code == 0, made.output
        assert json.loads(made.stdout)["documents"] == 5

        index = supervised.index_path
        inode = index.stat().st_ino
        started = time.monotonic()
        shutil.copyfile(before, index)  # in place: the same inode, as cp, rsync --inplace or a snapshot do
        assert index.stat().st_ino == inode
        assert answers(supervised, with_note=False) == []
        print(f"\n20 of 20 right {time.monotonic() - started:.2f}s after the cp restore")
        assert qmd(supervised, "status").exit_code == 0 and qmd(supervised, "health").exit_code == 0

        restored = qmd(supervised, "index", "restore", str(after))
        assert restored.exit_code == 0, restored.output
        assert restored.stdout.startswith("restored 5 documents, ")
        assert answers(supervised, with_note=True) == []
        assert qmd(supervised, "status").exit_code == 0 and qmd(supervised, "health").exit_code == 0
    finally:
        note.unlink(missing_ok=True)
        assert qmd(supervised, "index", "restore", str(before)).exit_code == 0
    assert answers(supervised, with_note=False) == []


def test_an_index_cut_short_under_the_server_fails_status_and_health_until_a_restore(supervised: Settings):
    folder = supervised.home.parent / "backups"
    folder.mkdir(exist_ok=True)
    good = folder / "good.sqlite"
    assert qmd(supervised, "index", "backup", str(good), "--force").exit_code == 0
    index = supervised.index_path
    with index.open("r+b") as f:  # truncated to half in place, as a disk full or a broken copy leaves it
        f.truncate(index.stat().st_size // 2)
    try:
        status = qmd(supervised, "status")
        assert status.exit_code == 1
        assert f"index   DAMAGED: {index} is damaged (" in status.stdout
        assert "it was cut short" in status.stderr
        health_run = qmd(supervised, "health")
        assert health_run.exit_code == 1 and f"index: {index} is damaged (" in health_run.output
        codes = {search_request(supervised, "qmd_vsearch")[0] for _ in range(4)}
        assert codes == {400}  # every instance refuses; none answers from the vectors it held
    finally:
        restored = qmd(supervised, "index", "restore", str(good))
    assert restored.exit_code == 0, restored.output
    assert qmd(supervised, "status").exit_code == 0 and qmd(supervised, "health").exit_code == 0
    assert every_pipeline_answers(supervised) and every_pipeline_answers(supervised)


def test_status_in_a_home_whose_ports_another_homes_server_holds_says_so_with_the_index(served: Settings,
                                                                                       tmp_path: Path):
    other = {**env_of(served), "QMD_HOME": str(tmp_path / "home")}
    notes = tmp_path / "notes"
    shutil.copytree(ASSETS / "notes", notes)
    run = lambda *args: CliRunner().invoke(cli, list(args), env=other, catch_exceptions=False)  # noqa: E731
    assert run("collection", "add", str(notes), "--name", "mine").exit_code == 0
    assert run("update").exit_code == 0
    text = run("status")
    assert text.exit_code == 1
    assert text.stdout.startswith(f"index   {tmp_path / 'home' / 'index.sqlite'}  4 documents, ")
    assert f"Warning: server: the server at {served.http_url} refuses its model list to {tmp_path / 'home'} " \
           "(HTTP 403): it was started from another home" in text.stderr
    assert "HTTP Error 403: Forbidden" not in text.output.splitlines()[-1]
    data = json.loads(run("status", "--json").stdout)
    assert data["index"]["documents"] == 4 and data["live"] is True and "server" in data["problems"]


def test_two_commands_that_start_the_server_at_once_share_one_server(served: Settings, tmp_path: Path):
    """Two `qmdctl vsearch` processes against a home with no server: one starts it, the other waits for it."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(served.home / "config.toml", home / "config.toml")
    from qmd_triton.index.sqlite.index import SqliteIndex

    with SqliteIndex.open(served.index_path) as store, __import__("sqlite3").connect(home / "index.sqlite") as copy:
        store.conn.backup(copy)
    settings = make_settings(home, served.model_repository)
    env = {**os.environ, **env_of(settings)}
    cmd = [sys.executable, "-c", "from qmd_triton.cli import main; main()", "vsearch", VSEARCH_QUERY, "-n", "1",
           "--format", "files"]
    procs_ = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    try:
        results = [p.communicate(timeout=300) for p in procs_]
        assert [p.returncode for p in procs_] == [0, 0], results
        assert all(out.strip().endswith("notes/guide/batching.md") for out, _ in results)
        errors = "".join(err for _, err in results)
        assert errors.count("starting tritonserver on") == 1, errors
        assert "Traceback" not in errors and "run `qmdctl down` first" not in errors
        assert not (settings.run_dir / (server.LOG_FILE + ".1")).exists()  # a second start would rotate the log
        state = server.read_state(settings)
        assert state is not None and procs.is_running(state.owned)
        members = state.members()
    finally:
        down = qmd(settings, "down")
    assert down.exit_code == 0, down.output
    assert left_after(members) == []


def test_a_2mb_text_without_spaces_is_embedded_like_any_text(supervised: Settings):
    from qmd_triton.serving.client import QmdClient

    started = time.monotonic()
    with QmdClient(supervised.url()) as client:
        vectors = client.embed(["x" * (2 << 20), "short text"])
    assert vectors.shape == (2, 384) and np.isfinite(vectors).all()
    record("embed 2 MB without spaces (seconds, not a recovery)", time.monotonic() - started, TMP["root"])


def test_the_container_entry_point_reloads_a_dead_backend_and_passes_sigterm_on(exported_repo: Path, tmp_path: Path):
    """`qmdctl supervise -- tritonserver ...`, as compose and Kubernetes run it (here with the local binary)."""
    settings = make_settings(tmp_path / "home", exported_repo)
    backends = tritonserver.assemble_backends(tmp_path / "backends")
    key = "container-key"
    binary = str(tritonserver.pytriton_dir() / "bin" / "tritonserver")
    command = [binary, f"--model-repository={exported_repo}", f"--backend-directory={backends}",
               f"--http-address={settings.host}", f"--http-port={settings.http_port}",
               f"--grpc-address={settings.host}", f"--grpc-port={settings.grpc_port}",
               f"--metrics-address={settings.host}", f"--metrics-port={settings.metrics_port}",
               "--strict-readiness=true", "--disable-auto-complete-config", "--model-control-mode=explicit",
               "--load-model=*", *server.restricted_api_flags(key)]
    env = {**tritonserver.server_environment(settings), "QMD_ADMIN_KEY": key}
    entry = subprocess.Popen([sys.executable, "-c", "from qmd_triton.cli import main; main()", "supervise", "--",
                              *command], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    state = None
    try:
        deadline = time.monotonic() + 120
        while health.probe(base(settings), "qmd_search") is not None and time.monotonic() < deadline:
            assert entry.poll() is None
            time.sleep(0.5)
        [child] = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                   and procs.parent(int(p.name)) == entry.pid and procs.executable(int(p.name)) == binary]
        state = server.ServerState(pid=child, pgid=child, binary=binary, log="-", host=settings.host,
                                   http_port=settings.http_port, grpc_port=0, metrics_port=0, model_repository="",
                                   started_at=0, start_ticks=procs.start_ticks(child), backends=str(backends))
        [victim] = [pid for pid, m in state.stubs().items() if m == "qmd_retrieve"]
        os.kill(victim, signal.SIGKILL)  # a stub of the server this test's entry point started
        killed = time.monotonic()
        while time.monotonic() - killed < RECOVERY_BOUND_S:
            if list(state.stubs().values()).count("qmd_retrieve") == 1 and \
                    health.probe(base(settings), "qmd_vsearch") is None:
                break
            time.sleep(0.2)
        record("container entry point: qmd_retrieve stub SIGKILL", time.monotonic() - killed, TMP.get("root", tmp_path))
        assert health.probe(base(settings), "qmd_vsearch") is None  # no index in this home: a 400 answers
        assert victim not in state.stubs()
        entry.send_signal(signal.SIGTERM)  # ours: started above
        _, err = entry.communicate(timeout=90)
        assert entry.returncode == 0, err
        assert "qmd_retrieve: 1 of 1 backend process gone (its backend died); reloading it" in err
        assert not procs.is_running(procs.Owned(child, binary, state.start_ticks))
        assert [p for p in procs.group_members(child) if not procs.is_zombie(p)] == []
    finally:
        if entry.poll() is None:
            entry.send_signal(signal.SIGTERM)  # it stops its server
            try:
                entry.wait(timeout=60)
            except subprocess.TimeoutExpired:
                entry.kill()
                entry.wait()
        if state is not None:  # whatever of the server it started is still there: stopped, member by member
            procs.stop_members(state.members, timeout_s=10, leader=state.pid)
