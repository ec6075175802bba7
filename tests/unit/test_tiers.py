"""The unit tier's guard (tests/unit/conftest.py): a unit test that needs a tritonserver, Milvus Lite or an exported
model fails with one line naming the tier it belongs in; one that reads the committed configs passes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from ..conftest import REPO

EXPORTED = (REPO / "qmd_tokenize" / "1" / "tokenizer.json").resolve()
PLANTED = '''
import subprocess
import sys

from ..conftest import REPO


def test_asks_for_the_export(exported_repo): pass
def test_asks_for_a_copy_of_the_export(copy_repo): pass
def test_asks_for_milvus(milvus_uri): pass
def test_asks_for_triton(triton): pass
def test_asks_for_milvus_at_run_time(request): request.getfixturevalue("milvus_uri")
def test_opens_an_exported_file(): (REPO / "qmd_tokenize" / "1" / "tokenizer.json").read_bytes()
def test_imports_milvus_lite(): import milvus_lite  # noqa: F401
def test_starts_milvus_lite(): subprocess.run([sys.executable, "-m", "milvus_lite", "server", "--help"])
def test_starts_a_tritonserver(): subprocess.run(["/opt/tritonserver/bin/tritonserver", "--help"])
def test_runs_on_sqlite_only(backend): assert backend == ("sqlite", "")
def test_reads_the_committed_configs(): assert (REPO / "qmd_tokenize" / "config.pbtxt").read_text()
'''


def test_the_guard_fails_each_way_a_unit_test_reaches_beyond_its_tier(tmp_path: Path):
    tests = Path(__file__).parents[1]
    (tmp_path / "tests" / "unit").mkdir(parents=True)
    for name in ("__init__.py", "conftest.py", "fakes.py", "unit/__init__.py", "unit/conftest.py"):
        shutil.copyfile(tests / name, tmp_path / "tests" / name)
    (tmp_path / "tests" / "unit" / "test_planted.py").write_text(PLANTED)
    report = tmp_path / "report.xml"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                          "tests/unit"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        outcomes[case.get("name").split("[")[0]] = problem.get("message", "") if problem is not None else "passed"
    tier = "(DESIGN.md section 6; tests/unit/conftest.py)"
    expected = {
        "test_asks_for_the_export": f"asked for the exported model repository: it belongs in tests/integration {tier}",
        "test_asks_for_a_copy_of_the_export": "asked for a copy of the exported model repository: it belongs in "
                                              f"tests/integration {tier}",
        "test_asks_for_milvus": f"asked for a Milvus Lite server: it belongs in tests/integration {tier}",
        "test_asks_for_triton": f"asked for a tritonserver: it belongs in tests/triton {tier}",
        "test_asks_for_milvus_at_run_time": f"asked for a Milvus Lite server: it belongs in tests/integration {tier}",
        "test_opens_an_exported_file": f"opens the exported model file {EXPORTED}: it belongs in tests/integration",
        "test_imports_milvus_lite": f"imports milvus_lite: it belongs in tests/integration {tier}",
        "test_starts_milvus_lite": f"starts a Milvus Lite server: it belongs in tests/integration {tier}",
        "test_starts_a_tritonserver": f"starts a tritonserver: it belongs in tests/triton {tier}",
    }
    assert sorted(outcomes) == sorted([*expected, "test_runs_on_sqlite_only", "test_reads_the_committed_configs"])
    for name, message in expected.items():
        assert f"a unit test {message}" in outcomes[name], (name, outcomes[name])
    assert outcomes["test_runs_on_sqlite_only"] == outcomes["test_reads_the_committed_configs"] == "passed", \
        run.stdout[-3000:]
