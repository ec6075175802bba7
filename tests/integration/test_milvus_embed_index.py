"""The tests of tests/unit/test_embed_index.py that take the ``backend`` fixture, on Milvus Lite (tests/integration/conftest.py)."""

from ..unit import test_embed_index
from .conftest import on_milvus

globals().update(on_milvus(test_embed_index))
