"""OpenDelta's docs/source/notes/unifyname.md, run on fxdelta.

The page gives BERT's common structure mapping (original name -> common name) and no code; this checks
that the common names it lists address the modules it maps them to, with ``common_structure=True``
(OpenDelta's switch to read ``modified_modules`` in common names). Model: a tiny ``BertForMaskedLM``.
"""

import pytest
from od_tiny import tiny

from fxdelta import AdapterModel, LoraModel

# the page's mapping, inside bert.encoder.layer.$ (common name -> original tail)
BERT_MAPPING = {
    "attn.q": "attention.self.query",
    "attn.k": "attention.self.key",
    "attn.v": "attention.self.value",
    "attn.proj": "attention.output.dense",
    "ff.w1": "intermediate.dense",
    "ff.w2": "output.dense",
}


@pytest.mark.parametrize("common_name", sorted(BERT_MAPPING))
def test_common_names_of_bert_linears(common_name):
    model = tiny("BertForMaskedLM")
    delta_model = LoraModel(backbone_model=model, modified_modules=[common_name], common_structure=True)
    assert delta_model.targets == [f"bert.encoder.layer.{i}.{BERT_MAPPING[common_name]}" for i in range(2)]


def test_common_name_of_bert_layer_norms():
    model = tiny("BertForMaskedLM")
    delta_model = AdapterModel(backbone_model=model, modified_modules=["layer_norm"], common_structure=True)
    # attn.layer_norm and ff.layer_norm of every block; the embeddings' LayerNorm has no common name
    assert delta_model.targets == [
        f"bert.encoder.layer.{i}.{tail}"
        for i in range(2)
        for tail in ("attention.output.LayerNorm", "output.LayerNorm")
    ]
