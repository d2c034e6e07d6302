"""The model zoo of the test matrix: tiny models built from config classes (no downloads).

Each ``ZooModel`` knows how to build its model with fixed random weights, how to make a batch
of real inputs, and what the model can do (generate, dropout).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

VOCAB = 64
SEQ = 6


@dataclass(frozen=True)
class ZooModel:
    name: str
    build_fn: Callable[[], nn.Module]
    inputs_fn: Callable[[], dict[str, Any] | tuple]
    generates: bool = False
    is_hf: bool = True
    has_dropout: bool = True
    example_inputs: Any = None  # passed to fxdelta when the model needs it
    family: str = ""  # transformers' model_type (its common-structure map); the name when empty

    @property
    def model_type(self) -> str:
        return self.family or self.name

    def build(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return self.build_fn().eval()

    def inputs(self) -> dict[str, Any] | tuple:
        torch.manual_seed(1)
        return self.inputs_fn()

    def run(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        """The output tensor the invariants compare."""
        out = model(*inputs) if isinstance(inputs, tuple) else model(**inputs)
        if isinstance(out, torch.Tensor):
            return out
        return out.logits


def _ids(batch: int = 2, seq: int = SEQ) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, seq))


def _text() -> dict[str, Any]:
    return {"input_ids": _ids(), "attention_mask": torch.ones(2, SEQ, dtype=torch.long)}


def _seq2seq() -> dict[str, Any]:
    return {
        "input_ids": _ids(),
        "attention_mask": torch.ones(2, SEQ, dtype=torch.long),
        "decoder_input_ids": _ids(2, 4),
    }


def _hf(config_cls: str, model_cls: str, **config: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        cfg = getattr(transformers, config_cls)(**config)
        return getattr(transformers, model_cls)(cfg)

    build.config_cls = config_cls  # type: ignore[attr-defined]  # read by _missing
    return build


def _missing(m: ZooModel) -> str | None:
    """Why this transformers release cannot build ``m`` (a family newer than the release), or None."""
    config_cls = getattr(m.build_fn, "config_cls", None)
    if config_cls is None:
        return None
    import transformers

    if hasattr(transformers, config_cls):
        return None
    return f"transformers {transformers.__version__} has no {config_cls}: the {m.name} family came later"


# Tiny encoder-decoder configs, shared with the OpenDelta ports and the seed-page tests.
T5_TINY = dict(
    vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
)  # fmt: skip
BART_TINY = dict(
    vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
    decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
    pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    forced_bos_token_id=None, forced_eos_token_id=None,
)  # fmt: skip
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
_TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
_DECODER = dict(_COMMON, num_key_value_heads=2, **_TOKENS)
_GPT2 = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, **_TOKENS)
_OPT = dict(
    vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=48,
    max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=1, bos_token_id=2, eos_token_id=2,
)  # fmt: skip
# Falcon: the old decoder (one shared key/value head, one norm per layer) and the new one (grouped
# key/value heads, a norm each for attention and MLP); both run attention and MLP in parallel.
_FALCON = dict(
    vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_hidden_size=48,
    hidden_dropout=0.1, **_TOKENS,
)  # fmt: skip


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.act = nn.GELU()
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(32, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + self.fc2(self.drop(self.act(self.fc1(x)))))


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.drop = nn.Dropout(0.1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv1(x)))
        h = torch.relu(self.conv2(h))
        return self.fc(self.drop(self.pool(h).flatten(1)))


def _encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


_ALL = [
    ZooModel("bert", _hf("BertConfig", "BertForMaskedLM", **_COMMON), _text),
    ZooModel("roberta", _hf("RobertaConfig", "RobertaForMaskedLM", **_COMMON, pad_token_id=1), _text),
    ZooModel(
        "distilbert",
        _hf(
            "DistilBertConfig",
            "DistilBertForMaskedLM",
            vocab_size=VOCAB,
            dim=32,
            n_layers=2,
            n_heads=4,
            hidden_dim=48,
        ),
        _text,
    ),
    ZooModel("deberta-v2", _hf("DebertaV2Config", "DebertaV2ForMaskedLM", **_COMMON), _text),
    ZooModel("gpt2", _hf("GPT2Config", "GPT2LMHeadModel", **_GPT2), _text, generates=True),
    ZooModel(
        "t5",
        _hf(
            "T5Config",
            "T5ForConditionalGeneration",
            **T5_TINY,
        ),
        _seq2seq,
        generates=True,
    ),
    ZooModel(
        "bart",
        _hf(
            "BartConfig",
            "BartForConditionalGeneration",
            **BART_TINY,
        ),
        _seq2seq,
        generates=True,
    ),
    ZooModel("opt", _hf("OPTConfig", "OPTForCausalLM", **_OPT), _text, generates=True),
    ZooModel("llama", _hf("LlamaConfig", "LlamaForCausalLM", **_DECODER), _text, generates=True, has_dropout=False),
    ZooModel("qwen2", _hf("Qwen2Config", "Qwen2ForCausalLM", **_DECODER), _text, generates=True, has_dropout=False),
    ZooModel(
        "qwen3",
        _hf("Qwen3Config", "Qwen3ForCausalLM", **_DECODER, head_dim=8),
        _text,
        generates=True,
        has_dropout=False,
    ),
    ZooModel(
        "mistral", _hf("MistralConfig", "MistralForCausalLM", **_DECODER), _text, generates=True, has_dropout=False
    ),
    ZooModel(
        "gemma3_text",  # Gemma3ForCausalLM: the text model (head_dim defaults to 256)
        _hf("Gemma3TextConfig", "Gemma3ForCausalLM", **_DECODER, head_dim=8),
        _text,
        generates=True,
        has_dropout=False,
    ),
    ZooModel("phi3", _hf("Phi3Config", "Phi3ForCausalLM", **_DECODER, resid_pdrop=0.1), _text, generates=True),
    ZooModel("falcon", _hf("FalconConfig", "FalconForCausalLM", **_FALCON), _text, generates=True),
    ZooModel(
        "falcon-new",
        _hf("FalconConfig", "FalconForCausalLM", **_FALCON, new_decoder_architecture=True, num_kv_heads=2),
        _text,
        generates=True,
        family="falcon",
    ),
    ZooModel(
        "gpt_neox",
        _hf("GPTNeoXConfig", "GPTNeoXForCausalLM", **_COMMON, **_TOKENS, hidden_dropout=0.1),
        _text,
        generates=True,
    ),
    ZooModel(
        "vit",
        _hf(
            "ViTConfig",
            "ViTForImageClassification",
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            image_size=16,
            patch_size=4,
            num_labels=3,
            hidden_dropout_prob=0.1,
        ),
        lambda: {"pixel_values": torch.randn(2, 3, 16, 16)},
    ),
    ZooModel("mlp", TinyMLP, lambda: (torch.randn(3, 16),), is_hf=False),
    ZooModel("cnn", TinyCNN, lambda: (torch.randn(2, 3, 8, 8),), is_hf=False),
    ZooModel("transformer-encoder", _encoder, lambda: (torch.randn(2, 5, 16),), is_hf=False),
]
# Families this transformers release lacks are left out of the zoo (test_structure still counts their maps).
UNAVAILABLE: dict[str, str] = {m.name: reason for m in _ALL if (reason := _missing(m))}
UNAVAILABLE_TYPES = {m.model_type for m in _ALL if m.name in UNAVAILABLE}
ZOO: dict[str, ZooModel] = {m.name: m for m in _ALL if m.name not in UNAVAILABLE}

HF_FAMILIES = [name for name, m in ZOO.items() if m.is_hf]
TORCH_MODELS = [name for name, m in ZOO.items() if not m.is_hf]

# Where each method goes on the plain torch models (they have no default positions).
TORCH_TARGETS: dict[str, dict[str, list[str]]] = {
    "mlp": {
        "lora": ["fc1", "fc2"],
        "adapter": ["fc1", "fc2"],
        "bitfit": ["fc1", "fc2", "head"],
        "low_rank_adapter": ["fc1", "fc2"],
        "compacter": ["fc1", "fc2"],
        "parallel_adapter": ["fc1", "fc2"],  # a pair: fc1's input -> fc2's output
        "ia3": ["act", "fc2"],
        "dora": ["fc1", "fc2"],
    },
    "cnn": {
        "lora": ["fc"],
        "adapter": ["conv1", "conv2"],
        "bitfit": ["conv1", "conv2", "bn", "fc"],
        "low_rank_adapter": ["conv1", "conv2"],
        "compacter": ["conv1", "conv2"],
        "parallel_adapter": ["drop", "fc"],
        "ia3": ["conv1", "bn", "conv2"],
        "dora": ["fc"],
    },
    "transformer-encoder": {
        "lora": ["linear1", "linear2"],
        "adapter": ["linear2", "layers.0"],
        "bitfit": ["linear1", "linear2", "norm1", "norm2"],
        "low_rank_adapter": ["linear2", "layers.0"],
        "compacter": ["linear2", "layers.0"],
        "parallel_adapter": ["layers.0", "layers.0", "linear1", "linear2"],
        "ia3": ["linear1", "norm1"],
        "dora": ["linear1", "linear2"],
        "prefix": ["self_attn"],
    },
}

# Hyper-parameters the tiny zoo needs (hidden sizes of 8-48): a bottleneck of half the width, whose
# size the default Compacter division (4) divides.
METHOD_KWARGS: dict[str, dict[str, object]] = {
    "low_rank_adapter": {"reduction_factor": 2},
    "compacter": {"reduction_factor": 2},
    "prefix": {"embed_dim": 32, "mid_dim": 32},
    "soft_prompt": {"soft_token_num": 4},  # the zoo's learned position tables have 64 rows
}
