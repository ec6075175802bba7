"""The committed model repository agrees with the contracts module."""

import pytest

from qmd_triton import contracts
from qmd_triton.contracts import DataType, TensorSpec
from qmd_triton.serving.repository import load_repository

from ..conftest import REPO


def test_tensor_spec_raises_when_name_is_not_snake_case():
    with pytest.raises(ValueError, match="snake_case"):
        TensorSpec("input.1", DataType.INT64, (-1,))


def test_model_lookup_raises_with_known_names_when_unknown():
    with pytest.raises(KeyError, match="qmd_embed"):
        contracts.model("nope")


@pytest.mark.parametrize("spec", contracts.MODEL_SPECS, ids=lambda s: s.name)
def test_config_matches_contract_for_every_model(spec: contracts.ModelSpec):
    configs = {m.name: m.config for m in load_repository(REPO)}
    cfg = configs[spec.name]
    assert cfg.max_batch_size == spec.max_batch_size
    for io, tensors in (("input", spec.inputs), ("output", spec.outputs)):
        declared = {t.name: t for t in getattr(cfg, io)}
        assert sorted(declared) == sorted(t.name for t in tensors), io
        for t in tensors:
            d = declared[t.name]
            assert "TYPE_" + type(d).DESCRIPTOR.fields_by_name["data_type"].enum_type.values_by_number[
                d.data_type
            ].name.removeprefix("TYPE_") == t.dtype.value
            assert tuple(d.dims) == t.dims
            if io == "input":
                assert d.optional == t.optional
