"""OpenDelta's docs/source/notes/custom.md, run on fxdelta.

Two changes: ``opendelta`` / ``bigmodelvis`` become ``fxdelta``, and facebook/bart-base is a tiny
``BartForSequenceClassification`` (what AutoModelForSequenceClassification gives) built from its config
class. Option 3 of step 5 (DeltaCenter) is in test_notes_deltacenter.py.
"""

import torch
from od_tiny import ids, tiny, trainable, under

from fxdelta import AdapterModel, AutoDeltaModel, Visualization


def bart_base():
    return tiny("BartForSequenceClassification", num_labels=3)


def steps_2_to_4():
    model = bart_base()
    Visualization(model).structure_graph()
    delta_model = AdapterModel(backbone_model=model, modified_modules=["fc2"], bottleneck_dim=12)
    delta_model.log()
    delta_model.freeze_module(exclude=["deltas", "layernorm_embedding"])
    delta_model.log()
    delta_model.freeze_module(exclude=["deltas", "layernorm_embedding"], set_state_dict=True)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        model(input_ids=ids(), labels=torch.tensor([0, 2])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model, delta_model


def test_custom_steps_2_to_4(capsys):
    model = bart_base()
    before = model(input_ids=ids()).logits
    Visualization(model).structure_graph()
    assert "fc2 (Linear)" in capsys.readouterr().out

    delta_model = AdapterModel(backbone_model=model, modified_modules=["fc2"], bottleneck_dim=12)
    delta_model.log()
    assert "deltas (adapter)" in capsys.readouterr().out
    assert sorted(delta_model.targets) == sorted(n for n, _ in model.named_modules() if n.endswith(".fc2"))
    assert {tuple(p.shape) for n, p in delta_model.named_parameters() if n.endswith("down_proj.weight")} == {(12, 32)}
    assert torch.equal(model(input_ids=ids()).logits, before)

    delta_model.freeze_module(exclude=["deltas", "layernorm_embedding"])
    delta_model.log()
    expected = {n for n, _ in model.named_parameters() if under(n, ["deltas", "layernorm_embedding"])}
    assert trainable(model) == expected
    delta_model.freeze_module(exclude=["deltas", "layernorm_embedding"], set_state_dict=True)
    assert set(model.state_dict()) == expected

    # STEP 4: the usual optimizer; OpenDelta leaves train()/eval() to the user
    assert not model.training
    model.train()
    assert all(m.training for m in model.modules())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n not in expected}
    for _ in range(3):
        model(input_ids=ids(), labels=torch.tensor([0, 2])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert not torch.equal(model(input_ids=ids()).logits, before)


def test_custom_try_different_positions():
    model = bart_base()
    delta_model = AdapterModel(backbone_model=model, modified_modules=["final_layer_norm"], bottleneck_dim=12)
    expected = [f"model.{stack}.layers.{i}.final_layer_norm" for stack in ("encoder", "decoder") for i in range(2)]
    assert delta_model.targets == expected


def test_custom_save_and_load_option_1(tmp_path):
    model, delta_model = steps_2_to_4()
    delta_model.save_finetuned(tmp_path / "some_local_path/")

    model2 = bart_base()
    delta_model2 = AutoDeltaModel.from_finetuned(tmp_path / "some_local_path/", backbone_model=model2)
    assert isinstance(delta_model2, AdapterModel) and delta_model2.targets == delta_model.targets
    assert torch.equal(model2(input_ids=ids()).logits, model(input_ids=ids()).logits)
    assert all(p.requires_grad for p in model2.parameters())  # "the loaded model is fully trainable"


def test_custom_save_and_load_option_2(tmp_path):
    model, _ = steps_2_to_4()
    (tmp_path / "some_local_path").mkdir()
    torch.save(model.state_dict(), tmp_path / "some_local_path/pytorch_model.bin")
    assert set(model.state_dict()) == trainable(model)  # set_state_dict=True: only the trainable part is saved

    model2 = bart_base()
    AdapterModel(backbone_model=model2, modified_modules=["fc2"], bottleneck_dim=12)
    result = model2.load_state_dict(torch.load(tmp_path / "some_local_path/pytorch_model.bin"), strict=False)
    assert result.unexpected_keys == []
    assert torch.equal(model2(input_ids=ids()).logits, model(input_ids=ids()).logits)
