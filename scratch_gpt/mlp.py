"""The gated feed-forward block of Llama, Mistral and Qwen (SwiGLU when ``hidden_act="silu"``).

``down(act(gate(x)) * up(x))``. The gate and up projections are one fused ``c_fc`` layer whose output is
``[gate | up]`` (one GEMM instead of two); ``c_proj`` is the down projection, keeping GPT-2's module names so
that LoRA targets, initialisation and the converters treat both MLP kinds alike. The plain GPT-2 MLP
(``mlp_type="gelu"``) lives in ``modeling_scratch_gpt.py``.

Reference: Shazeer 2020, "GLU Variants Improve Transformer"; transformers' ``LlamaMLP``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from .linear import Linear

MLP_TYPES = ("gelu", "swiglu")


class ScratchGPTGatedMLP(nn.Module):
    """Gated MLP: ``c_proj(act(gate) * up)`` with ``[gate | up] = c_fc(x)``."""

    def __init__(self, config, layer_idx: int | None = None):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.c_fc = Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_bias)
        self.act = ACT2FN[config.hidden_act]
        self.c_proj = Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.c_proj.is_residual_projection = True  # scaled init, see ScratchGPTPreTrainedModel._init_weights
        self.dropout = nn.Dropout(config.resid_dropout) if config.resid_dropout > 0 else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate, up = self.c_fc(hidden_states).split(self.intermediate_size, dim=-1)  # 2 x (b, t, inter)
        return self.dropout(self.c_proj(self.act(gate) * up))


__all__ = ["MLP_TYPES", "ScratchGPTGatedMLP"]
