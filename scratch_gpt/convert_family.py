"""Llama / Mistral / Qwen2 / Qwen3 <-> ScratchGPT: config and weight mapping, strict in both directions.

The family is ScratchGPT with switches set (``position_embedding_type="rope"``, ``norm_type="rmsnorm"``,
``mlp_type="swiglu"``, ``num_key_value_heads``, ``head_dim``, biases off, ``qk_norm`` for Qwen3). The weights map
one to one except two fusions: ScratchGPT's ``attn.c_attn`` is ``[q_proj; k_proj; v_proj]`` and its gated
``mlp.c_fc`` is ``[gate_proj; up_proj]``, both concatenated along the output dimension (``nn.Linear`` layout on
both sides, so no transposes). Splitting is exact, so a round trip is bit-identical.

Strict like ``convert.py``: a source key without a destination, a destination key without a source, a shape
that differs, or a config feature ScratchGPT does not implement (sliding-window attention, partial rotary,
a RoPE type other than default/linear/llama3/yarn, another model type) is a ``ValueError`` that names it.
Export (:func:`scratch_to_family`) refuses, with the reason, a config the target class cannot express.

Checkpoints in: :func:`convert_checkpoint` (GPT-2 goes to ``convert.py``). Checkpoints out:
:func:`export_family` writes a plain transformers repo (``LlamaForCausalLM`` / ``Qwen3ForCausalLM``, no remote
code). See docs/family.md.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.utils import logging

from .configuration_scratch_gpt import ScratchGPTConfig
from .modeling_scratch_gpt import ScratchGPTForCausalLM
from .positions import SUPPORTED_ROPE_TYPES
from .safe_output import check_output, staged_output

logger = logging.get_logger(__name__)

FAMILY_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
EXPORT_FORMATS = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}
_SHARED_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
_SHARED_KEYS += ("intermediate_size", "max_position_embeddings", "hidden_act", "attention_dropout")
_SHARED_KEYS += ("initializer_range", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")

# ScratchGPT key (per block, after "transformer.h.{i}.") <- family keys (after "model.layers.{i}."), concatenated
# along dim 0 in this order.
_LAYER_MAP = (
    ("ln_1.weight", ("input_layernorm.weight",)),
    ("ln_2.weight", ("post_attention_layernorm.weight",)),
    ("attn.c_attn.weight", ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")),
    ("attn.c_attn.bias", ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")),
    ("attn.c_proj.weight", ("self_attn.o_proj.weight",)),
    ("attn.c_proj.bias", ("self_attn.o_proj.bias",)),
    ("attn.q_norm.weight", ("self_attn.q_norm.weight",)),
    ("attn.k_norm.weight", ("self_attn.k_norm.weight",)),
    ("mlp.c_fc.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
    ("mlp.c_fc.bias", ("mlp.gate_proj.bias", "mlp.up_proj.bias")),
    ("mlp.c_proj.weight", ("mlp.down_proj.weight",)),
    ("mlp.c_proj.bias", ("mlp.down_proj.bias",)),
)
_GLOBAL_MAP = (
    ("transformer.wte.weight", ("model.embed_tokens.weight",)),
    ("transformer.ln_f.weight", ("model.norm.weight",)),
    ("lm_head.weight", ("lm_head.weight",)),
)


# -- configs --------------------------------------------------------------------------------------------


def _unsupported(config, feature: str, fix: str) -> ValueError:
    return ValueError(f"{config.model_type} config has {feature}, which ScratchGPT does not implement; {fix}.")


def check_family_config(config) -> None:
    """Raise ``ValueError`` naming the first feature of a family config that ScratchGPT cannot reproduce."""
    if config.model_type not in FAMILY_MODEL_TYPES:
        raise ValueError(f"model_type {config.model_type!r} is not one of {FAMILY_MODEL_TYPES} (or 'gpt2').")
    window = getattr(config, "sliding_window", None)
    if window is not None and window < config.max_position_embeddings:
        raise _unsupported(config, f"sliding_window={window}", "only full causal attention converts exactly")
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"}:
        raise _unsupported(config, f"layer_types {sorted(layer_types)}", "only full_attention layers convert")
    rope = config.rope_parameters or {}
    if rope.get("rope_type", "default") not in SUPPORTED_ROPE_TYPES:
        raise _unsupported(config, f"rope_type={rope.get('rope_type')!r}", f"supported: {SUPPORTED_ROPE_TYPES}")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        factor = rope["partial_rotary_factor"]
        raise _unsupported(config, f"partial_rotary_factor={factor}", "RoPE must rotate the whole head")
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        raise _unsupported(config, f"pretraining_tp={config.pretraining_tp}", "re-save it with pretraining_tp=1")


def _family_biases(config) -> dict:
    """(qkv_bias, attention_bias, mlp_bias, qk_norm) of each model type, in ScratchGPT's switch names."""
    if config.model_type == "qwen2":
        return dict(qkv_bias=True, attention_bias=False, mlp_bias=False, qk_norm=False)
    attention_bias = bool(getattr(config, "attention_bias", False))
    mlp_bias = bool(getattr(config, "mlp_bias", False)) if config.model_type == "llama" else False
    qk_norm = config.model_type == "qwen3"
    return dict(qkv_bias=attention_bias, attention_bias=attention_bias, mlp_bias=mlp_bias, qk_norm=qk_norm)


def scratch_config_from_family(config) -> ScratchGPTConfig:
    """The ScratchGPT config of the same architecture as a Llama/Mistral/Qwen2/Qwen3 config."""
    check_family_config(config)
    kwargs = {key: getattr(config, key) for key in _SHARED_KEYS if getattr(config, key, None) is not None}
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return ScratchGPTConfig(
        **kwargs,
        head_dim=head_dim,
        layer_norm_eps=config.rms_norm_eps,
        norm_type="rmsnorm",
        position_embedding_type="rope",
        rope_parameters=copy.deepcopy(dict(config.rope_parameters)),
        mlp_type="swiglu",
        resid_dropout=0.0,
        embd_dropout=0.0,
        **_family_biases(config),
    )


def _check_expressible(config: ScratchGPTConfig, target: str) -> None:
    """ValueError naming every switch of ``config`` that the ``target`` class cannot express."""
    needed = {"position_embedding_type": "rope", "norm_type": "rmsnorm", "mlp_type": "swiglu"}
    needed["qk_norm"] = target == "qwen3"
    if target == "qwen3":
        needed["mlp_bias"] = False
    problems = [f"{key}={getattr(config, key)!r} (needs {value!r})" for key, value in needed.items()
                if getattr(config, key) != value]
    if config.mlp_type != "swiglu" and config.hidden_act == "relu2":
        problems.append(f"the ReLU² MLP (hidden_act='relu2' without a gate; {target}'s MLP is gated, "
                        "down(act(gate) * up))")
    if getattr(config, "final_logit_softcapping", None) is not None:
        problems.append(f"final_logit_softcapping={config.final_logit_softcapping} ({target} has no logit "
                        "soft-capping)")
    if config.qkv_bias != config.attention_bias:
        problems.append(
            f"qkv_bias={config.qkv_bias} with attention_bias={config.attention_bias} ({target}'s attention_bias "
            "covers q, k, v and o together)"
        )
    if problems:
        raise ValueError(
            f"--format {target} cannot express this model: {'; '.join(problems)}. Export it in the scratch-gpt "
            "(remote-code) format instead, or train it with a matching preset."
        )


def family_config_from_scratch(config: ScratchGPTConfig, target: str):
    """The ``LlamaConfig``/``Qwen3Config`` of the same architecture; ValueError with the reason otherwise."""
    if target not in EXPORT_FORMATS:
        raise ValueError(f"unknown family format {target!r}; use one of {sorted(EXPORT_FORMATS)}.")
    _check_expressible(config, target)
    if config.resid_dropout or config.embd_dropout:
        logger.warning("%s has no residual/embedding dropout; dropping it (inference is unchanged).", target)
    kwargs = {key: getattr(config, key) for key in _SHARED_KEYS}
    kwargs.update(head_dim=config.head_dim, rms_norm_eps=config.layer_norm_eps, attention_bias=config.qkv_bias)
    kwargs["rope_parameters"] = copy.deepcopy(dict(config.rope_parameters))
    if target == "llama":
        kwargs["mlp_bias"] = config.mlp_bias
    config_class = EXPORT_FORMATS[target][0]
    try:
        return config_class(**kwargs)
    except ValueError as error:
        raise ValueError(f"--format {target} cannot express this model: {error}") from None


# -- weights --------------------------------------------------------------------------------------------


def _key_pairs(num_layers: int) -> list[tuple[str, tuple[str, ...]]]:
    pairs = list(_GLOBAL_MAP)
    for i in range(num_layers):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        pairs += [(ours + a, tuple(theirs + b for b in sources)) for a, sources in _LAYER_MAP]
    return pairs


def _mismatch_error(what: str, missing: list, unexpected: list, wrong_shape: list) -> ValueError:
    return ValueError(
        f"{what}: missing keys {sorted(missing)}, unexpected keys {sorted(unexpected)}, wrong shapes "
        f"{sorted(wrong_shape)}. The checkpoint does not hold exactly the weights of its config; nothing was converted."
    )


def _check_shapes(state_dict: dict, expected: dict, what: str) -> None:
    wrong = [f"{key}: {tuple(t.shape)} vs {tuple(expected[key].shape)}" for key, t in state_dict.items()
             if key in expected and t.shape != expected[key].shape]
    missing, unexpected = set(expected) - set(state_dict), set(state_dict) - set(expected)
    if wrong or missing or unexpected:
        raise _mismatch_error(what, list(missing), list(unexpected), wrong)


def family_state_dict_to_scratch(state_dict: dict, expected: dict, num_layers: int) -> dict:
    """Map family weights onto the keys (and shapes) of ``expected``, a ScratchGPT state dict; strict."""
    out, used, missing = {}, set(), []
    for ours, theirs in _key_pairs(num_layers):
        if ours not in expected:
            continue
        absent = [key for key in theirs if key not in state_dict]
        missing += absent
        if not absent:
            parts = [state_dict[key] for key in theirs]
            out[ours] = torch.cat(parts) if len(parts) > 1 else parts[0].clone()  # never shares the source's memory
            used.update(theirs)
    unexpected = [key for key in state_dict if key not in used]
    if missing or unexpected:
        raise _mismatch_error("family -> scratch-gpt", missing, unexpected, [])
    _check_shapes(out, expected, "family -> scratch-gpt")
    return out


def scratch_state_dict_to_family(state_dict: dict, expected: dict, num_layers: int) -> dict:
    """Map ScratchGPT weights onto the keys of ``expected``, a family state dict; strict and exact."""
    out, used = {}, set()
    for ours, theirs in _key_pairs(num_layers):
        if ours not in state_dict:
            continue
        if any(key not in expected for key in theirs):
            raise _mismatch_error("scratch-gpt -> family", [], [ours], [])
        sizes = [expected[key].shape[0] for key in theirs]
        if sum(sizes) != state_dict[ours].shape[0]:
            raise _mismatch_error("scratch-gpt -> family", [], [], [f"{ours}: {tuple(state_dict[ours].shape)}"])
        out.update(zip(theirs, (part.clone() for part in state_dict[ours].split(sizes))))
        used.add(ours)
    unexpected = [key for key in state_dict if key not in used]
    if unexpected:
        raise _mismatch_error("scratch-gpt -> family", [], unexpected, [])
    _check_shapes(out, expected, "scratch-gpt -> family")
    return out


def _expected_state(model_class, config) -> dict:
    with torch.device("meta"):
        return model_class(config).state_dict()


def _materialize(model_class, config, state: dict) -> PreTrainedModel:
    """``model_class`` built on the meta device, then given ``state``'s tensors: no random init and no second copy
    of the weights (converting a large checkpoint needs the source and the result in memory, nothing more)."""
    with torch.device("meta"):
        new = model_class(config)
    new.load_state_dict(state, strict=True, assign=True)
    for name, module in list(new.named_modules()):
        if "RotaryEmbedding" in type(module).__name__:  # computed buffers (inverse frequencies), never saved
            parent, _, child = name.rpartition(".")
            setattr(new.get_submodule(parent), child, type(module)(config=module.config))
    new.tie_weights()
    still_meta = [name for name, t in [*new.named_parameters(), *new.named_buffers()] if t.is_meta]
    if still_meta:
        raise RuntimeError(f"conversion left tensors without values: {still_meta}")
    return new


def family_to_scratch(model: PreTrainedModel) -> ScratchGPTForCausalLM:
    """An in-memory ScratchGPT copy of a transformers Llama/Mistral/Qwen2/Qwen3 causal LM (same logits)."""
    config = scratch_config_from_family(model.config)
    state = family_state_dict_to_scratch(
        model.state_dict(), _expected_state(ScratchGPTForCausalLM, config), config.num_hidden_layers
    )
    new = _materialize(ScratchGPTForCausalLM, config, state)
    new.generation_config = copy.deepcopy(model.generation_config)
    return new.train(model.training)


def scratch_to_family(model: ScratchGPTForCausalLM, target: str) -> PreTrainedModel:
    """An in-memory ``LlamaForCausalLM``/``Qwen3ForCausalLM`` copy (same logits); ValueError if inexpressible."""
    if not isinstance(model, ScratchGPTForCausalLM):
        raise ValueError(f"--format {target} exports a causal LM; got a {type(model).__name__}.")
    config = family_config_from_scratch(model.config, target)
    model_class = EXPORT_FORMATS[target][1]
    state = scratch_state_dict_to_family(
        model.state_dict(), _expected_state(model_class, config), config.num_hidden_layers
    )
    new = _materialize(model_class, config, state)
    new.generation_config = copy.deepcopy(model.generation_config)
    return new.train(model.training)


# -- checkpoints in and out -----------------------------------------------------------------------------


def source_model_type(src: str | os.PathLike, revision: str | None = None) -> str:
    """``model_type`` of a local model folder or Hub id, with one clear line for anything that is not one."""
    path = Path(src).expanduser()
    if path.exists():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{src} has no config.json, so it is not a model folder; pass a transformers model folder")
        try:
            return str(json.loads(config_file.read_text(encoding="utf-8")).get("model_type"))
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
            raise ValueError(f"{config_file} is not a JSON object ({err}); repair or re-download it") from None
    if str(src).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{src} does not exist; pass a model folder or a Hub id")
    try:
        return AutoConfig.from_pretrained(str(src), revision=revision).model_type
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the config of {src!r} ({' '.join(str(err).split())[:200]})") from None


def load_family_strict(src: str | os.PathLike, revision: str | None = None) -> PreTrainedModel:
    """Load a Llama/Mistral/Qwen2/Qwen3 causal LM, refusing missing, unexpected or mis-shaped weights."""
    config = AutoConfig.from_pretrained(str(src), revision=revision)
    check_family_config(config)  # before loading any weights
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(src), revision=revision, dtype="auto", output_loading_info=True
        )
    except RuntimeError as err:
        raise ValueError(f"{src}: the weights do not match config.json ({' '.join(str(err).split())[:300]})") from None
    problems = {name: sorted(map(str, info.get(name) or [])) for name in ("missing_keys", "unexpected_keys")}
    problems["mismatched_keys"] = sorted(map(str, info.get("mismatched_keys") or []))
    if any(problems.values()):
        raise _mismatch_error(str(src), *problems.values())
    return model.float() if model.dtype not in (torch.float32, torch.bfloat16, torch.float16) else model


def _tokenizer_or_none(src: str | os.PathLike, revision: str | None):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src), revision=revision)
    except (OSError, ValueError, TypeError):
        return None
    return tokenizer if len(tokenizer.get_vocab()) > len(tokenizer.all_special_tokens) else None


def _write_with_tokenizer(model: PreTrainedModel, tokenizer, out_dir: Path, overwrite: bool, src) -> None:
    with staged_output(out_dir, overwrite=overwrite, inputs=[src]) as stage:
        model.save_pretrained(stage)
        if tokenizer is None:
            logger.warning("No tokenizer found in %s; add one to %s before training or generating.", src, out_dir)
        else:
            tokenizer.save_pretrained(stage)  # with its chat template


def convert_family_checkpoint(
    src: str | os.PathLike, out_dir: str | os.PathLike, revision: str | None = None, overwrite: bool = False
) -> Path:
    """Convert a Llama/Mistral/Qwen2/Qwen3 checkpoint (folder or Hub id) into a ScratchGPT model folder.

    Writes config.json, model.safetensors, generation_config.json and the source's tokenizer (with its chat
    template) through :func:`staged_output`; the output is checked before anything is loaded.
    """
    out_dir = Path(out_dir)
    check_output(out_dir, overwrite=overwrite, inputs=[src])
    model = family_to_scratch(load_family_strict(src, revision))
    _write_with_tokenizer(model, _tokenizer_or_none(src, revision), out_dir, overwrite, src)
    logger.info("Converted %s -> %s", src, out_dir)
    return out_dir


def convert_checkpoint(
    src: str | os.PathLike, out_dir: str | os.PathLike, revision: str | None = None, overwrite: bool = False
) -> Path:
    """``scratch-gpt convert``: GPT-2 through ``convert.py``, the Llama/Qwen family through this module."""
    model_type = source_model_type(src, revision)
    if model_type == "gpt2":
        from .convert import convert_gpt2_checkpoint

        return convert_gpt2_checkpoint(src, out_dir, revision=revision, overwrite=overwrite)
    if model_type == "scratch_gpt":
        raise ValueError(f"{src} is already a scratch-gpt model (model_type 'scratch_gpt'): use it as it is")
    if model_type not in FAMILY_MODEL_TYPES:
        raise ValueError(
            f"{src} holds a {model_type!r} model; convert supports gpt2 and {', '.join(FAMILY_MODEL_TYPES)}"
        )
    return convert_family_checkpoint(src, out_dir, revision=revision, overwrite=overwrite)


def _verify_written(folder: Path, reference: PreTrainedModel) -> None:
    """Reload the folder with transformers' own class and require weights bit-identical to ``reference``'s."""
    reloaded = type(reference).from_pretrained(folder).state_dict()
    for key, tensor in reference.state_dict().items():
        if key not in reloaded or not torch.equal(reloaded[key], tensor):
            raise RuntimeError(f"export check failed: {key} in {folder} differs from the converted model")


def export_family(
    model: ScratchGPTForCausalLM, out_dir: str | os.PathLike, target: str, tokenizer=None, overwrite: bool = False,
    inputs: tuple = (),
) -> Path:
    """Write ``model`` as a plain ``target`` repo (``llama`` or ``qwen3``): no remote code, loads anywhere
    transformers' own class loads. Refuses, with the reason, a config the target cannot express."""
    out_dir = Path(out_dir)
    check_output(out_dir, overwrite=overwrite, inputs=inputs)
    exported = scratch_to_family(model, target)
    with staged_output(out_dir, overwrite=overwrite, inputs=inputs) as stage:
        exported.save_pretrained(stage)
        if tokenizer is not None:
            tokenizer.save_pretrained(stage)
        _verify_written(stage, exported)
    return out_dir


__all__ = [
    "EXPORT_FORMATS",
    "FAMILY_MODEL_TYPES",
    "check_family_config",
    "convert_checkpoint",
    "convert_family_checkpoint",
    "export_family",
    "family_config_from_scratch",
    "family_state_dict_to_scratch",
    "family_to_scratch",
    "load_family_strict",
    "scratch_config_from_family",
    "scratch_state_dict_to_family",
    "scratch_to_family",
    "source_model_type",
]
