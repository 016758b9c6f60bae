"""ScratchGPT: a GPT-2-shaped decoder written from scratch as a transformers 5.x model.

Reading order: norm factory -> attention module -> block -> PreTrainedModel -> base model -> heads; the MLPs
live in ``mlp.py``, rotary positions in ``positions.py``, the attention math in ``attention.py``.

Design choices:
- GPT-2 architecture (learned absolute positions, pre-norm blocks, GELU-tanh MLP, tied LM head) with GPT-2's
  module names and ``nn.Linear`` layers (``linear.py``: a subclass with a faster few-rows CPU path), so a GPT-2
  checkpoint maps over by transposing its Conv1D weights.
- One fused ``c_attn`` projection for query/key/value; the attention function is looked up in transformers'
  ``AttentionInterface`` by ``config._attn_implementation`` with transformers' signature. ``"sdpa"`` (default)
  and ``"eager"`` (the math written out) are ours (``attention.py``); every other registered name (paged, flex,
  flash, a serving engine's) is transformers', with transformers' masks. ``**kwargs`` reach the function.
- No causal-mask buffer: on the unpadded path our functions get no mask at all (``is_causal``); a boolean mask
  is built only for padding, a cached prefix or packed sequences.
- Learned positions use the ``position_ids`` passed in (packed requests restart them); without them they follow
  the attention mask, so a left-padded row gets the logits it would get alone.
- Hidden states and attention weights are captured by transformers' output-recording hooks
  (``_can_record_outputs``); ``past_key_values=`` is a deprecated alias of ``cache=`` (``deprecate_kwarg``).
- The KV cache is a transformers ``Cache`` (``DynamicCache`` by default; ``StaticCache`` works through
  ``generate(cache_implementation="static")``); ``generate()`` is GenerationMixin's, never overridden. The
  ``DynamicCache``s the model creates itself append in place (``cache.py``) instead of re-concatenating.
- The loss goes through ``self.loss_function`` so Trainer's ``num_items_in_batch`` is honoured.

References: Radford et al. 2019 (GPT-2); transformers' ``models/gpt2`` and ``models/llama``;
S. Raschka, "Build a Large Language Model (From Scratch)".
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_utils import PreTrainedModel, slice_logits_to_keep
from transformers.utils import can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .attention import ALL_ATTENTION_FUNCTIONS, build_attention_mask, eager_attention, is_ours, packed_sequence_mask
from .cache import use_append_layers
from .decode import can_decode, decode_hidden
from .linear import Linear, tuned_step
from .configuration_scratch_gpt import ScratchGPTConfig
from .loss import fused_causal_lm_loss
from .mlp import make_mlp
from .norm import RMSNorm
from .positions import ScratchGPTRotaryEmbedding, apply_rotary

logger = logging.get_logger(__name__)


def _make_norm(config: ScratchGPTConfig) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return RMSNorm(config.hidden_size, eps=config.layer_norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


def _dropout(p: float) -> nn.Module:
    # Pretraining runs with dropout 0: skip the no-op module call on every layer (it shows in decoding).
    return nn.Dropout(p) if p > 0 else nn.Identity()


class ScratchGPTAttention(nn.Module):
    """Multi-head causal self-attention: fused qkv projection, KV cache, attention through the interface."""

    def __init__(self, config: ScratchGPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.is_causal = True
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads  # < num_heads: grouped-query attention
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        fast, width = config.cpu_fast_paths, (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim
        self.c_attn = Linear(config.hidden_size, width, bias=config.qkv_bias, cpu_fast_paths=fast)
        self.c_proj = Linear(
            self.num_heads * self.head_dim, config.hidden_size, bias=config.attention_bias, cpu_fast_paths=fast
        )
        self.qk_norm = config.qk_norm
        if self.qk_norm:  # Qwen3: RMSNorm over each head of the queries and keys
            self.q_norm = RMSNorm(self.head_dim, eps=config.layer_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, eps=config.layer_norm_eps)
        self.c_proj.is_residual_projection = True  # scaled init, see ScratchGPTPreTrainedModel._init_weights
        self.resid_dropout = _dropout(config.resid_dropout)

    def project(
        self, qkv: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values ``(b, heads, t, d)`` from the fused projection's ``(b, t, width)`` output, with
        QK-norm and rotary positions applied (shared by :meth:`forward` and the decoding step, ``decode.py``)."""
        batch, seq, _ = qkv.shape
        # Heads as -1: under tensor parallelism a rank holds only its share of them.
        qkv = qkv.view(batch, seq, -1, self.head_dim)  # (b, t, h + 2kv, d)
        kv_heads = qkv.shape[2] * self.num_key_value_heads // (self.num_heads + 2 * self.num_key_value_heads)
        heads = qkv.shape[2] - 2 * kv_heads
        # Split, then transpose each part (the same views as transposing first): the backward's concatenation
        # then writes the (b, t, width) gradient directly, with no copy into the projection's layout after it.
        query, key, value = (part.transpose(1, 2) for part in qkv.split((heads, kv_heads, kv_heads), dim=2))
        if self.qk_norm:
            query, key = self.q_norm(query), self.k_norm(key)
        if position_embeddings is not None:  # RoPE (learned positions were added to the embeddings)
            packed = None if self.qk_norm else qkv[:, :, : heads + kv_heads].transpose(1, 2)  # queries and keys
            query, key = apply_rotary(query, key, *position_embeddings, packed=packed)
        return query, key, value

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq, _ = hidden_states.shape
        query, key, value = self.project(self.c_attn(hidden_states), kwargs.pop("position_embeddings", None))
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)  # (b, h, past + t, d)

        implementation = self.config._attn_implementation
        if kwargs.pop("output_attentions", False) and implementation == "sdpa":
            logger.warning_once("output_attentions=True needs attention weights: using the eager attention for it.")
            implementation = "eager"
        try:  # one dict lookup on the decoding path; get_interface for prefixes, None and the error message
            attention = ALL_ATTENTION_FUNCTIONS[implementation]
        except KeyError:
            attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention)
        attn_output, attn_weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(batch, seq, -1)  # (b, t, h * d)
        return self.resid_dropout(self.c_proj(attn_output)), attn_weights


class ScratchGPTBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: ScratchGPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = _make_norm(config)
        self.attn = ScratchGPTAttention(config, layer_idx)
        self.ln_2 = _make_norm(config)
        self.mlp = make_mlp(config, layer_idx)  # GPT-2's GELU MLP or the gated SwiGLU (mlp.py)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attn_output, _ = self.attn(self.ln_1(hidden_states), attention_mask, cache=cache, **kwargs)
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class ScratchGPTPreTrainedModel(PreTrainedModel):
    """Weight init, loading and the capabilities transformers and serving engines read."""

    config_class = ScratchGPTConfig
    config: ScratchGPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ScratchGPTBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True  # through the interface: the kernels need a GPU (see docs/backends.md)
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {
        "hidden_states": ScratchGPTBlock,
        "attentions": OutputRecorder(ScratchGPTAttention, index=1),
    }
    # Old GPT-2 checkpoints carry a causal-mask buffer; we never persist one.
    _keys_to_ignore_on_load_unexpected = [r"\.attn\.bias$", r"\.attn\.masked_bias$"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # GPT-2: scale the residual projections by 1/sqrt(N), N = 2 residual branches per block. (Marked on the
        # Linear itself: transformers skips custom-code modules that own no parameters, like the MLP.)
        # zero_init_output_projections: zero instead, so every block starts as the identity (modded-nanogpt).
        if isinstance(module, nn.Linear) and getattr(module, "is_residual_projection", False):
            if self.config.zero_init_output_projections:
                init.zeros_(module.weight)
            else:
                std = self.config.initializer_range / math.sqrt(2 * self.config.num_hidden_layers)
                init.normal_(module.weight, mean=0.0, std=std)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, then (with ``config.cpu_fast_paths``) CPU weights moved to
        64-byte-aligned memory.

        safetensors weights are memory-mapped at 8-byte alignment. BLAS kernels pick their code path (and so
        their rounding) by operand alignment, so without this a model's logits would change in the last bit
        with the file layout (sharded or not) and tall matmuls run slower. One copy at load time.
        """
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if model.config.cpu_fast_paths:
            _align_cpu_parameters(model)
        return loaded

    def _decoder(self, input_ids, attention_mask, position_ids, cache, inputs_embeds, use_cache, kwargs: dict):
        """The heads' call of the bare decoder (``self.transformer``) with their forward's arguments."""
        return self.transformer(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )


def _align_cpu_parameters(model: nn.Module, alignment: int = 64) -> None:
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:  # parameters() lists a tied weight once
            if tensor.device.type == "cpu" and tensor.numel() and tensor.data_ptr() % alignment:
                tensor.data = tensor.data.clone()


def _drop_all_ones(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    # An all-ones 2D mask is no mask: decide that once (one device sync per step, not two). Not while tracing.
    if attention_mask is not None and attention_mask.dim() == 2 and not torch.compiler.is_compiling():
        if bool(attention_mask.all()):
            return None
    return attention_mask


def _is_4d(attention_mask: torch.Tensor | None) -> bool:
    return attention_mask is not None and attention_mask.dim() == 4


def _default_positions(attention_mask: torch.Tensor | None, past_len: int, embeds: torch.Tensor) -> torch.Tensor:
    seq = embeds.shape[1]
    if attention_mask is not None and attention_mask.dim() == 2:
        # Left padding: each row counts positions from its first real token.
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq:]
    return torch.arange(past_len, past_len + seq, device=embeds.device)[None]


class ScratchGPTModel(ScratchGPTPreTrainedModel):
    """The bare decoder: embeddings, blocks, final norm; returns hidden states (and the cache)."""

    def __init__(self, config: ScratchGPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        learned = config.position_embedding_type == "learned"
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size) if learned else None
        self.rotary_emb = None if learned else ScratchGPTRotaryEmbedding(config)
        self.drop = _dropout(config.embd_dropout)
        self.h = nn.ModuleList([ScratchGPTBlock(config, i) for i in range(config.num_hidden_layers)])
        self.ln_f = _make_norm(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.wte = new_embeddings

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache", raise_if_both_names=True)
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        r"""``position_ids`` are always used as given (packed requests restart them at 0); without them they
        follow the attention mask (left padding) or the cache length. ``**kwargs`` reach the attention function."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        use_cache = self._use_cache(use_cache)
        if use_cache and cache is None:
            cache = use_append_layers(DynamicCache(config=self.config))
        attention_mask = _drop_all_ones(attention_mask)
        past_len = self._past_length(cache, attention_mask, position_ids, inputs_embeds.shape[1])
        packed = attention_mask is None and past_len == 0 and position_ids is not None
        if position_ids is None:
            position_ids = _default_positions(attention_mask, past_len, inputs_embeds)
        if self.wpe is not None:
            hidden_states = self.drop(inputs_embeds + self.wpe(position_ids))  # (b, t, h)
        else:  # RoPE: every attention layer rotates its queries and keys by these (cos, sin)
            hidden_states = self.drop(inputs_embeds)
            kwargs["position_embeddings"] = self.rotary_emb(hidden_states, position_ids)  # 2 x (b, t, d)

        mask = self._attention_mask(attention_mask, inputs_embeds, cache, position_ids, past_len, packed)
        kwargs.pop("output_hidden_states", None)  # captured by the hooks (_can_record_outputs)
        if kwargs.get("output_attentions") is None and self.config.output_attentions:
            kwargs["output_attentions"] = True  # the attention module needs to know to compute weights
        for block in self.h:
            hidden_states = block(hidden_states, mask, cache=cache, position_ids=position_ids, **kwargs)
        hidden_states = self.ln_f(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache if use_cache else None)

    def _use_cache(self, use_cache: bool | None) -> bool:
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        # The replayed forward of gradient checkpointing would write the cache twice.
        return bool(use_cache) and not (self.gradient_checkpointing and self.training)

    def _past_length(self, cache, attention_mask, position_ids, seq: int) -> int:
        """Cached positions, checked against the context. 0 and no check where the row is not one sequence
        (continuous batching's paged cache, or packed requests: positions come with the batch) or the caller
        brought positions and a 4D mask (static-cache ``generate``, compiled)."""
        if position_ids is not None and (cache is None or not isinstance(cache, Cache) or _is_4d(attention_mask)):
            return 0
        past_len = cache.get_seq_length() if isinstance(cache, Cache) else 0
        if not torch.compiler.is_compiling() and past_len + seq > self.config.max_position_embeddings:
            self._check_length(past_len, seq)
        return past_len

    def _check_length(self, past_len: int, seq: int) -> None:
        """Past ``max_position_embeddings``: learned positions have no row in ``wpe`` (ValueError); RoPE computes
        any position, so it only warns once that the model was not trained that long."""
        limit = self.config.max_position_embeddings
        if self.wpe is not None:
            raise ValueError(
                f"Sequence length {past_len + seq} (cached {past_len} + new {seq}) exceeds "
                f"max_position_embeddings={limit}, the size of the learned position table. Truncate the input "
                f"(e.g. tokenizer(..., truncation=True, max_length={limit})) or generate fewer new tokens."
            )
        # No lengths in the message: warning_once warns once per distinct message, and decoding grows by one.
        logger.warning_once(
            f"The input is longer than max_position_embeddings={limit}, the length this model was configured "
            f"(trained) for. RoPE ({self.config.rope_parameters['rope_type']}) computes any position, but quality "
            "past it depends on the model ('linear', 'dynamic' and 'yarn' rope_parameters exist to go further)."
        )

    def _attention_mask(self, attention_mask, inputs_embeds, cache, position_ids, past_len: int, packed: bool):
        """The mask the configured attention function expects.

        Ours (``eager``/``sdpa``): a boolean mask, or ``None`` on the unpadded fast path. Any other
        implementation (and anything traced by ``torch.compile``): transformers' ``create_causal_mask``, which
        builds the right kind (flex ``BlockMask``, flash: none, paged: none) or passes a 4D mask through.
        """
        if not is_ours(self.config._attn_implementation) or torch.compiler.is_compiling():
            return create_causal_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                cache=cache if isinstance(cache, Cache) else None,
                position_ids=position_ids,
            )
        if not isinstance(cache, Cache) and attention_mask is not None and attention_mask.dim() == 4:
            return attention_mask  # e.g. continuous batching: already the right shape for the paged keys
        if packed:
            block_diagonal = packed_sequence_mask(position_ids)
            if block_diagonal is not None:
                return block_diagonal
        seq = inputs_embeds.shape[1]
        kv_len = past_len + seq
        if isinstance(cache, Cache) and cache.get_max_length() > 0:  # static cache: keys span the whole buffer
            kv_len = cache.get_max_length()
        return build_attention_mask(attention_mask, seq, kv_len, past_len, inputs_embeds.device)


class ScratchGPTForCausalLM(ScratchGPTPreTrainedModel, GenerationMixin):
    """ScratchGPT with a language-modelling head tied to the token embedding."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: ScratchGPTConfig):
        super().__init__(config)
        self.transformer = ScratchGPTModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False, cpu_fast_paths=config.cpu_fast_paths)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, *args, **kwargs):
        # GenerationMixin builds a DynamicCache; reserve generate()'s whole length in it up front so that
        # decoding appends in place (cache.py). A cache the caller passed in is used exactly as given.
        result = super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        cache = model_kwargs.get("cache")
        if cache is not None and not getattr(cache, "_is_user_defined", False):
            bound = inspect.signature(super()._prepare_cache_for_generation).bind_partial(
                generation_config, model_kwargs, *args, **kwargs
            )
            capacity = bound.arguments.get("max_cache_length")
            use_append_layers(cache, capacity if isinstance(capacity, int) else None)
        return result

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache", raise_if_both_names=True)
    @can_return_tuple
    @tuned_step
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""``labels`` are the input ids (shifted inside); ``-100`` is ignored. ``logits_to_keep=n`` computes
        logits for the last ``n`` positions only (0 = all), which is what ``generate()`` uses."""
        outputs = None
        if use_cache is not False and can_decode(self, input_ids, attention_mask, cache, inputs_embeds, labels, kwargs):
            # One new token per row: the same math without the per-module call machinery (decode.py).
            hidden_states = decode_hidden(self, input_ids, position_ids, cache)
        else:
            outputs = self._decoder(input_ids, attention_mask, position_ids, cache, inputs_embeds, use_cache, kwargs)
            hidden_states, cache = outputs.last_hidden_state, outputs.cache
        loss = logits = None
        if labels is not None and self._can_fuse_loss(logits_to_keep, kwargs):
            loss = fused_causal_lm_loss(
                hidden_states,
                self.lm_head.weight,
                labels,
                num_items_in_batch=kwargs.get("num_items_in_batch"),
                cpu_fast_paths=self.config.cpu_fast_paths,
                softcap=self.config.final_logit_softcapping,
            )
        else:
            logits = self.lm_head(slice_logits_to_keep(hidden_states, logits_to_keep))  # (b, t, vocab)
            cap = self.config.final_logit_softcapping
            if cap is not None:  # Gemma 2's final-logit soft-capping: into (-cap, cap), before the loss
                logits = torch.tanh(logits / cap) * cap
            if labels is not None:
                loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=cache,
            hidden_states=None if outputs is None else outputs.hidden_states,
            attentions=None if outputs is None else outputs.attentions,
        )

    def _can_fuse_loss(self, logits_to_keep: int | torch.Tensor, kwargs: dict) -> bool:
        # Only where nobody can want the logits (training with grads) and the plain head/loss would be used.
        return (
            self.config.fused_lm_loss
            and self.training
            and torch.is_grad_enabled()
            and isinstance(logits_to_keep, int)
            and logits_to_keep == 0
            and type(self.lm_head) in (nn.Linear, Linear)  # not wrapped (e.g. by a LoRA layer)
            and self.lm_head.bias is None
            and not hasattr(self, "_loss_function")  # no custom loss installed
            and "shift_labels" not in kwargs
        )


def _last_real_token(logits, attention_mask, input_ids, inputs_embeds, pad_token_id) -> torch.Tensor:
    """Index of the rightmost real token of each row: from the attention mask when given (left or right
    padding alike), else from the pad id, else the last position."""
    batch, seq = logits.shape[:2]
    if attention_mask is not None and attention_mask.dim() == 2:
        real = attention_mask.to(logits.device, torch.int32)
    elif input_ids is not None and pad_token_id is not None:
        real = (input_ids != pad_token_id).to(logits.device, torch.int32)
    else:
        if batch > 1 and pad_token_id is None and inputs_embeds is None:
            raise ValueError("Batches of several sequences need an attention_mask or config.pad_token_id.")
        real = torch.ones(batch, seq, dtype=torch.int32, device=logits.device)
    return (torch.arange(seq, device=logits.device, dtype=torch.int32) * real).argmax(-1)


class ScratchGPTForSequenceClassification(ScratchGPTPreTrainedModel):
    """ScratchGPT with a linear classifier on the last real (non-padding) token of each sequence."""

    def __init__(self, config: ScratchGPTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = ScratchGPTModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache", raise_if_both_names=True)
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        r"""``labels``: class ids (single-label), float multi-hot rows (multi-label) or floats (regression,
        ``num_labels == 1``); the problem type is inferred as transformers does, or read from the config."""
        outputs = self._decoder(input_ids, attention_mask, position_ids, cache, inputs_embeds, use_cache, kwargs)
        logits = self.score(outputs.last_hidden_state)  # (b, t, labels)
        last = _last_real_token(logits, attention_mask, input_ids, inputs_embeds, self.config.pad_token_id)
        pooled_logits = logits[torch.arange(logits.shape[0], device=logits.device), last]  # (b, labels)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=pooled_logits, config=self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled_logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = [
    "ScratchGPTForCausalLM",
    "ScratchGPTForSequenceClassification",
    "ScratchGPTModel",
    "ScratchGPTPreTrainedModel",
]
