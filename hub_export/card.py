"""The model card (the README) of an exported Hub repository.

The card is built with huggingface_hub's ``ModelCard`` / ``ModelCardData``, so the YAML header is what the Hub
indexes (``library_name``, ``pipeline_tag``, ``license``, ``tags``, ``datasets``, ``base_model``). The body is
made from the run folder, read only through :mod:`scratch_gpt.run_folder`:

- the settings of the stage that made the model (``load_training_args``), published without local paths: a
  Hub id stays, a local dataset shows only its base name, other local paths and machine settings are left out
  (``--card-dataset`` publishes the text the user gives instead);
- validation metrics (``eval`` results, else the last evaluation of ``log_history``) with the perplexity of a
  language model, test metrics (``test`` results: accuracy, F1, ...), and lm-evaluation-harness scores (the
  ``lm_eval`` key of the ``eval`` results) as a task / metric table;
- the loss plot, embedded when the export carries it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scratch_gpt import run_folder

if TYPE_CHECKING:  # imported where used: `scratch-gpt --help` builds its options from CardOptions
    from huggingface_hub import ModelCard, ModelCardData

logger = logging.getLogger(__name__)

# Settings that describe the machine or the session, not the model: never published.
_PRIVATE_SETTINGS = {
    "output_dir", "logging_dir", "resume", "overwrite", "overwrite_output_dir", "report_to", "cache_dir",
    "resume_from_checkpoint", "hub_token", "push_to_hub_token", "token", "config", "device", "seed_dir",
}
_DATASET_KEYS = ("dataset", "dataset_name", "datasets", "train_file", "data", "corpus")
_BASE_MODEL_KEYS = ("base_model", "model_name_or_path", "init_from", "pretrained_model", "model")
_DATA_SUFFIXES = (".txt", ".md", ".py", ".json", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".gz", ".zip")
# Metrics that measure the machine, not the model.
_MACHINE_METRIC = re.compile(r"(runtime|_per_second|total_flos|memory)")
# What the card says of the training split: how far it went and where the loss ended.
_TRAIN_SUMMARY = re.compile(r"(loss|perplexity|^global_step$|^epoch$)")
MAX_SETTINGS_ROWS = 40


@dataclass
class CardOptions:
    """What the user tells the card beyond what the run folder holds (the ``export`` command's card options)."""

    _argument_group_name = "model card"

    license: str = field(default="apache-2.0", metadata={"help": "license id for the card's YAML header"})
    datasets: list[str] = field(default_factory=list, metadata={
        "aliases": ["--dataset"], "action": "append", "metavar": "HUB_ID",
        "help": "Hub dataset id the model was trained on, for the card's YAML header (repeatable)"})
    tags: list[str] = field(default_factory=list, metadata={
        "aliases": ["--tag"], "action": "append", "metavar": "TAG", "help": "extra card tag (repeatable)"})
    base_model: str | None = field(default=None, metadata={
        "help": "Hub id of the model this one was finetuned from (card's base_model)"})
    repo_id: str | None = field(default=None, metadata={
        "metavar": "OWNER/NAME",
        "help": "the repository the export will be pushed to, used in the card's usage snippet"})
    language: list[str] | None = field(default=None, metadata={
        "metavar": "CODE", "help": "language codes of the training data for the card's YAML header (e.g. en)"})
    dataset_text: str | None = field(default=None, metadata={
        "aliases": ["--card-dataset"], "metavar": "TEXT",
        "help": "how the card describes the training data, published as given (default: the dataset's Hub id or, "
        "for a local dataset, only its base name)"})


# --------------------------------------------------------------------------------------------- public values


def is_local_path(value: str, roots: tuple[Path, ...] = ()) -> bool:
    """Whether a setting names a local file or folder (never published) rather than a Hub id or a name.

    A relative path counts when it exists from the working directory or from one of ``roots`` (the run folder
    and the folders above it, where the run was probably started).
    """
    if value.startswith(("/", "./", "../", "~", "\\")) or re.match(r"^[A-Za-z]:[\\/]", value):
        return True
    if value.count("/") > 1 or "\\" in value or any(os.path.exists(Path(r) / value) for r in ("", *roots)):
        return True
    return "/" in value and value.lower().endswith(_DATA_SUFFIXES)


def looks_like_hub_id(value: Any) -> bool:
    """``owner/name`` as the Hub spells it, and not a local path."""
    if not isinstance(value, str) or value.count("/") != 1 or is_local_path(value):
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def public_dataset(value: str, roots: tuple[Path, ...] = ()) -> str:
    """A dataset as the card may show it: a Hub id or name as is, a local path reduced to its base name."""
    return Path(value.rstrip("/\\")).name if is_local_path(value, roots) else value


def _flat_scalars(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings (composed argument groups) as ``group.key`` -> scalar; lists of scalars joined."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_scalars(value, f"{name}."))
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value):
            flat[name] = ", ".join(str(v) for v in value) if value else None
        elif isinstance(value, (str, int, float, bool)):
            flat[name] = value
    return {k: v for k, v in flat.items() if v is not None and v != ""}


def public_settings(settings: dict[str, Any] | None, roots: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The settings a public card may show: no machine settings, no local paths (datasets by base name)."""
    public: dict[str, Any] = {}
    for key, value in _flat_scalars(settings or {}).items():
        leaf = key.rsplit(".", 1)[-1]
        if leaf in _PRIVATE_SETTINGS or leaf.startswith("debug"):
            continue
        if isinstance(value, str) and leaf in _DATASET_KEYS:
            value = ", ".join(public_dataset(v.strip(), roots) for v in value.split(","))
        elif isinstance(value, str) and any(is_local_path(v.strip(), roots) for v in value.split(",")):
            continue
        public[key] = value
    return public


def _setting(settings: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key, value in settings.items():
        if key.rsplit(".", 1)[-1] in keys and isinstance(value, str) and value:
            return value
    return None


def infer_base_model(settings: dict[str, Any]) -> str | None:
    """A Hub id the run was initialised from, if its settings name one."""
    value = _setting({k: v for k, v in settings.items() if looks_like_hub_id(v)}, _BASE_MODEL_KEYS)
    return value


def infer_dataset(settings: dict[str, Any]) -> str | None:
    """The dataset named by the run's (public) settings: a Hub id, a base name or ``python-stdlib``."""
    return _setting(settings, _DATASET_KEYS)


# --------------------------------------------------------------------------------------------- run records


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _model_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Numeric metrics about the model (step, machine timings and the ``lm_eval`` block left out)."""
    return {k: v for k, v in metrics.items() if _is_number(v) and k != "step" and not _MACHINE_METRIC.search(k)}


@dataclass
class RunRecords:
    """What the card shows of a run folder."""

    settings: dict[str, Any] = field(default_factory=dict)  # public settings only
    train: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)
    lm_eval: Any = None
    validation_step: Any = None
    confusion: Any = None  # {"labels": [...], "rows_true_columns_predicted": [[...], ...]} of the test split


def _roots(run_dir: Path) -> tuple[Path, ...]:
    """The run folder and the two folders above it: where relative paths in its settings may start."""
    resolved = run_dir.resolve()
    return (resolved, *list(resolved.parents)[:2])


def _validation_step(run_dir: Path, last_eval: dict) -> int | None:
    """The step of the saved model's evaluation: the best one's when the run kept its best model, else the last."""
    state = run_folder.load_trainer_state(run_dir)
    if state.get("best_model_checkpoint") and state.get("best_global_step") is not None:
        return state["best_global_step"]
    return last_eval.get("step") if last_eval else None


def read_run_records(run_dir: Path | None) -> RunRecords:
    """Settings, results and evaluation of the run in ``run_dir`` (empty records when there is none)."""
    if run_dir is None or not Path(run_dir).is_dir():
        return RunRecords()
    results = run_folder.load_results(run_dir)
    last_eval = run_folder.last_eval_metrics(run_dir)
    validation = _model_metrics(results.get("eval", {})) or _model_metrics(last_eval)
    return RunRecords(
        settings=public_settings(run_folder.load_training_args(run_dir), _roots(Path(run_dir))),
        train={k: v for k, v in _model_metrics(results.get("train", {})).items() if _TRAIN_SUMMARY.search(k)},
        validation=validation,
        test=_model_metrics(results.get("test", {})),
        lm_eval=results.get("eval", {}).get(run_folder.LM_EVAL_KEY),
        validation_step=_validation_step(run_dir, last_eval),
        confusion=results.get("test", {}).get("test_confusion_matrix"),
    )


def with_perplexity(metrics: dict[str, Any]) -> dict[str, Any]:
    """Validation metrics of a language model with ``eval_perplexity`` = exp(``eval_loss``) when missing."""
    loss = metrics.get("eval_loss")
    if _is_number(loss) and "eval_perplexity" not in metrics and "perplexity" not in metrics:
        return {**metrics, "eval_perplexity": math.exp(min(loss, 700.0))}
    return metrics


def confusion_table(confusion: Any) -> str | None:
    """A true-by-predicted count table of a classifier's test split, or ``None`` when not recorded."""
    if not isinstance(confusion, dict):
        return None
    labels, rows = confusion.get("labels"), confusion.get("rows_true_columns_predicted")
    if not isinstance(labels, list) or not isinstance(rows, list) or len(rows) != len(labels):
        return None
    body = [(f"**{label}**", *(_fmt(v) for v in row)) for label, row in zip(labels, rows)]
    return _table(body, ("true \\ predicted", *map(str, labels)))


def lm_eval_rows(data: Any) -> list[tuple[str, str, str]]:
    """(task, metric, value ± stderr) rows of lm-evaluation-harness results (``{"results": {task: {...}}}``)."""
    results = data.get("results", data) if isinstance(data, dict) else {}
    rows = []
    for task, metrics in sorted(results.items()):
        if not isinstance(metrics, dict):
            continue
        for key, value in metrics.items():
            name, _, variant = key.partition(",")
            if not _is_number(value) or name.endswith("_stderr"):
                continue
            stderr = metrics.get(f"{name}_stderr," + variant if variant else f"{name}_stderr")
            shown = _fmt(value) + (f" ± {stderr:.4f}" if _is_number(stderr) else "")
            rows.append((str(task), name, shown))
    return rows


# --------------------------------------------------------------------------------------------- the card


TESTED_TRANSFORMERS = ">=5.24"  # pyproject.toml's bound, for when the installed metadata cannot be read


def transformers_requirement() -> str:
    """The transformers version range our package declares (:data:`TESTED_TRANSFORMERS` when it cannot be read)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        reqs = requires("scratch-gpt") or []
    except PackageNotFoundError:
        return TESTED_TRANSFORMERS
    for req in reqs:
        name, _, marker = req.partition(";")
        name = name.strip()
        if name.startswith("transformers") and not marker.strip():
            spec = name[len("transformers") :].strip()
            # pip prints specifiers sorted by operator; show the lower bound first
            return ",".join(sorted(spec.split(","), key=lambda s: (not s.startswith(">"), s)))
    return TESTED_TRANSFORMERS


def _human(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _fmt(value: Any) -> str:
    """A metric value written so that parsing it back gives the same number."""
    return json.dumps(value)


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _metric_table(metrics: dict[str, Any], prefix: str) -> str:
    """``eval_accuracy`` -> ``accuracy`` rows, values exactly as recorded."""
    rows = [(k[len(prefix) :] if k.startswith(prefix) else k, _fmt(v)) for k, v in metrics.items()]
    return _table(rows, ("metric", "value"))


@dataclass
class CardContext:
    """Everything the card's sections are written from."""

    config: dict[str, Any]
    export_format: str
    task: str
    num_parameters: int
    records: RunRecords
    options: CardOptions
    plot_name: str | None
    has_tokenizer: bool
    code_files: list[str]
    base_model: str | None

    @property
    def remote(self) -> bool:
        return self.export_format == "remote-code"

    @property
    def repo_id(self) -> str:
        return self.options.repo_id or "YOUR-USERNAME/MODEL-NAME"

    @property
    def context_length(self) -> Any:
        return self.config.get("max_position_embeddings", self.config.get("n_positions"))


def build_model_card(
    config: dict[str, Any],
    *,
    export_format: str,
    task: str,
    num_parameters: int,
    run_dir: Path | None,
    plot_name: str | None,
    has_tokenizer: bool,
    options: CardOptions | None = None,
    code_files: list[str] | None = None,
) -> ModelCard:
    """Build the model card (the README) of an export.

    ``config`` is the exported model config as a dict, ``task`` the pipeline tag (``text-generation`` or
    ``text-classification``), ``plot_name`` the loss plot's file name inside the export (or ``None``),
    ``code_files`` the Python files shipped as remote code.
    """
    from huggingface_hub import ModelCard

    options = options or CardOptions()
    records = read_run_records(run_dir)
    ctx = CardContext(
        config, export_format, task, num_parameters, records, options, plot_name, has_tokenizer,
        list(code_files or []), options.base_model or infer_base_model(records.settings),
    )
    sections = [_intro(ctx), _architecture(ctx), _training(ctx), _evaluation(ctx), _usage(ctx), _limitations(ctx)]
    return ModelCard(f"---\n{_card_data(ctx).to_yaml()}\n---\n\n" + "\n".join(sections))


def _card_data(ctx: CardContext) -> ModelCardData:
    from huggingface_hub import ModelCardData

    family = ctx.export_format if ctx.export_format in _PLAIN_FAMILY else "gpt2"
    tags = ["scratch-gpt", family, "pytorch", "safetensors"] + (["custom_code"] if ctx.remote else [])
    tags.append("causal-lm" if ctx.task == "text-generation" else "text-classification")
    tags += [t for t in ctx.options.tags if t not in tags]
    datasets = list(ctx.options.datasets)
    dataset = infer_dataset(ctx.records.settings)
    if not datasets and looks_like_hub_id(dataset):
        datasets = [dataset]
    return ModelCardData(
        library_name="transformers", pipeline_tag=ctx.task, license=ctx.options.license, tags=tags,
        datasets=datasets or None, base_model=ctx.base_model, language=ctx.options.language,
    )


_PLAIN_FAMILY = {"llama": ("Llama", "LlamaForCausalLM"), "qwen3": ("Qwen3", "Qwen3ForCausalLM")}


def _intro(ctx: CardContext) -> str:
    title = ctx.repo_id.split("/")[-1] if ctx.options.repo_id else "scratch-gpt model"
    if ctx.remote:
        text = (
            "A GPT-2-style decoder written from scratch (scratch-gpt) and shipped as **remote code**: the modeling "
            "files are in this repository, so it loads with plain transformers and `trust_remote_code=True` -- "
            "no extra package to install."
        )
    elif ctx.export_format == "gpt2":
        text = (
            "A GPT-2-style decoder trained with scratch-gpt and exported in the **plain GPT-2 format** "
            "(`model_type: gpt2`, Conv1D weight layout): it loads with `GPT2LMHeadModel` and every tool that "
            "reads GPT-2, with no remote code."
        )
    else:  # llama / qwen3 (docs/family.md)
        name, cls = _PLAIN_FAMILY[ctx.export_format]
        text = (
            f"A {name}-style decoder (RoPE, RMSNorm, SwiGLU, grouped-query attention) built with scratch-gpt and "
            f"exported in the **plain {name} format** (`model_type: {ctx.export_format}`): it loads with "
            f"`{cls}` and every engine that knows that class, with no remote code."
        )
    if ctx.base_model:
        text += f"\n\nFinetuned from [`{ctx.base_model}`](https://huggingface.co/{ctx.base_model})."
    return f"# {title}\n\n{text}\n"


def _architecture(ctx: CardContext) -> str:
    c = ctx.config
    hidden = c.get("hidden_size", c.get("n_embd"))
    rows = [
        ("architecture", f"`{(c.get('architectures') or ['?'])[0]}` (`model_type: {c.get('model_type')}`)"),
        ("parameters", f"{ctx.num_parameters:,} ({_human(ctx.num_parameters)})"),
        ("layers", str(c.get("num_hidden_layers", c.get("n_layer")))),
        ("hidden size", str(hidden)),
        ("attention heads", str(c.get("num_attention_heads", c.get("n_head")))),
        ("MLP size", str(c.get("intermediate_size", c.get("n_inner")) or (4 * hidden if hidden else None))),
        ("context length", str(ctx.context_length)),
        ("vocabulary", str(c.get("vocab_size"))),
        ("activation", str(c.get("hidden_act", c.get("activation_function")))),
        ("normalisation", str(c.get("norm_type", "layernorm"))),
        ("tied input/output embeddings", str(c.get("tie_word_embeddings", True))),
        ("weights dtype", str(c.get("dtype", c.get("torch_dtype", "float32")))),
    ]
    if ctx.task == "text-classification" and c.get("id2label"):
        rows.append(("labels", ", ".join(f"{k}: {v}" for k, v in c["id2label"].items())))
    return "## Architecture\n\n" + _table(rows, ("", "")) + "\n"


def _training(ctx: CardContext) -> str:
    settings = ctx.records.settings
    dataset = ctx.options.dataset_text or infer_dataset(settings) or ", ".join(ctx.options.datasets)
    lines = ["## Training data and settings", ""]
    lines.append(f"- Dataset: `{dataset}`" if dataset else "- Dataset: not recorded in the run folder.")
    if ctx.records.train:
        lines.append("- Final training metrics: " + ", ".join(f"{k} {_fmt(v)}" for k, v in ctx.records.train.items()))
    if settings:
        rows = [(str(k), f"`{v}`") for k, v in list(settings.items())[:MAX_SETTINGS_ROWS]]
        lines += ["", "Settings of the run (local paths are not published):", "", _table(rows, ("setting", "value"))]
    else:
        lines.append("- Settings: not recorded in the run folder.")
    return "\n".join(lines) + "\n"


def _evaluation(ctx: CardContext) -> str:
    records, parts = ctx.records, ["## Evaluation", ""]
    validation = with_perplexity(records.validation) if ctx.task == "text-generation" else records.validation
    if validation:
        at = f" (last evaluation, step {records.validation_step})" if records.validation_step is not None else ""
        parts += [f"Validation{at}:", "", _metric_table(validation, "eval_"), ""]
    if records.test:
        parts += ["Test (held-out split):", "", _metric_table(records.test, "test_"), ""]
    confusion = confusion_table(records.confusion)
    if confusion:
        parts += ["Test confusion matrix (counts):", "", confusion, ""]
    rows = lm_eval_rows(records.lm_eval)
    if rows:
        parts += ["### Benchmarks (lm-evaluation-harness)", "", _table(rows, ("task", "metric", "value")), ""]
    if not (validation or records.test or rows):
        parts += ["No evaluation was recorded for this run.", ""]
    if ctx.plot_name:
        parts += ["### Loss curve", "", f"![loss curve]({ctx.plot_name})", ""]
    return "\n".join(parts)


def _usage_code(ctx: CardContext) -> list[str]:
    trust = ", trust_remote_code=True" if ctx.remote else ""
    if ctx.task != "text-generation":
        return [
            "```python", "from transformers import pipeline", "",
            f'classifier = pipeline("text-classification", model="{ctx.repo_id}"{trust})',
            'print(classifier("This is a great example."))', "```",
        ]
    note = "" if ctx.has_tokenizer else "\n# This repository ships no tokenizer: pass `tokenizer=` to pipeline()."
    return [
        "```python", "from transformers import pipeline" + note, "",
        f'generator = pipeline("text-generation", model="{ctx.repo_id}"{trust})',
        'print(generator("Every effort moves you", max_new_tokens=40)[0]["generated_text"])', "```", "",
        "Or with the Auto classes:", "",
        "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        f'tokenizer = AutoTokenizer.from_pretrained("{ctx.repo_id}"{trust})',
        f'model = AutoModelForCausalLM.from_pretrained("{ctx.repo_id}"{trust})',
        'inputs = tokenizer("Every effort moves you", return_tensors="pt")',
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=40)[0]))", "```",
    ]


def _usage(ctx: CardContext) -> str:
    import transformers

    if ctx.remote:
        files = ", ".join(f"`{f}`" for f in (ctx.code_files or ["configuration_*.py", "modeling_*.py"]))
        versions = (
            f"Supported versions: `transformers{transformers_requirement()}` with PyTorch (exported and verified "
            f"with transformers {transformers.__version__}). `trust_remote_code=True` runs the Python files of this "
            f"repository ({files}); read them first, or pin a `revision=` you have reviewed."
        )
    else:
        name = _PLAIN_FAMILY.get(ctx.export_format, ("GPT-2",))[0]
        versions = (
            f"Any transformers version that supports {name} loads this repository (exported and verified with "
            f"transformers {transformers.__version__})."
        )
    return "\n".join(["## Usage", "", *_usage_code(ctx), "", versions, ""])


def _limitations(ctx: CardContext) -> str:
    lines = [
        "## Limitations",
        "",
        f"- A small research/teaching model: {_human(ctx.num_parameters)} parameters trained on a limited corpus. "
        "Expect fluent-looking but often wrong, repetitive or nonsensical text; do not rely on it for facts "
        "or decisions.",
        f"- It sees at most {ctx.context_length} tokens of context.",
        "- It reproduces the biases and errors of its training data; no safety tuning was done.",
    ]
    if not ctx.has_tokenizer:
        lines.append("- No tokenizer is included: bring the tokenizer the model was trained with.")
    return "\n".join(lines) + "\n"
