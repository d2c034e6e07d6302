"""OpenDelta's docs/source/notes/quickstart.md, run on fxdelta.

Two changes: ``from fxdelta import ...`` and bert-large-cased built as a tiny ``BertForSequenceClassification``
(what AutoModelForSequenceClassification gives) from its config class. The page's dataloader, optimizer and
loss are placeholders; three steps of AdamW and cross-entropy on one batch stand in for them.
"""

import torch
from od_tiny import ids, tiny, trainable, under
from safetensors.torch import load_file

from fxdelta import AdapterModel, AutoDeltaModel


def test_quickstart_migration(tmp_path):
    model = tiny("BertForSequenceClassification")
    original = {n: p.detach().clone() for n, p in model.named_parameters()}

    delta_model = AdapterModel(model)
    delta_model.freeze_module(exclude=["deltas", "classifier"])
    delta_model.log()
    # default positions: after each layer's attention output and FFN output projections
    assert sorted(delta_model.targets) == sorted(
        f"bert.encoder.layer.{i}.{m}" for i in range(2) for m in ("attention.output.dense", "output.dense")
    )
    assert trainable(model) == {n for n, _ in model.named_parameters() if under(n, ["deltas", "classifier"])}

    batch = {"input_ids": ids(), "labels": torch.tensor([0, 1])}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss_function = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        inputs = dict(batch)
        targets = inputs.pop("labels")
        outputs = model(**inputs).logits
        loss = loss_function(outputs, targets)
        loss.backward()
        optimizer.step()
        print(loss)
    model.eval()
    for n, p in model.named_parameters():
        if n in original:  # backbone tensors: frozen ones kept, the classifier trained
            assert torch.equal(p, original[n]) != n.startswith("classifier."), n

    delta_model.save_finetuned(tmp_path / "finetuned_bert")
    saved = load_file(tmp_path / "finetuned_bert" / "delta.safetensors")
    assert set(saved) == trainable(model)  # the adapters and the classifier, nothing else
    fresh = tiny("BertForSequenceClassification")
    AutoDeltaModel.from_finetuned(tmp_path / "finetuned_bert", backbone_model=fresh)
    assert torch.equal(fresh(input_ids=ids()).logits, model(input_ids=ids()).logits)
