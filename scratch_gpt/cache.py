"""An append-in-place KV cache layer for transformers' ``DynamicCache``.

transformers' ``DynamicLayer`` grows by ``torch.cat`` on every decoding step, so each new token copies the whole
cache of every layer (and allocates a new one). At batch 8 that is more memory traffic per step than the
weights of a small model. :class:`AppendKVLayer` keeps the keys and values in buffers with spare room and
writes each new token in place; ``keys``/``values`` are views of the filled part, so everything that reads a
``DynamicLayer`` (``get_seq_length``, ``crop``, mask sizes, returning the cache to the user) works unchanged.

The cache stays a plain ``DynamicCache``: :func:`use_append_layers` swaps its not-yet-used ``DynamicLayer``s
for ours. ScratchGPT does that only for caches it creates itself (in ``forward`` and in ``generate``), never
for a cache the caller passed in.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer


class AppendKVLayer(DynamicLayer):
    """A ``DynamicLayer`` that appends new keys/values into preallocated buffers instead of concatenating.

    ``capacity`` is how many positions to reserve on first use (``generate`` knows its maximum length); when
    a write does not fit, the buffers grow to at least twice their size, so appending stays amortised O(1).
    If anything replaced ``keys``/``values`` with tensors of its own (beam reordering, batch selection,
    offloading), the next update copies them into fresh buffers.
    """

    def __init__(self, capacity: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.capacity = capacity
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._view_of_keys: torch.Tensor | None = None  # the views the last update set as keys/values
        self._view_of_values: torch.Tensor | None = None

    def _fits(self, key_states: torch.Tensor) -> bool:
        """Whether ``key_states`` has the buffers' dtype, device, batch, heads and head size."""
        kb = self._key_buffer
        return (
            kb.dtype == key_states.dtype
            and kb.device == key_states.device
            and kb.shape[:2] == key_states.shape[:2]
            and kb.shape[-1] == key_states.shape[-1]
        )

    def _owns_current(self, key_states: torch.Tensor) -> bool:
        """True when ``keys``/``values`` are still views of our buffers and ``key_states`` fits their layout."""
        kb, vb = self._key_buffer, self._value_buffer
        if kb is None or self.keys is None or self.keys.dim() != 4:
            return False
        return (
            self.keys.data_ptr() == kb.data_ptr()
            and self.values.data_ptr() == vb.data_ptr()
            and self.keys.stride() == kb.stride()
            and self.values.stride() == vb.stride()
            and self._fits(key_states)
        )

    def _reallocate(self, needed: int, key_states: torch.Tensor, value_states: torch.Tensor, past: int) -> None:
        old = self._key_buffer.shape[-2] if self._key_buffer is not None else 0
        capacity = max(needed, self.capacity or 0, 2 * old)
        batch, heads, _, _ = key_states.shape
        kb = key_states.new_empty(batch, heads, capacity, key_states.shape[-1])
        vb = value_states.new_empty(batch, heads, capacity, value_states.shape[-1])
        if past:
            kb[:, :, :past].copy_(self.keys)
            vb[:, :, :past].copy_(self.values)
        self._key_buffer, self._value_buffer = kb, vb

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``key_states``/``value_states`` after the cached positions; return all keys and values."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys = self.keys
        past = keys.shape[-2] if keys is not None and keys.dim() == 4 else self.get_seq_length()
        end = past + key_states.shape[-2]
        if not self._still_ours(keys, key_states) or end > self._key_buffer.shape[-2]:
            self._reallocate(end, key_states, value_states, past)
        kb, vb = self._key_buffer, self._value_buffer
        kb[:, :, past:end].copy_(key_states)
        vb[:, :, past:end].copy_(value_states)
        self.keys = self._view_of_keys = kb[:, :, :end]
        self.values = self._view_of_values = vb[:, :, :end]
        return self.keys, self.values

    def _still_ours(self, keys: torch.Tensor | None, key_states: torch.Tensor) -> bool:
        """:meth:`_owns_current`, with the pointer and stride checks answered by identity when ``keys``/``values``
        are the views the last update made (each decoding step)."""
        if keys is not None and keys is self._view_of_keys and self.values is self._view_of_values:
            return self._fits(key_states)
        return self._owns_current(key_states)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the batch for beam search, in place in the buffers when possible."""
        if self.get_seq_length() > 0 and self._owns_current(self.keys):
            end = self.keys.shape[-2]
            beam_idx = beam_idx.to(self.keys.device)
            self._key_buffer[:, :, :end] = self.keys.index_select(0, beam_idx)
            self._value_buffer[:, :, :end] = self.values.index_select(0, beam_idx)
            return
        super().reorder_cache(beam_idx)

    def reset(self) -> None:
        """Forget the cached positions and release the buffers."""
        self._key_buffer = self._value_buffer = self._view_of_keys = self._view_of_values = None
        super().reset()


def use_append_layers(cache: Cache, capacity: int | None = None) -> Cache:
    """Swap a fresh ``DynamicCache``'s plain ``DynamicLayer``s for :class:`AppendKVLayer` (in place).

    Layers that already hold tokens, and caches of any other kind (static, quantized, offloaded, sliding),
    are left as they are. Returns ``cache``.
    """
    if type(cache) is not DynamicCache or getattr(cache, "offloading", False):
        return cache
    cache.layers = [
        AppendKVLayer(capacity) if type(layer) is DynamicLayer and not layer.is_initialized else layer
        for layer in cache.layers
    ]
    return cache


__all__ = ["AppendKVLayer", "use_append_layers"]
