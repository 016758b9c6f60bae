"""The position-wise feed-forward blocks: GPT-2's MLP and the gated MLP of Llama, Mistral and Qwen.

- ``mlp_type="gelu"`` (GPT-2): ``c_proj(act(c_fc(x)))`` with any ``hidden_act`` (GPT-2's ``gelu_new``).
- ``mlp_type="swiglu"``: ``c_proj(act(gate) * up)`` (SwiGLU when ``hidden_act="silu"``). The gate and up
  projections are one fused ``c_fc`` layer whose output is ``[gate | up]`` (one GEMM instead of two);
  ``c_proj`` is the down projection.

Training memory: with SiLU, the gated MLP's forward and backward run as one autograd function
(:class:`SwiGLUFunction`) that keeps only its input, ``gate`` and ``up`` for the backward pass and recomputes the
activation and the product there (two ``(tokens, intermediate)`` tensors per layer fewer, the pattern of fused
SwiGLU kernels such as Liger's). The forward computes exactly what the modules compute; the path is taken only
for plain ``Linear`` layers without hooks (not under PEFT, tensor parallelism or autocast).

Both keep GPT-2's module names (``c_fc``, ``c_proj``), so LoRA targets, initialisation (``c_proj`` is a residual
projection) and the converters treat them alike. :func:`make_mlp` picks one from the config.

References: Radford et al. 2019 (GPT-2); Shazeer 2020, "GLU Variants Improve Transformer"; transformers'
``LlamaMLP``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .linear import Linear, linear, matmul_weight

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
        parts = self._modules  # not nn.Module.__getattr__ (~0.4 µs a lookup): decoding pays it per layer
        return parts["dropout"](parts["c_proj"](parts["act"](parts["c_fc"](hidden_states))))


class ScratchGPTGatedMLP(nn.Module):
    """Gated MLP: ``c_proj(act(gate) * up)`` with ``[gate | up] = c_fc(x)``."""

    def __init__(self, config, layer_idx: int | None = None):
        super().__init__()
        fast, bias = config.cpu_fast_paths, config.mlp_bias
        self.intermediate_size = config.intermediate_size
        self.c_fc = Linear(config.hidden_size, 2 * config.intermediate_size, bias=bias, cpu_fast_paths=fast)
        self.act = ACT2FN[config.hidden_act]
        self.silu = config.hidden_act in ("silu", "swish")  # SwiGLU: the memory-saving fused training path
        self.c_proj = Linear(config.intermediate_size, config.hidden_size, bias=bias, cpu_fast_paths=fast)
        self.c_proj.is_residual_projection = True  # scaled init, see ScratchGPTPreTrainedModel._init_weights
        self.dropout = _dropout(config.resid_dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.silu and self._fusable(hidden_states):
            fc, proj = self.c_fc, self.c_proj
            return self.dropout(SwiGLUFunction.apply(hidden_states, fc.weight, fc.bias, proj.weight, proj.bias))
        parts = self._modules  # not nn.Module.__getattr__ (~0.4 µs a lookup): decoding pays it per layer
        gate, up = parts["c_fc"](hidden_states).split(self.intermediate_size, dim=-1)  # 2 x (b, t, inter)
        return parts["dropout"](parts["c_proj"](parts["act"](gate) * up))

    def _fusable(self, x: torch.Tensor) -> bool:
        """Training through our own, unwrapped, hook-free layers in one dtype without autocast."""
        if not (torch.is_grad_enabled() and self.training) or torch.compiler.is_compiling():
            return False
        layers = (self.c_fc, self.c_proj)
        return (
            all(type(layer) is Linear and layer.cpu_fast_paths for layer in layers)
            and not any(layer._forward_hooks or layer._forward_pre_hooks for layer in layers)
            and all(type(layer.weight) is nn.Parameter and layer.weight.dtype == x.dtype for layer in layers)
            and not torch.is_autocast_enabled(x.device.type)
        )


class SwiGLUFunction(torch.autograd.Function):
    """``c_proj(silu(gate) * up)`` with ``[gate | up] = c_fc(x)``, saving only ``x``, ``gate`` and ``up``.

    The gate and up projections run as two products over the two row halves of ``c_fc``'s weight, so both come
    out contiguous and every elementwise step reads contiguous memory (one ``[gate | up]`` output would make
    them strided views, which the activation kernels read at about half speed).
    """

    @staticmethod
    def forward(ctx, x, w_fc, b_fc, w_proj, b_proj):
        x2d = x.reshape(-1, x.shape[-1])
        inter = w_fc.shape[0] // 2
        gate = linear(x2d, w_fc[:inter], None if b_fc is None else b_fc[:inter])
        up = linear(x2d, w_fc[inter:], None if b_fc is None else b_fc[inter:])
        out = linear(F.silu(gate).mul_(up), w_proj, b_proj)
        ctx.save_for_backward(x2d, gate, up, w_fc, w_proj)
        ctx.biases = (b_fc is not None, b_proj is not None)
        ctx.x_shape = x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2d, gate, up, w_fc, w_proj = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad = grad.reshape(-1, grad.shape[-1])
        inter = gate.shape[1]
        act = F.silu(gate)  # recomputed, as is the product below
        grad_w_proj = grad.t() @ (act * up) if need[3] else None
        grad_b_proj = grad.sum(0) if ctx.biases[1] and need[4] else None
        grad_hidden = matmul_weight(grad, w_proj)
        grad_up = act.mul_(grad_hidden)  # act is not needed after this
        grad_gate = torch.ops.aten.silu_backward(grad_hidden.mul_(up), gate)
        grad_w_fc = grad_b_fc = grad_x = None
        if need[1]:
            grad_w_fc = torch.empty_like(w_fc)
            torch.mm(grad_gate.t(), x2d, out=grad_w_fc[:inter])
            torch.mm(grad_up.t(), x2d, out=grad_w_fc[inter:])
        if ctx.biases[0] and need[2]:
            grad_b_fc = torch.cat((grad_gate.sum(0), grad_up.sum(0)))
        if need[0]:
            grad_x = matmul_weight(grad_gate, w_fc[:inter]).add_(matmul_weight(grad_up, w_fc[inter:]))
            grad_x = grad_x.view(ctx.x_shape)
        return grad_x, grad_w_fc, grad_b_fc, grad_w_proj, grad_b_proj


def make_mlp(config, layer_idx: int | None = None) -> nn.Module:
    """The MLP of ``config.mlp_type``."""
    return (ScratchGPTGatedMLP if config.mlp_type == "swiglu" else ScratchGPTMLP)(config, layer_idx)


__all__ = ["MLP_TYPES", "ScratchGPTGatedMLP", "ScratchGPTMLP", "SwiGLUFunction", "make_mlp"]
