"""The unit tier's guard: no tritonserver, no Milvus Lite, no exported model (DESIGN.md section 6).

`make check` runs this tier alone, on a checkout where `make models` may never have run, in under two minutes. A
unit test that needs one of those parts fails here with one line naming the tier it belongs to (tests/integration
for Milvus Lite and exported models, tests/triton for a tritonserver) instead of passing here and failing, or
slowing `make check` down, on a fresh clone:

- the fixtures that bring them (``exported_repo``, ``copy_repo``, ``triton``, ``milvus_uri``) fail when a unit
  test asks for them, also through ``request.getfixturevalue``;
- the ``backend`` fixture has only ``sqlite`` here: tests/integration/test_milvus_*.py run the same
  tests on Milvus Lite;
- while a unit test runs, an audit hook refuses to start a tritonserver or a Milvus Lite server, to import
  ``milvus_lite`` and to open what `qmdctl export` writes into the checkout's model_repository/ (the files under
  ``<model>/1/`` other than the committed ``model.py``); what it refused also fails the test after it ran,
  in case the test's code caught the error.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import REPO

_REPO = str(REPO.resolve()) + "/"
_refused: list[str] = []
_active = False


def _exported(relative: str) -> bool:
    """Whether a path inside a model repository is one `qmdctl export` writes (``<model>/1/`` but for model.py)."""
    parts = relative.split("/")
    return len(parts) >= 3 and parts[1] == "1" and not parts[-1].endswith(".py") and parts[-1] != ".gitkeep"


def _refusal(event: str, args: tuple) -> tuple[str, str] | None:
    """What a unit test is doing that its tier forbids, and the tier that allows it; None where it may."""
    if event == "open":
        path = args[0]
        if isinstance(path, (str, bytes)):
            path = os.fsdecode(path)
            if "model_repository" in path and (path := os.path.realpath(path)).startswith(_REPO) \
                    and "__pycache__" not in path and _exported(path[len(_REPO):]):
                return f"opens the exported model file {path}", "tests/integration"
    elif event == "subprocess.Popen":
        argv = [str(a) for a in (args[1] if isinstance(args[1], (list, tuple)) else [args[1]])]
        if argv and argv[0].endswith("tritonserver"):
            return "starts a tritonserver", "tests/triton"
        if "milvus_lite" in argv or any(a.endswith("milvus-lite") for a in argv[:1]):
            return "starts a Milvus Lite server", "tests/integration"
    elif event == "import" and (args[0] == "milvus_lite" or str(args[0]).startswith("milvus_lite.")):
        return "imports milvus_lite", "tests/integration"
    return None


def _audit(event: str, args: tuple) -> None:
    if not _active or event not in ("open", "subprocess.Popen", "import"):
        return
    refused = _refusal(event, args)
    if refused:
        line = f"a unit test {refused[0]}: it belongs in {refused[1]} (DESIGN.md section 6; tests/unit/conftest.py)"
        _refused.append(line)
        raise RuntimeError(line)


sys.addaudithook(_audit)


def _guarded():
    global _active
    _refused.clear()
    _active = True
    try:
        result = yield
    finally:
        _active = False
    if _refused:
        pytest.fail(_refused[0], pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    return (yield from _guarded())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    return (yield from _guarded())


@pytest.fixture(scope="session", autouse=True)
def unexported_repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """What a fresh clone has before `make models`: the committed configs and adapters, no exported file.

    `qmdctl` reads the model repository's export records where it is at hand (``update`` counts tokens with the
    exported tokenizer when there is one): in this tier it is this copy (``QMD_MODEL_REPOSITORY``), so a unit
    test behaves the same on a fresh clone as on a checkout where the models were exported."""
    target = tmp_path_factory.mktemp("unexported") / "model_repository"
    shutil.copytree(REPO, target, ignore=lambda folder, names: [
        n for n in names if n == "__pycache__" or _exported(os.path.relpath(os.path.join(folder, n), REPO))])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QMD_MODEL_REPOSITORY", str(target))
        yield target


def _not_here(what: str, tier: str) -> None:
    pytest.fail(f"a unit test asked for {what}: it belongs in {tier} (DESIGN.md section 6; tests/unit/conftest.py)",
                pytrace=False)


@pytest.fixture(scope="session")
def exported_repo() -> Path:
    _not_here("the exported model repository", "tests/integration")


@pytest.fixture
def copy_repo() -> Path:
    _not_here("a copy of the exported model repository", "tests/integration")


@pytest.fixture(scope="session")
def triton():
    _not_here("a tritonserver", "tests/triton")


@pytest.fixture(scope="session")
def milvus_uri() -> str:
    _not_here("a Milvus Lite server", "tests/integration")


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """The unit tier's index backend: sqlite only (Milvus in tests/integration/test_milvus_*.py)."""
    return request.param, ""
