"""Instruction finetuning: teach a scratch-gpt (or converted GPT-2) model to follow Alpaca-style prompts.

This is chapter 7 of "Build a Large Language Model (From Scratch)" done with ``transformers.Trainer``.

Design choices:
- Records are ``{"instruction", "input" (optional), "output"}``. The prompt is the Alpaca template; the same
  text is the tokenizer's ``chat_template`` (a user message is the instruction, an optional ``input`` key on
  it fills the Input section, an optional leading system message replaces the preamble), so
  ``pipeline("text-generation")`` accepts chat messages and renders exactly what the model was trained on.
- Prompt and response are tokenised separately and concatenated, so the prompt/response boundary is exact:
  labels are -100 on every prompt token (unless ``train_on_prompt``) and on padding; the response ends with
  the eos token, which is learned, so generation stops by itself.
- Dynamic padding per batch (:class:`InstructionCollator`), right side for training, left for generation.
- Over-long records are truncated to the context length (response cut at the end); one warning counts them;
  records whose prompt alone fills the context are dropped, also counted.
- The book's split: the first 85% of the records in file order train, the next 10% test, the rest (5%)
  validate. After training, greedy answers for the test split go to ``generated_predictions.json`` beside
  the validation loss before and after training in ``eval_results.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratch_gpt import run_folder

from .arguments import InstructArguments, TrainerOptions
from .driver import FinetuneResult, FinetuneTask, finetune
from .lora import LoraOptions
from .source import load_hub_dataset

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
INSTRUCTION_HEADER = "\n\n### Instruction:\n"
INPUT_HEADER = "\n\n### Input:\n"
RESPONSE_HEADER = "\n\n### Response:\n"

# The Alpaca prompt as a Jinja chat template; renders byte-for-byte what format_prompt/format_example build.
ALPACA_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set preamble = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{%- set preamble = '" + ALPACA_PREAMBLE + "' -%}{%- set turns = messages -%}"
    "{%- endif -%}"
    "{{- preamble -}}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '\\n\\n### Instruction:\\n' + message['content'] -}}"
    "{%- if message['input'] is defined and message['input'] -%}"
    "{{- '\\n\\n### Input:\\n' + message['input'] -}}"
    "{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '\\n\\n### Response:\\n' + message['content'] + eos_token -}}"
    "{%- else -%}"
    "{{- raise_exception('the Alpaca chat template takes system, user and assistant messages, not ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '\\n\\n### Response:\\n' -}}{%- endif -%}"
)


# -------------------------------------------------------------------------------------------- records
def format_prompt(instruction: str, input: str | None = None, preamble: str = ALPACA_PREAMBLE) -> str:
    """The Alpaca prompt up to and including the ``### Response:`` header."""
    text = preamble + INSTRUCTION_HEADER + instruction
    if input:
        text += INPUT_HEADER + input
    return text + RESPONSE_HEADER


def validate_records(records: Sequence[Any], source: str = "dataset") -> list[dict[str, str]]:
    """Check every record has string ``instruction`` and ``output`` (``input`` optional); normalise them.

    Raises ``ValueError`` naming the first bad record's index and what is wrong with it.
    """
    out = []
    if not records:
        raise ValueError(f"{source} holds no records")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ValueError(f"record {i} of {source} is a {type(rec).__name__}, not an object with instruction/output")
        for key in ("instruction", "output"):
            if key not in rec or rec[key] is None:
                raise ValueError(
                    f"record {i} of {source} is missing {key!r} (has {sorted(rec)}); every record needs "
                    "'instruction' and 'output', 'input' is optional"
                )
            if not isinstance(rec[key], str):
                raise ValueError(f"record {i} of {source}: {key!r} is a {type(rec[key]).__name__}, not a string")
        if not rec["instruction"].strip():
            raise ValueError(f"record {i} of {source} has an empty 'instruction'")
        inp = rec.get("input") or ""
        if not isinstance(inp, str):
            raise ValueError(f"record {i} of {source}: 'input' is a {type(inp).__name__}, not a string")
        out.append({"instruction": rec["instruction"], "input": inp, "output": rec["output"]})
    return out


def split_records(
    records: Sequence[dict], train_fraction: float = 0.85, test_fraction: float = 0.10, shuffle: bool = False,
    seed: int = 123,
) -> dict[str, list[dict]]:
    """The book's split: first ``train_fraction`` train, next ``test_fraction`` test, the rest validation.

    ``shuffle`` permutes the records with ``seed`` first (the book keeps file order).
    """
    if not 0 < train_fraction < 1 or not 0 <= test_fraction < 1 or train_fraction + test_fraction > 1:
        raise ValueError(
            f"--train-fraction {train_fraction} and --test-fraction {test_fraction} must be in (0, 1) and sum to <= 1"
        )
    records = list(records)
    if shuffle:
        import random

        random.Random(seed).shuffle(records)
    n_train = int(len(records) * train_fraction)
    n_test = int(len(records) * test_fraction)
    parts = {
        "train": records[:n_train],
        "test": records[n_train : n_train + n_test],
        "validation": records[n_train + n_test :],
    }
    if not parts["train"]:
        raise ValueError(f"{len(records)} records leave no training records at --train-fraction {train_fraction}")
    return parts


def read_records(path: str) -> list[dict[str, Any]]:
    """Records from a local ``.json`` (a list of objects, or ``{"data": [...]}``) or ``.jsonl`` file."""
    from training.data.corpus import read_utf8

    text = read_utf8(path)  # not UTF-8: an error naming the file and the byte offset
    if path.endswith(".jsonl"):
        records = []
        for i, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path} line {i} is not valid JSON: {err}") from err
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); JSON Lines files need the .jsonl suffix") from err
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON list of records, found a {type(data).__name__}")
    return data


def load_instruction_records(
    dataset: str, dataset_config: str | None = None
) -> dict[str, list[dict]] | list[dict]:
    """Records from a local ``.json``/``.jsonl`` file (a list, in file order), or a dict of splits from a
    local dataset folder (e.g. ``train.jsonl`` + ``test.jsonl``) or a Hub dataset id."""
    if os.path.isfile(dataset):
        return read_records(dataset)
    if not os.path.isdir(dataset) and dataset.startswith((".", "/", "~")):
        raise FileNotFoundError(f"--dataset {dataset} does not exist (expected a .json/.jsonl file of records)")
    loaded = load_hub_dataset(dataset, dataset_config, "a .json/.jsonl file, a dataset folder")
    return {("validation" if k in ("valid", "val", "dev") else k): v.to_list() for k, v in loaded.items()}


def load_training_records(
    dataset: str, dataset_config: str | None = None
) -> dict[str, list[dict]] | list[dict]:
    """:func:`load_instruction_records`, refusing a dict of splits that has no ``train`` split."""
    loaded = load_instruction_records(dataset, dataset_config)
    if isinstance(loaded, dict) and "train" not in loaded:
        raise ValueError(f"dataset {dataset} has no 'train' split (found {sorted(loaded)})")
    return loaded


# ------------------------------------------------------------------------------------------ encoding
@dataclass
class EncodeStats:
    """What :func:`encode_records` had to cut or drop."""

    truncated: int = 0
    dropped: int = 0


def encode_example(
    record: dict[str, str], tokenizer, max_length: int, train_on_prompt: bool = False
) -> tuple[dict[str, list[int]] | None, bool]:
    """Token ids and labels of one record; returns ``(example or None if dropped, truncated?)``."""
    prompt_ids = tokenizer(
        format_prompt(record["instruction"], record["input"]), add_special_tokens=False, verbose=False
    )["input_ids"]
    response_ids = tokenizer(record["output"], add_special_tokens=False, verbose=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = prompt_ids + response_ids
    labels = (list(prompt_ids) if train_on_prompt else [IGNORE_INDEX] * len(prompt_ids)) + response_ids
    truncated = len(ids) > max_length
    if len(prompt_ids) >= max_length:
        return None, truncated
    ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}, truncated


def encode_records(
    records: Sequence[dict[str, str]], tokenizer, max_length: int, train_on_prompt: bool = False, split: str = "train"
):
    """A ``datasets.Dataset`` of ``input_ids``/``attention_mask``/``labels``; warns once with the counts of
    truncated and dropped records."""
    from datasets import Dataset

    stats = EncodeStats()
    rows = []
    for rec in records:
        ex, truncated = encode_example(rec, tokenizer, max_length, train_on_prompt)
        stats.truncated += int(truncated and ex is not None)
        if ex is None:
            stats.dropped += 1
            continue
        rows.append(ex)
    if stats.truncated:
        logger.warning(
            "%d of %d %s records were longer than %d tokens and were truncated (their responses were cut)",
            stats.truncated, len(records), split, max_length,
        )
    if stats.dropped:
        logger.warning(
            "%d of %d %s records were dropped: their prompt alone fills the %d-token context",
            stats.dropped, len(records), split, max_length,
        )
    if not rows:
        raise ValueError(f"no {split} record fits the {max_length}-token context")
    ds = Dataset.from_dict({k: [r[k] for r in rows] for k in ("input_ids", "attention_mask", "labels")})
    return ds, stats


class InstructionCollator:
    """Pads a batch to its longest example: ids with the pad id, mask with 0, labels with -100."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None, padding_side: str = "right"):
        if pad_token_id is None:
            raise ValueError("the collator needs a pad token id")
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.padding_side = padding_side

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            n_pad = longest - len(f["input_ids"])
            labels = f.get("labels", f["input_ids"])
            pieces = {
                "input_ids": (list(f["input_ids"]), [self.pad_token_id] * n_pad),
                "attention_mask": ([1] * len(f["input_ids"]), [0] * n_pad),
                "labels": (list(labels), [IGNORE_INDEX] * n_pad),
            }
            for key, (values, pad) in pieces.items():
                batch[key].append(values + pad if self.padding_side == "right" else pad + values)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------- generation
def generate_answers(
    model, tokenizer, records: Sequence[dict[str, str]], max_new_tokens: int = 256, batch_size: int = 8,
) -> list[str]:
    """Greedy answers to ``records`` (left-padded batches; stops at eos)."""
    import torch
    from tqdm.auto import tqdm

    context = model.config.max_position_embeddings
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    answers: list[str] = []
    try:
        for start in tqdm(range(0, len(records), batch_size), desc="answers", disable=len(records) <= batch_size):
            chunk = records[start : start + batch_size]
            prompts = [
                tokenizer(format_prompt(r["instruction"], r["input"]), add_special_tokens=False, verbose=False)["input_ids"]
                for r in chunk
            ]
            budget = max(1, context - max_new_tokens)
            prompts = [p[-budget:] for p in prompts]  # keep the end of an over-long prompt (its Response header)
            longest = max(len(p) for p in prompts)
            ids = torch.full((len(prompts), longest), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, p in enumerate(prompts):
                ids[i, longest - len(p) :] = torch.tensor(p)
                mask[i, longest - len(p) :] = 1
            new_tokens = min(max_new_tokens, context - longest)
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            for row in out[:, longest:]:
                answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return answers


def complete_splits(
    splits: dict[str, list[dict]], train_fraction: float, test_fraction: float, shuffle: bool, seed: int
) -> dict[str, list[dict]]:
    """Carve the missing validation/test splits out of ``train`` (a Hub dataset may ship only some)."""
    has_val, has_test = "validation" in splits, "test" in splits
    if has_val and has_test:
        return splits
    if not has_val and not has_test:
        return split_records(splits["train"], train_fraction, test_fraction, shuffle, seed)
    # One is given: carve only the other, with its own fraction of the data.
    frac = test_fraction if has_val else 1.0 - train_fraction - test_fraction
    train = list(splits["train"])
    if shuffle:
        import random

        random.Random(seed).shuffle(train)
    n = max(1, round(frac * len(train)))
    if n >= len(train):
        raise ValueError(f"the train split ({len(train)} records) is too small to carve a held-out split from")
    missing = "test" if has_val else "validation"
    return {**splits, "train": train[:-n], missing: train[-n:]}


# ------------------------------------------------------------------------------------------------ task
class InstructTask(FinetuneTask):
    """Instruction following: Alpaca prompts, loss on response tokens only, greedy answers for the test split."""

    pipeline_tag = "text-generation"

    def __init__(self, args: InstructArguments) -> None:
        super().__init__(args)
        self.encoding: dict[str, dict[str, int]] = {}

    def check(self, lora: LoraOptions | None) -> None:
        if self.args.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.args.max_new_tokens}")

    def load_splits(self, seed: int) -> None:
        a = self.args
        loaded = load_training_records(a.dataset, a.dataset_config)
        if isinstance(loaded, dict):
            splits = {k: validate_records(v, f"{a.dataset} [{k}]") for k, v in loaded.items()}
            self.splits = complete_splits(splits, a.train_fraction, a.test_fraction, a.shuffle, seed)
        else:
            records = validate_records(loaded, a.dataset)
            self.splits = split_records(records, a.train_fraction, a.test_fraction, a.shuffle, seed)
        logger.info("instruction records per split: %s", self.split_sizes())

    def prepare_tokenizer(self, tokenizer) -> None:
        tokenizer.chat_template = ALPACA_CHAT_TEMPLATE

    def build_model(self, base_dir: str, tokenizer, config_overrides: dict[str, Any]):
        from scratch_gpt import ScratchGPTForCausalLM

        return ScratchGPTForCausalLM.from_pretrained(base_dir, **config_overrides)

    def encode(self, tokenizer, max_length: int) -> dict[str, Any]:
        encoded = {}
        for name in ("train", "validation"):
            if self.splits.get(name):
                encoded[name], stats = encode_records(self.splits[name], tokenizer, max_length,
                                                      self.args.train_on_prompt, name)
                self.encoding[name] = vars(stats)
        return encoded

    def collator(self, tokenizer):
        return InstructionCollator(tokenizer.pad_token_id)

    def before_training(self, trainer, resume: str | None) -> dict[str, Any]:
        if trainer.eval_dataset is None or resume:
            return {}
        return {"eval_initial_loss": trainer.evaluate()["eval_loss"]}

    def evaluate(self, trainer, encoded: dict[str, Any]) -> dict[str, dict[str, Any]]:
        counts = {f"{prefix}_{key}": value for name, prefix in (("train", "train"), ("validation", "eval"))
                  for key, value in self.encoding.get(name, {}).items()}
        results = {"train": {k: v for k, v in counts.items() if k.startswith("train_")}}
        if "validation" in encoded:
            results["eval"] = {**trainer.evaluate(), **{k: v for k, v in counts.items() if k.startswith("eval_")}}
        return results

    def finalize(self, model, tokenizer, stage: Path, opts: TrainerOptions) -> dict[str, dict[str, Any]]:
        """Greedy generation settings, answers for the test split (``generated_predictions.json``), left padding."""
        a = self.args
        set_greedy_generation(model, tokenizer, min(a.max_new_tokens, model.config.max_position_embeddings))
        records = self.splits.get("test") or []
        records = records[: a.max_test_answers] if a.max_test_answers > 0 else records
        tokenizer.padding_side = "left"  # what generation (and the text-generation pipeline) wants
        if not records:
            return {}
        t0 = time.perf_counter()
        answers = generate_answers(model, tokenizer, records, a.max_new_tokens, opts.eval_batch_size or opts.batch_size)
        predictions = [dict(rec, model_response=resp) for rec, resp in zip(records, answers)]
        run_folder.write_json(stage, run_folder.PREDICTIONS_FILE, predictions)
        return {"test": {"test_predictions": len(predictions), "test_runtime": time.perf_counter() - t0}}


def set_greedy_generation(model, tokenizer, max_new_tokens: int) -> None:
    """Greedy answers by default; sampling-only settings a pretrained run may carry are dropped."""
    gen = model.generation_config  # a peft model forwards this to its base model
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.max_new_tokens = max_new_tokens
    gen.do_sample = False
    for name in ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff"):
        if getattr(gen, name, None) is not None:
            setattr(gen, name, None)


def finetune_instruct(
    args: InstructArguments, trainer_options: TrainerOptions | None = None, lora: LoraOptions | None = None
) -> FinetuneResult:
    """Instruction-finetune ``args.model`` on Alpaca-style ``args.dataset``, saved to ``args.output_dir``.

    The folder gets ``eval_results.json`` (validation loss before and after), ``train_results.json``,
    ``generated_predictions.json`` (greedy answers for the test split), ``trainer_state.json`` and
    ``training_args.json``.
    """
    return finetune(InstructTask(args), trainer_options, lora)
