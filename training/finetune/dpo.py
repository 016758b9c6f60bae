"""Preference tuning with DPO (the book's chapter-7 bonus) through TRL's ``DPOTrainer``, on the shared driver.

Design choices:
- The loss, the reference log-probabilities and the reward metrics are TRL's (``DPOTrainer``); this module only
  reads and checks the pairs, renders prompts with the model's chat template and hands TRL its trainer.
- Three dataset forms: the book's ``{instruction, input, chosen, rejected}`` (``output`` may be present and is
  ignored), TRL's standard ``{prompt, chosen, rejected}`` strings, and the conversational form (``prompt``,
  ``chosen``, ``rejected`` as lists of messages; a missing ``prompt`` is the messages shared by both). Book
  records become conversations, so the prompt is the tokenizer's chat template: the one instruction finetuning
  saved (the Alpaca template), which is also installed when the model has none.
- Bad data fails before any model is loaded, one line each: a record without ``chosen``/``rejected``/prompt,
  an empty ``chosen``/``rejected``, or identical ``chosen`` and ``rejected`` in every record.
- Reference model: a frozen copy of the loaded base, or under ``--lora`` the base with the adapter disabled
  (TRL's way); never reloaded from a path, which may not exist (a converted or staged base).
- The report is the other finetuning commands' (``eval_results.json`` through :mod:`scratch_gpt.run_folder`):
  TRL's ``eval_rewards/accuracies`` and ``eval_rewards/margins`` on the held-out pairs after training, and the
  same measured before training as ``eval_initial_*``.

Reference: Rafailov et al. 2023, "Direct Preference Optimization"; S. Raschka, LLMs-from-scratch ch07/04.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scratch_gpt import run_folder

from .arguments import DPO_LOSS_TYPES, DPOArguments, TrainerOptions
from .driver import FinetuneResult, FinetuneTask, finetune
from .instruct import ALPACA_CHAT_TEMPLATE, load_training_records, set_greedy_generation
from .lora import LoraOptions

logger = logging.getLogger(__name__)

REPORTED_METRICS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")
_FORMS = {"book": "{instruction, input, chosen, rejected}", "standard": "{prompt, chosen, rejected} strings",
          "conversational": "lists of messages"}


# -------------------------------------------------------------------------------------------- records
def _is_empty(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list):
        return not value or all(not str(m.get("content", "")).strip() for m in value if isinstance(m, dict))
    return True


def _form(rec: dict, i: int, source: str) -> str:
    if "instruction" in rec:
        if not isinstance(rec["instruction"], str) or not rec["instruction"].strip():
            raise ValueError(f"record {i} of {source} has an empty or non-string 'instruction'")
        return "book"
    if isinstance(rec.get("chosen"), list):
        return "conversational"
    if isinstance(rec.get("prompt"), str):
        return "standard"
    raise ValueError(
        f"record {i} of {source} has no prompt (keys {sorted(rec)}); give 'instruction' (+ 'input'), a 'prompt' "
        "string, or conversational 'chosen'/'rejected' message lists"
    )


def check_pair(rec: Any, i: int, source: str) -> str:
    """The form of record ``i`` (``book``/``standard``/``conversational``); ValueError naming what is wrong."""
    if not isinstance(rec, dict):
        raise ValueError(f"record {i} of {source} is a {type(rec).__name__}, not an object with chosen/rejected")
    for key in ("chosen", "rejected"):
        if rec.get(key) is None:
            raise ValueError(
                f"record {i} of {source} is missing {key!r} (has {sorted(rec)}); every preference pair needs "
                "'chosen' and 'rejected' besides its prompt"
            )
        if _is_empty(rec[key]):
            raise ValueError(f"record {i} of {source} has an empty {key!r}; remove the record or fill it in")
    return _form(rec, i, source)


def check_pairs(records: Sequence[Any], source: str) -> str:
    """Check every record and that the data holds a preference at all; returns the records' common form."""
    if not records:
        raise ValueError(f"{source} holds no preference pairs")
    forms = {check_pair(rec, i, source) for i, rec in enumerate(records)}
    if len(forms) > 1:
        raise ValueError(f"{source} mixes record forms ({', '.join(_FORMS[f] for f in sorted(forms))}); use one")
    if all(rec["chosen"] == rec["rejected"] for rec in records):
        raise ValueError(
            f"every record of {source} has identical 'chosen' and 'rejected', so there is no preference to learn; "
            "check that the two columns hold the preferred and the dispreferred answer"
        )
    return forms.pop()


def split_pairs(records: list, validation_fraction: float, shuffle: bool, seed: int) -> dict[str, list]:
    """Hold out the last ``validation_fraction`` of the pairs (after an optional seeded shuffle)."""
    if not 0 < validation_fraction < 1:
        raise ValueError(f"--validation-fraction must be in (0, 1), got {validation_fraction}")
    records = list(records)
    if shuffle:
        random.Random(seed).shuffle(records)
    n_val = max(1, round(len(records) * validation_fraction))
    if n_val >= len(records):
        raise ValueError(f"{len(records)} preference pairs are too few to hold out a validation split")
    return {"train": records[:-n_val], "validation": records[-n_val:]}


def to_trl(rec: dict, form: str, alpaca: bool) -> dict[str, Any]:
    """One record in the form TRL reads. Book records become a user turn and an assistant answer each; with
    the Alpaca template the ``input`` rides on the user message (its Input section), else it joins the text."""
    if form == "standard":
        return {"prompt": rec["prompt"], "chosen": rec["chosen"], "rejected": rec["rejected"]}
    if form == "conversational":
        return {key: rec[key] for key in ("prompt", "chosen", "rejected") if key in rec}
    text, extra = rec["instruction"], rec.get("input") or ""
    user = {"role": "user", "content": text, "input": extra} if alpaca else {
        "role": "user", "content": f"{text}\n\n{extra}" if extra else text}
    return {"prompt": [user], "chosen": [{"role": "assistant", "content": rec["chosen"]}],
            "rejected": [{"role": "assistant", "content": rec["rejected"]}]}


# ------------------------------------------------------------------------------------------------ task
def dpo_config(opts: TrainerOptions, output_dir: str, evaluate: bool, **dpo: Any):
    """TRL's ``DPOConfig`` carrying every Trainer setting of ``opts`` plus the DPO ones."""
    from transformers import TrainingArguments
    from trl import DPOConfig

    base = opts.training_arguments(
        str(run_folder.checkpoints_dir(output_dir)), eval_strategy=opts.eval_strategy if evaluate else "no"
    )
    kwargs = {f.name: getattr(base, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
    return DPOConfig(**kwargs, **dpo)


def frozen_copy(model):
    """The reference policy: a copy of the loaded model that never trains."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


class DPOTask(FinetuneTask):
    """Direct preference optimisation of a causal LM on chosen/rejected pairs."""

    pipeline_tag = "text-generation"

    def __init__(self, args: DPOArguments) -> None:
        super().__init__(args)
        self.form = "book"
        self.max_length = 0

    def check(self, lora: LoraOptions | None) -> None:
        if not self.args.beta > 0:
            raise ValueError(f"--beta must be > 0, got {self.args.beta}")
        if self.args.loss_type not in DPO_LOSS_TYPES:
            raise ValueError(f"--loss-type must be one of {', '.join(DPO_LOSS_TYPES)}, got {self.args.loss_type!r}")

    def load_splits(self, seed: int) -> None:
        a = self.args
        loaded = load_training_records(a.dataset, a.dataset_config)
        if isinstance(loaded, dict):
            held_out = loaded.get("validation") or loaded.get("test")
            self.form = check_pairs(list(loaded["train"]) + list(held_out or []), a.dataset)
            self.splits = {"train": loaded["train"], "validation": held_out} if held_out else split_pairs(
                loaded["train"], a.validation_fraction, a.shuffle, seed)
        else:
            self.form = check_pairs(loaded, a.dataset)
            self.splits = split_pairs(loaded, a.validation_fraction, a.shuffle, seed)
        logger.info("preference pairs per split: %s (%s form)", self.split_sizes(), self.form)

    def prepare_tokenizer(self, tokenizer) -> None:
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = ALPACA_CHAT_TEMPLATE  # the prompt instruction finetuning trains on

    def build_model(self, base_dir: str, tokenizer, config_overrides: dict[str, Any]):
        from scratch_gpt import ScratchGPTForCausalLM

        return ScratchGPTForCausalLM.from_pretrained(base_dir, **config_overrides)

    def encode(self, tokenizer, max_length: int) -> dict[str, Any]:
        from datasets import Dataset

        self.max_length = max_length
        alpaca = tokenizer.chat_template == ALPACA_CHAT_TEMPLATE
        return {name: Dataset.from_list([to_trl(r, self.form, alpaca) for r in records])
                for name, records in self.splits.items() if records}

    def make_trainer(self, model, tokenizer, opts: TrainerOptions, output_dir: str, encoded: dict[str, Any]):
        from peft import PeftModel
        from trl import DPOTrainer

        config = dpo_config(opts, output_dir, "validation" in encoded, beta=self.args.beta,
                            loss_type=[self.args.loss_type], max_length=self.max_length)
        reference = None if isinstance(model, PeftModel) else frozen_copy(model)  # LoRA: adapter disabled
        return DPOTrainer(model=model, ref_model=reference, args=config, train_dataset=encoded["train"],
                          eval_dataset=encoded.get("validation"), processing_class=tokenizer)

    def before_training(self, trainer, resume: str | None) -> dict[str, Any]:
        if trainer.eval_dataset is None or resume:
            return {}
        metrics = trainer.evaluate()
        return {f"eval_initial_{name}": metrics[f"eval_{name}"] for name in REPORTED_METRICS
                if f"eval_{name}" in metrics}

    def evaluate(self, trainer, encoded: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {"eval": trainer.evaluate()} if "validation" in encoded else {}

    def finalize(self, model, tokenizer, stage: Path, opts: TrainerOptions) -> dict[str, dict[str, Any]]:
        set_greedy_generation(model, tokenizer, min(256, model.config.max_position_embeddings))
        tokenizer.padding_side = "left"  # what generation (and the text-generation pipeline) wants
        return {}

    def settings(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.args), "dataset_form": self.form}


def finetune_dpo(args: DPOArguments, trainer_options: TrainerOptions | None = None,
                 lora: LoraOptions | None = None) -> FinetuneResult:
    """``scratch-gpt finetune dpo``: preference-tune ``args.model`` and publish it in ``args.output_dir``."""
    return finetune(DPOTask(args), trainer_options, lora)


__all__ = ["DPOTask", "check_pairs", "finetune_dpo", "split_pairs", "to_trl"]
