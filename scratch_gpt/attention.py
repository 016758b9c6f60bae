"""The attention math, written out, behind transformers' attention-function signature.

Every implementation takes ``(module, query, key, value, attention_mask, dropout=, scaling=, **kwargs)`` with
query/key/value shaped ``(batch, heads, seq, head_dim)`` and returns ``(output, weights)`` where ``output`` is
``(batch, seq, heads, head_dim)`` and ``weights`` is ``(batch, heads, q_len, kv_len)`` or ``None``: the
signature of transformers' ``AttentionInterface``, so any function registered there (paged attention for
continuous batching, flex/flash attention, a serving engine's own) can take the place of ours.

``attention_mask`` is ``None`` (plain causal attention: ``is_causal`` tells the implementation to build the
triangle itself, so no mask is materialised on the fast path), a boolean ``(batch, 1, q_len, kv_len)`` tensor
(``True`` where a query may attend to a key; :func:`build_attention_mask` makes it), or an additive float mask
of that shape (0 where attending is allowed), as transformers' mask functions and continuous batching pass.

:data:`ALL_ATTENTION_FUNCTIONS` is a model-local ``AttentionInterface``: the standard names ``"eager"`` and
``"sdpa"`` resolve to the two functions below; every other name (``"paged|eager"``, ``"flex_attention"``,
``"flash_attention_2"``, anything registered with ``AttentionInterface.register``) to transformers' registry.
See docs/backends.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.modeling_utils import AttentionInterface


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


def packed_sequence_mask(position_ids: torch.Tensor) -> torch.Tensor | None:
    """A block-diagonal causal mask ``(1, 1, t, t)`` for one row packing several sequences, else ``None``.

    Packed requests (vLLM, ``DataCollatorWithFlattening``) restart their ``position_ids`` at 0; each token may
    see only the earlier tokens of its own sequence. A single row whose positions never restart needs no mask.
    """
    if position_ids.shape[0] != 1 or position_ids.shape[-1] < 2:
        return None
    positions = position_ids[0]
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[1:] = positions[1:] != positions[:-1] + 1
    if not bool(starts[1:].any()):
        return None
    sequence = starts.cumsum(0)  # (t,) which packed sequence each token belongs to
    same = sequence[:, None] == sequence[None, :]
    return (same & torch.ones_like(same).tril())[None, None]


def _unmask_empty_rows(mask: torch.Tensor) -> torch.Tensor:
    # A padding query in a left-padded row sees nothing; let it see everything instead of producing NaN.
    # Its output is never used (its own position is masked for every later query).
    return mask | ~mask.any(dim=-1, keepdim=True)


_SDPA_GQA = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)  # SDPA's enable_gqa


def repeat_kv(states: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Repeat each of the ``(b, kv, t, d)`` grouped key/value heads for the query heads it serves."""
    batch, kv_heads, seq, dim = states.shape
    if kv_heads == num_heads:
        return states
    groups = num_heads // kv_heads
    return states[:, :, None].expand(batch, kv_heads, groups, seq, dim).reshape(batch, num_heads, seq, dim)


def _is_causal(module: torch.nn.Module | None, is_causal: bool | None) -> bool:
    # As transformers' sdpa: an explicit `is_causal` kwarg wins, then the module's attribute.
    return is_causal if is_causal is not None else getattr(module, "is_causal", True)


def eager_attention(
    module: torch.nn.Module | None,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention written out: scores, scale, mask, softmax, dropout, weighted sum."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    key, value = repeat_kv(key, query.shape[1]), repeat_kv(value, query.shape[1])  # grouped-query attention
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (b, h, q, kv)
    if attention_mask is None and _is_causal(module, is_causal):
        q_len, kv_len = scores.shape[-2:]
        attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=scores.device).tril(kv_len - q_len)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:  # additive float mask
        scores = scores + attention_mask[..., : scores.shape[-1]]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    weights = F.dropout(weights, p=dropout, training=dropout > 0)
    output = torch.matmul(weights, value)  # (b, h, q, d)
    return output.transpose(1, 2), weights  # (b, q, h, d)


def sdpa_attention(
    module: torch.nn.Module | None,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The same math through ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels, no weights)."""
    if attention_mask is not None:
        attention_mask = attention_mask[..., : key.shape[-2]]
    gqa = {}
    if key.shape[1] != query.shape[1]:  # grouped-query attention: the kernel reads the groups, no copies
        if _SDPA_GQA:
            gqa = {"enable_gqa": True}
        else:
            key, value = repeat_kv(key, query.shape[1]), repeat_kv(value, query.shape[1])
    output = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        is_causal=attention_mask is None and query.shape[-2] > 1 and _is_causal(module, is_causal),
        scale=scaling,
        **gqa,
    )  # (b, h, q, d)
    return output.transpose(1, 2), None  # (b, q, h, d)


OURS = {"eager": eager_attention, "sdpa": sdpa_attention}

# Model-local registry: our two functions under the standard names, transformers' global registry for the rest
# (an AttentionInterface instance's local entries shadow the global ones; see transformers' AttentionInterface).
ALL_ATTENTION_FUNCTIONS = AttentionInterface()
for _name, _function in OURS.items():
    ALL_ATTENTION_FUNCTIONS[_name] = _function


def is_ours(name: str | None) -> bool:
    """Whether ``name`` resolves to one of our implementations (so our own masks apply)."""
    return (name or "sdpa") in OURS


__all__ = [
    "ALL_ATTENTION_FUNCTIONS",
    "build_attention_mask",
    "eager_attention",
    "is_ours",
    "packed_sequence_mask",
    "sdpa_attention",
]
