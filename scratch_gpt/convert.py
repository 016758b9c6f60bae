"""GPT-2 <-> ScratchGPT: config and weight mapping, strict in both directions.

Both models use GPT-2's module names; GPT-2 stores ``c_attn``, ``c_proj`` and ``c_fc`` as ``Conv1D`` with
weights shaped ``(in, out)`` while ScratchGPT uses ``nn.Linear`` ``(out, in)``, so the mapping is a transpose of
those weights and nothing else. A missing or unexpected key is an error that names it: nothing is silently
dropped or left at its random init.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    GPT2ForSequenceClassification,
    PreTrainedModel,
)
from transformers.utils import logging

from .configuration_scratch_gpt import ScratchGPTConfig
from .modeling_scratch_gpt import ScratchGPTForCausalLM, ScratchGPTForSequenceClassification, ScratchGPTModel
from .run_folder import has_weights
from .safe_output import check_output, staged_output

logger = logging.get_logger(__name__)

_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers some GPT-2 checkpoints carry (the old persistent causal mask); they hold no learned values.
_GPT2_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_MODEL_PAIRS = (
    (GPT2LMHeadModel, ScratchGPTForCausalLM),
    (GPT2ForSequenceClassification, ScratchGPTForSequenceClassification),
    (GPT2Model, ScratchGPTModel),
)
_SHARED_CONFIG_KEYS = (
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "tie_word_embeddings",
    "id2label",
    "label2id",
    "problem_type",
)


def scratch_config_from_gpt2(config: GPT2Config) -> ScratchGPTConfig:
    """The ScratchGPT config of the same architecture as a GPT-2 config (ValueError for unsupported options)."""
    unsupported = {
        "add_cross_attention": (getattr(config, "add_cross_attention", False), False),
        "scale_attn_weights": (getattr(config, "scale_attn_weights", True), True),
        "scale_attn_by_inverse_layer_idx": (getattr(config, "scale_attn_by_inverse_layer_idx", False), False),
    }
    for name, (value, supported) in unsupported.items():
        if value != supported:
            raise ValueError(f"GPT-2 config has {name}={value!r}; ScratchGPT supports only {name}={supported!r}.")
    kwargs = {key: getattr(config, key) for key in _SHARED_CONFIG_KEYS if getattr(config, key, None) is not None}
    return ScratchGPTConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        intermediate_size=config.n_inner if config.n_inner is not None else 4 * config.n_embd,
        max_position_embeddings=config.n_positions,
        hidden_act=config.activation_function,
        layer_norm_eps=config.layer_norm_epsilon,
        attention_dropout=config.attn_pdrop,
        resid_dropout=config.resid_pdrop,
        embd_dropout=config.embd_pdrop,
        initializer_range=config.initializer_range,
        qkv_bias=True,
        **kwargs,
    )


def gpt2_config_from_scratch(config: ScratchGPTConfig) -> GPT2Config:
    """The GPT-2 config of the same architecture; ValueError naming the reason if GPT-2 cannot express it."""
    if config.norm_type != "layernorm":
        raise ValueError(
            f"GPT-2 cannot express norm_type={config.norm_type!r}: GPT-2 uses LayerNorm with a bias. "
            "Export this model in the remote-code format instead."
        )
    _check_gpt2_switches(config)
    kwargs = {key: getattr(config, key) for key in _SHARED_CONFIG_KEYS if getattr(config, key, None) is not None}
    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.max_position_embeddings,
        n_embd=config.hidden_size,
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        n_inner=config.intermediate_size,
        activation_function=config.hidden_act,
        resid_pdrop=config.resid_dropout,
        embd_pdrop=config.embd_dropout,
        attn_pdrop=config.attention_dropout,
        layer_norm_epsilon=config.layer_norm_eps,
        initializer_range=config.initializer_range,
        **kwargs,
    )


def _check_gpt2_switches(config: ScratchGPTConfig) -> None:
    """ValueError naming every Llama/Qwen switch (docs/family.md) set to a value GPT-2 cannot express.

    Of the small-model recipe switches (docs/model.md), ``hidden_act="relu2"`` is expressible (GPT-2's MLP takes
    any ``activation_function``) and ``zero_init_output_projections`` is an init choice only; final-logit
    soft-capping is not (GPT2LMHeadModel returns the raw head logits).
    """
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is not None:
        raise ValueError(
            f"GPT-2 cannot express final_logit_softcapping={cap}: GPT2LMHeadModel has no logit soft-capping, so "
            "every logit would change. Export this model in the remote-code format instead."
        )
    gpt2_values = {"position_embedding_type": "learned", "mlp_type": "gelu", "attention_bias": True,
                   "mlp_bias": True, "qk_norm": False, "num_key_value_heads": config.num_attention_heads,
                   "head_dim": config.hidden_size // config.num_attention_heads}
    wrong = [f"{key}={getattr(config, key)!r}" for key, value in gpt2_values.items() if getattr(config, key) != value]
    if wrong:
        raise ValueError(
            f"GPT-2 cannot express {', '.join(wrong)}. Export this model with --format llama or qwen3 (where "
            "they fit) or in the remote-code format instead."
        )


def _is_conv1d_key(key: str) -> bool:
    return key.endswith(_CONV1D_SUFFIXES)


def gpt2_state_dict_to_scratch(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map GPT-2 weights (Conv1D layout) to ScratchGPT's (Linear layout); drops only the old mask buffers."""
    out = {}
    for key, tensor in state_dict.items():
        if key.endswith(_GPT2_BUFFER_SUFFIXES):
            continue
        out[key] = tensor.t().contiguous() if _is_conv1d_key(key) else tensor
    return out


def scratch_state_dict_to_gpt2(state_dict: dict[str, torch.Tensor], config: ScratchGPTConfig) -> dict[str, torch.Tensor]:
    """Map ScratchGPT weights to GPT-2's layout; a qkv projection without bias gets an exact zero bias."""
    out = {}
    for key, tensor in state_dict.items():
        out[key] = tensor.t().contiguous() if _is_conv1d_key(key) else tensor
    if not config.qkv_bias:
        for key in [k for k in out if k.endswith("attn.c_attn.weight")]:
            weight = out[key]  # (in, 3 * hidden) in Conv1D layout
            out[key[: -len("weight")] + "bias"] = torch.zeros(weight.shape[1], dtype=weight.dtype)
    return out


def _load_strict(model: PreTrainedModel, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy every weight; error naming any missing or unexpected key or a shape mismatch."""
    state_dict = dict(state_dict)
    if model.config.tie_word_embeddings:  # a tied copy may be absent from the source; it is the same tensor
        for target, source in (getattr(model, "_tied_weights_keys", None) or {}).items():
            if target not in state_dict and source in state_dict:
                state_dict[target] = state_dict[source]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"Weight mismatch converting into {type(model).__name__}: missing keys {missing}, unexpected keys "
            f"{unexpected}. The source checkpoint does not have the architecture of its config."
        )
    for key, tensor in state_dict.items():
        if expected[key].shape != tensor.shape:
            raise ValueError(
                f"Shape mismatch for {key}: model has {tuple(expected[key].shape)}, source has {tuple(tensor.shape)}."
            )
    model.load_state_dict(state_dict, strict=True)


def _pair_for(model: torch.nn.Module, source_index: int) -> type[PreTrainedModel]:
    for pair in _MODEL_PAIRS:
        if type(model) is pair[source_index]:
            return pair[1 - source_index]
    names = [pair[source_index].__name__ for pair in _MODEL_PAIRS]
    raise ValueError(f"Cannot convert a {type(model).__name__}; supported: {names}.")


def gpt2_to_scratch(model: GPT2LMHeadModel | GPT2ForSequenceClassification | GPT2Model) -> PreTrainedModel:
    """An in-memory ScratchGPT copy of a transformers GPT-2 model (same logits)."""
    target_cls = _pair_for(model, 0)
    config = scratch_config_from_gpt2(model.config)
    if target_cls is ScratchGPTForSequenceClassification:
        config.num_labels = model.config.num_labels
    new = target_cls(config).to(model.dtype)
    _load_strict(new, gpt2_state_dict_to_scratch(model.state_dict()))
    new.generation_config = GenerationConfig.from_model_config(new.config) if new.can_generate() else None
    return new.eval() if not model.training else new


def scratch_to_gpt2(model: PreTrainedModel) -> PreTrainedModel:
    """An in-memory transformers GPT-2 copy of a ScratchGPT model (same logits); ValueError if inexpressible."""
    target_cls = _pair_for(model, 1)
    config = gpt2_config_from_scratch(model.config)
    if target_cls is GPT2ForSequenceClassification:
        config.num_labels = model.config.num_labels
    new = target_cls(config).to(model.dtype)
    _load_strict(new, scratch_state_dict_to_gpt2(model.state_dict(), model.config))
    return new.eval() if not model.training else new


def _load_tokenizer_if_any(src: str | os.PathLike, revision: str | None):
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src), revision=revision)
    except (OSError, ValueError):
        return None
    # transformers 5 builds an empty tokenizer from a bare config; that is no tokenizer.
    return tokenizer if len(tokenizer.get_vocab()) > len(tokenizer.all_special_tokens) else None


# -- checking a checkpoint before converting it -----------------------------------------------------------

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_GPT2_INT_KEYS = ("vocab_size", "n_embd", "n_layer", "n_head", "n_positions")
_EXPECTED = "expected a GPT-2 checkpoint folder (config.json with model_type 'gpt2' + model.safetensors) or a Hub id"


def _read_config_json(folder: Path) -> dict:
    """``folder/config.json`` as a dict; ValueError naming the file when it is missing, not JSON or not GPT-2."""
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} has no config.json, so it is not a model folder; {_EXPECTED}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); repair or re-download it") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a JSON {type(config).__name__}, not an object; repair or re-download it")
    return config


def _check_gpt2_config(folder: Path, config: dict) -> None:
    model_type = config.get("model_type")
    if model_type == "scratch_gpt":
        raise ValueError(f"{folder} is already a scratch-gpt model (model_type 'scratch_gpt'): use it as it is")
    if model_type != "gpt2":
        raise ValueError(f"{folder} holds a {model_type!r} model, not GPT-2; convert-gpt2 converts GPT-2 only")
    for key in _GPT2_INT_KEYS:
        value = config.get(key)
        if key in config and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(
                f"{folder / 'config.json'}: {key} must be a positive integer, got {value!r}; repair the file"
            )


def check_gpt2_source(src: str | os.PathLike) -> Path | None:
    """Validate a conversion source before loading it: the local folder (checked), or ``None`` for a Hub id.

    Errors name the source and the fix: a path that does not exist, a file, an empty folder, a folder without
    config.json or weights, a scratch-gpt or other non-GPT-2 model, or config values of the wrong type.
    """
    text = str(src)
    path = Path(text).expanduser()
    if not path.exists():
        if text.startswith((".", "/", "~")) or text.count("/") > 1 or not _HUB_ID_RE.match(text):
            raise FileNotFoundError(f"{text} does not exist; {_EXPECTED}")
        return None
    if not path.is_dir():
        raise ValueError(f"{text} is a file, not a folder; {_EXPECTED}")
    if not any(path.iterdir()):
        raise ValueError(f"{text} is an empty folder; {_EXPECTED}")
    _check_gpt2_config(path, _read_config_json(path))
    if not has_weights(path):
        raise ValueError(f"{text} has no weights (model.safetensors or pytorch_model.bin); {_EXPECTED}")
    return path


def _gpt2_class(src: str, revision: str | None) -> type[PreTrainedModel]:
    config = GPT2Config.from_pretrained(src, revision=revision)
    archs = getattr(config, "architectures", None) or []
    return GPT2ForSequenceClassification if "GPT2ForSequenceClassification" in archs else GPT2LMHeadModel


def _fetch_gpt2(src: str, revision: str | None, local: bool) -> PreTrainedModel:
    """``from_pretrained`` with every failure turned into one line naming the source."""
    try:
        cls = _gpt2_class(src, revision)
        return cls.from_pretrained(src, revision=revision, output_loading_info=True)
    except OSError as err:
        if local:
            raise
        raise ConnectionError(
            f"cannot fetch the Hub model {src!r} ({' '.join(str(err).split())[:300]}); check the id and your "
            "connection, or pass a local GPT-2 folder (offline, only models already in the Hub cache load)"
        ) from err
    except RuntimeError as err:  # size mismatches between config and weights
        raise ValueError(f"{src}: the weights do not match config.json ({' '.join(str(err).split())[:300]})") from err
    except Exception as err:
        if type(err).__name__ != "SafetensorError":
            raise
        raise ValueError(f"{src}: cannot read the weights ({err}); the file is truncated or corrupt") from err


def load_gpt2_strict(src: str | os.PathLike, revision: str | None = None) -> PreTrainedModel:
    """Load a GPT-2 checkpoint, refusing one whose weights file lacks or adds weights (no random init).

    ``from_pretrained`` fills a weight absent from the file with random values and only logs it; here any
    missing, unexpected (other than GPT-2's old mask buffers) or mismatched key is a ValueError naming it.
    """
    local = check_gpt2_source(src) is not None
    model, info = _fetch_gpt2(str(src), revision, local)
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(k for k in info.get("unexpected_keys") or [] if not k.endswith(_GPT2_BUFFER_SUFFIXES))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or [])
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{src}: the checkpoint does not hold exactly the weights of its config (missing {missing}, unexpected "
            f"{unexpected}, wrong shape {mismatched}); re-download or re-save it, nothing was converted"
        )
    if model.config.model_type != "gpt2":
        raise ValueError(f"{src} is a {model.config.model_type!r} model, not GPT-2.")
    return model


def convert_gpt2_checkpoint(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    revision: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a GPT-2 checkpoint (local folder or Hub id) into a ScratchGPT model folder.

    Checks the output first (``--overwrite``, not overlapping the source, writable), then loads the source
    strictly (:func:`load_gpt2_strict`), then writes config.json, model.safetensors, generation_config.json and
    the source's tokenizer files (when it has them) through :func:`staged_output`: ``out_dir`` is either the old
    complete folder or the new complete one, never a mix.
    """
    out_dir = Path(out_dir)
    check_output(out_dir, overwrite=overwrite, inputs=[src])
    model = gpt2_to_scratch(load_gpt2_strict(src, revision))
    tokenizer = _load_tokenizer_if_any(src, revision)
    with staged_output(out_dir, overwrite=overwrite, inputs=[src]) as stage:
        model.save_pretrained(stage)
        if tokenizer is None:
            logger.warning("No tokenizer found in %s; add one to %s before training or generating.", src, out_dir)
        else:
            tokenizer.save_pretrained(stage)
    logger.info("Converted %s -> %s", src, out_dir)
    return out_dir


__all__ = [
    "check_gpt2_source",
    "convert_gpt2_checkpoint",
    "load_gpt2_strict",
    "gpt2_config_from_scratch",
    "gpt2_state_dict_to_scratch",
    "gpt2_to_scratch",
    "scratch_config_from_gpt2",
    "scratch_state_dict_to_gpt2",
    "scratch_to_gpt2",
]
