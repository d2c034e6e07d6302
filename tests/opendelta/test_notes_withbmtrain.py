"""OpenDelta's docs/source/notes/withbmtrain.md, run on fxdelta.

"Pass ``backend='bmt'`` in config or delta model initialization": BMTrain is not part of fxdelta, so both
must fail with a clear fxdelta error. Model: a tiny ``BertForMaskedLM`` built from its config class.
"""

import pytest
from od_tiny import tiny

import fxdelta
from fxdelta import AdapterModel, AutoDeltaConfig, AutoDeltaModel


def test_backend_bmt_in_the_config():
    model = tiny("BertForMaskedLM")
    with pytest.raises(fxdelta.FxDeltaError, match=r"(?i)not supported"):
        AutoDeltaModel.from_config(AutoDeltaConfig.from_dict({"delta_type": "lora", "backend": "bmt"}), model)
    assert fxdelta.delta_models(model) == {}


def test_backend_bmt_in_the_delta_model():
    model = tiny("BertForMaskedLM")
    with pytest.raises(fxdelta.FxDeltaError, match=r"(?i)not supported"):
        AdapterModel(backbone_model=model, backend="bmt")
    assert fxdelta.delta_models(model) == {}
