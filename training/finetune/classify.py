"""Text classification: finetune a scratch-gpt (or converted GPT-2) model with ``transformers.Trainer``.

This is chapter 6 of "Build a Large Language Model (From Scratch)" done the Hugging Face way: the classifier
(:class:`scratch_gpt.ScratchGPTForSequenceClassification`) reads the last real token of each text through a
new linear ``score`` head; the body is finetuned fully, only in its last N blocks plus the final norm and
the head (the book's recipe), or through LoRA adapters.

Design choices:
- Labels come from the data: strings or ints (or a ``ClassLabel`` feature) become ``id2label``/``label2id``
  in the saved config, so ``pipeline("text-classification")`` answers with the real label names.
- Splits are taken as given (``train``/``validation``/``test`` in a Hub dataset or folder, or extra files),
  and any that are missing are carved out of the training data, stratified by label, with a fixed seed.
- The SMS Spam Collection format (``label<TAB>text`` per line, no header) is a first-class loader:
  :func:`load_sms_spam`.
- Metrics (accuracy and macro precision/recall/F1 over the classes present) are a small numpy function
  that matches scikit-learn's defaults, so no extra dependency.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from .arguments import DATA_FORMATS, ClassifyArguments, TrainerOptions
from .driver import FinetuneResult, FinetuneTask, finetune
from .lora import LoraOptions
from .source import load_hub_dataset

logger = logging.getLogger(__name__)

_VALIDATION_NAMES = ("validation", "valid", "val", "dev")


# ----------------------------------------------------------------------------------------------- data
def load_sms_spam(path: str, text_column: str = "text", label_column: str = "label"):
    """Load the SMS Spam Collection format: one ``label<TAB>text`` per line, no header.

    Blank lines are skipped; a line without a tab is an error naming its line number. Returns a
    ``datasets.Dataset`` with columns ``label`` and ``text`` (string labels such as ``ham``/``spam``).
    """
    from datasets import Dataset

    from training.data.corpus import read_utf8

    labels, texts = [], []
    for lineno, line in enumerate(read_utf8(path).split("\n"), 1):  # not UTF-8: an error naming the byte
        line = line.rstrip("\r")
        if not line.strip():
            continue
        label, sep, text = line.partition("\t")
        if not sep:
            raise ValueError(
                f"{path} line {lineno} has no tab: the SMS Spam Collection format is 'label<TAB>text' per line "
                "(use --dataset-format csv/tsv/json for files with a header)"
            )
        labels.append(label.strip())
        texts.append(text)
    if not texts:
        raise ValueError(f"{path} holds no 'label<TAB>text' lines")
    return Dataset.from_dict({label_column: labels, text_column: texts})


_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt")


def _detect_format(path: str) -> str:
    if os.path.isdir(path):
        return "folder"
    if not os.path.exists(path):
        if path.startswith((".", "/", "~")) or path.lower().endswith(_SUFFIXES):
            raise FileNotFoundError(f"dataset file {path} does not exist")
        return "hub"
    ext = os.path.splitext(path)[1].lower()
    return {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}.get(ext, "sms")


def load_file_dataset(path: str, data_format: str = "auto", text_column: str = "text", label_column: str = "label"):
    """One local file (or Hub id / folder) as a ``Dataset`` or ``DatasetDict`` in the given format."""
    import datasets

    fmt = _detect_format(path) if data_format == "auto" else data_format
    if fmt not in ("hub", "folder") and not os.path.exists(path):
        raise FileNotFoundError(f"dataset file {path} does not exist")
    if fmt == "sms":
        return load_sms_spam(path, text_column=text_column, label_column=label_column)
    if fmt in ("csv", "tsv"):
        return datasets.load_dataset("csv", data_files=path, split="train", delimiter="\t" if fmt == "tsv" else ",")
    if fmt in ("json", "jsonl"):
        return datasets.load_dataset("json", data_files=path, split="train")
    if fmt == "parquet":
        return datasets.load_dataset("parquet", data_files=path, split="train")
    if fmt == "folder":
        return datasets.load_dataset(path)
    if fmt == "hub":
        return None  # handled by the caller (needs config / split)
    raise ValueError(f"unknown --dataset-format {data_format!r}; choose from {DATA_FORMATS}")


def load_classification_splits(
    dataset: str,
    data_format: str = "auto",
    dataset_config: str | None = None,
    validation_file: str | None = None,
    test_file: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
):
    """Load the data as a ``DatasetDict`` with a ``train`` split and whatever else was given."""
    import datasets

    fmt = _detect_format(dataset) if data_format == "auto" else data_format
    if fmt == "hub":
        loaded = load_hub_dataset(dataset, dataset_config, "a local file/folder")
    else:
        loaded = load_file_dataset(dataset, fmt, text_column, label_column)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    splits = {}
    for name, ds in loaded.items():
        key = "validation" if name in _VALIDATION_NAMES else name
        splits[key] = ds
    if "train" not in splits:
        raise ValueError(f"dataset {dataset} has no 'train' split (found {sorted(splits)})")
    for name, path in (("validation", validation_file), ("test", test_file)):
        if path:
            extra = load_file_dataset(path, data_format, text_column, label_column)
            splits[name] = extra["train"] if isinstance(extra, datasets.DatasetDict) else extra
    return datasets.DatasetDict(splits)


def check_columns(splits, text_column: str, label_column: str) -> None:
    """Raise ``ValueError`` listing the columns when the text or label column is missing."""
    for name, ds in splits.items():
        for role, col in (("text", text_column), ("label", label_column)):
            if col not in ds.column_names:
                raise ValueError(
                    f"the {name} split has no {role} column {col!r}; its columns are {ds.column_names}. "
                    f"Pass --{role}-column with one of them"
                )


def build_label_maps(
    splits, label_column: str, label_names: Sequence[str] | None = None
) -> tuple[dict[int, str], dict[Any, int]]:
    """``id2label`` (id -> name) and a value -> id map from the label values of all splits.

    Values are sorted (strings alphabetically, ints numerically). A ``ClassLabel`` feature keeps its names;
    ``label_names`` names int labels ``0..K-1``. Fewer than two classes is an error.
    """
    from datasets import ClassLabel

    feature = splits["train"].features.get(label_column)
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
        return {i: n for i, n in enumerate(names)}, {i: i for i in range(len(names))}
    values: set = set()
    for name, ds in splits.items():
        col = ds[label_column]
        for i, v in enumerate(col):
            if v is None or (isinstance(v, str) and not v.strip()):
                raise ValueError(f"row {i} of the {name} split has an empty label in column {label_column!r}")
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if not isinstance(v, (str, int, bool)):
                raise ValueError(
                    f"row {i} of the {name} split has label {v!r} of type {type(v).__name__}; "
                    "labels must be strings or integers"
                )
            values.add(v)
    if len({type(v) for v in values}) > 1:
        raise ValueError(f"column {label_column!r} mixes label types: {sorted(map(repr, values))}")
    ordered = sorted(values)
    if len(ordered) < 2:
        raise ValueError(
            f"column {label_column!r} holds a single class {ordered}; a classifier needs at least two "
            "(check --label-column)"
        )
    if label_names:
        if not all(isinstance(v, int) for v in ordered) or ordered != list(range(len(label_names))):
            raise ValueError(
                f"--label-names names int labels 0..{len(label_names) - 1}, but the labels are {ordered}"
            )
        return {i: str(n) for i, n in enumerate(label_names)}, {i: i for i in ordered}
    id2label = {i: str(v) for i, v in enumerate(ordered)}
    return id2label, {v: i for i, v in enumerate(ordered)}


def balance_classes(ds, label_column: str, seed: int):
    """Undersample every class to the size of the smallest one (the book's balanced spam set)."""
    rng = np.random.default_rng(seed)
    labels = ds[label_column]
    by_class: dict[Any, list[int]] = {}
    for i, v in enumerate(labels):
        by_class.setdefault(v, []).append(i)
    n = min(len(ix) for ix in by_class.values())
    keep = np.sort(np.concatenate([rng.choice(ix, size=n, replace=False) for ix in by_class.values()]))
    logger.info("balanced %d classes to %d rows each (%d of %d rows kept)", len(by_class), n, len(keep), len(ds))
    return ds.select(keep.tolist())


def stratified_split(ds, label_column: str, fractions: dict[str, float], seed: int) -> dict[str, Any]:
    """Split ``ds`` into ``train`` plus the named ``fractions``, per class, reproducibly under ``seed``."""
    rng = np.random.default_rng(seed)
    labels = ds[label_column]
    by_class: dict[Any, list[int]] = {}
    for i, v in enumerate(labels):
        by_class.setdefault(v, []).append(i)
    parts: dict[str, list[int]] = {"train": [], **{k: [] for k in fractions}}
    for _, ix in sorted(by_class.items(), key=lambda kv: str(kv[0])):
        ix = rng.permutation(ix).tolist()
        start = 0
        for name, frac in fractions.items():
            n = int(round(frac * len(ix)))
            parts[name].extend(ix[start : start + n])
            start += n
        parts["train"].extend(ix[start:])
    out = {}
    for name, ix in parts.items():
        if not ix:
            raise ValueError(
                f"the {name} split would be empty ({len(ds)} rows); use more data or larger split fractions"
            )
        out[name] = ds.select(sorted(ix) if name != "train" else rng.permutation(ix).tolist())
    return out


# -------------------------------------------------------------------------------------------- metrics
def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> np.ndarray:
    """``(num_labels, num_labels)`` counts; rows are true labels, columns predictions."""
    cm = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return cm


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 (over classes present in labels or predictions; 0/0 -> 0)."""
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    cm = confusion_matrix(labels, predictions, num_labels).astype(np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    present = (predicted + actual) > 0
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "accuracy": float((labels == predictions).mean()) if len(labels) else 0.0,
        "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
        "precision_macro": float(precision[present].mean()) if present.any() else 0.0,
        "recall_macro": float(recall[present].mean()) if present.any() else 0.0,
    }


def make_compute_metrics(num_labels: int):
    """A Trainer ``compute_metrics`` callback over logits (or argmax ids)."""

    def compute_metrics(eval_pred) -> dict[str, float]:
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        if predictions.ndim > 1:
            predictions = predictions.argmax(-1)
        return classification_metrics(labels, predictions, num_labels)

    return compute_metrics


# --------------------------------------------------------------------------------------------- model
def freeze_all_but_last_blocks(model, n_blocks: int) -> None:
    """Train only the last ``n_blocks`` transformer blocks, the final norm ``ln_f`` and the ``score`` head."""
    blocks = model.transformer.h
    if not 0 <= n_blocks <= len(blocks):
        raise ValueError(f"--train-last-blocks must be between 0 and {len(blocks)} (the model's layers), got {n_blocks}")
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = [*blocks[len(blocks) - n_blocks :], model.transformer.ln_f, model.score]
    for module in trainable:
        for p in module.parameters():
            p.requires_grad_(True)


def load_classifier(model_dir: str, id2label: dict[int, str], **config_overrides: Any):
    """A ``ScratchGPTForSequenceClassification`` with the body of ``model_dir`` and a new ``score`` head
    (``config_overrides``: e.g. ``pad_token_id``, dropout)."""
    from scratch_gpt import ScratchGPTForSequenceClassification

    return ScratchGPTForSequenceClassification.from_pretrained(
        model_dir,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        problem_type="single_label_classification",
        **config_overrides,
    )


def _tokenize_splits(splits, tokenizer, text_column: str, label_column: str, value_to_id: dict, max_length: int):
    truncated = Counter()

    def encode(batch, name: str):
        texts = batch[text_column]
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"a row of the {name} split has text {t!r} ({type(t).__name__}), not a string")
        enc = tokenizer(texts, truncation=False, add_special_tokens=False, verbose=False)
        ids, mask = [], []
        for row in enc["input_ids"]:
            if len(row) > max_length:
                truncated[name] += 1
                row = row[:max_length]
            ids.append(row)
            mask.append([1] * len(row))
        labels = []
        for v in batch[label_column]:
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            labels.append(value_to_id[v])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    out = {}
    for name, ds in splits.items():
        before = len(ds)
        ds = ds.filter(lambda b: [isinstance(t, str) and t.strip() != "" for t in b[text_column]], batched=True)
        if len(ds) < before:
            logger.warning("dropped %d rows with empty text from the %s split", before - len(ds), name)
        out[name] = ds.map(
            encode, batched=True, remove_columns=ds.column_names, fn_kwargs={"name": name}, desc=f"tokenize {name}"
        )
    for name, n in truncated.items():
        logger.warning("%d of %d %s texts were longer than %d tokens and were truncated", n, len(out[name]), name, max_length)
    return out


# ------------------------------------------------------------------------------------------------ task
class ClassifyTask(FinetuneTask):
    """Text classification: a new ``score`` head on the last real token, accuracy and macro F1."""

    pipeline_tag = "text-classification"
    lora_task = "classify"

    def __init__(self, args: ClassifyArguments) -> None:
        super().__init__(args)
        self.id2label: dict[int, str] = {}
        self.value_to_id: dict[Any, int] = {}

    def check(self, lora: LoraOptions | None) -> None:
        args = self.args
        if args.train_last_blocks is not None and lora is not None:
            raise ValueError("--train-last-blocks and --lora exclude each other: LoRA already freezes the body")
        for name, frac in (("--validation-fraction", args.validation_fraction), ("--test-fraction", args.test_fraction)):
            if not 0.0 <= frac < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {frac}")
        if args.validation_fraction + args.test_fraction >= 1.0:
            raise ValueError("--validation-fraction + --test-fraction must leave rows for training")

    def inputs(self) -> list[str | None]:
        return [*super().inputs(), self.args.validation_file, self.args.test_file]

    def load_splits(self, seed: int) -> None:
        a = self.args
        splits = load_classification_splits(
            a.dataset, a.dataset_format, a.dataset_config, a.validation_file, a.test_file, a.text_column, a.label_column
        )
        check_columns(splits, a.text_column, a.label_column)
        if a.balance:
            splits["train"] = balance_classes(splits["train"], a.label_column, seed)
        missing = {name: frac for name, frac in (("validation", a.validation_fraction), ("test", a.test_fraction))
                   if name not in splits and frac > 0}
        if missing:
            splits.update(stratified_split(splits["train"], a.label_column, missing, seed))
        self.splits = splits
        self.id2label, self.value_to_id = build_label_maps(splits, a.label_column, a.label_names)
        logger.info("labels %s; split sizes %s", list(self.id2label.values()), self.split_sizes())

    def build_model(self, base_dir: str, tokenizer, config_overrides: dict[str, Any]):
        return load_classifier(base_dir, self.id2label, **config_overrides)

    def method(self, lora: LoraOptions | None) -> str:
        if lora is None and self.args.train_last_blocks is not None:
            return f"last-{self.args.train_last_blocks}-blocks"
        return super().method(lora)

    def freeze(self, model) -> None:
        if self.args.train_last_blocks is not None:
            freeze_all_but_last_blocks(model, self.args.train_last_blocks)

    def encode(self, tokenizer, max_length: int) -> dict[str, Any]:
        a = self.args
        return _tokenize_splits(self.splits, tokenizer, a.text_column, a.label_column, self.value_to_id, max_length)

    def collator(self, tokenizer):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def trainer_kwargs(self) -> dict[str, Any]:
        return {"compute_metrics": make_compute_metrics(len(self.id2label))}

    def adapter_base(self, model, tokenizer, base_dir: str, source, work: str) -> str | None:
        # The adapter's base is this classifier before training (body + initial head + label names), so
        # AutoPeftModelForSequenceClassification / pipeline() rebuild it with the right labels.
        path = os.path.join(work, "classifier_base")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        return path

    def evaluate(self, trainer, encoded: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Validation and test metrics (``eval_accuracy``, ``test_f1_macro``, ...) and the test confusion matrix."""
        results = {}
        for name, prefix in (("validation", "eval"), ("test", "test")):
            if name in encoded:
                pred = trainer.predict(encoded[name], metric_key_prefix=prefix)
                logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
                cm = confusion_matrix(pred.label_ids, logits.argmax(-1), len(self.id2label))
                results[prefix] = {k: float(v) for k, v in pred.metrics.items()}
                results[prefix][f"{prefix}_confusion_matrix"] = {
                    "labels": [self.id2label[i] for i in range(len(self.id2label))],
                    "rows_true_columns_predicted": cm.tolist(),
                }
        return results

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "id2label": {str(k): v for k, v in self.id2label.items()}}


def finetune_classifier(
    args: ClassifyArguments, trainer_options: TrainerOptions | None = None, lora: LoraOptions | None = None
) -> FinetuneResult:
    """Finetune ``args.model`` into a text classifier on ``args.dataset``, saved to ``args.output_dir``.

    The folder gets ``eval_results.json`` / ``test_results.json`` (accuracy, macro precision/recall/F1, the
    confusion matrix), ``train_results.json``, ``trainer_state.json`` and ``training_args.json``.
    """
    return finetune(ClassifyTask(args), trainer_options, lora)
