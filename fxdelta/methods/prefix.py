"""Prefix tuning (Li & Liang 2021): learned key/value prefixes in every targeted self-attention.

Each targeted attention gets ``prefix_token_num`` extra keys and values in front of its own (the
attention mask is widened so every query sees them; see ``fxdelta.sites.prefix``). With
``reparameterize=True`` (the default, as in OpenDelta) the prefixes of all layers come out of one
MLP (``Embedding(P, embed_dim) -> Linear -> tanh -> Linear``), which trains more stably;
``fold_reparameterization()`` (and saving) replace it by the prefixes it computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import nn

from fxdelta.core.errors import ConfigError
from fxdelta.core.per_thread import PerThread
from fxdelta.core.routes import Route
from fxdelta.core.torch_internals import version_of
from fxdelta.io.distributed import is_sharded
from fxdelta.methods.peft_prompt import PREFIX
from fxdelta.methods.prefix_probe import probe_attention
from fxdelta.sites.prefix import plan_prefix
from fxdelta.spec.config import DeltaConfig
from fxdelta.spec.method import Method, TargetInfo


@dataclass(frozen=True, kw_only=True)
class PrefixConfig(DeltaConfig):
    """``prefix_token_num``: prefix length P; ``reparameterize``: produce the prefixes with an MLP
    (``embed_dim`` -> ``mid_dim`` -> all layers' keys and values) while training."""

    delta_type: ClassVar[str] = "prefix"

    prefix_token_num: int = 6
    reparameterize: bool = True
    embed_dim: int = 512
    mid_dim: int = 512

    def validate(self) -> None:
        for field in ("prefix_token_num", "embed_dim", "mid_dim"):
            self._positive_int(field)
        self._require("reparameterize", isinstance(self.reparameterize, bool), "True or False")

    def exported(self) -> DeltaConfig:
        """Checkpoints hold the final prefixes, not the MLP that produced them."""
        return self.replace(reparameterize=False)


_SHARDED_ENCODER = (
    "prefix tuning with reparameterize=True computes every layer's prefix with one MLP, which lives in the first "
    "targeted layer; fully_shard on each layer keeps that MLP sharded while the other layers run. Use "
    "reparameterize=False (or fold_reparameterization() before sharding), or fully_shard the whole model only"
)


class PrefixEncoder(nn.Module):
    """The reparameterization MLP shared by a prefix delta's layers: (P, sum of 2 * heads * head_dim)."""

    def __init__(self, length: int, widths: list[int], config: PrefixConfig, *, dtype=None, device=None) -> None:
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.embedding = nn.Embedding(length, config.embed_dim, **kw)
        self.mlp = nn.Sequential(
            nn.Linear(config.embed_dim, config.mid_dim, **kw), nn.Tanh(), nn.Linear(config.mid_dim, sum(widths), **kw)
        )
        self.widths = widths
        # Per thread: (the slices, what they were computed for); threads running one model share none.
        self._cache: PerThread[list[Any]] = PerThread(lambda: [None, ()])

    def block(self, index: int) -> torch.Tensor:
        """Layer ``index``'s (P, heads * (head_dim + v_dim)) block of the MLP's output.

        While autograd records, each layer computes its own block (the hidden layer again, then its rows of
        the output layer): one result shared by all layers would be one graph that activation checkpointing
        backpropagates through once per layer (``use_reentrant=True``: freed after the first) or recomputes in
        one layer only (``use_reentrant=False``: a different number of saved tensors). Without autograd
        (inference, ``generate()``) every block comes from one MLP call per backbone forward (``slices``),
        except under ``torch.compile``: dynamo cannot guard on the cache's version counters (a graph break per
        layer), and the compiler shares the layers' common hidden layer itself.
        """
        if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            return self.slices()[index]
        first, out = self.mlp[0], cast(nn.Linear, self.mlp[2])
        hidden = self.mlp[1](first(self.embedding.weight))  # (P, mid_dim)
        start = sum(self.widths[:index])
        rows = slice(start, start + self.widths[index])
        return nn.functional.linear(hidden, out.weight[rows], out.bias[rows])  # (P, width)

    def slices(self) -> list[torch.Tensor]:
        """Every layer's (P, heads * (head_dim + v_dim)) block, computed once per backbone forward.

        The result is reused by the layers of one forward; it is recomputed after any change to the MLP's
        parameters, in another grad mode, and at the start of each backbone forward.
        """
        state = (torch.is_grad_enabled(), tuple(version_of(p) for p in self.parameters()))
        cache = self._cache.get()
        slices, computed_for = cache
        if slices is None or state != computed_for:
            out = self.mlp(self.embedding.weight)  # (P, sum widths)
            slices = list(out.split(self.widths, dim=-1))
            cache[:] = [slices, state]
        return slices

    def reset(self) -> None:
        """Recompute at the next use (the start of this thread's next backbone forward)."""
        self._cache.get()[0] = None


class PrefixDelta(nn.Module):
    """The prefix keys and values of one attention, each (1, heads, P, head_dim).

    Reparameterized, it owns no tensors of its own but reads slice ``index`` of a shared
    ``PrefixEncoder`` (registered on the delta of the first layer, referenced by the others).
    """

    def __init__(self, heads: int, head_dim: int, v_dim: int, config: PrefixConfig, *, dtype=None, device=None) -> None:
        super().__init__()
        self.heads, self.head_dim, self.v_dim, self.length = heads, head_dim, v_dim, config.prefix_token_num
        self.index = 0
        if not config.reparameterize:
            kw = dict(dtype=dtype, device=device)
            self.key = nn.Parameter(torch.randn(1, heads, self.length, head_dim, **kw) / math.sqrt(head_dim))
            self.value = nn.Parameter(torch.randn(1, heads, self.length, v_dim, **kw) / math.sqrt(head_dim))

    @property
    def width(self) -> int:
        return self.heads * (self.head_dim + self.v_dim)

    def use_encoder(self, encoder: PrefixEncoder, index: int, owner: bool) -> None:
        if owner:
            self.encoder = encoder
        else:
            object.__setattr__(self, "_shared_encoder", encoder)  # one MLP, registered once
        self.index = index

    def prefix_encoder(self) -> PrefixEncoder | None:
        """The MLP that produces this prefix (reparameterized), else None."""
        encoder = self._modules.get("encoder") or self.__dict__.get("_shared_encoder")
        return cast(PrefixEncoder | None, encoder)

    def prefix(self) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = self.prefix_encoder()
        if encoder is None:
            return self.key, self.value
        kv = encoder.block(self.index)  # (P, heads * (head_dim + v_dim))
        k, v = kv.split([self.heads * self.head_dim, self.heads * self.v_dim], dim=-1)
        return (
            k.view(self.length, self.heads, self.head_dim).transpose(0, 1).unsqueeze(0),
            v.view(self.length, self.heads, self.v_dim).transpose(0, 1).unsqueeze(0),
        )

    def fold_reparameterization(self) -> None:
        """Replace the shared MLP by the prefixes it produces now (for inference and saving)."""
        encoder = self.prefix_encoder()
        if encoder is None:
            return
        with torch.no_grad():
            encoder.reset()
            k, v = self.prefix()
        self.key, self.value = nn.Parameter(k.detach().clone()), nn.Parameter(v.detach().clone())
        self._modules.pop("encoder", None)
        self.__dict__.pop("_shared_encoder", None)

    def exported_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: the final prefixes, whether or not an MLP produces them."""
        with torch.no_grad():
            k, v = self.prefix()
        return {"key": k.detach(), "value": v.detach()}

    def forward(self, key_states: torch.Tensor, value_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefix for keys/values of shape (B, heads, T, head_dim), in their dtype, expanded to B."""
        k, v = self.prefix()
        if is_sharded(k) and not is_sharded(key_states):
            raise ConfigError(_SHARDED_ENCODER)
        b = key_states.shape[0]
        return k.to(key_states.dtype).expand(b, -1, -1, -1), v.to(value_states.dtype).expand(b, -1, -1, -1)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, length={self.length}, head_dim={self.head_dim}"


def build(config: PrefixConfig, target: TargetInfo) -> PrefixDelta:
    g = target.probed  # the attention's geometry, found by this method's probe (prefix_probe.py)
    return PrefixDelta(g.heads, g.head_dim, g.v_dim, config, dtype=target.dtype, device=target.device)


def share_encoder(config: PrefixConfig, deltas: list[PrefixDelta], *, dtype=None, device=None) -> None:
    """With ``reparameterize``, one MLP produces every layer's prefix."""
    if not config.reparameterize or not deltas:
        return
    encoder = PrefixEncoder(config.prefix_token_num, [d.width for d in deltas], config, dtype=dtype, device=device)
    for i, d in enumerate(deltas):
        d.use_encoder(encoder, i, owner=i == 0)


METHOD = Method(
    delta_type="prefix",
    config=PrefixConfig,
    build=build,
    route=Route.PREFIX,
    fold_refusal="it puts learned keys and values in front of the attention's own (and widens the mask), "
    "which no weight can hold",
    default_positions=("attn.self",),
    probe=probe_attention,
    link=share_encoder,
    plan_sites=plan_prefix,
    fold_reparameterization=lambda delta: cast(PrefixDelta, delta).fold_reparameterization(),
    exported_state=lambda delta: cast(PrefixDelta, delta).exported_state(),
    peft=PREFIX,
    identity_at_init=False,
    summary="Prefix tuning: learned keys/values in front of every targeted self-attention's own; default "
    "positions: every self-attention. ``fold_reparameterization()`` folds the reparameterization MLP into the "
    "prefixes.",
    small={"prefix_token_num": 4, "embed_dim": 64, "mid_dim": 64},
)
