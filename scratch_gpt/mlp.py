"""The position-wise feed-forward blocks: GPT-2's MLP and the gated MLP of Llama, Mistral and Qwen.

- ``mlp_type="gelu"`` (GPT-2): ``c_proj(act(c_fc(x)))`` with any ``hidden_act`` (GPT-2's ``gelu_new``).
- ``mlp_type="swiglu"``: ``c_proj(act(gate) * up)`` (SwiGLU when ``hidden_act="silu"``). The gate and up
  projections are one fused ``c_fc`` layer whose output is ``[gate | up]`` (one GEMM instead of two);
  ``c_proj`` is the down projection.

Both keep GPT-2's module names (``c_fc``, ``c_proj``), so LoRA targets, initialisation (``c_proj`` is a residual
projection) and the converters treat them alike. :func:`make_mlp` picks one from the config.

References: Radford et al. 2019 (GPT-2); Shazeer 2020, "GLU Variants Improve Transformer"; transformers'
``LlamaMLP``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from .linear import Linear

MLP_TYPES = ("gelu", "swiglu")


def _dropout(p: float) -> nn.Module:
    # Pretraining runs with dropout 0: skip the no-op module call on every layer (it shows in decoding).
    return nn.Dropout(p) if p > 0 else nn.Identity()


def _activation(name: str) -> nn.Module:
    # GPT-2's "gelu_new" is the tanh GELU written out in five elementwise ops; torch's fused kernel computes
    # the same function in one.
    return ACT2FN["gelu_pytorch_tanh" if name == "gelu_new" else name]


class ScratchGPTMLP(nn.Module):
    """Position-wise feed-forward: expand, activate, project back."""

    def __init__(self, config, layer_idx: int | None = None):
        super().__init__()
        fast, bias = config.cpu_fast_paths, config.mlp_bias
        self.c_fc = Linear(config.hidden_size, config.intermediate_size, bias=bias, cpu_fast_paths=fast)
        self.act = _activation(config.hidden_act)
        self.c_proj = Linear(config.intermediate_size, config.hidden_size, bias=bias, cpu_fast_paths=fast)
        self.c_proj.is_residual_projection = True  # scaled init, see ScratchGPTPreTrainedModel._init_weights
        self.dropout = _dropout(config.resid_dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(hidden_states))))


class ScratchGPTGatedMLP(nn.Module):
    """Gated MLP: ``c_proj(act(gate) * up)`` with ``[gate | up] = c_fc(x)``."""

    def __init__(self, config, layer_idx: int | None = None):
        super().__init__()
        fast, bias = config.cpu_fast_paths, config.mlp_bias
        self.intermediate_size = config.intermediate_size
        self.c_fc = Linear(config.hidden_size, 2 * config.intermediate_size, bias=bias, cpu_fast_paths=fast)
        self.act = ACT2FN[config.hidden_act]
        self.c_proj = Linear(config.intermediate_size, config.hidden_size, bias=bias, cpu_fast_paths=fast)
        self.c_proj.is_residual_projection = True  # scaled init, see ScratchGPTPreTrainedModel._init_weights
        self.dropout = _dropout(config.resid_dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate, up = self.c_fc(hidden_states).split(self.intermediate_size, dim=-1)  # 2 x (b, t, inter)
        return self.dropout(self.c_proj(self.act(gate) * up))


def make_mlp(config, layer_idx: int | None = None) -> nn.Module:
    """The MLP of ``config.mlp_type``."""
    return (ScratchGPTGatedMLP if config.mlp_type == "swiglu" else ScratchGPTMLP)(config, layer_idx)


__all__ = ["MLP_TYPES", "ScratchGPTGatedMLP", "ScratchGPTMLP", "make_mlp"]
