"""Export a scratch-gpt model folder to a complete, self-verified Hugging Face Hub repository folder.

:func:`export_model` is a short orchestrator over named steps:

1. :func:`plan_export` validates everything before anything is loaded or written: the format, the model folder
   (config, task, intact weights), the run folder, the tokenizer, and the output (it overlaps no input, and
   exists only with ``--overwrite``). The result is an :class:`ExportJob`.
2. :func:`load_source` loads the model and tokenizer and runs the self-check inputs through them (the
   reference the export must reproduce).
3. Inside :func:`scratch_gpt.safe_output.staged_output` (a staging folder beside OUT_DIR): the format's writer
   writes the weights and config, then the tokenizer, the run records (numbers only), the loss plot and the
   model card; the format's verifier loads the staged folder in a fresh process that cannot import
   ``scratch_gpt`` and compares it with the reference. Only then is the folder swapped in, so OUT_DIR is
   always absent, the old complete export, or the new verified one -- even after a SIGKILL.

Formats are entries of :data:`FORMATS` (an :class:`ExportFormat`: tasks it accepts, an early check, a writer
and a verifier). ``remote-code`` ships the ``scratch_gpt`` modeling files with an ``auto_map``; ``gpt2``
writes transformers' own ``GPT2LMHeadModel`` (Conv1D layout, no remote code). A new format is one more entry.

The run folder is read only through :mod:`scratch_gpt.run_folder` (the contract shared with ``training``).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratch_gpt import run_folder
from scratch_gpt.safe_output import check_output, crash_point, staged_output

from .card import CardOptions, build_model_card
from .remote_code import _check_remote_file, remote_code_files, write_remote_code  # noqa: F401  (public API)

logger = logging.getLogger(__name__)

TASKS = ("text-generation", "text-classification")
SAFETENSORS_INDEX = run_folder.WEIGHTS_FILES[1]
_SHARD_SIZE_RE = re.compile(r"^\s*\d+(\.\d+)?\s*([KMGT]i?B)?\s*$", re.IGNORECASE)
# What a failed write means for the user, by errno.
_WRITE_FIXES = {
    errno.ENOSPC: "no space left on the device: free some space or choose an OUT_DIR on another disk",
    errno.EDQUOT: "disk quota exceeded: free some space or choose an OUT_DIR on another disk",
    errno.EACCES: "permission denied: choose an OUT_DIR in a folder you can write to",
    errno.EPERM: "operation not permitted: choose an OUT_DIR in a folder you can write to",
    errno.EROFS: "read-only file system: choose an OUT_DIR on a writable disk",
}


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


@dataclass(frozen=True)
class ExportFormat:
    """One way to write a model: the tasks it takes, an early check, a writer and a verifier.

    ``check(job)`` refuses what the format cannot express before anything is loaded; ``write(model, stage, job)``
    writes the weights and config into the staging folder and returns the Python files it shipped (remote code);
    ``verify(stage, reference, job)`` proves the staged folder reproduces the source (a ``VerificationResult``).
    """

    name: str
    write: Callable[[Any, Path, ExportJob], list[str]]
    verify: Callable[[Path, Any, ExportJob], Any]
    tasks: tuple[str, ...] = TASKS
    check: Callable[[ExportJob], None] | None = None
    help: str = ""


@dataclass
class ExportJob:
    """A validated export: everything :func:`export_model` needs, decided before anything is written."""

    model_dir: Path
    out_dir: Path
    fmt: ExportFormat
    task: str
    config: dict[str, Any]
    shard_size: str | int
    run_dir: Path
    overwrite: bool
    card_options: CardOptions
    has_tokenizer: bool
    warnings: list[str] = field(default_factory=list)


@dataclass
class Source:
    """The loaded source model and the outputs the export must reproduce."""

    model: Any
    tokenizer: Any
    reference: Any
    num_parameters: int


# --------------------------------------------------------------------------------------------- orchestrator


def export_model(model_dir: str | os.PathLike, out_dir: str | os.PathLike, **options: Any) -> ExportResult:
    """Export a scratch-gpt model folder to a verified Hub repository folder at ``out_dir``.

    ``options`` are :func:`plan_export`'s keywords: ``export_format="remote-code"``, ``max_shard_size="5GB"``,
    ``overwrite=False``, ``require_tokenizer=False``, ``run_dir=None``, ``card_options=None``.
    Raises ``FileNotFoundError`` / ``ValueError`` / ``FileExistsError`` / ``OSError`` for bad input or a failed
    write (naming the file and the fix) and :class:`hub_export.verify.ExportVerificationError` when the export
    does not reproduce the source; in every failure case ``out_dir`` is left as it was.
    """
    job = plan_export(model_dir, out_dir, **options)
    source = load_source(job)
    with _translating_write_errors(job.out_dir), staged_output(
        job.out_dir, overwrite=job.overwrite, inputs=[job.model_dir, job.run_dir]
    ) as stage:
        code_files = write_weights(job, source, stage)
        crash_point("export-weights-written")
        write_tokenizer(source, stage)
        copy_run_records(job.run_dir, stage)
        write_card(job, stage, num_parameters=source.num_parameters, code_files=code_files)
        verification = job.fmt.verify(stage, source.reference, job)
        files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
    logger.info("exported %s (%s) to %s", job.task, job.fmt.name, job.out_dir)
    return ExportResult(
        out_dir=job.out_dir, export_format=job.fmt.name, task=job.task, files=files,
        verification=verification.to_dict(), warnings=job.warnings, num_parameters=source.num_parameters,
    )


# --------------------------------------------------------------------------------------------- 1. plan


def plan_export(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    export_format: str = "remote-code",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    require_tokenizer: bool = False,
    run_dir: str | os.PathLike | None = None,
    card_options: CardOptions | None = None,
) -> ExportJob:
    """Validate every argument and input and decide the export; nothing is loaded or written.

    ``export_format`` names an entry of :data:`FORMATS`; ``max_shard_size`` like ``5GB``; ``overwrite`` lets an
    existing OUT_DIR be replaced (once the new export is verified); ``require_tokenizer`` refuses a model without
    one; ``run_dir`` holds the run records (default: the model folder, or its parent when only it has them);
    ``card_options`` are what the card cannot read from the run.
    """
    _check_package()
    fmt = get_format(export_format)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = read_model_config(model_dir)
    task = task_of(config)
    if task not in fmt.tasks:
        raise ValueError(
            f"--format {fmt.name} exports {' and '.join(fmt.tasks)} models only and {model_dir} is a {task} "
            "model; export it with --format remote-code"
        )
    job = ExportJob(
        model_dir=model_dir, out_dir=out_dir, fmt=fmt, task=task, config=config,
        shard_size=parse_shard_size(max_shard_size), run_dir=resolve_run_dir(model_dir, run_dir),
        overwrite=overwrite, card_options=card_options or CardOptions(),
        has_tokenizer=check_tokenizer(model_dir, require_tokenizer),
    )
    check_out_dir(job)
    check_weights(model_dir)
    check_run_records(job.run_dir)
    if fmt.check is not None:
        fmt.check(job)
    if not job.has_tokenizer:
        job.warnings.append(_no_tokenizer_warning(model_dir))
    return job


def get_format(name: str) -> ExportFormat:
    """The registered :class:`ExportFormat` called ``name``."""
    if name not in FORMATS:
        raise ValueError(f"unknown export format {name!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


def _check_package() -> None:
    import scratch_gpt  # registers the Auto classes

    if not hasattr(scratch_gpt, "ScratchGPTConfig"):  # e.g. a stale editable install seen as a namespace package
        raise ValueError(
            f"the scratch_gpt package found at {list(getattr(scratch_gpt, '__path__', []))} is empty or broken; "
            "reinstall the project (pip install -e .)"
        )


def read_model_config(model_dir: Path) -> dict[str, Any]:
    """The config of a scratch-gpt model folder as a dict, with clear errors for anything else."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    if not model_dir.is_dir():
        raise ValueError(f"{model_dir} is a file; pass the folder a scratch-gpt model was saved into")
    if run_folder.has_adapter(model_dir) and not run_folder.has_weights(model_dir):
        raise ValueError(
            f"{model_dir} holds a LoRA adapter, not a full model; finetune with --lora --merge to get a model "
            "that can be exported on its own"
        )
    if not run_folder.has_config(model_dir):
        raise FileNotFoundError(
            f"{model_dir} has no {run_folder.CONFIG_FILE}, so it is not a saved model; pass the folder written by "
            "`scratch-gpt train` / `finetune` (the run folder) or by save_pretrained"
        )
    with _translating_read_errors():
        config = run_folder.read_json(model_dir, run_folder.CONFIG_FILE)
    _check_model_type(model_dir, config)
    if not run_folder.has_weights(model_dir):
        raise FileNotFoundError(
            f"{model_dir} has a scratch-gpt {run_folder.CONFIG_FILE} but no weights "
            f"({', '.join(run_folder.WEIGHTS_FILES[:2])}); was the model saved completely?"
        )
    return config


def _check_model_type(model_dir: Path, config: Any) -> None:
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "scratch_gpt":
        hint = " -- convert a GPT-2 checkpoint with `scratch-gpt convert-gpt2` first" if model_type == "gpt2" else ""
        raise ValueError(
            f"{model_dir} is not a scratch-gpt model: {run_folder.CONFIG_FILE} has model_type={model_type!r}, "
            f"expected 'scratch_gpt'{hint}"
        )


def task_of(config: dict[str, Any]) -> str:
    """The pipeline task of a saved model, from its ``architectures``."""
    arch = (config.get("architectures") or ["ScratchGPTForCausalLM"])[0]
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
        if int(value) <= 0:
            raise ValueError(f"--max-shard-size must be positive, got {value}")
        return int(value)
    if not isinstance(value, str) or not _SHARD_SIZE_RE.match(value):
        raise ValueError(f"--max-shard-size {value!r} is not a size; use e.g. 5GB, 500MB or a number of bytes")
    return value.strip().upper().replace("IB", "iB")


def resolve_run_dir(model_dir: Path, run_dir: str | os.PathLike | None) -> Path:
    """The folder holding the run records: ``--run-dir``, else the model folder, else its parent if it has them."""
    if run_dir is not None:
        if not Path(run_dir).is_dir():
            raise FileNotFoundError(f"--run-dir {run_dir} does not exist; pass the folder the run was written to")
        return Path(run_dir)
    if run_folder.record_files(model_dir) or not run_folder.record_files(model_dir.parent):
        return model_dir
    return model_dir.parent


def check_tokenizer(model_dir: Path, require: bool) -> bool:
    """Whether ``model_dir`` has tokenizer files; with ``require`` their absence is an error."""
    if run_folder.has_tokenizer(model_dir):
        return True
    if require:
        raise ValueError(
            f"{model_dir} has no tokenizer files ({', '.join(run_folder.TOKENIZER_FILES[:2])}) and "
            "--require-tokenizer is set; save the tokenizer into the model folder first"
        )
    logger.warning(_no_tokenizer_warning(model_dir))
    return False


def _no_tokenizer_warning(model_dir: Path) -> str:
    return (
        f"{model_dir} has no tokenizer: the export will not include one, so pipeline() needs a tokenizer "
        "passed in (save the tokenizer into the model folder, or use --require-tokenizer to refuse)"
    )


def check_out_dir(job: ExportJob) -> None:
    """OUT_DIR overlaps no input, is a folder if it exists, and exists only with ``--overwrite``."""
    if job.out_dir.exists() and not job.out_dir.is_dir():
        raise FileExistsError(f"{job.out_dir} exists and is a file; choose another OUT_DIR")
    check_output(job.out_dir, overwrite=job.overwrite, inputs=[job.model_dir, job.run_dir])


def check_weights(model_dir: Path) -> None:
    """Every safetensors file of the model is complete (header readable, size as the header says)."""
    with _translating_read_errors():
        index = run_folder.read_json(model_dir, SAFETENSORS_INDEX)
        if index is not None and not isinstance(index.get("weight_map") if isinstance(index, dict) else None, dict):
            raise ValueError(f"{model_dir / SAFETENSORS_INDEX} has no weight_map; save the model again")
        names = sorted(set(index["weight_map"].values())) if index else [run_folder.WEIGHTS_FILES[0]]
        for name in names:
            path = model_dir / name
            if path.is_file():
                check_safetensors_file(path)
            elif index:
                raise FileNotFoundError(
                    f"{model_dir / SAFETENSORS_INDEX} lists {name}, which is missing; save the model again"
                )


def check_safetensors_file(path: Path) -> None:
    """Raise ``ValueError`` naming ``path`` when it is not a complete safetensors file."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        header = fh.read(length) if 2 <= length <= size - 8 else b""
    try:
        tensors = json.loads(header) if header else None
        end = max((v["data_offsets"][1] for k, v in tensors.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        tensors = None
    if tensors is None or size != 8 + length + end:
        detail = "unreadable header" if tensors is None else f"{size} bytes, the header describes {8 + length + end}"
        raise ValueError(
            f"{path} is truncated or corrupt ({detail}); save the model again (rerun the stage that wrote it, or "
            "restore it from a checkpoint) and export again"
        )


def check_run_records(run_dir: Path) -> None:
    """Every record of the run parses (a corrupt one raises ``ValueError`` naming it before anything is loaded)."""
    with _translating_read_errors():
        run_folder.load_training_args(run_dir)
        run_folder.load_trainer_state(run_dir)
        run_folder.load_results(run_dir)


@contextlib.contextmanager
def _translating_read_errors() -> Iterator[None]:
    """Turn a permission error while reading the model into a message that names the file and the fix."""
    try:
        yield
    except PermissionError as err:
        raise PermissionError(
            f"cannot read {err.filename}: permission denied; make it readable (chmod u+r) or export a copy"
        ) from err


@contextlib.contextmanager
def _translating_write_errors(out_dir: Path) -> Iterator[None]:
    """Turn a failed write (disk full, permission, read-only) into one message naming OUT_DIR and the fix."""
    try:
        yield
    except OSError as err:
        fix = _WRITE_FIXES.get(err.errno) if err.errno is not None else None
        if fix is None or err.filename is None:
            raise
        message = f"cannot write the export {out_dir} ({err.filename}): {fix}; {out_dir} was left as it was"
        raise type(err)(message) from err


# --------------------------------------------------------------------------------------------- 2. load


def load_source(job: ExportJob) -> Source:
    """Load the source model and tokenizer and compute the outputs the export must reproduce."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from .verify import compute_reference

    tokenizer = _load_tokenizer(job.model_dir) if job.has_tokenizer else None
    auto = AutoModelForSequenceClassification if job.task == "text-classification" else AutoModelForCausalLM
    logger.info("loading %s from %s", job.config.get("architectures", ["?"])[0], job.model_dir)
    with _translating_read_errors():
        model = auto.from_pretrained(job.model_dir).eval()
    # the source's outputs on the self-check inputs, taken now so the model can be freed before the check
    reference = compute_reference(model, tokenizer, job.task)
    return Source(model, tokenizer, reference, model.num_parameters())


def _load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        with _translating_read_errors():
            return AutoTokenizer.from_pretrained(model_dir)
    except PermissionError:
        raise
    except Exception as err:
        raise ValueError(
            f"the tokenizer files in {model_dir} do not load ({err}); save the tokenizer again, or remove "
            "them to export without one"
        ) from err


# --------------------------------------------------------------------------------------------- 3. write


def write_weights(job: ExportJob, source: Source, stage: Path) -> list[str]:
    """The format's writer; the source weights are freed right after (the self-check compares the reference)."""
    code_files = job.fmt.write(source.model, stage, job)
    source.model = None
    gc.collect()
    return code_files


def write_tokenizer(source: Source, stage: Path) -> None:
    """Save the tokenizer (when the model has one) beside the weights."""
    if source.tokenizer is not None:
        source.tokenizer.save_pretrained(stage)


def _numbers_only(value: Any) -> Any:
    """``value`` with every string dropped (paths, hostnames, model arguments): what a public repo may carry."""
    if isinstance(value, dict):
        kept = {k: _numbers_only(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not None and v != {}}
    if isinstance(value, list):
        return [v for v in (_numbers_only(v) for v in value) if v is not None and v != {}]
    return value if isinstance(value, (int, float)) else None


def copy_run_records(run_dir: Path, stage: Path) -> None:
    """Copy the loss plot and the run's metrics (results, log history), numbers only, into the export."""
    plot = run_folder.file(run_dir, run_folder.LOSS_PLOT_FILE)
    if plot.is_file():
        shutil.copy2(plot, stage / run_folder.LOSS_PLOT_FILE)
    for split, metrics in run_folder.load_results(run_dir).items():
        run_folder.save_results(stage, split, _numbers_only(metrics))
    history = run_folder.load_log_history(run_dir)
    if history:
        run_folder.save_log_history(stage, _numbers_only(history))


def write_card(job: ExportJob, stage: Path, *, num_parameters: int, code_files: list[str]) -> None:
    """Write the model card (the README) from the exported config and the run records."""
    exported = run_folder.read_json(stage, run_folder.CONFIG_FILE) or job.config
    plot = run_folder.LOSS_PLOT_FILE if (stage / run_folder.LOSS_PLOT_FILE).is_file() else None
    card = build_model_card(
        exported, export_format=job.fmt.name, task=job.task, num_parameters=num_parameters, run_dir=job.run_dir,
        plot_name=plot, has_tokenizer=job.has_tokenizer, options=job.card_options, code_files=code_files,
    )
    card.save(stage / run_folder.MODEL_CARD_FILE)


# --------------------------------------------------------------------------------------------- formats


def _write_remote_code_format(model: Any, stage: Path, job: ExportJob) -> list[str]:
    model.save_pretrained(stage, max_shard_size=job.shard_size)
    return write_remote_code(stage, type(model.config))


def _check_gpt2(job: ExportJob) -> None:
    """Refuse, before loading anything, a config GPT-2 cannot express (raises naming the setting)."""
    from scratch_gpt import ScratchGPTConfig
    from scratch_gpt.convert import gpt2_config_from_scratch

    gpt2_config_from_scratch(ScratchGPTConfig.from_pretrained(job.model_dir))


def _write_gpt2_format(model: Any, stage: Path, job: ExportJob) -> list[str]:
    """Write ``model`` as a plain GPT-2 checkpoint (config, safetensors weights, generation config).

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
    save_torch_state_dict(state_dict, stage, max_shard_size=job.shard_size, metadata={"format": "pt"})
    del state_dict
    config.save_pretrained(stage)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(stage)
    return []


def _check_family(job: ExportJob) -> None:
    """Refuse, before loading anything, a config the Llama / Qwen3 class cannot express (names every reason)."""
    from scratch_gpt import ScratchGPTConfig
    from scratch_gpt.convert_family import family_config_from_scratch

    family_config_from_scratch(ScratchGPTConfig.from_pretrained(job.model_dir), job.fmt.name)


def _write_family_format(model: Any, stage: Path, job: ExportJob) -> list[str]:
    """Write ``model`` as a plain transformers ``LlamaForCausalLM`` / ``Qwen3ForCausalLM`` repo (config, weights,
    generation config through ``save_pretrained``): the weights are renamed and the fused ``c_attn``/``c_fc``
    split exactly (:mod:`scratch_gpt.convert_family`); no remote code."""
    from scratch_gpt.convert_family import scratch_to_family

    plain = scratch_to_family(model, job.fmt.name)
    plain.config.architectures = [type(plain).__name__]
    plain.save_pretrained(stage, max_shard_size=job.shard_size)
    return []


def _verify_in_fresh_process(stage: Path, reference: Any, job: ExportJob) -> Any:
    from .verify import verify_export

    return verify_export(stage, reference, export_format=job.fmt.name)


FORMATS: dict[str, ExportFormat] = {
    "remote-code": ExportFormat(
        "remote-code", _write_remote_code_format, _verify_in_fresh_process,
        help="our modeling files + auto_map (load with trust_remote_code=True)",
    ),
    "gpt2": ExportFormat(
        "gpt2", _write_gpt2_format, _verify_in_fresh_process, tasks=("text-generation",), check=_check_gpt2,
        help="plain GPT-2 repo loadable by GPT2LMHeadModel, refused for configs GPT-2 cannot express",
    ),
    **{
        name: ExportFormat(
            name, _write_family_format, _verify_in_fresh_process, tasks=("text-generation",), check=_check_family,
            help=f"plain {cls} repo (no remote code), refused for configs {cls} cannot express",
        )
        for name, cls in (("llama", "LlamaForCausalLM"), ("qwen3", "Qwen3ForCausalLM"))
    },
}
