"""The attention math, written out, behind one function signature.

Every implementation takes ``(module, query, key, value, attention_mask, dropout, scaling, is_causal)`` with
query/key/value shaped ``(batch, heads, seq, head_dim)`` and returns ``(output, weights)`` where ``output`` is
``(batch, seq, heads, head_dim)`` and ``weights`` is ``(batch, heads, q_len, kv_len)`` or ``None``.

``attention_mask`` is ``None`` (plain causal attention over a full, unpadded sequence: ``is_causal`` tells the
implementation to build the triangle itself, so no mask is ever materialised on the fast path) or a boolean
``(batch, 1, q_len, kv_len)`` tensor, ``True`` where a query may attend to a key. :func:`build_attention_mask`
makes that tensor from a 2D padding mask and the number of cached positions.

Implementations are picked by ``config._attn_implementation`` (``"eager"`` or ``"sdpa"``), so
``from_pretrained(..., attn_implementation="eager")`` works as it does for transformers' own models.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def build_attention_mask(
    attention_mask: torch.Tensor | None,
    q_len: int,
    kv_len: int,
    past_len: int,
    device: torch.device,
) -> torch.Tensor | None:
    """Combine causality and padding into a boolean ``(batch, 1, q_len, kv_len)`` mask.

    Returns ``None`` when no mask is needed: no padding and either a fresh sequence (the causal triangle,
    applied by the attention function) or a single new token after the cache (it may see every key).
    ``attention_mask`` may be 2D ``(batch, seq)`` with 1 for real tokens and 0 for padding, or already 4D
    (boolean, or additive float with 0 where attending is allowed), in which case it is used as given.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        return _unmask_empty_rows(mask[..., -kv_len:])

    padded = attention_mask is not None and not bool(attention_mask.all())
    if not padded and kv_len == past_len + q_len and (past_len == 0 or q_len == 1):
        return None  # full causal prefill (is_causal), or one new token that may see every key

    # Query i sits at absolute position past_len + i and may see keys 0..past_len + i.
    q_pos = torch.arange(past_len, past_len + q_len, device=device)
    k_pos = torch.arange(kv_len, device=device)
    mask = (k_pos[None, :] <= q_pos[:, None])[None, None]  # (1, 1, q, kv)
    if padded:
        keep = attention_mask.to(device=device, dtype=torch.bool)
        if keep.shape[-1] < kv_len:  # static caches are longer than the mask; the tail is in the future anyway
            keep = F.pad(keep, (0, kv_len - keep.shape[-1]), value=True)
        mask = mask & keep[:, None, None, :kv_len]  # (b, 1, q, kv)
    return _unmask_empty_rows(mask)


def _unmask_empty_rows(mask: torch.Tensor) -> torch.Tensor:
    # A padding query in a left-padded row sees nothing; let it see everything instead of producing NaN.
    # Its output is never used (its own position is masked for every later query).
    return mask | ~mask.any(dim=-1, keepdim=True)


def eager_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool = True,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention written out: scores, scale, mask, softmax, dropout, weighted sum."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (b, h, q, kv)
    if attention_mask is None and is_causal:
        q_len, kv_len = scores.shape[-2:]
        attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=scores.device).tril(kv_len - q_len)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    weights = F.dropout(weights, p=dropout, training=dropout > 0)
    output = torch.matmul(weights, value)  # (b, h, q, d)
    return output.transpose(1, 2), weights  # (b, q, h, d)


def sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool = True,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The same math through ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels, no weights)."""
    output = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        is_causal=attention_mask is None and is_causal and query.shape[-2] > 1,
        scale=scaling,
    )  # (b, h, q, d)
    return output.transpose(1, 2), None  # (b, q, h, d)


ATTENTION_FUNCTIONS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor | None]]] = {
    "eager": eager_attention,
    "sdpa": sdpa_attention,
}


def get_attention_function(name: str | None) -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
    """The implementation registered under ``name`` (``None`` means ``"sdpa"``)."""
    name = name or "sdpa"
    if name not in ATTENTION_FUNCTIONS:
        raise ValueError(
            f"attn_implementation {name!r} is not supported by ScratchGPT; use one of {sorted(ATTENTION_FUNCTIONS)}."
        )
    return ATTENTION_FUNCTIONS[name]


__all__ = ["ATTENTION_FUNCTIONS", "build_attention_mask", "eager_attention", "get_attention_function", "sdpa_attention"]
