"""Rotary position embeddings (RoPE), the Llama/Qwen3 alternative to GPT-2's learned positions.

The inverse frequencies come from transformers' own RoPE helpers (``ROPE_INIT_FUNCTIONS``: ``linear``,
``dynamic``, ``llama3``, ``yarn``; ``default`` is the plain ``1 / theta^(2i/d)``), driven by the config's standard
``rope_parameters`` dict (``rope_type``, ``rope_theta``, ``factor``, ``partial_rotary_factor``, ...). The module
follows transformers' rotary-embedding contract (``inv_freq``/``original_inv_freq`` buffers, ``rope_type``,
``config``, ``max_seq_len_cached``/``original_max_seq_len``, ``compute_default_rope_parameters``), so
``from_pretrained`` re-creates the buffers the way it does for Llama, and dynamic NTK goes through transformers'
``dynamic_rope_update``: the frequencies are recomputed once positions pass ``max_position_embeddings`` and go
back to the original ones for a short input, exactly as in ``LlamaRotaryEmbedding``.

With ``partial_rotary_factor < 1`` only the first ``2 * len(inv_freq)`` dimensions of each head rotate and the
rest pass through unchanged (GPT-NeoX/Phi layout; Llama itself has no partial rotation).

The model computes ``(cos, sin)`` once per forward from the ``position_ids`` and every attention layer rotates
its queries and keys with :func:`apply_rotary` (the half-split rotation of GPT-NeoX/Llama, not interleaved
pairs). RoPE has no table, so positions past ``max_position_embeddings`` are computed like any other. The
learned-position path never builds this module.

Reference: Su et al. 2021, "RoFormer"; transformers' ``models/llama/modeling_llama.py``,
``models/gpt_neox/modeling_gpt_neox.py`` (partial rotation) and ``modeling_rope_utils.py``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update

# The rope_type values the model implements.
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
# The rope_type values checkpoint conversion (convert_family.py) accepts. `dynamic` is implemented as Llama's
# (same frequencies, same cached behaviour) but is not listed here until the converter and its tests take it up.
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def rotary_width(head_dim: int, partial_rotary_factor: float = 1.0) -> int:
    """How many dimensions of a head rotate: ``2 * len(inv_freq)``, i.e. ``int(head_dim * factor)`` rounded up
    to even, as transformers' RoPE helpers build the frequencies (``arange(0, dim, 2)``)."""
    dim = int(head_dim * partial_rotary_factor)
    return dim + dim % 2


class ScratchGPTRotaryEmbedding(nn.Module):
    """``(cos, sin)`` of shape ``(batch, seq, rotary_width)`` for given ``position_ids`` (``rotary_width`` is
    ``head_dim`` unless ``partial_rotary_factor < 1``)."""

    def __init__(self, config, device: torch.device | None = None):
        super().__init__()
        self.config = config
        # Read by transformers' dynamic_rope_update: the length the frequencies are computed for.
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters["rope_type"]
        init_fn = self.compute_default_rope_parameters
        if self.rope_type != "default":
            init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = init_fn(config, device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(
        config, device: torch.device | None = None, **kwargs
    ) -> tuple[torch.Tensor, float]:
        """Plain RoPE: ``inv_freq[i] = 1 / theta^(2i / d)``, no attention scaling; ``d`` is the rotated width
        ``int(head_dim * partial_rotary_factor)`` (GPT-NeoX's definition; the whole head by default)."""
        base = config.rope_parameters["rope_theta"]
        dim = int(config.head_dim * config.rope_parameters.get("partial_rotary_factor", 1.0))
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim))
        return inv_freq, 1.0

    @dynamic_rope_update  # rope_type "dynamic": new frequencies past the original length, as for Llama
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Angles in float32 whatever the autocast state: positions in the thousands need the precision. (The
        # context manager only where autocast is on: entering one costs more than the six ops of a decoding step.)
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(device_type=x.device.type, enabled=False):
                cos, sin = self._angles(x, position_ids)
        else:
            cos, sin = self._angles(x, position_ids)
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)

    def _angles(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)  # (b, t, rotary_width)
        return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x1, x2) -> (-x2, x1)`` over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` in three passes (no ``rotate_half`` copy, no concatenation)."""
    half = x.shape[-1] // 2
    out = x * cos
    out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1.0)
    out[..., half:].addcmul_(x[..., :half], sin[..., half:])
    return out


class RotaryFunction(torch.autograd.Function):
    """The rotation as one autograd function: saves only ``cos`` and ``sin`` (shared by every layer); its
    gradient is the transposed rotation, ``g * cos + rotate_half^T(g * sin)``, in three passes too."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        half = grad.shape[-1] // 2
        out = grad * cos
        out[..., :half].addcmul_(grad[..., half:], sin[..., half:])  # rotate_half^T(y) = (y2, -y1)
        out[..., half:].addcmul_(grad[..., :half], sin[..., :half], value=-1.0)
        return out, None, None


def apply_rotary(
    query: torch.Tensor,
    key: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    packed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``(b, h, t, d)`` queries and keys by the ``(b, t, d)`` angles of their positions.

    Equal to ``x * cos + rotate_half(x) * sin`` (transformers' ``apply_rotary_pos_emb``) up to float rounding,
    computed without the ``rotate_half`` copy; with autograd through :class:`RotaryFunction` (angles that need
    gradients, which never happens in the model, take the plain formula). ``packed``, a ``(b, h + kv, t, d)``
    tensor whose heads are the queries then the keys (a view of a fused projection), lets inference rotate both
    in one go: :func:`rotate_heads`. Angles narrower than the head (``partial_rotary_factor < 1``) rotate the
    first ``cos.shape[-1]`` dimensions and leave the rest as they are (:func:`_rotate_partial`).
    """
    if cos.shape[-1] != query.shape[-1]:
        return _rotate_partial(query, cos, sin), _rotate_partial(key, cos, sin)
    if packed is not None and not torch.is_grad_enabled():
        return rotate_heads(packed, cos, sin).split((query.shape[1], key.shape[1]), dim=1)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (b, 1, t, d): broadcast over heads
    if cos.requires_grad or sin.requires_grad or query.shape[-1] % 2:
        return query * cos + rotate_half(query) * sin, key * cos + rotate_half(key) * sin
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad):
        return RotaryFunction.apply(query, cos, sin), RotaryFunction.apply(key, cos, sin)
    return _rotate(query, cos, sin), _rotate(key, cos, sin)


def _rotate_partial(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` dimensions of ``(b, h, t, d)`` heads, pass the others through."""
    width = cos.shape[-1]
    if width > states.shape[-1]:
        raise ValueError(f"RoPE angles cover {width} dimensions but the heads have only {states.shape[-1]}.")
    rotated, passed = states[..., :width], states[..., width:]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return torch.cat((rotated * cos + rotate_half(rotated) * sin, passed), dim=-1)


def rotate_heads(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rotary`'s rotation of any ``(b, heads, t, d)`` tensor, without autograd: the queries and keys
    of a fused projection rotated in one go (half the kernel launches of a decoding step's rotation)."""
    if cos.shape[-1] != states.shape[-1]:
        return _rotate_partial(states, cos, sin)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    if states.shape[-1] % 2:
        return states * cos + rotate_half(states) * sin
    return _rotate(states, cos, sin)


__all__ = [
    "ROPE_TYPES",
    "SUPPORTED_ROPE_TYPES",
    "RotaryFunction",
    "ScratchGPTRotaryEmbedding",
    "apply_rotary",
    "rotary_width",
    "rotate_half",
    "rotate_heads",
]
