"""The tests of tests/unit/test_backup.py that take the ``backend`` fixture, on Milvus Lite (tests/integration/conftest.py)."""

from ..unit import test_backup
from .conftest import on_milvus

globals().update(on_milvus(test_backup))
