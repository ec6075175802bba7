"""The integration tier: real Milvus Lite and the exported models, no tritonserver (DESIGN.md section 6).

Its tests need what `make check` does not build: the model repository with every model exported (``exported_repo``,
one session export into a temporary copy; see tests/conftest.py), a Milvus Lite server (``milvus_uri``, one per
session) or the exporters themselves. They carry the ``integration`` marker; `make test` and CI run them, `make
check` does not.

The backend contract: the unit tier runs every test that takes the ``backend`` fixture on sqlite; here ``backend``
is Milvus Lite, and tests/integration/test_milvus_*.py run those same tests again (:func:`on_milvus`).
"""

from __future__ import annotations

import inspect
from types import ModuleType

import pytest


@pytest.fixture(params=["milvus"])
def backend(request: pytest.FixtureRequest, milvus_uri: str) -> tuple[str, str]:
    """The integration tier's index backend: the session's Milvus Lite (sqlite runs in the unit tier)."""
    return request.param, milvus_uri


def _arguments(obj: object) -> set[str]:
    if hasattr(obj, "_get_wrapped_function"):  # a fixture: its function
        obj = obj._get_wrapped_function()
    return set(inspect.signature(obj).parameters)


def on_milvus(module: ModuleType) -> dict[str, object]:
    """The tests of a unit module that take ``backend`` (directly or through one of its fixtures), with the
    module's fixtures: the names a module of this tier binds to collect them again, here on Milvus Lite."""
    fixtures = {n: o for n, o in vars(module).items() if hasattr(o, "_get_wrapped_function")}
    on_backend = {"backend"}
    while True:  # the module's fixtures that take backend, through each other
        more = {n for n, o in fixtures.items() if _arguments(o) & on_backend} - on_backend
        if not more:
            break
        on_backend |= more
    tests = {n: o for n, o in vars(module).items()
             if n.startswith("test_") and callable(o) and _arguments(o) & on_backend}
    assert tests, f"{module.__name__} has no test on the backend fixture"
    return {**fixtures, **tests}
