"""Export a scratch-gpt model folder to a complete Hugging Face Hub repository folder.

Two formats:

- ``remote-code`` (default): the weights as saved by ``save_pretrained`` (safetensors, sharded above
  ``max_shard_size``), the ``scratch_gpt`` modeling files copied beside them (the configuration and modeling
  modules plus every sibling they import with ``from .x import y``, the only relative imports transformers
  copies), and ``config.json`` with an ``auto_map`` so that ``AutoConfig`` / ``AutoModel`` /
  ``AutoModelForCausalLM`` / ``AutoModelForSequenceClassification`` load it with ``trust_remote_code=True``.
- ``gpt2``: transformers' own ``GPT2LMHeadModel`` (``model_type: gpt2``, Conv1D weights), no remote code.

Both get the tokenizer files, ``generation_config.json``, the run's loss plot and a README.md model card.
The folder is written beside OUT_DIR under a temporary name, verified in a fresh process that cannot import
``scratch_gpt`` (see :mod:`hub_export.verify`) and only then renamed to OUT_DIR, so OUT_DIR is either absent,
the previous content, or the complete verified export.
"""

from __future__ import annotations

import ast
import gc
import inspect
import json
import logging
import os
import re
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .card import CardOptions, build_model_card, find_loss_plot, last_evaluation

logger = logging.getLogger(__name__)

FORMATS = ("remote-code", "gpt2")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
# Auto classes listed in the remote-code auto_map, with the scratch_gpt class each resolves to.
AUTO_CLASSES = ("AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification")
# Top-level packages shipped remote code may import (besides the standard library).
ALLOWED_REMOTE_IMPORTS = {"torch", "transformers"}
_SHARD_SIZE_RE = re.compile(r"^\s*\d+(\.\d+)?\s*([KMGT]i?B)?\s*$", re.IGNORECASE)


@dataclass
class ExportResult:
    """What an export wrote and how its self-check went."""

    out_dir: Path
    export_format: str
    task: str
    files: list[str]
    verification: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    num_parameters: int = 0


# --------------------------------------------------------------------------------------------- inspection


def read_model_config(model_dir: Path) -> dict[str, Any]:
    """The config.json of a scratch-gpt model folder, with clear errors for anything else."""
    if not model_dir.exists():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    if not model_dir.is_dir():
        raise ValueError(f"{model_dir} is a file; pass the folder a scratch-gpt model was saved into")
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{model_dir} has no config.json, so it is not a saved model; pass the folder written by "
            "`scratch-gpt train` / `finetune` (the run directory's final model) or by save_pretrained"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON ({err})") from err
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "scratch_gpt":
        hint = (
            " -- convert a GPT-2 checkpoint with `scratch-gpt convert-gpt2` first"
            if model_type == "gpt2"
            else ""
        )
        raise ValueError(
            f"{model_dir} is not a scratch-gpt model: config.json has model_type={model_type!r}, "
            f"expected 'scratch_gpt'{hint}"
        )
    if not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(
            f"{model_dir} has a scratch-gpt config.json but no weights ({', '.join(WEIGHT_FILES[:2])}); "
            "was the model saved completely?"
        )
    return config


def task_of(config: dict[str, Any]) -> str:
    """The pipeline task of a saved model, from its ``architectures``."""
    archs = config.get("architectures") or ["ScratchGPTForCausalLM"]
    arch = archs[0]
    if arch.endswith("ForSequenceClassification"):
        return "text-classification"
    if arch.endswith("ForCausalLM"):
        return "text-generation"
    raise ValueError(
        f"cannot export architecture {arch!r}: export a model with a head "
        "(ScratchGPTForCausalLM or ScratchGPTForSequenceClassification)"
    )


def parse_shard_size(value: str | int) -> str | int:
    """Validate a ``--max-shard-size`` such as ``5GB`` / ``500MB`` / bytes as an int."""
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        size = int(value)
        if size <= 0:
            raise ValueError(f"--max-shard-size must be positive, got {value}")
        return size
    if not isinstance(value, str) or not _SHARD_SIZE_RE.match(value):
        raise ValueError(f"--max-shard-size {value!r} is not a size; use e.g. 5GB, 500MB or a number of bytes")
    return value.strip().upper().replace("IB", "iB")


def _has_tokenizer(model_dir: Path) -> bool:
    return any((model_dir / name).is_file() for name in TOKENIZER_FILES)


def _default_run_dir(model_dir: Path) -> Path:
    """Where the run's metrics and plot are: the model folder, else its parent if that has them."""
    if (model_dir / "metrics.jsonl").is_file() or (model_dir / "trainer_state.json").is_file():
        return model_dir
    parent = model_dir.parent
    if (parent / "metrics.jsonl").is_file() or (parent / "trainer_state.json").is_file():
        return parent
    return model_dir


# --------------------------------------------------------------------------------------------- remote code


def _relative_imports(path: Path) -> list[str]:
    """Sibling modules imported as ``from .x import y`` / ``import .x`` (what transformers copies)."""
    text = path.read_text(encoding="utf-8")
    found = re.findall(r"^\s*from\s+\.(\S+)\s+import", text, flags=re.MULTILINE)
    found += re.findall(r"^\s*import\s+\.(\S+)\s*$", text, flags=re.MULTILINE)
    return sorted(set(found))


def _check_remote_file(path: Path) -> None:
    """Refuse shipped code that would not load on a machine without our package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    stdlib = set(getattr(sys, "stdlib_module_names", ()))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0 and not node.module:
            raise ValueError(
                f"{path.name} uses `from . import ...`, which transformers does not ship as remote code; "
                "import siblings as `from .module import name`"
            )
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module.split(".")[0]]
        for name in names:
            if name not in ALLOWED_REMOTE_IMPORTS and name not in stdlib and name != "__future__":
                raise ValueError(
                    f"{path.name} imports {name!r}; remote code may import only the standard library, torch, "
                    "transformers and its siblings"
                )


def remote_code_files(*classes: type) -> list[Path]:
    """The source files defining ``classes`` plus, recursively, every sibling they import relatively."""
    todo = [Path(inspect.getfile(c)) for c in classes]
    seen: list[Path] = []
    while todo:
        path = todo.pop(0)
        if path in seen:
            continue
        if not path.is_file():
            raise FileNotFoundError(f"remote code file {path} is missing")
        seen.append(path)
        for module in _relative_imports(path):
            if "." in module:
                raise ValueError(f"{path.name} imports .{module}; remote code must be a flat folder of modules")
            todo.append(path.parent / f"{module}.py")
    return seen


def _auto_classes(config_class: type) -> dict[str, type]:
    """The scratch_gpt class registered for each Auto class (read from transformers' registry)."""
    import scratch_gpt
    import transformers

    found: dict[str, type] = {"AutoConfig": config_class}
    for auto_name in AUTO_CLASSES[1:]:
        auto = getattr(transformers, auto_name)
        cls = None
        try:
            cls = auto._model_mapping[config_class]
        except (KeyError, AttributeError):
            pass
        if cls is None:  # registry layout changed: fall back to the package's public names
            suffix = {"AutoModel": "Model"}.get(auto_name, auto_name.replace("AutoModel", ""))
            cls = getattr(scratch_gpt, f"ScratchGPT{suffix}", None)
        if cls is None:
            raise ValueError(f"scratch_gpt registers no class for {auto_name}")
        found[auto_name] = cls
    return found


def _write_remote_code(folder: Path, config_class: type) -> list[str]:
    """Copy the modeling files into ``folder`` and add ``auto_map`` to its config.json."""
    classes = _auto_classes(config_class)
    files = remote_code_files(*classes.values())
    package_dir = files[0].parent
    for path in files:
        if path.parent != package_dir:
            raise ValueError(f"remote code must come from one folder; {path} is outside {package_dir}")
        _check_remote_file(path)
        shutil.copy2(path, folder / path.name)
    auto_map = {name: f"{Path(inspect.getfile(cls)).stem}.{cls.__name__}" for name, cls in classes.items()}
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["auto_map"] = auto_map
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("remote code: %s", ", ".join(p.name for p in files))
    return [p.name for p in files]


# --------------------------------------------------------------------------------------------- export


def _save_gpt2(model: Any, folder: Path, shard_size: str | int) -> None:
    """Write ``model`` as a plain GPT-2 checkpoint (config.json, safetensors, generation_config.json).

    The weights are mapped tensor by tensor (``scratch_state_dict_to_gpt2``: Conv1D layout) and written with
    huggingface_hub's ``save_torch_state_dict`` (sharding and index as ``save_pretrained`` does) instead of
    building a ``GPT2LMHeadModel`` in memory: that keeps the peak near one copy of the weights plus the
    transposed matrices, not three. The self-check then loads the folder with transformers' GPT-2.
    """
    from huggingface_hub import save_torch_state_dict

    from scratch_gpt.convert import gpt2_config_from_scratch, scratch_state_dict_to_gpt2

    config = gpt2_config_from_scratch(model.config)
    config.architectures = ["GPT2LMHeadModel"]
    config.dtype = model.dtype
    state_dict = scratch_state_dict_to_gpt2(model.state_dict(), model.config)
    if config.tie_word_embeddings:  # stored once, as transformers does
        state_dict.pop("lm_head.weight", None)
    save_torch_state_dict(state_dict, folder, max_shard_size=shard_size, metadata={"format": "pt"})
    del state_dict
    config.save_pretrained(folder)
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.save_pretrained(folder)


def _check_out_dir(model_dir: Path, out_dir: Path, overwrite: bool) -> None:
    src, dst = model_dir.resolve(), out_dir.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise ValueError(f"OUT_DIR {out_dir} overlaps the model folder {model_dir}; choose a separate folder")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass --overwrite to replace it, or choose another OUT_DIR")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is a file; choose another OUT_DIR")


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished folder to OUT_DIR; an old OUT_DIR is set aside first and deleted last."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if old is not None:
            os.replace(old, out_dir)  # put the previous export back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_model(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    export_format: str = "remote-code",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    require_tokenizer: bool = False,
    run_dir: str | os.PathLike | None = None,
    card_options: CardOptions | None = None,
) -> ExportResult:
    """Export a scratch-gpt model folder to a verified Hub repository folder at ``out_dir``.

    Raises ``FileNotFoundError`` / ``ValueError`` / ``FileExistsError`` for bad input (naming the fix) and
    :class:`hub_export.verify.ExportVerificationError` when the export does not reproduce the source; in every
    failure case ``out_dir`` is left untouched.
    """
    import torch  # noqa: F401  (heavy imports stay inside the function)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    import scratch_gpt  # registers the Auto classes

    from .verify import compute_reference, verify_export

    if not hasattr(scratch_gpt, "ScratchGPTConfig"):  # e.g. a stale editable install seen as a namespace package
        raise ValueError(
            f"the scratch_gpt package found at {list(getattr(scratch_gpt, '__path__', []))} is empty or broken; "
            "reinstall the project (pip install -e .)"
        )

    if export_format not in FORMATS:
        raise ValueError(f"unknown export format {export_format!r}; choose one of {', '.join(FORMATS)}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = read_model_config(model_dir)
    task = task_of(config)
    shard_size = parse_shard_size(max_shard_size)
    _check_out_dir(model_dir, out_dir, overwrite)
    warnings: list[str] = []

    if export_format == "gpt2" and task != "text-generation":
        raise ValueError(
            "--format gpt2 exports causal language models only (GPT2LMHeadModel); export a sequence "
            "classifier with --format remote-code"
        )

    if export_format == "gpt2":  # refuse before loading anything
        from scratch_gpt.convert import gpt2_config_from_scratch

        gpt2_config_from_scratch(scratch_gpt.ScratchGPTConfig.from_pretrained(model_dir))

    tokenizer = None
    if _has_tokenizer(model_dir):
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except Exception as err:
            raise ValueError(f"the tokenizer files in {model_dir} do not load: {err}") from err
    if tokenizer is None:
        msg = (
            f"{model_dir} has no tokenizer: the export will not include one, so pipeline() needs a tokenizer "
            "passed in (save the tokenizer into the model folder, or use --require-tokenizer to refuse)"
        )
        if require_tokenizer:
            raise ValueError(f"{model_dir} has no tokenizer files (tokenizer.json / tokenizer_config.json) and "
                             "--require-tokenizer is set; save the tokenizer into the model folder first")
        logger.warning(msg)
        warnings.append(msg)

    auto = AutoModelForSequenceClassification if task == "text-classification" else AutoModelForCausalLM
    logger.info("loading %s from %s", config.get("architectures", ["?"])[0], model_dir)
    model = auto.from_pretrained(model_dir)
    model.eval()
    num_parameters = model.num_parameters()
    # the source's outputs on the self-check inputs, taken now so the model can be freed before the check
    reference = compute_reference(model, tokenizer, task)

    run_path = Path(run_dir) if run_dir is not None else _default_run_dir(model_dir)
    if run_dir is not None and not run_path.is_dir():
        raise FileNotFoundError(f"--run-dir {run_path} does not exist")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        code_files: list[str] = []
        if export_format == "remote-code":
            model.save_pretrained(tmp, max_shard_size=shard_size)
            code_files = _write_remote_code(tmp, type(model.config))
        else:
            _save_gpt2(model, tmp, shard_size)
        model = None  # the self-check compares with `reference`; free the weights before it runs
        gc.collect()
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        plot = find_loss_plot(run_path)
        plot_name = None
        if plot is not None:
            plot_name = plot.name
            shutil.copy2(plot, tmp / plot_name)
        exported_config = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
        card = build_model_card(
            exported_config,
            export_format=export_format,
            task=task,
            num_parameters=num_parameters,
            run_dir=run_path,
            plot_name=plot_name,
            has_tokenizer=tokenizer is not None,
            options=card_options,
            code_files=code_files,
        )
        card.save(tmp / "README.md")
        if last_evaluation(run_path)[0] is None:
            logger.info("no evaluation metrics found in %s; the card says so", run_path)

        verification = verify_export(tmp, reference, export_format=export_format, atol=1e-5)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported %s (%s) to %s", task, export_format, out_dir)
    return ExportResult(
        out_dir=out_dir,
        export_format=export_format,
        task=task,
        files=files,
        verification=verification.to_dict(),
        warnings=warnings,
        num_parameters=num_parameters,
    )
