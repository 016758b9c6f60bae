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
  validate. After training, greedy answers for the test split go to ``test_answers.json`` beside the
  validation loss in ``finetune_report.json``.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .common import (
    REPORT_NAME,  # noqa: F401  (re-exported: the CLI and tests read it from here)
    TrainerOptions,
    check_vocab,
    finish_output,
    load_tokenizer_for,
    log_history_losses,
    make_trainer,
    materialize_scratch_model,
    prepare_output_dir,
    read_records,
    resolve_model_source,
    resolve_resume,
    set_seed,
    staging_dir,
    trainable_parameter_summary,
    write_json,
)
from .lora import LoraOptions, apply_lora, merge, set_adapter_base_path

logger = logging.getLogger(__name__)

ANSWERS_NAME = "test_answers.json"
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


def load_instruction_records(
    dataset: str, dataset_config: str | None = None
) -> dict[str, list[dict]] | list[dict]:
    """Records from a local ``.json``/``.jsonl`` file (a list, in file order), or a dict of splits from a
    local dataset folder (e.g. ``train.jsonl`` + ``test.jsonl``) or a Hub dataset id."""
    if os.path.isfile(dataset):
        return read_records(dataset)
    if not os.path.isdir(dataset) and dataset.startswith((".", "/", "~")):
        raise FileNotFoundError(f"--dataset {dataset} does not exist (expected a .json/.jsonl file of records)")
    import datasets

    try:
        loaded = datasets.load_dataset(dataset, dataset_config)
    except Exception as err:  # datasets raises many types for a missing dataset
        raise FileNotFoundError(
            f"dataset {dataset!r} is neither a .json/.jsonl file, a dataset folder nor a loadable Hub dataset ({err})"
        ) from err
    return {("validation" if k in ("valid", "val", "dev") else k): v.to_list() for k, v in loaded.items()}


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


def _complete_splits(
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


# ---------------------------------------------------------------------------------------------- main
def finetune_instruct(
    model: str,
    dataset: str,
    output_dir: str,
    dataset_config: str | None = None,
    train_fraction: float = 0.85,
    test_fraction: float = 0.10,
    shuffle: bool = False,
    max_length: int = 0,
    train_on_prompt: bool = False,
    tokenizer: str | None = None,
    dropout: float | None = None,
    lora: LoraOptions | None = None,
    merge_lora: bool = False,
    trainer_options: TrainerOptions | None = None,
    max_new_tokens: int = 256,
    max_test_answers: int = 0,
    resume_from_checkpoint: str | bool | None = None,
    keep_checkpoints: bool = False,
    overwrite: bool = False,
    revision: str | None = None,
) -> dict[str, Any]:
    """Instruction-finetune ``model`` on Alpaca-style ``dataset`` and save it to ``output_dir``.

    Returns the report written to ``output_dir/finetune_report.json`` (validation loss before and after,
    train loss, split sizes, trainable parameters); test answers go to ``output_dir/test_answers.json``.
    """
    opts = trainer_options or TrainerOptions()
    if merge_lora and lora is None:
        raise ValueError("--merge needs --lora")
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")

    source = resolve_model_source(model, revision)
    loaded = load_instruction_records(dataset, dataset_config)
    if isinstance(loaded, dict):
        if "train" not in loaded:
            raise ValueError(f"dataset {dataset} has no 'train' split (found {sorted(loaded)})")
        splits = {k: validate_records(v, f"{dataset} [{k}]") for k, v in loaded.items()}
        splits = _complete_splits(splits, train_fraction, test_fraction, shuffle, opts.seed)
    else:
        splits = split_records(validate_records(loaded, dataset), train_fraction, test_fraction, shuffle, opts.seed)
    sizes = {k: len(v) for k, v in splits.items()}
    logger.info("instruction records per split: %s", sizes)

    resume = resolve_resume(output_dir, resume_from_checkpoint) if resume_from_checkpoint else None
    prepare_output_dir(output_dir, overwrite=overwrite, resume=bool(resume))
    keep_base = lora is not None and not merge_lora and source.kind == "gpt2"
    workdir = output_dir if keep_base else tempfile.mkdtemp(prefix="scratch-gpt-base-")
    staged = None
    try:
        from scratch_gpt import ScratchGPTForCausalLM

        base_dir = materialize_scratch_model(source, workdir)
        tok = load_tokenizer_for(base_dir, tokenizer, padding_side="right")
        tok.chat_template = ALPACA_CHAT_TEMPLATE
        set_seed(opts.seed)
        kwargs: dict[str, Any] = {"pad_token_id": tok.pad_token_id}
        if dropout is not None:
            kwargs.update(attention_dropout=dropout, resid_dropout=dropout, embd_dropout=dropout)
        lm = ScratchGPTForCausalLM.from_pretrained(base_dir, **kwargs)
        check_vocab(lm, tok)
        context = lm.config.max_position_embeddings
        max_len = min(max_length, context) if max_length > 0 else context
        encoded = {}
        stats = {}
        for name in ("train", "validation"):
            if splits.get(name):
                encoded[name], s = encode_records(splits[name], tok, max_len, train_on_prompt, name)
                stats[name] = vars(s)

        train_model = apply_lora(lm, lora, task="causal") if lora is not None else lm
        params = trainable_parameter_summary(train_model)
        logger.info("training %d of %d parameters", params["trainable"], params["total"])
        has_val = "validation" in encoded
        trainer = make_trainer(train_model, tok, opts, output_dir, encoded, InstructionCollator(tok.pad_token_id))
        initial_val = trainer.evaluate()["eval_loss"] if has_val and not resume else None
        t0 = time.perf_counter()
        train_out = trainer.train(resume_from_checkpoint=resume)
        train_seconds = time.perf_counter() - t0
        final_val = trainer.evaluate()["eval_loss"] if has_val else None

        report: dict[str, Any] = {
            "task": "instruction-following",
            "base_model": source.name_or_path,
            "base_model_kind": source.kind,
            "method": ("lora-merged" if merge_lora else "lora") if lora is not None else "full",
            "split_sizes": sizes,
            "encoding": stats,
            "max_length": max_len,
            "trainable_parameters": params,
            "initial_validation_loss": initial_val,
            "validation_loss": final_val,
            "train_loss": float(train_out.training_loss),
            "train_seconds": train_seconds,
            "global_steps": int(train_out.global_step),
            "log_history": log_history_losses(trainer.state.log_history),
            "options": {
                "trainer": vars(opts),
                "lora": vars(lora) if lora is not None else None,
                "train_on_prompt": train_on_prompt,
                "train_fraction": train_fraction,
                "test_fraction": test_fraction,
                "shuffle": shuffle,
            },
        }
        if not trainer.is_world_process_zero():  # under `accelerate launch`, only the main process writes
            return report

        staged = staging_dir(output_dir)
        if lora is not None and merge_lora:
            train_model.save_pretrained(os.path.join(staged, "adapter"))  # before merging removes it
            final_model = merge(train_model)
        else:
            final_model = train_model
        gen = final_model.generation_config  # a peft model forwards this to its base model
        gen.eos_token_id = tok.eos_token_id
        gen.pad_token_id = tok.pad_token_id
        gen.max_new_tokens = min(max_new_tokens, context)
        gen.do_sample = False  # greedy answers; drop sampling-only settings (a pretrained run may set them)
        for name in ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff"):
            if getattr(gen, name, None) is not None:
                setattr(gen, name, None)

        test_records = splits.get("test") or []
        if max_test_answers > 0:
            test_records = test_records[:max_test_answers]
        answers = []
        if test_records:
            t1 = time.perf_counter()
            responses = generate_answers(final_model, tok, test_records, max_new_tokens, opts.eval_batch_size or opts.batch_size)
            report["answer_seconds"] = time.perf_counter() - t1
            answers = [dict(rec, model_response=resp) for rec, resp in zip(test_records, responses)]
        report["test_answers"] = ANSWERS_NAME if answers else None

        if lora is not None and not merge_lora and os.path.isdir(base_dir):
            set_adapter_base_path(train_model, os.path.abspath(base_dir))
        final_model.save_pretrained(staged)
        tok.padding_side = "left"  # what generation (and the text-generation pipeline) wants
        tok.save_pretrained(staged)
        if answers:
            write_json(os.path.join(staged, ANSWERS_NAME), answers)
        finish_output(staged, output_dir, report, keep_checkpoints)
        staged = None
        return report
    finally:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        if workdir != output_dir:
            shutil.rmtree(workdir, ignore_errors=True)
