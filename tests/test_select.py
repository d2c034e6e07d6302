"""The addressing grammar (fxdelta/select.py): tail match, regexes, exclusions, and the errors.

A selector that matches nothing must fail loudly and suggest what the user meant; these tests
pin both the grammar and the quality of that suggestion.
"""

import ast
import re

import pytest

import fxdelta
from fxdelta import ConfigError, LoraModel, SelectorError
from fxdelta.spec.selectors import closest_names, compile_pattern, matches, select

from zoo import ZOO

# A BART-like name list, in named_modules() order ("" is the root).
NAMES = [
    "",
    "model",
    "model.encoder",
    "model.encoder.layers.0",
    "model.encoder.layers.0.self_attn",
    "model.encoder.layers.0.self_attn.out_proj",
    "model.encoder.layers.0.fc1",
    "model.encoder.layers.0.fc2",
    "model.encoder.layers.1",
    "model.encoder.layers.1.fc1",
    "model.encoder.layers.1.fc2",
    "model.encoder.layers.1.xfc2",
    "model.decoder.layers.0.fc2",
    "model.decoder.layers.0.attention.output.dense",
]


# -- tail match ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "pattern, name, expected",
    [
        ("fc2", "a.fc2", True),
        ("fc2", "fc2", True),  # a top-level module is its own tail
        ("fc2", "a.xfc2", False),  # not a dot boundary
        ("fc2", "a.fc2x", False),
        ("fc2", "a.fc2.b", False),  # the tail is the end of the name
        ("output.dense", "attention.output.dense", True),
        ("output.dense", "attention.xoutput.dense", False),
        ("output.dense", "output.dense.bias", False),
        ("layers.0.fc2", "model.encoder.layers.0.fc2", True),
        ("layers.0.fc2", "model.encoder.layers.10.fc2", False),  # "0" must be a whole segment
    ],
)
def test_tail_match_on_dot_boundaries(pattern, name, expected):
    assert matches(pattern, name) is expected


def test_tail_match_selects_every_layer_in_order():
    assert select(NAMES, ["fc2"]) == [
        "model.encoder.layers.0.fc2",
        "model.encoder.layers.1.fc2",
        "model.decoder.layers.0.fc2",
    ]


def test_exact_full_path_selects_only_that_module():
    assert select(NAMES, ["model.encoder.layers.1.fc2"]) == ["model.encoder.layers.1.fc2"]


def test_several_selectors_union_in_module_order_without_duplicates():
    # The order of the selectors does not reorder the result; overlapping selectors do not duplicate.
    got = select(NAMES, ["layers.1.fc2", "fc1", "model.encoder.layers.1.fc2"])
    assert got == ["model.encoder.layers.0.fc1", "model.encoder.layers.1.fc1", "model.encoder.layers.1.fc2"]


# -- regexes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["[r]", "re:"])
def test_regex_on_the_full_name(prefix):
    assert select(NAMES, [prefix + r"model\.encoder\.layers\.\d+\.fc2"]) == [
        "model.encoder.layers.0.fc2",
        "model.encoder.layers.1.fc2",
    ]
    assert matches(prefix + ".*fc2", "model.encoder.layers.1.xfc2")  # a regex is not bound to dots
    assert not matches(prefix + r"model\.encoder", "model.encoder.layers.0")  # it must reach the end


def test_re_is_a_full_match():
    assert not matches("re:fc2", "model.encoder.layers.0.fc2")


@pytest.mark.parametrize(
    "name, pattern, selected",
    [  # OpenDelta's rule for [r]: the leftmost search match is a tail of the name on a "." boundary
        ("bert.encoder.layer.3.attention", r"[r][0-5]\.attention", True),
        ("bert.encoder.layer.13.attention", r"[r][0-5]\.attention", False),
        ("bert.encoder.layer.3.attention.self", r"[r][0-5]\.attention", False),
        ("bert.encoder.layer.3.output.dense", r"[r](\d)+\.output.dense", True),
        ("bert.encoder.layer.3.attention.output.dense", r"[r](\d)+\.output.dense", False),
        ("decoder.block.20.layer.2.DenseReluDense.wi", r"[r]decoder.*((20)|(21)).*DenseReluDense\.wi", True),
        ("decoder.block.2.layer.2.DenseReluDense.wi", r"[r]decoder.*((20)|(21)).*DenseReluDense\.wi", False),
        ("in.decoder.block.21.layer.2.DenseReluDense.wi", r"[r]decoder.*((20)|(21)).*DenseReluDense\.wi", True),
        ("encoder.block.3.layer.0.SelfAttention.q", r"[r]Attention\.q", False),
        ("encoder.block.3.layer.0", r"[r][0-9]", False),  # the leftmost match, 3, does not end the name
        ("model.encoder.layers.0.fc2", "[r]fc2", True),
    ],
)
def test_r_regex_means_what_opendelta_documents(name, pattern, selected):
    assert matches(pattern, name) is selected


def test_regex_layer_range():
    assert select(NAMES, [r"[r].*layers\.[1-9]\.fc\d"]) == ["model.encoder.layers.1.fc1", "model.encoder.layers.1.fc2"]


def test_regex_never_selects_the_root():
    assert "" not in select(NAMES, ["re:.*"])
    assert select(NAMES, ["re:.*"]) == NAMES[1:]


def test_invalid_regex_is_a_selector_error():
    with pytest.raises(SelectorError, match="not a valid regex") as info:
        select(NAMES, ["[r]layers.(0"])
    assert isinstance(info.value.__cause__, re.error)
    assert "[r]layers.(0" in str(info.value)


# -- exclusions ---------------------------------------------------------------------------------
def test_exclude_removes_matches():
    got = select(NAMES, ["fc2"], exclude=["decoder.layers.0.fc2"])
    assert got == ["model.encoder.layers.0.fc2", "model.encoder.layers.1.fc2"]
    got = select(NAMES, ["fc2", "fc1"], exclude=[r"re:.*layers\.0\..*"])
    assert got == ["model.encoder.layers.1.fc1", "model.encoder.layers.1.fc2"]


def test_exclude_that_matches_nothing_is_a_warning_naming_the_closest_names():
    # A typo must be seen; but an exclusion that removes nothing patches nothing unintended, and
    # OpenDelta's configs list names some models lack, so they must still run.
    with pytest.warns(fxdelta.FxDeltaWarning, match="'fc22' matches nothing") as info:
        assert select(NAMES, ["fc2"], exclude=["fc22"]) == select(NAMES, ["fc2"])
    assert "fc2" in str(info[0].message).split("closest names:")[1]


def test_excluding_everything_is_an_error():
    with pytest.raises(SelectorError, match="leave nothing to patch"):
        select(NAMES, ["fc2"], exclude=["re:.*fc2"])


# -- misuse -------------------------------------------------------------------------------------
def test_bare_string_is_rejected_with_the_fix():
    # list("fc2") would be ["f", "c", "2"]: never iterate a bare string.
    with pytest.raises(SelectorError, match=r"bare string; wrap it: \['fc2'\]"):
        select(NAMES, "fc2")
    with pytest.raises(SelectorError, match="bare string"):
        select(NAMES, ["fc2"], exclude="fc1")


def test_bare_string_in_a_config_is_rejected():
    with pytest.raises(ConfigError, match=r"LoraConfig.modified_modules .*bare string 'fc2'"):
        LoraModel(ZOO["mlp"].build(), modified_modules="fc2")


@pytest.mark.parametrize("bad", ["", None, 3])
def test_empty_or_non_string_selector(bad):
    with pytest.raises(SelectorError, match="non-empty string"):
        compile_pattern(bad)


def test_no_selectors_is_an_error():
    with pytest.raises(SelectorError, match="no module selectors"):
        select(NAMES, [])


# -- unmatched selectors and their suggestions --------------------------------------------------
def test_unmatched_selector_names_the_closest_tails():
    with pytest.raises(SelectorError) as info:
        select(NAMES, ["fc3"])
    message = str(info.value)
    assert "'fc3' matches no module" in message
    suggested = ast.literal_eval(message.split("closest names: ")[1])  # the message ends with a list literal
    assert suggested[0] == "fc2"
    assert 1 <= len(suggested) <= 5
    assert "fc1" in suggested


def test_one_good_selector_does_not_hide_a_misspelled_one():
    # PEFT ignores a misspelled entry when another matched; fxdelta does not.
    with pytest.raises(SelectorError, match="'fx1' matches no module"):
        select(NAMES, ["fc2", "fx1"])


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("fc3", "fc2"),
        ("out_prj", "out_proj"),
        ("attention.output.dens", "attention.output.dense"),  # compared at the same depth
        ("self_atn", "self_attn"),
    ],
)
def test_closest_names_suggests_what_was_meant(pattern, expected):
    got = closest_names(pattern, NAMES)
    assert got[0] == expected
    assert len(got) <= 5 and len(set(got)) == len(got)


def test_closest_names_for_a_regex_compares_its_body():
    got = closest_names(r"[r]model\.encoder\.layers\.\d+\.fc3", NAMES)
    assert got and all(g.startswith("model.encoder.layers") for g in got[:2])


def test_parameter_selectors_say_parameter():
    with pytest.raises(SelectorError, match="parameter selector 'wieght' matches no parameter"):
        select(["fc.weight", "fc.bias"], ["wieght"], what="parameter")


# -- end to end on a real backbone --------------------------------------------------------------
def test_lora_misspelled_selector_on_bart_suggests_fc2():
    model = ZOO["bart"].build()
    with pytest.raises(SelectorError) as info:
        LoraModel(backbone_model=model, modified_modules=["fc3"])
    message = str(info.value)
    assert "'fc3'" in message and "'fc2'" in message.split("closest names:")[1]


def test_lora_grammar_on_bart():
    model = ZOO["bart"].build()
    tail = LoraModel(model, modified_modules=["fc2"], name="tail")
    assert len(tail.targets) == 4 and all(t.endswith(".fc2") for t in tail.targets)
    regex = LoraModel(model, modified_modules=[r"[r]model\.encoder\.layers\.\d+\.fc2"], name="regex")
    assert regex.targets == ["model.encoder.layers.0.fc2", "model.encoder.layers.1.fc2"]
    excl = LoraModel(model, modified_modules=["fc2"], exclude_modules=["re:.*decoder.*"], name="excl")
    assert excl.targets == regex.targets


def test_delta_modules_are_not_addressable():
    # Selectors see the backbone's modules, never fxdelta's own "deltas" containers.
    model = ZOO["mlp"].build()
    LoraModel(model, modified_modules=["fc2"])
    assert any(".deltas." in n or n.startswith("deltas") for n, _ in model.named_modules())
    with pytest.raises(SelectorError, match="matches no module"):
        LoraModel(model, modified_modules=["re:.*deltas.*"], name="second")
    with pytest.raises(SelectorError, match="matches no module"):
        LoraModel(model, modified_modules=["lora"], name="third")
