"""OpenDelta's examples/examples_prompt/src/run.py, src/test.py and README.md, run on fxdelta.

Only the lines that touch OpenDelta are ported (the Trainer, datasets and metrics around them are not).
Two changes: ``opendelta`` / ``bigmodelvis`` become ``fxdelta``, and the backbones are tiny models built
from their config classes: roberta-large through backbones/bert.py is a ``RobertaForMaskedLM``, t5-base
through backbones/t5.py a ``T5ForConditionalGeneration``.
"""

import dataclasses
import io
from dataclasses import asdict, dataclass, field

import pytest
import torch
from od_tiny import ids, perturb, tiny, trainable

import fxdelta
from fxdelta import AutoDeltaConfig, AutoDeltaModel, Visualization


@dataclass
class DeltaArguments:
    """utils/args.py's DeltaArguments (defaults), filled from lora_roberta-large/superglue-boolq.json."""

    delta_type: str = ""
    backbone_model: str | None = ""
    model_path_public: str | None = ""
    modified_modules: list[str] | None = None
    unfrozen_modules: list[str] | None = field(default_factory=lambda: ["deltas"])
    finetuned_delta_path: str | None = None
    force_download: bool | None = False
    local_files_only: bool | None = False
    delta_cache_dir: str | None = None
    delay_push: bool | None = True


@dataclass
class LoRAArguments:
    lora_r: int | None = 8


def delta_args_of_the_boolq_run():
    delta_args = DeltaArguments(
        delta_type="lora",
        backbone_model="roberta-large",
        model_path_public="roberta-large",
        modified_modules=["query", "value"],
        unfrozen_modules=["deltas", "layer_norm", "final_layer_norm"],
    )
    # DeltaArguments.merge_arguments(LoRAArguments()): one dataclass with both sets of fields
    merged = dataclasses.make_dataclass(
        "DeltaArgument",
        fields=[(f.name, f.type, getattr(LoRAArguments(), f.name)) for f in dataclasses.fields(LoRAArguments)],
        bases=(DeltaArguments,),
    )
    return merged(**asdict(delta_args))


def test_run_py_builds_freezes_and_logs(capsys):
    model = tiny("RobertaForMaskedLM")
    delta_args = delta_args_of_the_boolq_run()
    Visualization(model).structure_graph()

    if delta_args.delta_type.lower() != "none":
        with pytest.warns(fxdelta.FxDeltaWarning, match="'backbone_model', 'model_path_public'") as caught:
            delta_config = AutoDeltaConfig.from_dict(asdict(delta_args))
        assert caught[0].filename == __file__  # the warning points at the caller's line
        delta_model = AutoDeltaModel.from_config(delta_config, backbone_model=model)
        with pytest.warns(fxdelta.FxDeltaWarning, match="'final_layer_norm' matches nothing"):
            delta_model.freeze_module(set_state_dict=True)
        capsys.readouterr()
        delta_model.log(delta_ratio=True, trainable_ratio=True, visualization=True)

    out = capsys.readouterr().out.replace(",", "")
    assert "deltas (lora)" in out  # visualization=True
    assert str(sum(p.numel() for p in model.parameters() if p.requires_grad)) in out  # trainable_ratio=True
    assert str(delta_model.num_parameters()) in out  # delta_ratio=True
    assert delta_model.config.lora_r == 8
    assert delta_model.targets == [
        f"roberta.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")
    ]
    # "layer_norm" names a real module (the MLM head's); "final_layer_norm" names nothing in RoBERTa (a warning)
    head_norm = {"lm_head.layer_norm.weight", "lm_head.layer_norm.bias"}
    assert trainable(model) == {n for n, _ in delta_model.named_parameters()} | head_norm


def test_run_py_saves_for_delta_center(tmp_path):
    model = tiny("RobertaForMaskedLM")
    delta_model = AutoDeltaModel.from_config(AutoDeltaConfig.from_dict({"delta_type": "lora"}), backbone_model=model)
    delta_model.freeze_module(set_state_dict=True)
    all_results = {"test": {"superglue-boolq": {"test_average_metrics": 0.5}}}
    with pytest.raises(fxdelta.FxDeltaError, match=r"(?i)not supported|local"):
        delta_model.save_finetuned(
            finetuned_delta_path=str(tmp_path / "delta_checkpoints"),
            push_to_dc=True,  # every shipped config sets push_to_dc
            center_args={"test_performance": all_results["test"]["superglue-boolq"]["test_average_metrics"]},
            center_args_pool={"delta_type": "lora", "backbone_model": "roberta-large"},
            list_tags=["NLI"],
            dict_tags={"purpose": "for testing"},
            delay_push=True,
            test_result=all_results["test"],
        )


def _finetuned_adapter(directory):
    """A finetuned adapter on t5-base, as run.py leaves it in finetuned_delta_path (saved locally here)."""
    trained = tiny("T5ForConditionalGeneration")
    delta_model = AutoDeltaModel.from_config(AutoDeltaConfig.from_dict({"delta_type": "adapter"}), trained)
    perturb(delta_model.parameters())
    delta_model.save_finetuned(directory)
    return trained


def src_test_py(model, delta_args):
    """src/test.py, lines 150-163."""
    Visualization(model).structure_graph(file=io.StringIO())

    if delta_args.delta_type.lower() != "none":
        from fxdelta import AdapterConfig, AdapterModel

        delta_config = AdapterConfig.from_finetuned(finetuned_delta_path=delta_args.finetuned_delta_path)
        delta_model = AdapterModel.from_finetuned(
            finetuned_delta_path=delta_args.finetuned_delta_path,
            delta_config=delta_config,
            backbone_model=model,
            force_download=delta_args.force_download,
            cache_dir=delta_args.delta_cache_dir,
        )
        delta_model.log(delta_ratio=True, trainable_ratio=True, visualization=True)
        return delta_model


def test_test_py_loads_a_finetuned_adapter(tmp_path):
    trained = _finetuned_adapter(tmp_path / "delta_checkpoints")
    model = tiny("T5ForConditionalGeneration")
    delta_args = DeltaArguments(delta_type="adapter", finetuned_delta_path=str(tmp_path / "delta_checkpoints"))
    delta_model = src_test_py(model, delta_args)
    assert delta_model.targets == fxdelta.delta_models(trained)["adapter"].targets
    inputs = dict(input_ids=ids(), decoder_input_ids=ids(seq=4))
    assert torch.equal(model(**inputs).logits, trained(**inputs).logits)


def test_readme_quick_test_from_delta_center(tmp_path):
    # README.md's "quick testing": src/test.py with a DeltaCenter id, --force_download True, a cache dir
    model = tiny("T5ForConditionalGeneration")
    delta_args = DeltaArguments(
        delta_type="adapter",
        finetuned_delta_path="thunlp/t5-base_adapter_superglue-cb_20220701171436c80",
        force_download=True,
        delta_cache_dir=str(tmp_path / "delta_checkpoints"),
    )
    with pytest.raises(fxdelta.FxDeltaError, match=r"(?i)\b(local|folder)|not supported"):
        src_test_py(model, delta_args)
    assert fxdelta.delta_models(model) == {}
