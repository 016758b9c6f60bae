"""LoRA adapters for scratch-gpt models through ``peft``.

Design choices:
- The model uses GPT-2 module names with ``nn.Linear``, so peft's stock LoRA layers apply directly: the
  default targets are every attention and MLP projection (``c_attn``, ``c_proj``, ``c_fc``); the name
  ``c_proj`` matches both ``attn.c_proj`` and ``mlp.c_proj``.
- A classifier keeps its new ``score`` head fully trainable (``modules_to_save``): LoRA adapts the body,
  the head is learned from scratch, as peft's sequence-classification task type does.
- ``merge`` folds ``B @ A * alpha / r`` into the base weights and returns the plain scratch-gpt model, which
  saves and loads without peft.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

DEFAULT_TARGET_MODULES = ("c_attn", "c_proj", "c_fc")


@dataclass
class LoraOptions:
    """LoRA hyperparameters (used when ``--lora`` is given)."""

    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r of the low-rank update B @ A"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling alpha (the update is scaled by alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        metadata={"help": "names (suffixes) of the nn.Linear modules to adapt"},
    )

    def __post_init__(self) -> None:
        if self.lora_rank < 1:
            raise ValueError(f"--lora-rank must be >= 1, got {self.lora_rank}")
        if self.lora_alpha <= 0:
            raise ValueError(f"--lora-alpha must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_target_modules:
            raise ValueError("--lora-target-modules needs at least one module name")


def linear_module_names(model) -> list[str]:
    """The distinct short names of the ``nn.Linear`` modules in ``model`` (what LoRA can target)."""
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)})


def apply_lora(model, options: LoraOptions, task: str = "causal"):
    """Wrap ``model`` in a ``peft.PeftModel`` where only the LoRA weights (and a classifier head) train.

    Args:
        model: a ``ScratchGPTForCausalLM`` (``task="causal"``) or ``ScratchGPTForSequenceClassification``
            (``task="classify"``).
        options: rank, alpha, dropout and target module names.
        task: ``"causal"`` or ``"classify"``.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    if task not in ("causal", "classify"):
        raise ValueError(f"task must be 'causal' or 'classify', got {task!r}")
    available = linear_module_names(model)
    missing = [t for t in options.lora_target_modules if t not in available]
    if missing:
        raise ValueError(
            f"--lora-target-modules {missing} match no nn.Linear module of this model; choose from {available}"
        )
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM if task == "causal" else TaskType.SEQ_CLS,
        r=options.lora_rank,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=list(options.lora_target_modules),
        modules_to_save=["score"] if task == "classify" else None,
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    n_train = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in peft_model.parameters())
    logger.info("LoRA r=%d alpha=%g on %s: %d of %d parameters train (%.2f%%)", options.lora_rank,
                options.lora_alpha, options.lora_target_modules, n_train, n_all, 100.0 * n_train / max(n_all, 1))
    return peft_model


def set_adapter_base_path(peft_model, base_path: str) -> None:
    """Record ``base_path`` as the base model of every adapter (what ``AutoPeftModel*`` loads)."""
    for cfg in peft_model.peft_config.values():
        cfg.base_model_name_or_path = base_path


def merge(peft_model):
    """Fold the LoRA updates into the base weights; returns the plain model (no peft modules left)."""
    return peft_model.merge_and_unload()


def load_adapter(base_model, adapter_dir: str, trainable: bool = False):
    """``PeftModel.from_pretrained(base_model, adapter_dir)``: a saved adapter on top of ``base_model``."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=trainable)


def is_peft_model(model) -> bool:
    """Whether ``model`` is a peft wrapper."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)
