"""The model card (README.md) of an exported Hub repository.

The card is built with huggingface_hub's ``ModelCard`` / ``ModelCardData`` so the YAML header is exactly what
the Hub indexes (``library_name``, ``pipeline_tag``, ``license``, ``tags``, ``datasets``, ``base_model``). The
body is assembled from what the run directory holds, all read defensively because training runs differ:

- ``metrics.jsonl`` (one JSON object per line; the last record carrying an evaluation metric is "the last
  evaluation"), or the ``log_history`` of a Trainer's ``trainer_state.json``;
- a training-settings file (``training_args.json``, ``run_config.json``, ... JSON or YAML), if any;
- a loss plot (``loss_plot.png``, else any ``*.png``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

logger = logging.getLogger(__name__)

# Keys that mark a record of metrics.jsonl as an evaluation (val_* from our loop, eval_* from Trainer).
_EVAL_PREFIXES = ("val_", "eval_", "validation_", "test_")
# Files a training run may leave its settings in, in order of preference.
_SETTINGS_FILES = (
    "training_args.json",
    "train_args.json",
    "training_config.json",
    "train_config.json",
    "run_config.json",
    "run_args.json",
    "args.json",
    "training_args.yaml",
    "train_config.yaml",
    "config.yaml",
    "run_config.yaml",
)
# Settings that describe the machine the run happened on, not the model: left out of a public card.
_PRIVATE_SETTINGS = {"output_dir", "logging_dir", "resume", "overwrite", "overwrite_output_dir", "report_to",
                     "resume_from_checkpoint", "hub_token", "push_to_hub_token", "token"}
_DATASET_KEYS = ("dataset", "dataset_name", "datasets", "train_file", "data", "corpus")
_BASE_MODEL_KEYS = ("base_model", "model_name_or_path", "init_from", "pretrained_model", "model")


@dataclass
class CardOptions:
    """What the user tells the card beyond what the run directory holds."""

    license: str = "apache-2.0"
    datasets: list[str] = field(default_factory=list)  # Hub dataset ids for the YAML header
    tags: list[str] = field(default_factory=list)
    base_model: str | None = None  # Hub id of the model this one was finetuned from
    repo_id: str | None = None  # used in the usage snippet; a placeholder when unknown
    language: list[str] | None = None


# --------------------------------------------------------------------------------------------- run contents


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; blank, broken or non-object lines are skipped with a warning."""
    records: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s:%d is not valid JSON; skipped", path, lineno)
                continue
            if isinstance(obj, dict):
                records.append(obj)
    return records


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_eval_record(record: dict[str, Any]) -> bool:
    return any(k.startswith(_EVAL_PREFIXES) and _is_number(v) for k, v in record.items())


def last_evaluation(run_dir: Path | None) -> tuple[dict[str, Any] | None, str | None]:
    """The last evaluation record of a run and the file it came from, or ``(None, None)``.

    Reads ``metrics.jsonl`` (our pretraining loop) first, then ``trainer_state.json`` (transformers' Trainer).
    Only numeric fields are kept.
    """
    if run_dir is None:
        return None, None
    metrics_file = run_dir / "metrics.jsonl"
    if metrics_file.is_file():
        evals = [r for r in read_jsonl(metrics_file) if _is_eval_record(r)]
        if evals:
            return {k: v for k, v in evals[-1].items() if _is_number(v)}, metrics_file.name
    state_file = run_dir / "trainer_state.json"
    if state_file.is_file():
        try:
            history = json.loads(state_file.read_text(encoding="utf-8")).get("log_history", [])
        except (json.JSONDecodeError, AttributeError):
            history = []
        evals = [r for r in history if isinstance(r, dict) and _is_eval_record(r)]
        if evals:
            return {k: v for k, v in evals[-1].items() if _is_number(v)}, state_file.name
    return None, None


def find_loss_plot(run_dir: Path | None) -> Path | None:
    """``loss_plot.png`` of the run, else its first ``*.png`` (sorted), else ``None``."""
    if run_dir is None or not run_dir.is_dir():
        return None
    preferred = run_dir / "loss_plot.png"
    if preferred.is_file():
        return preferred
    pngs = sorted(p for p in run_dir.glob("*.png") if p.is_file())
    return pngs[0] if pngs else None


def read_training_settings(run_dir: Path | None) -> tuple[dict[str, Any], str | None]:
    """The run's training settings (flat scalars only) and the file they came from."""
    if run_dir is None:
        return {}, None
    for name in _SETTINGS_FILES:
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            if path.suffix == ".json":
                data = json.loads(path.read_text(encoding="utf-8"))
            else:
                import yaml

                data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except Exception as err:  # a malformed settings file must not stop an export
            logger.warning("could not read training settings from %s: %s", path, err)
            continue
        if isinstance(data, dict):
            flat = {
                k: v
                for k, v in data.items()
                if isinstance(v, (str, int, float, bool)) and k not in _PRIVATE_SETTINGS and not k.startswith("debug")
            }
            return flat, name
    return {}, None


def _looks_like_hub_id(value: Any) -> bool:
    """``owner/name`` (or ``name``) that is not an existing local path."""
    if not isinstance(value, str) or not value or Path(value).exists():
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return value.count("/") == 1


def infer_base_model(settings: dict[str, Any]) -> str | None:
    """A Hub id the run was initialised from, if its settings name one."""
    for key in _BASE_MODEL_KEYS:
        if _looks_like_hub_id(settings.get(key)):
            return settings[key]
    return None


def infer_dataset(settings: dict[str, Any]) -> str | None:
    """The dataset named by the run's settings (a Hub id, a local path or ``python-stdlib``)."""
    for key in _DATASET_KEYS:
        value = settings.get(key)
        if isinstance(value, str) and value:
            return value
    return None


# --------------------------------------------------------------------------------------------- the card


def transformers_requirement() -> str:
    """The transformers version range our package declares (``>=5.0,<6`` when it cannot be read)."""
    try:
        from importlib.metadata import PackageNotFoundError, requires

        for req in requires("scratch-gpt") or []:
            name, _, rest = req.partition(";")
            name = name.strip()
            if name.startswith("transformers") and not rest.strip():
                spec = name[len("transformers") :].strip()
                # pip prints specifiers sorted by operator; show the lower bound first
                parts = sorted(spec.split(","), key=lambda s: (not s.startswith(">"), s))
                return ",".join(parts)
    except (ImportError, PackageNotFoundError):
        pass
    return ">=5.0,<6"


def _human(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _fmt(value: Any) -> str:
    """A metric value written so that parsing it back gives the same number."""
    return json.dumps(value)


def _table(rows: list[tuple[str, str]], header: tuple[str, str]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


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
    """Build the README.md model card of an export.

    ``config`` is the exported config.json as a dict, ``task`` the pipeline tag (``text-generation`` or
    ``text-classification``), ``plot_name`` the loss plot's file name inside the export (or ``None``),
    ``code_files`` the Python files shipped as remote code.
    """
    options = options or CardOptions()
    metrics, metrics_source = last_evaluation(run_dir)
    settings, settings_source = read_training_settings(run_dir)
    base_model = options.base_model or infer_base_model(settings)
    dataset_desc = infer_dataset(settings)
    datasets = list(options.datasets)
    if not datasets and dataset_desc and _looks_like_hub_id(dataset_desc):
        datasets = [dataset_desc]

    remote = export_format == "remote-code"
    tags = ["scratch-gpt", "gpt2", "pytorch", "safetensors"]
    if remote:
        tags.append("custom_code")
    tags.append("causal-lm" if task == "text-generation" else "text-classification")
    tags += [t for t in options.tags if t not in tags]

    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=task,
        license=options.license,
        tags=tags,
        datasets=datasets or None,
        base_model=base_model,
        language=options.language,
    )

    repo_id = options.repo_id or "YOUR-USERNAME/MODEL-NAME"
    tf_range = transformers_requirement()
    import transformers

    arch = (config.get("architectures") or ["?"])[0]
    context = config.get("max_position_embeddings", config.get("n_positions"))
    hidden = config.get("hidden_size", config.get("n_embd"))
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    heads = config.get("num_attention_heads", config.get("n_head"))
    inner = config.get("intermediate_size", config.get("n_inner")) or (4 * hidden if hidden else None)
    arch_rows = [
        ("architecture", f"`{arch}` (`model_type: {config.get('model_type')}`)"),
        ("parameters", f"{num_parameters:,} ({_human(num_parameters)})"),
        ("layers", str(layers)),
        ("hidden size", str(hidden)),
        ("attention heads", str(heads)),
        ("MLP size", str(inner)),
        ("context length", str(context)),
        ("vocabulary", str(config.get("vocab_size"))),
        ("activation", str(config.get("hidden_act", config.get("activation_function")))),
        ("normalisation", str(config.get("norm_type", "layernorm"))),
        ("tied input/output embeddings", str(config.get("tie_word_embeddings", True))),
        ("weights dtype", str(config.get("dtype", config.get("torch_dtype", "float32")))),
    ]
    if task == "text-classification" and config.get("id2label"):
        labels = ", ".join(f"{k}: {v}" for k, v in config["id2label"].items())
        arch_rows.append(("labels", labels))

    title = repo_id.split("/")[-1] if options.repo_id else "scratch-gpt model"
    parts: list[str] = [f"# {title}", ""]
    if remote:
        parts.append(
            "A GPT-2-style decoder written from scratch (scratch-gpt) and shipped as "
            "**remote code**: the modeling files are in this repository, so it loads with plain transformers "
            "and `trust_remote_code=True` -- no extra package to install."
        )
    else:
        parts.append(
            "A GPT-2-style decoder trained with scratch-gpt and exported in the **plain GPT-2 format** "
            "(`model_type: gpt2`, Conv1D weight layout): it loads with `GPT2LMHeadModel` and every tool that "
            "reads GPT-2, with no remote code."
        )
    if base_model:
        parts.append(f"\nFinetuned from [`{base_model}`](https://huggingface.co/{base_model}).")

    parts += ["", "## Architecture", "", _table(arch_rows, ("", "")), ""]

    # Training data and settings
    parts += ["## Training data and settings", ""]
    if dataset_desc or datasets:
        shown = dataset_desc or ", ".join(datasets)
        parts.append(f"- Dataset: `{shown}`")
    else:
        parts.append("- Dataset: not recorded in the run directory.")
    if settings:
        parts += ["", f"Settings (from `{settings_source}`):", ""]
        rows = [(str(k), f"`{v}`") for k, v in list(settings.items())[:40]]
        parts.append(_table(rows, ("setting", "value")))
    else:
        parts.append("- Settings: not recorded in the run directory.")
    parts.append("")

    # Metrics
    parts += ["## Evaluation", ""]
    if metrics:
        parts += [
            f"Last evaluation of the run (from `{metrics_source}`):",
            "",
            _table([(k, _fmt(v)) for k, v in metrics.items()], ("metric", "value")),
        ]
    else:
        parts.append("No evaluation metrics were recorded in the run directory.")
    parts.append("")
    if plot_name:
        parts += ["### Loss curve", "", f"![loss curve]({plot_name})", ""]

    # Usage
    trust = ", trust_remote_code=True" if remote else ""
    parts += ["## Usage", ""]
    if task == "text-generation":
        prompt_note = "" if has_tokenizer else (
            "\n# This repository ships no tokenizer: pass `tokenizer=` to pipeline()."
        )
        parts += [
            "```python",
            "from transformers import pipeline" + prompt_note,
            "",
            f'generator = pipeline("text-generation", model="{repo_id}"{trust})',
            'print(generator("Every effort moves you", max_new_tokens=40)[0]["generated_text"])',
            "```",
            "",
            "Or with the Auto classes:",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{trust})',
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}"{trust})',
            'inputs = tokenizer("Every effort moves you", return_tensors="pt")',
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=40)[0]))",
            "```",
        ]
    else:
        parts += [
            "```python",
            "from transformers import pipeline",
            "",
            f'classifier = pipeline("text-classification", model="{repo_id}"{trust})',
            'print(classifier("This is a great example."))',
            "```",
        ]
    parts.append("")
    if remote:
        files = ", ".join(f"`{f}`" for f in (code_files or ["configuration_*.py", "modeling_*.py"]))
        parts.append(
            f"Supported versions: `transformers{tf_range}` with PyTorch (exported and verified with "
            f"transformers {transformers.__version__}). `trust_remote_code=True` runs the Python files of this "
            f"repository ({files}); read them first, or pin a `revision=` you have reviewed."
        )
    else:
        parts.append(
            f"Any transformers version that supports GPT-2 loads this repository (exported and verified with "
            f"transformers {transformers.__version__})."
        )
    parts.append("")

    parts += [
        "## Limitations",
        "",
        f"- A small research/teaching model: {_human(num_parameters)} parameters trained on a limited corpus. "
        "Expect fluent-looking but often wrong, repetitive or nonsensical text; do not rely on it for facts "
        "or decisions.",
        f"- It sees at most {context} tokens of context.",
        "- It reproduces the biases and errors of its training data; no safety tuning was done.",
    ]
    if not has_tokenizer:
        parts.append("- No tokenizer is included: bring the tokenizer the model was trained with.")
    parts.append("")

    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(parts)
    return ModelCard(content)
