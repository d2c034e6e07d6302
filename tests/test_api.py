"""The compiler API: compile a spec (dict, list, config, JSON file), inspect the graphs, save and load."""

import io
import json
import subprocess
import sys

import networkx as nx
import pytest
import torch

import fxdelta
from fxdelta import LoraConfig
from fxdelta.compiler.state import BackboneState
from fxdelta.inspect import graph_nodes, to_networkx
from fxdelta.sites.base import SiteKind

from zoo import ZOO


def perturb(model):
    with torch.no_grad():
        for handle in fxdelta.delta_models(model).values():
            for p in handle.parameters():
                p.normal_()


@pytest.mark.parametrize("form", ["dict", "list", "config", "json-file", "json-list-file"])
def test_compile_accepts_every_spec_form(form, tmp_path):
    zm = ZOO["bert"]
    model = zm.build()
    spec = {"delta_type": "lora", "lora_r": 4, "modified_modules": ["query"]}
    value = {
        "dict": spec,
        "list": [spec, {"delta_type": "bitfit", "modified_modules": ["output.dense"]}],
        "config": LoraConfig(lora_r=4, modified_modules=["query"]),
        "json-file": tmp_path / "spec.json",
        "json-list-file": tmp_path / "specs.json",
    }[form]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "specs.json").write_text(json.dumps([spec, {"delta_type": "adapter"}]))
    assert fxdelta.compile(model, value) is model  # in place
    handles = fxdelta.delta_models(model)
    assert handles["lora"].config.lora_r == 4
    assert len(handles["lora"].targets) == 2
    assert len(handles) == (2 if "list" in form else 1)


def test_show_graph_prints_code_and_nodes():
    zm = ZOO["gpt2"]
    model = zm.build()
    fxdelta.compile(model, {"delta_type": "adapter", "modified_modules": ["mlp.c_fc"]})
    out = io.StringIO()
    fxdelta.show_graph(model, "transformer.h.0.mlp.c_fc", file=out)
    text = out.getvalue()
    # c_fc sits inside GPT2MLP, which traces: the region's own graph is shown, with the delta in it
    assert "traced region on transformer.h.0.mlp (GPT2MLP)" in text
    # the delta is called in its own dtype, its result added to c_fc's output (fxdelta.core.precision.run)
    assert "c_fc_deltas_adapter_1 = self.c_fc.deltas.adapter" in text
    assert "fxdelta_core_precision_run(c_fc_deltas_adapter_1, c_fc, c_fc)" in text
    assert "c_fc_deltas_adapter" in text and "(1, 8, 128)" in text  # node table with FakeTensor shapes
    with pytest.raises(fxdelta.SelectorError, match="no attached delta"):
        fxdelta.show_graph(model, "transformer.h.0.attn", file=out)


def test_rewritten_graph_routes_through_the_delta():
    model = ZOO["llama"].build()
    (handle,) = [fxdelta.LoraModel(model, modified_modules=["mlp.up_proj"])]
    graphs = handle.rewritten_graphs()
    assert set(graphs) == {"model.layers.0.mlp", "model.layers.1.mlp"}
    gm = graphs["model.layers.0.mlp"]
    g = to_networkx(gm)
    module = next(n for n, d in g.nodes(data=True) if d["target"] == "up_proj.deltas.lora")
    (delta,) = g.successors(module)  # its call, in its own dtype (fxdelta.core.precision.run)
    placeholder = next(n for n, d in g.nodes(data=True) if d["op"] == "placeholder")
    # parallel route: the delta reads the MLP's input and feeds the output
    assert nx.has_path(g, placeholder, delta) and nx.has_path(g, delta, "output")
    rows = {r["name"]: r for r in graph_nodes(gm)}
    assert rows[delta]["op"] == "call_function" and rows[delta]["target"] == "run"


def test_save_and_load_every_attached_delta(tmp_path):
    zm = ZOO["t5"]
    model, x = zm.build(), zm.inputs()
    fxdelta.compile(model, [{"delta_type": "lora"}, {"delta_type": "adapter"}, {"delta_type": "bitfit"}])
    perturb(model)
    fxdelta.delta_models(model)["bitfit"].detach()  # only attached deltas are saved
    with torch.no_grad():
        expected = zm.run(model, x)
    fxdelta.save(model, tmp_path / "ckpt")
    fresh = fxdelta.load(zm.build(), tmp_path / "ckpt")
    assert sorted(fxdelta.delta_models(fresh)) == ["adapter", "lora"]
    with torch.no_grad():
        assert torch.equal(zm.run(fresh, x), expected)


def test_transformer_encoder_fast_path_still_sees_the_delta():
    """In eval mode without autograd, nn.TransformerEncoderLayer skips calling linear1 unless it is
    hooked; fxdelta notices during observation and uses hooks there."""
    zm = ZOO["transformer-encoder"]
    model, x = zm.build(), zm.inputs()
    with torch.no_grad():
        base = zm.run(model, x)
    fxdelta.compile(model, {"delta_type": "lora", "modified_modules": ["linear1"]})
    assert {s.kind for s in BackboneState.find(model).sites} == {SiteKind.HOOKS}
    perturb(model)
    with torch.no_grad():
        assert not torch.allclose(zm.run(model, x), base)


def test_import_is_light(tmp_path):
    heavy = ("transformers", "rich", "safetensors", "networkx")
    code = f"import sys, fxdelta; print(sorted(m for m in {heavy} if m in sys.modules))"
    # cwd away from the source tree, so the installed package is imported
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert out.strip() == "[]"
