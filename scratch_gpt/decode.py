"""One decoding step without the framework's per-call machinery: the same math, fewer Python layers.

At batch 1 on a CPU a decoding step of a small model is a few milliseconds of products and, around them,
hundreds of Python calls: ``nn.Module.__call__`` for every block, norm and projection, transformers' output
capturing, keyword-argument plumbing, mask and position bookkeeping, the attention-interface lookup. Measured on
an Intel Xeon (docs/benchmarks.md), that machinery was a quarter of a 124M model's decoding step and more than
half of a tiny one's. :func:`decode_hidden` runs one new token per row through the model by calling each module's
``forward`` directly, with the same operations in the same order as ``ScratchGPTModel.forward``, so the hidden
states are equal to the last bit (tests/scratch_gpt/test_decode.py compares them).

It is taken only where nothing could observe the difference (:func:`can_decode`): inference (no autograd, eval
mode), one new token per row, no padding, the model's own append-in-place ``DynamicCache``, our ``eager``/``sdpa``
attention, no outputs to record and no hooks on the modules it calls directly (PEFT adapters, quantized layers and
hooks registered on the inner projections still run: those are called through ``__call__``). Everything else takes
the regular forward. :func:`regular_decoding` switches it off (A/B benchmarks, tests).
"""

from __future__ import annotations

import contextlib
import threading

import torch
from torch import nn
from torch.nn.modules import module as _module
from transformers.cache_utils import DynamicCache

from .attention import OURS
from .cache import AppendKVLayer
from .kernel_choice import thread_setting

_state = threading.local()  # .off: decode_hidden disabled in this thread (regular_decoding)
_ACCEPTED_KWARGS = frozenset({"return_dict", "output_attentions", "output_hidden_states", "use_cache"})


def regular_decoding() -> contextlib.AbstractContextManager[None]:
    """Within the block (this thread), decoding steps take the model's regular forward."""
    return thread_setting(_state, "off", True, default=False)


def _global_hooks() -> bool:
    """Whether any global module hook is registered (``register_module_forward_hook`` and friends)."""
    names = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
             "_global_backward_pre_hooks")
    return any(getattr(_module, name, None) for name in names)


_BLOCK_PARTS = ("ln_1", "attn", "ln_2", "mlp")
_ATTENTION_PARTS = ("c_attn", "c_proj")


def _hooked(model: nn.Module) -> bool:
    """Whether a module whose ``forward`` the step calls directly (so whose hooks it would skip) has hooks: the
    model, the decoder, its embeddings and final norm, every block, its norms, attention and MLP, and the
    attention's projections. Read through ``_modules`` (``nn.Module.__getattr__`` costs a microsecond a time)."""
    base = model._modules["transformer"]
    top = base._modules
    for module in (model, base, *(m for m in top.values() if m is not None and m is not top["h"])):
        if module._forward_hooks or module._forward_pre_hooks:
            return True
    for block in top["h"]._modules.values():
        if block._forward_hooks or block._forward_pre_hooks:
            return True
        parts = block._modules
        for name in _BLOCK_PARTS:
            if parts[name]._forward_hooks or parts[name]._forward_pre_hooks:
                return True
        inner = parts["attn"]._modules
        for name in _ATTENTION_PARTS:
            if inner[name]._forward_hooks or inner[name]._forward_pre_hooks:
                return True
    return False


def can_decode(model: nn.Module, input_ids, attention_mask, cache, inputs_embeds, labels, kwargs: dict) -> bool:
    """Whether :func:`decode_hidden` computes what the regular forward would for this call (see module doc)."""
    if (
        getattr(_state, "off", False)
        or model.training
        or torch.is_grad_enabled()
        or labels is not None
        or inputs_embeds is not None
        or input_ids is None
        or input_ids.dim() != 2
        or input_ids.shape[1] != 1
        or type(cache) is not DynamicCache
        or getattr(cache, "offloading", False)
        or not kwargs.keys() <= _ACCEPTED_KWARGS
        or kwargs.get("output_attentions") or kwargs.get("output_hidden_states")
        or torch.compiler.is_compiling()
    ):
        return False
    config = model.config
    if config._attn_implementation not in OURS or config.output_attentions or config.output_hidden_states:
        return False
    layers = cache.layers
    base = model.transformer
    if len(layers) != len(base.h) or not all(type(layer) is AppendKVLayer and layer.is_initialized
                                             for layer in layers):
        return False
    if attention_mask is not None and not (attention_mask.dim() == 2 and bool(attention_mask.all())):
        return False
    if layers[0].get_seq_length() + 1 > config.max_position_embeddings:
        return False  # the regular forward raises (learned positions) or warns (RoPE)
    return not _global_hooks() and not _hooked(model)


def decode_hidden(model: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor | None,
                  cache: DynamicCache) -> torch.Tensor:
    """The final-norm hidden states ``(b, 1, hidden)`` of one new token per row, its keys and values appended to
    ``cache`` (call only where :func:`can_decode` holds)."""
    # Submodules read from ``_modules``: nn.Module.__getattr__ costs ~0.4 µs a lookup, ~30 of them a step.
    top = model._modules["transformer"]._modules
    if position_ids is None:
        past = cache.layers[0].get_seq_length()
        position_ids = torch.full_like(input_ids, past)
    hidden = top["wte"].forward(input_ids)
    rope = None
    wpe = top.get("wpe")  # None (an attribute, not a module) with RoPE
    if wpe is not None:
        hidden = hidden + wpe.forward(position_ids)
    else:
        rope = top["rotary_emb"].forward(hidden, position_ids)
    attention = OURS[model.config._attn_implementation]
    for block, layer in zip(top["h"]._modules.values(), cache.layers):
        parts = block._modules
        attn = parts["attn"]
        inner = attn._modules
        query, key, value = attn.project(inner["c_attn"].forward(parts["ln_1"].forward(hidden)), rope)
        key, value = layer.update(key, value)
        out, _ = attention(attn, query, key, value, None, dropout=0.0, scaling=attn.scaling)
        hidden = hidden + inner["c_proj"].forward(out.reshape(*hidden.shape[:2], -1))
        hidden = hidden + parts["mlp"].forward(parts["ln_2"].forward(hidden))
    return top["ln_f"].forward(hidden)


__all__ = ["can_decode", "decode_hidden", "regular_decoding"]
