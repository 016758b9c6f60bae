"""Which llama.cpp architecture holds a scratch-gpt model, its hyperparameters, and its tensors by llama.cpp's names.

The config switches pick the architecture (see docs/local.md):

- ``gpt2``: learned positions, LayerNorm, tanh-GELU MLP (the GPT-2 shape), a fused ``attn_qkv``;
- ``llama`` (Llama, Mistral, tiny-llama): RoPE, RMSNorm, SwiGLU, no bias on q/k/v, no QK-norm;
- ``qwen2``: the same with a bias on q/k/v;
- ``qwen3``: the same with QK-norm (RMSNorm over each head of the queries and keys).

RoPE: our rotation is transformers' half-split one (``rotate_half``: dimension ``i`` pairs with ``i + d/2``).
llama.cpp rotates ``llama`` with its "normal" RoPE, which pairs neighbours ``(2i, 2i+1)``; so, like llama.cpp's
``convert_hf_to_gguf.py`` for Llama, the rows of the query and key projections (and their biases) are permuted
within each head from half-split order to interleaved order. ``qwen2`` and ``qwen3`` use llama.cpp's NeoX RoPE,
which is the half-split one: their rows stay as they are. Everything else maps one to one; the fused
``c_attn = [q; k; v]`` and ``c_fc = [gate; up]`` are split along their output rows.

What no architecture here can hold is refused before anything is loaded, with the reason in one line.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any


ARCHS = ("gpt2", "llama", "qwen2", "qwen3")
FAMILY_SHAPE = "llama/qwen2/qwen3 need RoPE + RMSNorm + SwiGLU (mlp_type='swiglu', hidden_act='silu')"
GPT2_SHAPE = "gpt2 needs learned positions + LayerNorm + a GELU MLP"
# RoPE types llama.cpp reads from the file: plain, linear and YaRN (rope.scaling.*), Llama 3's (a rope_freqs tensor).
GGUF_ROPE_TYPES = ("default", "linear", "yarn", "llama3")
# YaRN fields whose transformers defaults equal llama.cpp's (beta 32 / 1, attention factor 0.1 ln(factor) + 1).
YARN_DEFAULTS = {"beta_fast": 32, "beta_slow": 1, "attention_factor": None, "mscale": None, "mscale_all_dim": None,
                 "truncate": True}


def _refuse(what: str, why: str) -> ValueError:
    return ValueError(f"GGUF export cannot hold this model: {what}; {why}. Export in the remote-code format instead.")


def _check_family_rope(config: Any, arch: str) -> None:
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type not in GGUF_ROPE_TYPES:
        raise _refuse(f"rope_type={rope_type!r}", f"this export writes llama.cpp's {', '.join(GGUF_ROPE_TYPES)} RoPE")
    if rope_type == "llama3" and arch != "llama":
        raise _refuse("rope_type='llama3' with " + ("QK-norm" if arch == "qwen3" else "a q/k/v bias"),
                      f"llama.cpp's {arch} architecture reads no rope_freqs tensor")
    tuned = sorted(k for k in YARN_DEFAULTS if k in rope and rope[k] not in (None, YARN_DEFAULTS[k]))
    if rope_type == "yarn" and tuned:
        raise _refuse(f"YaRN with {', '.join(f'{k}={rope[k]}' for k in tuned)}",
                      "this export writes llama.cpp's YaRN with transformers' default beta/attention factors only")
    if float(rope.get("partial_rotary_factor", 1.0)) != 1.0:
        raise _refuse(f"partial_rotary_factor={rope['partial_rotary_factor']}",
                      "llama/qwen2/qwen3 rotate the whole head")


def _family_arch(config: Any) -> str:
    """``llama``, ``qwen2`` or ``qwen3`` for a RoPE model, or ValueError naming the switch none can hold."""
    for name, wanted in (("norm_type", "rmsnorm"), ("mlp_type", "swiglu"), ("hidden_act", "silu")):
        if getattr(config, name) != wanted:
            raise _refuse(f"position_embedding_type='rope' with {name}={getattr(config, name)!r}", FAMILY_SHAPE)
    arch = "qwen3" if config.qk_norm else "qwen2" if config.qkv_bias else "llama"
    if arch == "qwen3" and config.qkv_bias:
        raise _refuse("QK-norm together with a q/k/v bias",
                      "llama.cpp's qwen3 has no q/k/v bias (qwen2 has no QK-norm)")
    if arch != "llama" and (config.attention_bias or config.mlp_bias):
        raise _refuse(f"attention_bias={config.attention_bias}, mlp_bias={config.mlp_bias} with {arch}",
                      f"llama.cpp's {arch} has no output-projection or MLP bias (only llama has)")
    _check_family_rope(config, arch)
    return arch


def choose_arch(config: Any) -> str:
    """The llama.cpp architecture for this config, or ValueError with the one-line reason none fits."""
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is not None:
        raise _refuse(f"final_logit_softcapping={cap}",
                      "llama.cpp soft-caps final logits only in its Gemma 2 architecture, not in gpt2/llama/qwen")
    if config.position_embedding_type == "rope":
        return _family_arch(config)
    if config.norm_type != "layernorm" or getattr(config, "mlp_type", "gelu") != "gelu":
        raise _refuse(f"learned positions with norm_type={config.norm_type!r}, mlp_type={config.mlp_type!r}",
                      f"{GPT2_SHAPE}; {FAMILY_SHAPE}")
    return "gpt2"


# --------------------------------------------------------------------------------------------- hyperparameters


def add_family_hyperparameters(writer: Any, config: Any) -> None:
    """``{arch}.*`` keys of llama/qwen2/qwen3 as llama.cpp's converter writes them for these models."""
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.layer_norm_eps)
    writer.add_rope_dimension_count(config.head_dim)
    if config.head_dim * config.num_attention_heads != config.hidden_size:  # Qwen3-style explicit head width
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    if rope.get("rope_type") in ("linear", "yarn"):
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType[rope["rope_type"].upper()])
        writer.add_rope_scaling_factor(float(rope["factor"]))
    if rope.get("rope_type") == "yarn":
        writer.add_rope_scaling_orig_ctx_len(int(rope.get("original_max_position_embeddings")
                                                 or config.max_position_embeddings / rope["factor"]))


def llama3_rope_factors(config: Any) -> Any:
    """Llama 3's per-frequency RoPE divisors (llama.cpp's ``rope_freqs`` tensor), as transformers computes them."""
    import numpy as np

    rope = config.rope_parameters
    theta, dim = float(rope.get("rope_theta", 10000.0)), config.head_dim
    freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    factor, low, high = float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    old_context = float(rope["original_max_position_embeddings"])
    wavelen = 2 * math.pi / freqs
    smooth = np.clip((old_context / wavelen - low) / (high - low), 0.0, 1.0)
    divisors = np.where(wavelen < old_context / high, 1.0, np.where(wavelen > old_context / low, factor, 0.0))
    mid = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    divisors[mid] = 1.0 / ((1 - smooth[mid]) / factor + smooth[mid])
    return divisors.astype(np.float32)


# --------------------------------------------------------------------------------------------- tensors


def _name(tensor: Any, layer: int | None = None, suffix: str = "weight") -> str:
    import gguf

    return f"{gguf.TENSOR_NAMES[tensor].format(bid=layer)}.{suffix}"


def permute_rope_rows(array: Any, heads: int) -> Any:
    """Rows of a query/key projection (or bias) from half-split to interleaved order within each head."""
    shape = array.shape
    return array.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _attention_arrays(state: dict[str, Any], prefix: str, config: Any, arch: str) -> Iterator[tuple[Any, str, Any]]:
    """(tensor kind, suffix, array) of one layer's attention: q/k/v split from c_attn, permuted for llama."""
    import gguf

    T = gguf.MODEL_TENSOR
    q_rows = config.num_attention_heads * config.head_dim
    kv_rows = config.num_key_value_heads * config.head_dim
    for suffix in ("weight", "bias"):
        fused = state.get(f"{prefix}attn.c_attn.{suffix}")
        if fused is None:
            continue
        q, k, v = fused[:q_rows], fused[q_rows : q_rows + kv_rows], fused[q_rows + kv_rows :]
        if arch == "llama":
            q, k = permute_rope_rows(q, config.num_attention_heads), permute_rope_rows(k, config.num_key_value_heads)
        yield from ((T.ATTN_Q, suffix, q), (T.ATTN_K, suffix, k), (T.ATTN_V, suffix, v))
    for key, kind in (("attn.c_proj", T.ATTN_OUT), ("attn.q_norm", T.ATTN_Q_NORM), ("attn.k_norm", T.ATTN_K_NORM)):
        for suffix in ("weight", "bias"):
            if f"{prefix}{key}.{suffix}" in state:
                yield kind, suffix, state[f"{prefix}{key}.{suffix}"]


def _layer_arrays(state: dict[str, Any], layer: int, config: Any, arch: str) -> Iterator[tuple[str, Any]]:
    import gguf

    T = gguf.MODEL_TENSOR
    prefix = f"transformer.h.{layer}."
    yield _name(T.ATTN_NORM, layer), state[f"{prefix}ln_1.weight"]
    for kind, suffix, array in _attention_arrays(state, prefix, config, arch):
        yield _name(kind, layer, suffix), array
    yield _name(T.FFN_NORM, layer), state[f"{prefix}ln_2.weight"]
    for suffix in ("weight", "bias"):
        fused = state.get(f"{prefix}mlp.c_fc.{suffix}")
        if fused is not None:  # [gate; up]
            yield _name(T.FFN_GATE, layer, suffix), fused[: config.intermediate_size]
            yield _name(T.FFN_UP, layer, suffix), fused[config.intermediate_size :]
        if f"{prefix}mlp.c_proj.{suffix}" in state:
            yield _name(T.FFN_DOWN, layer, suffix), state[f"{prefix}mlp.c_proj.{suffix}"]


def family_arrays(state: dict[str, Any], config: Any, arch: str) -> Iterator[tuple[str, Any]]:
    """Every weight of a llama/qwen2/qwen3-shaped model as (llama.cpp name, float32 array), in file order."""
    import gguf

    T = gguf.MODEL_TENSOR
    yield _name(T.TOKEN_EMBD), state["transformer.wte.weight"]
    if (getattr(config, "rope_parameters", None) or {}).get("rope_type") == "llama3":
        yield _name(T.ROPE_FREQS), llama3_rope_factors(config)
    for layer in range(config.num_hidden_layers):
        yield from _layer_arrays(state, layer, config, arch)
    yield _name(T.OUTPUT_NORM), state["transformer.ln_f.weight"]
    if not config.tie_word_embeddings:
        yield _name(T.OUTPUT), state["lm_head.weight"]


def check_names(arch: str, names: list[str]) -> None:
    """ValueError if a tensor is not one llama.cpp's ``arch`` has (a weight the graph would never read)."""
    import gguf

    allowed = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH[arch.upper()]]}
    for name in names:
        base = ".".join(p if not p.isdigit() else "{bid}" for p in name.rsplit(".", 1)[0].split("."))
        if base not in allowed:
            raise ValueError(f"llama.cpp's {arch} architecture has no tensor {name!r}; this model cannot be exported")


__all__ = ["ARCHS", "add_family_hyperparameters", "check_names", "choose_arch", "family_arrays",
           "llama3_rope_factors", "permute_rope_rows"]
