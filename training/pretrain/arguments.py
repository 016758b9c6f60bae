"""Pretraining options: dataclass parts composed into ``TrainArguments``, named presets, config files, one resolver.

The parts (model shape, tokenizer and packing, the data pipeline's ``DataArguments``, optimisation,
evaluation, run folder) are each one ``--help`` group; ``TrainArguments`` inherits them all, so no field is
declared twice and ``train`` reads the data part as it is.

Precedence (lowest first): the dataclass defaults (= the ``tiny`` preset) < the named preset < a YAML/JSON
config file < options given on the command line. Everything is validated in :func:`resolve_arguments`
(and again in ``TrainArguments.validate``) before any data is read or a model is built, so a bad value fails
in milliseconds with a message naming the option and the fix.

This module imports only the standard library (and PyYAML lazily); the parser is ``HfArgumentParser``
(:mod:`training.shared.arguments`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from training.data.corpus import DataArguments


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A field whose ``--flag`` help names its value in the ``tiny`` preset (the dataclass default)."""
    return field(default=default, metadata={"help": f"{help} (tiny: {default})".replace("%", "%%"), **extra})


MIXED_PRECISION_CHOICES = ("auto", "no", "bf16", "fp16")
REPORT_TO_CHOICES = ("none", "tensorboard")
NORM_CHOICES = ("layernorm", "rmsnorm")
ATTN_CHOICES = ("sdpa", "eager")
SAMPLING_CHOICES = ("grid", "offset", "random")
ARCHITECTURE_CHOICES = ("gpt2", "llama", "qwen3")
OPTIMIZER_CHOICES = ("adamw", "muon")  # training.pretrain.optimizers builds them
FINAL_MODEL_CHOICES = ("best", "last")
RECIPE_CHOICES = ("classic", "modern")


@dataclass
class ModelArguments:
    """The model's shape (a fresh ScratchGPT is built from these)."""

    _argument_group_name = "model"

    preset: str = field(default="tiny", metadata={
        "help": "named preset the other options start from (default: tiny)",
        "choices": ("tiny", "small", "medium", "gpt2-124m", "tiny-llama", "tiny-qwen3")})
    hidden_size: int = _opt(128, "model width (embedding size)", metavar="N")
    num_hidden_layers: int = _opt(4, "number of transformer blocks", metavar="N")
    num_attention_heads: int = _opt(4, "attention heads per block (must divide hidden size)", metavar="N")
    intermediate_size: int | None = _opt(None, "MLP width (default 4 x hidden size)", metavar="N")
    block_size: int = _opt(128, "context length in tokens (training block size = max positions)", metavar="N")
    dropout: float = _opt(0.0, "dropout on embeddings, attention and residuals (0 is usual for pretraining)", metavar="X")
    norm_type: str = _opt("layernorm", "normalisation layer (gpt2 architecture)", choices=NORM_CHOICES)
    architecture: str = _opt(
        "gpt2", "model family: gpt2 (learned positions, GELU MLP), or llama / qwen3 (RoPE, RMSNorm, SwiGLU, "
        "grouped-query attention, no biases; qwen3 adds QK-norm); see docs/family.md", choices=ARCHITECTURE_CHOICES)
    num_key_value_heads: int | None = _opt(
        None, "key/value heads (grouped-query attention; default: all heads for gpt2, half for llama/qwen3)",
        metavar="N")
    attn_implementation: str = _opt("sdpa", "attention implementation", choices=ATTN_CHOICES)
    hidden_act: str | None = _opt(
        None, "MLP activation, a transformers ACT2FN name such as relu2 (ReLU squared); default: the "
        "architecture's (gelu_pytorch_tanh for gpt2, silu for llama/qwen3)", metavar="TEXT")
    zero_init_output_projections: bool = _opt(
        False, "start the attention and MLP output projections at zero (each block starts as the identity)")
    final_logit_softcapping: float | None = _opt(
        None, "soft-cap the logits at X: X * tanh(logits / X) (Gemma-2's final_logit_softcapping)", metavar="X")


@dataclass
class TokenizerArguments:
    """The tokenizer (trained on the corpus unless given) and how documents are cut into blocks."""

    _argument_group_name = "tokenizer and packing"

    vocab_size: int = _opt(4096, "vocabulary size of the BPE tokenizer trained on the corpus", metavar="N")
    tokenizer: str | None = _opt(
        None, "reuse this tokenizer (folder or Hub id) instead of training one on the corpus", metavar="TEXT"
    )
    stride: int | None = _opt(None, "sliding-window stride when packing (default: block size, no overlap)", metavar="N")
    sampling: str = _opt(
        "offset", "training windows per epoch: grid (the packed blocks), offset (the block grid shifted by a seeded "
        "offset each epoch: new windows on every pass over a small corpus) or random (nanoGPT's random windows)",
        choices=SAMPLING_CHOICES,
    )


@dataclass
class OptimArguments:
    """Optimisation and when to stop."""

    _argument_group_name = "optimisation and stopping"

    per_device_batch_size: int = _opt(16, "blocks per micro-batch on each process", metavar="N")
    gradient_accumulation_steps: int = _opt(1, "micro-batches accumulated per optimizer step", metavar="N")
    recipe: str = _opt(
        "classic", "training recipe layered over the preset: classic (AdamW, GPT-2 blocks) or modern (Muon for "
        "the hidden matrices, AdamW at 6e-3 for the rest, zero-initialised output projections; see "
        "docs/training.md)", choices=RECIPE_CHOICES)
    optimizer: str = _opt(
        "adamw", "adamw for everything, or muon: torch.optim.Muon (torch >= 2.9) for the 2-D weight matrices "
        "inside the blocks, AdamW for embeddings, the LM head, norms and biases", choices=OPTIMIZER_CHOICES)
    learning_rate: float = _opt(2e-3, "peak learning rate (after warmup) of AdamW", metavar="X")
    muon_lr: float = _opt(0.02, "peak learning rate of the Muon matrices (--optimizer muon)", metavar="X")
    muon_momentum: float = _opt(0.95, "Muon momentum (Nesterov)", metavar="X")
    min_lr_ratio: float = _opt(0.1, "cosine decays to this fraction of the peak learning rate", metavar="X")
    warmup_steps: int = _opt(50, "linear warmup steps", metavar="N")
    weight_decay: float = _opt(
        0.1, "weight decay, decoupled, lr x X per step (AdamW and Muon; not applied to norms, biases, embeddings)",
        metavar="X")
    decay_embeddings: bool = _opt(False, "apply the weight decay to the embeddings too (nanoGPT decays every matrix)")
    adam_beta1: float = _opt(0.9, "AdamW beta1", metavar="X")
    adam_beta2: float = _opt(0.95, "AdamW beta2", metavar="X")
    adam_epsilon: float = _opt(1e-8, "AdamW epsilon", metavar="X")
    max_grad_norm: float = _opt(1.0, "clip gradients to this global norm (0 disables clipping)", metavar="X")
    max_steps: int | None = _opt(800, "optimizer steps to train (also the length of the LR schedule)", metavar="N")
    max_tokens: int | None = _opt(
        None, "train on this many tokens instead (sets max steps; the smaller of the two wins)", metavar="N"
    )
    max_time: str | None = _opt(
        "7m", "stop after this much training time, e.g. 90s, 10m, 2h, or none; warmup and cosine are planned over "
        "it from the measured step times (with --max-steps too, whichever ends first), so the run ends at its "
        "minimum learning rate; given without --max-steps, the time alone plans the run", metavar="TEXT",
    )
    max_epochs: float | None = _opt(
        None, "end the run after this many passes over the training split, its schedule planned to end there "
        "(default: off, or 16 when more epochs are planned, 8 with --recipe modern: repeated data overfits, "
        "docs/training.md; 0: off even then)", metavar="X")
    mixed_precision: str = _opt(
        "auto", "bf16 autocast or not: auto = bf16 where the device computes it natively (a GPU with bf16, a CPU "
        "with AVX512-BF16 or AMX), else no (fp32); fp16 needs a GPU", choices=MIXED_PRECISION_CHOICES,
    )
    compile: bool = _opt(False, "torch.compile the model")


@dataclass
class EvalArguments:
    """Periodic evaluation, samples and logging."""

    _argument_group_name = "evaluation and logging"

    eval_every: int = _opt(200, "evaluate (validation loss, perplexity, samples) every N steps", metavar="N")
    eval_batches: int | None = _opt(20, "validation micro-batches per evaluation (None: the whole split)", metavar="N")
    num_samples: int = _opt(2, "continuations sampled at each evaluation", metavar="N")
    sample_prompt: str = _opt(
        "", "prompt for the sampled continuations (default: the start of a validation document)", metavar="TEXT"
    )
    sample_max_new_tokens: int = _opt(48, "length of the sampled continuations", metavar="N")
    log_every: int = _opt(10, "add the training loss to the log history every N steps", metavar="N")
    report_to: str = _opt("none", "extra experiment tracker through Accelerate", choices=REPORT_TO_CHOICES)
    final_model: str = _opt(
        "best", "the model the run folder ends with: best (the lowest validation loss of any evaluation, saved "
        "into best/ when reached, as Trainer's load_best_model_at_end) or last (the weights of the last step)",
        choices=FINAL_MODEL_CHOICES)
    early_stopping_patience: int | None = _opt(
        None, "end the run when the validation loss has not improved for N evaluations (default: off, or 3 "
        "when the planned epochs exceed the many-epochs threshold; 0: off even then)", metavar="N")


@dataclass
class OutputArguments:
    """The run folder and its checkpoints."""

    _argument_group_name = "run folder and checkpoints"

    output_dir: str | None = _opt(None, "run folder (default: runs/<preset>)", metavar="TEXT")
    checkpoint_every: int = _opt(200, "save a resumable checkpoint every N steps (0: only at the end)", metavar="N")
    keep_checkpoints: int = _opt(2, "keep the newest K checkpoints", metavar="N")
    resume: bool = _opt(False, "continue from the newest complete checkpoint in the run folder")
    overwrite: bool = _opt(False, "replace an existing run folder and start again")


@dataclass
class DebugArguments:
    """Switches for tests."""

    _argument_group_name = "testing"

    debug_nan_step: int | None = _opt(None, "testing: make the loss NaN at this step", metavar="N")


# The parts in --help order; the data part brings `seed` (weights, data order, sampling, document shuffle).
TRAIN_PARTS = (
    ModelArguments, TokenizerArguments, DataArguments, OptimArguments, EvalArguments, OutputArguments, DebugArguments
)


@dataclass
class TrainArguments(
    ModelArguments, TokenizerArguments, OptimArguments, EvalArguments, OutputArguments, DebugArguments, DataArguments
):
    """Every option of ``scratch-gpt train``, composed of the parts above and the data pipeline's
    :class:`~training.data.corpus.DataArguments`. Defaults are the ``tiny`` preset (a CPU run of minutes)."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad option; cheap, touches no files."""
        self._check_counts()
        self._check_shape()
        self._check_ranges()
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        if self.max_time is not None:
            parse_duration(self.max_time)

    def _check_counts(self) -> None:
        """Counts: positive, positive or unset, or >= 0; and something that ends the run."""
        positive = (
            "hidden_size num_hidden_layers num_attention_heads block_size vocab_size per_device_batch_size "
            "gradient_accumulation_steps eval_every log_every keep_checkpoints num_proc "
            "sample_max_new_tokens"
        ).split()
        self._check_ints(positive, minimum=1, optional=False)
        if self.max_steps is None and self.max_tokens is None and self.max_time is None:
            raise ValueError("--max-steps none needs --max-time or --max-tokens to end the run; give one of them")
        self._check_ints(("max_steps", "intermediate_size", "max_tokens", "max_documents", "stride", "eval_batches",
                          "debug_nan_step"), minimum=1, optional=True)
        self._check_ints(("warmup_steps", "checkpoint_every", "num_samples", "seed"), minimum=0, optional=False)
        self._check_ints(("early_stopping_patience",), minimum=0, optional=True)

    def _check_ints(self, names, minimum: int, optional: bool) -> None:
        """Each of ``names`` an integer >= ``minimum`` (or None where ``optional``); else one line naming it."""
        for name in names:
            value = getattr(self, name)
            if optional and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
                raise ValueError(f"--{_flag(name)} must be {what}{' (or unset)' if optional else ''}, got {value!r}")

    def _check_shape(self) -> None:
        """Heads divide the width, key/value heads divide the heads, the stride fits the block."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"--hidden-size {self.hidden_size} is not divisible by --num-attention-heads "
                f"{self.num_attention_heads}; pick sizes where heads divide the width"
            )
        kv_heads = self.num_key_value_heads
        bad_kv = not isinstance(kv_heads, int) or kv_heads < 1 or self.num_attention_heads % kv_heads
        if kv_heads is not None and bad_kv:
            raise ValueError(
                f"--num-key-value-heads {kv_heads!r} must be a positive divisor of --num-attention-heads "
                f"{self.num_attention_heads}"
            )
        if self.stride is not None and self.stride > self.block_size:
            raise ValueError(f"--stride {self.stride} is larger than --block-size {self.block_size}")

    def _check_ranges(self) -> None:
        """Rates, fractions and coefficients in range; choices among their choices."""
        if not self.learning_rate > 0:
            raise ValueError(f"--learning-rate must be > 0, got {self.learning_rate}")
        checks = {
            "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
            "dropout": 0 <= self.dropout < 1,
            "weight_decay": self.weight_decay >= 0,
            "adam_beta1": 0 <= self.adam_beta1 < 1,
            "adam_beta2": 0 <= self.adam_beta2 < 1,
            "adam_epsilon": self.adam_epsilon > 0,
            "muon_lr": self.muon_lr > 0,
            "muon_momentum": 0 <= self.muon_momentum < 1,
            "final_logit_softcapping": self.final_logit_softcapping is None or self.final_logit_softcapping > 0,
            "max_grad_norm": self.max_grad_norm >= 0,
            "max_epochs": self.max_epochs is None or self.max_epochs >= 0,
            "validation_fraction": 0 < self.validation_fraction < 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"--{_flag(name)} is out of range: {getattr(self, name)!r}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(
                    f"--{_flag(f.name)} must be one of {', '.join(choices)}; got {getattr(self, f.name)!r}"
                )

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("runs") / self.preset

    def to_dict(self) -> dict[str, Any]:
        """The settings, part by part (model first), as plain values."""
        return {f.name: getattr(self, f.name) for part in TRAIN_PARTS for f in dataclasses.fields(part)}


# Named presets: overrides of the TrainArguments defaults (which are `tiny`).
PRESETS: dict[str, dict[str, Any]] = {
    # ~1.3M parameters; python-stdlib on a 2-core CPU in a few minutes (--max-time 7m caps it on a busy machine).
    "tiny": {},
    # ~7M parameters: an hour-scale CPU run, minutes on a GPU.
    "small": {
        "max_time": None,
        "hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 8, "block_size": 256,
        "vocab_size": 8192, "per_device_batch_size": 16, "gradient_accumulation_steps": 2,
        "learning_rate": 1e-3, "warmup_steps": 200, "max_steps": 5000, "eval_every": 500,
        "checkpoint_every": 1000, "sample_max_new_tokens": 64,
    },
    # ~34M parameters (GPU).
    "medium": {
        "max_time": None,
        "hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "block_size": 512,
        "vocab_size": 16384, "per_device_batch_size": 16, "gradient_accumulation_steps": 4,
        "learning_rate": 8e-4, "warmup_steps": 500, "max_steps": 20000, "eval_every": 1000,
        "checkpoint_every": 2000, "mixed_precision": "bf16", "sample_max_new_tokens": 96,
    },
    # GPT-2 small's shape (124M parameters with a 50257 vocabulary); nanoGPT-like schedule, ~0.5M tokens/step
    # with 8 GPUs x 16 x 1024 x 4.
    "gpt2-124m": {
        "max_time": None,
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "block_size": 1024,
        "vocab_size": 50257, "per_device_batch_size": 16, "gradient_accumulation_steps": 4,
        "learning_rate": 6e-4, "warmup_steps": 700, "max_steps": 20000, "eval_every": 1000,
        "eval_batches": 50, "checkpoint_every": 1000, "keep_checkpoints": 3, "mixed_precision": "bf16",
        "sample_max_new_tokens": 128,
    },
    # `tiny` as a Llama / Qwen3 (RoPE, RMSNorm, SwiGLU, 2 key/value heads for 4 query heads; Qwen3 adds QK-norm).
    "tiny-llama": {"architecture": "llama"},
    "tiny-qwen3": {"architecture": "qwen3"},
}

# Recipes: overrides layered over the preset (preset < recipe < config file < flags), whatever the model size.
# `modern` is what wins at our scale among modded-nanogpt's small-model levers (docs/quality.md measures each): Muon
# for the hidden matrices (0.02 peak with torch's "original" shape scaling, momentum 0.95), a higher AdamW peak
# for what AdamW still trains (the embeddings, the tied head, norms: 6e-3), and output projections that start at
# zero. It learns faster per pass and overfits sooner, so it ends a run at 8 epochs (the classic loop at 16).
# ReLU-squared MLPs and logit soft-capping did not win there and stay switches of their own.
RECIPES: dict[str, dict[str, Any]] = {
    "classic": {},
    "modern": {
        "optimizer": "muon", "muon_lr": 0.02, "learning_rate": 6e-3, "zero_init_output_projections": True,
        "max_epochs": 8.0,
    },
}


def architecture_switches(args: TrainArguments) -> dict[str, Any]:
    """The ScratchGPTConfig switches for ``--architecture`` (docs/family.md), with the MLP width and norm."""
    heads = args.num_attention_heads
    switches: dict[str, Any] = {}  # the issue-24 switches, only when on (older configs stay as they were)
    if args.zero_init_output_projections:
        switches["zero_init_output_projections"] = True
    if args.final_logit_softcapping is not None:
        switches["final_logit_softcapping"] = args.final_logit_softcapping
    if args.architecture == "gpt2":
        kv = {"num_key_value_heads": args.num_key_value_heads} if args.num_key_value_heads else {}
        act = {"hidden_act": args.hidden_act} if args.hidden_act else {}
        return {**switches, "norm_type": args.norm_type, "intermediate_size": args.intermediate_size, **kv, **act}
    kv_heads = args.num_key_value_heads or max(d for d in range(1, heads // 2 + 1) if heads % d == 0)
    # Llama's SwiGLU width: 8/3 of the model width (three matrices instead of two), rounded up to 64.
    width = args.intermediate_size or 64 * -(-8 * args.hidden_size // (3 * 64))
    return {
        **switches, "norm_type": "rmsnorm", "intermediate_size": width, "position_embedding_type": "rope",
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "mlp_type": "swiglu",
        "hidden_act": args.hidden_act or "silu", "num_key_value_heads": kv_heads, "qkv_bias": False, "attention_bias": False,
        "mlp_bias": False, "qk_norm": args.architecture == "qwen3",
    }


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _field_types() -> dict[str, Any]:
    return get_type_hints(TrainArguments)


def _base_type(tp: Any) -> tuple[type, bool]:
    """(int|float|str|bool, optional?) for a field annotation."""
    if get_origin(tp) in (Union, getattr(__import__("types"), "UnionType", Union)):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def coerce_value(name: str, value: Any) -> Any:
    """Convert ``value`` (from a config file or the command line) to the type of option ``name``."""
    types = _field_types()
    if name not in types:
        close = difflib.get_close_matches(name, list(types), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown training option {name!r}{hint}")
    base, optional = _base_type(types[name])
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if not optional:
            raise ValueError(f"option {name!r} cannot be empty")
        return None
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            text = str(value).strip().replace("_", "")
            return int(float(text)) if re.fullmatch(r"[0-9.]+e[0-9]+", text.lower()) else int(text)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"option {name!r} expects {base.__name__}, got {value!r}") from None


def parse_duration(text: str | float | int) -> float:
    """'90' / '90s' / '10m' / '1.5h' / '1d' -> seconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", str(text).lower())
    if not match:
        raise ValueError(f"--max-time {text!r} is not a duration; use e.g. 90s, 10m or 2h")
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"--max-time must be positive, got {text!r}")
    return seconds


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or JSON config file into a flat ``{option: value}`` mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path} is not valid YAML: {err}") from None
    elif path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"config file {path} is not valid JSON: {err}") from None
    else:
        raise ValueError(f"config file {path} must end in .yaml, .yml or .json")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of option: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve_arguments(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainArguments:
    """Defaults < preset < config file < overrides, every value type-checked; returns validated arguments."""
    from_file = load_config_file(config_file) if config_file else {}
    overrides = {k.replace("-", "_"): v for k, v in (overrides or {}).items()}
    name = overrides.get("preset") or preset or from_file.get("preset") or "tiny"
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    recipe = overrides.get("recipe") or from_file.get("recipe") or PRESETS[name].get("recipe") or "classic"
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    values: dict[str, Any] = {}
    for source in (PRESETS[name], RECIPES[recipe], from_file, overrides):
        for key, value in source.items():
            values[key] = coerce_value(key, value)
    values["preset"], values["recipe"] = name, recipe
    given = {**from_file, **overrides}
    if "max_time" in given and values["max_time"] is not None and not {"max_steps", "max_tokens"} & given.keys():
        values["max_steps"] = None  # a time budget given alone plans the schedule; the preset's steps do not cap it
    args = TrainArguments(**values)
    args.validate()
    return args
