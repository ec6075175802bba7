"""The tests of tests/unit/test_index_cli.py that take the ``backend`` fixture, on Milvus Lite (tests/integration/conftest.py)."""

from ..unit import test_index_cli
from .conftest import on_milvus

globals().update(on_milvus(test_index_cli))
