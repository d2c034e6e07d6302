"""OpenDelta's docs/source/notes/keyfeature.md, run on fxdelta.

The page is mostly prose; what it promises about a patched backbone is checked here. Its pseudo-input
rule (models without ``dummy_inputs`` get an integer ``input_ids``-like tensor) is exercised on a toy
model like namebasedaddr.md's; "doc-preserving insertion" on a backbone whose forwards have docstrings.
"""

import io

import torch
import torch.nn as nn
from od_tiny import ids, tiny

from fxdelta import AdapterModel, LoraModel, Visualization


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(7, 11)
        self.fc2 = nn.Linear(11, 7)

    def forward(self, hiddens):
        """Block.forward's own documentation."""
        return hiddens + self.fc2(torch.relu(self.fc1(hiddens)))


class TokenModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(10, 7)
        self.blocks = nn.Sequential(Block(), Block())

    def forward(self, input_ids):
        """TokenModel.forward's own documentation."""
        return self.blocks(self.embedding(input_ids))


def test_pseudo_input_for_models_without_dummy_inputs():
    root = TokenModel()
    assert not hasattr(root, "dummy_inputs")
    pseudo_input = torch.tensor([[0, 0, 0]])
    before = root(pseudo_input)
    delta_model = AdapterModel(backbone_model=root, modified_modules=["fc1"], bottleneck_dim=3)
    # the adapters are sized from what flowed through fc1 on the pseudo input: 11 features
    assert delta_model.num_parameters() == 2 * (2 * 11 * 3 + 3 + 11)
    assert torch.equal(root(pseudo_input), before)


def test_doc_preserving_insertion():
    root = TokenModel()
    docs = {name: type(m).forward.__doc__ for name, m in root.named_modules()}
    AdapterModel(backbone_model=root, modified_modules=["fc2", "blocks.1"], bottleneck_dim=3)
    LoraModel(backbone_model=root, modified_modules=["fc1"])
    for name, m in root.named_modules():
        if name in docs:
            assert m.forward.__doc__ == docs[name], name or "<root>"


def test_plug_and_play_leaves_the_backbone_code_alone():
    model = tiny("BertForMaskedLM")
    classes = {name: type(m) for name, m in model.named_modules()}
    keys = set(model.state_dict())
    before = model(input_ids=ids()).logits
    delta_model = LoraModel(model)
    Visualization(model).structure_graph(file=io.StringIO())
    assert all(type(model.get_submodule(name)) is cls for name, cls in classes.items())
    assert keys <= set(model.state_dict())  # existing names stay; the delta's are added
    assert torch.equal(model(input_ids=ids()).logits, before)
    delta_model.detach()
    assert set(model.state_dict()) == keys
