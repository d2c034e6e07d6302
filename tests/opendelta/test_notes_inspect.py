"""OpenDelta's docs/source/notes/inspect.md, run on fxdelta.

Two changes: ``opendelta`` / ``bigmodelvis`` become ``fxdelta``, and bert-base-uncased is a tiny
``BertForMaskedLM`` built from its config class (the page's ``intermdiate`` typo is spelled right here).
"""

from od_tiny import tiny, trainable, under

from fxdelta import LowRankAdapterModel, Visualization


def test_visualize_then_add_a_delta(capsys):
    backbone_model = tiny("BertForMaskedLM")
    print(backbone_model)
    capsys.readouterr()

    model_vis = Visualization(backbone_model)
    model_vis.structure_graph()
    before = capsys.readouterr().out
    assert "intermediate (BertIntermediate)" in before and "deltas" not in before
    print(backbone_model.bert.encoder.layer[0].intermediate)
    assert "BertIntermediate" in capsys.readouterr().out

    delta_model = LowRankAdapterModel(backbone_model)
    delta_model.freeze_module(exclude=["cls", "intermediate", "LayerNorm"])
    Visualization(backbone_model).structure_graph()
    after = capsys.readouterr().out
    assert "deltas (low_rank_adapter)" in after
    # "deltas" is not excluded: the low-rank adapters are frozen with the rest of the backbone
    assert trainable(backbone_model) == {
        n for n, _ in backbone_model.named_parameters() if under(n, ["cls", "intermediate", "LayerNorm"])
    }
    assert not any(p.requires_grad for p in delta_model.parameters())


def test_visualize_nodes_without_parameters(capsys):
    backbone_model = tiny("BertForMaskedLM")
    LowRankAdapterModel(backbone_model)
    Visualization(backbone_model).structure_graph()
    plain = capsys.readouterr().out
    Visualization(backbone_model).structure_graph(keep_non_params=True)
    kept = capsys.readouterr().out
    assert "dropout (Dropout)" in kept and "dropout (Dropout)" not in plain  # dropouts and activations are kept
    assert "intermediate_act_fn" in kept and "intermediate_act_fn" not in plain
