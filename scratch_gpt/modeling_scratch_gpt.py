"""ScratchGPT: a GPT-2-shaped decoder written from scratch as a transformers 5.x model.

Reading order: norm factory -> MLP -> attention module -> block -> PreTrainedModel -> base model -> heads.

Design choices:
- GPT-2 architecture (learned absolute positions, pre-norm blocks, GELU-tanh MLP, tied LM head) with GPT-2's
  module names and ``nn.Linear`` layers (``linear.py``: a subclass with a faster few-rows CPU path), so a GPT-2
  checkpoint maps over by transposing its Conv1D weights.
- One fused ``c_attn`` projection for query/key/value; the attention math lives in ``attention.py`` behind one
  signature and is picked by ``config._attn_implementation`` (``"sdpa"`` by default, ``"eager"`` writes it out).
- No causal-mask buffer: on the unpadded training path no mask is built at all (SDPA's ``is_causal``); a
  boolean mask is built only for padding or a cached prefix.
- Position ids follow the attention mask, so a left-padded row gets the logits it would get alone.
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
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import logging

from .attention import build_attention_mask, get_attention_function
from .cache import use_append_layers
from .linear import Linear
from .configuration_scratch_gpt import ScratchGPTConfig
from .loss import fused_causal_lm_loss

logger = logging.get_logger(__name__)


def _make_norm(config: ScratchGPTConfig) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return nn.RMSNorm(config.hidden_size, eps=config.layer_norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


def _dropout(p: float) -> nn.Module:
    # Pretraining runs with dropout 0: skip the no-op module call on every layer (it shows in decoding).
    return nn.Dropout(p) if p > 0 else nn.Identity()


def _activation(name: str) -> nn.Module:
    # GPT-2's "gelu_new" is the tanh GELU written out in five elementwise ops; torch's fused kernel computes
    # the same function in one.
    return ACT2FN["gelu_pytorch_tanh" if name == "gelu_new" else name]


def _pop_legacy_cache(cache: Cache | None, kwargs: dict) -> Cache | None:
    """Accept transformers 4.x's ``past_key_values=`` as a deprecated alias of ``cache=``."""
    legacy = kwargs.pop("past_key_values", None)
    if legacy is None:
        return cache
    if cache is not None:
        raise ValueError("Pass the KV cache as `cache=` only; `past_key_values=` is its deprecated alias.")
    logger.warning_once("`past_key_values=` is deprecated in transformers 5.x; pass the KV cache as `cache=`.")
    return legacy


class ScratchGPTMLP(nn.Module):
    """Position-wise feed-forward: expand, activate, project back."""

    def __init__(self, config: ScratchGPTConfig, layer_idx: int | None = None):
        super().__init__()
        self.c_fc = Linear(config.hidden_size, config.intermediate_size)
        self.act = _activation(config.hidden_act)
        self.c_proj = Linear(config.intermediate_size, config.hidden_size)
        self.c_proj.is_residual_projection = True  # scaled init, see ScratchGPTPreTrainedModel._init_weights
        self.dropout = _dropout(config.resid_dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(hidden_states))))


class ScratchGPTAttention(nn.Module):
    """Multi-head causal self-attention: fused qkv projection, KV cache, pluggable attention math."""

    def __init__(self, config: ScratchGPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.c_attn = Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.c_proj = Linear(config.hidden_size, config.hidden_size)
        self.c_proj.is_residual_projection = True  # scaled init, see ScratchGPTPreTrainedModel._init_weights
        self.resid_dropout = _dropout(config.resid_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq, width = hidden_states.shape
        qkv = self.c_attn(hidden_states).view(batch, seq, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (b, h, t, d)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)  # (b, h, past + t, d)

        implementation = self.config._attn_implementation
        if output_attentions and implementation != "eager":
            logger.warning_once("output_attentions=True needs attention weights: using the eager attention for it.")
            implementation = "eager"
        attn_output, attn_weights = get_attention_function(implementation)(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=True,
        )
        attn_output = attn_output.reshape(batch, seq, width)  # (b, t, h * d)
        return self.resid_dropout(self.c_proj(attn_output)), attn_weights


class ScratchGPTBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: ScratchGPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = _make_norm(config)
        self.attn = ScratchGPTAttention(config, layer_idx)
        self.ln_2 = _make_norm(config)
        self.mlp = ScratchGPTMLP(config, layer_idx)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_output, attn_weights = self.attn(
            self.ln_1(hidden_states), attention_mask, cache=cache, output_attentions=output_attentions
        )
        hidden_states = hidden_states + attn_output
        hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        return hidden_states, attn_weights


class ScratchGPTPreTrainedModel(PreTrainedModel):
    """Weight init, loading and the capabilities transformers checks for."""

    config_class = ScratchGPTConfig
    config: ScratchGPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ScratchGPTBlock"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    _can_compile_fullgraph = False
    # Old GPT-2 checkpoints carry a causal-mask buffer; we never persist one.
    _keys_to_ignore_on_load_unexpected = [r"\.attn\.bias$", r"\.attn\.masked_bias$"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # GPT-2: scale the residual projections by 1/sqrt(N), N = 2 residual branches per block. (Marked on the
        # Linear itself: transformers skips custom-code modules that own no parameters, like the MLP.)
        if isinstance(module, nn.Linear) and getattr(module, "is_residual_projection", False):
            std = self.config.initializer_range / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(module.weight, mean=0.0, std=std)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, then CPU weights moved to 64-byte-aligned memory.

        safetensors weights are memory-mapped at 8-byte alignment. BLAS kernels pick their code path (and so
        their rounding) by operand alignment, so without this a model's logits would change in the last bit
        with the file layout (sharded or not) and tall matmuls run up to 2x slower. One copy at load time.
        """
        loaded = super().from_pretrained(*args, **kwargs)
        _align_cpu_parameters(loaded[0] if isinstance(loaded, tuple) else loaded)
        return loaded


def _align_cpu_parameters(model: nn.Module, alignment: int = 64) -> None:
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:  # parameters() lists a tied weight once
            if tensor.device.type == "cpu" and tensor.numel() and tensor.data_ptr() % alignment:
                tensor.data = tensor.data.clone()


class ScratchGPTModel(ScratchGPTPreTrainedModel):
    """The bare decoder: embeddings, blocks, final norm; returns hidden states (and the cache)."""

    def __init__(self, config: ScratchGPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.drop = _dropout(config.embd_dropout)
        self.h = nn.ModuleList([ScratchGPTBlock(config, i) for i in range(config.num_hidden_layers)])
        self.ln_f = _make_norm(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.wte = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        cache = _pop_legacy_cache(cache, kwargs)
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False  # the replayed forward would write the cache twice

        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        batch, seq = inputs_embeds.shape[:2]

        if use_cache and cache is None:
            cache = use_append_layers(DynamicCache(config=self.config))
        past_len = cache.get_seq_length() if cache is not None else 0
        if past_len + seq > self.config.max_position_embeddings:
            raise ValueError(
                f"Sequence length {past_len + seq} (cached {past_len} + new {seq}) exceeds "
                f"max_position_embeddings={self.config.max_position_embeddings}. Truncate the input "
                f"(e.g. tokenizer(..., truncation=True, max_length={self.config.max_position_embeddings})) "
                "or generate fewer new tokens."
            )

        # An all-ones 2D mask is no mask: decide that once (one device sync per step, not two).
        if attention_mask is not None and attention_mask.dim() == 2 and bool(attention_mask.all()):
            attention_mask = None
        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:
                # Left padding: each row counts positions from its first real token.
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq:]
            else:
                position_ids = torch.arange(past_len, past_len + seq, device=inputs_embeds.device)[None]
        hidden_states = self.drop(inputs_embeds + self.wpe(position_ids))  # (b, t, h)

        kv_len = past_len + seq
        if cache is not None and cache.get_max_length() > 0:  # static cache: keys span the whole buffer
            kv_len = cache.get_max_length()
        mask = build_attention_mask(attention_mask, seq, kv_len, past_len, inputs_embeds.device)

        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for block in self.h:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, attn_weights = block(hidden_states, mask, cache=cache, output_attentions=output_attentions)
            if output_attentions:
                all_attentions += (attn_weights,)
        hidden_states = self.ln_f(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            cache=cache if use_cache else None,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )
        return output if return_dict else output.to_tuple()


class ScratchGPTForCausalLM(ScratchGPTPreTrainedModel, GenerationMixin):
    """ScratchGPT with a language-modelling head tied to the token embedding."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: ScratchGPTConfig):
        super().__init__(config)
        self.transformer = ScratchGPTModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
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

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        r"""``labels`` are the input ids (shifted inside); ``-100`` is ignored. ``logits_to_keep=n`` computes
        logits for the last ``n`` positions only (0 = all), which is what ``generate()`` uses."""
        cache = _pop_legacy_cache(cache, kwargs)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        if labels is not None and self._can_fuse_loss(logits_to_keep, kwargs):
            loss = fused_causal_lm_loss(
                hidden_states, self.lm_head.weight, labels, num_items_in_batch=kwargs.get("num_items_in_batch")
            )
            output = CausalLMOutputWithPast(
                loss=loss, cache=outputs.cache, hidden_states=outputs.hidden_states, attentions=outputs.attentions
            )
            return output if return_dict else output.to_tuple()

        if isinstance(logits_to_keep, int):
            hidden_states = hidden_states[:, -logits_to_keep:] if logits_to_keep else hidden_states
        else:
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)  # (b, t, vocab)

        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)

        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


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


class ScratchGPTForSequenceClassification(ScratchGPTPreTrainedModel):
    """ScratchGPT with a linear classifier on the last real (non-padding) token of each sequence."""

    def __init__(self, config: ScratchGPTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = ScratchGPTModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast | tuple:
        r"""``labels``: class ids (single-label), float multi-hot rows (multi-label) or floats (regression,
        ``num_labels == 1``); the problem type is inferred as transformers does, or read from the config."""
        cache = _pop_legacy_cache(cache, kwargs)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.score(outputs.last_hidden_state)  # (b, t, labels)
        batch, seq = logits.shape[:2]

        # The rightmost real token: from the attention mask when given (left or right padding alike),
        # else from the pad id, else the last position.
        if attention_mask is not None and attention_mask.dim() == 2:
            real = attention_mask.to(logits.device, torch.int32)
        elif input_ids is not None and self.config.pad_token_id is not None:
            real = (input_ids != self.config.pad_token_id).to(logits.device, torch.int32)
        else:
            if batch > 1 and self.config.pad_token_id is None and inputs_embeds is None:
                raise ValueError("Batches of several sequences need an attention_mask or config.pad_token_id.")
            real = torch.ones(batch, seq, dtype=torch.int32, device=logits.device)
        last = (torch.arange(seq, device=logits.device, dtype=torch.int32) * real).argmax(-1)
        pooled_logits = logits[torch.arange(batch, device=logits.device), last]  # (b, labels)

        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=pooled_logits, config=self.config)

        output = SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled_logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "ScratchGPTForCausalLM",
    "ScratchGPTForSequenceClassification",
    "ScratchGPTModel",
    "ScratchGPTPreTrainedModel",
]
