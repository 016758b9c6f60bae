"""The base model of a finetuning run: a scratch-gpt folder, or a GPT-2 checkpoint converted on the fly.

Anything else is refused with an error that says what was found and what to pass instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from scratch_gpt import run_folder

logger = logging.getLogger(__name__)


@dataclass
class ModelSource:
    """Where a base model comes from: ``kind`` is ``scratch_gpt`` or ``gpt2``."""

    name_or_path: str
    kind: str
    revision: str | None = None


_TRAIN_RUN_SUBDIRS = ("final", "model", "final_model")
_CONVERTIBLE = ("gpt2", "llama", "mistral", "qwen2", "qwen3")  # checkpoints `scratch-gpt convert` reads


def resolve_model_source(name_or_path: str, revision: str | None = None) -> ModelSource:
    """Check that ``name_or_path`` is a scratch-gpt or GPT-2 model (local folder or Hub id).

    A ``scratch-gpt train`` run folder whose model lives in a ``final``/``model`` subfolder is accepted too.
    Raises ``FileNotFoundError``/``ValueError`` naming what was found and what is expected.
    """
    from transformers import PretrainedConfig

    expected = (
        "pass a folder written by `scratch-gpt train` or `scratch-gpt convert-gpt2`, "
        "or a GPT-2 checkpoint (folder or Hub id such as openai-community/gpt2)"
    )
    path = name_or_path
    if os.path.isdir(path) and not run_folder.has_config(path):
        inner = [os.path.join(path, d) for d in _TRAIN_RUN_SUBDIRS if run_folder.has_config(os.path.join(path, d))]
        if not inner:
            raise FileNotFoundError(f"{path} is a folder without config.json, so it is not a model folder; {expected}")
        path = inner[0]
        logger.info("using the model in %s", path)
    elif os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{path} is a file, not a model folder; {expected}")
    elif not os.path.exists(path) and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise FileNotFoundError(f"model folder {path} does not exist; {expected}")
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(path, revision=revision)
    except OSError as err:
        raise FileNotFoundError(f"cannot read a model config from {path!r} ({err}); {expected}") from err
    model_type = config_dict.get("model_type")
    if model_type == "scratch_gpt":
        return ModelSource(path, "scratch_gpt", revision)
    if model_type in _CONVERTIBLE:  # converted on the fly (scratch_gpt.convert_family.convert_checkpoint)
        return ModelSource(path, model_type, revision)
    raise ValueError(
        f"{path} holds a model of type {model_type!r}, but finetuning needs a scratch-gpt or GPT-2 model (or a "
        f"Llama, Mistral, Qwen2 or Qwen3 checkpoint, converted on the fly); {expected}"
    )


def materialize_scratch_model(source: ModelSource, workdir: str) -> str:
    """A local scratch-gpt folder for ``source``: the folder itself, or a GPT-2 checkpoint converted into
    ``workdir/base_model`` (weights, config and the source's tokenizer files)."""
    if source.kind == "scratch_gpt":
        return source.name_or_path
    from scratch_gpt.convert_family import convert_checkpoint

    out = os.path.join(workdir, run_folder.BASE_MODEL_DIR)
    logger.info("converting %s checkpoint %s into a scratch-gpt model at %s", source.kind, source.name_or_path, out)
    result = convert_checkpoint(source.name_or_path, out, revision=source.revision, overwrite=True)
    return str(result) if result is not None else out


def load_tokenizer_for(model_dir: str, tokenizer: str | None = None, padding_side: str = "right"):
    """The tokenizer from ``tokenizer`` (folder or Hub id) or else ``model_dir``; eos becomes pad if none."""
    from transformers import AutoTokenizer

    src = tokenizer or model_dir
    try:
        tok = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"no tokenizer found in {src} ({err}); pass --tokenizer with a tokenizer folder or Hub id"
        ) from err
    if tok.eos_token is None:
        raise ValueError(f"tokenizer {src} has no eos token; finetuning needs one (set eos_token in its config)")
    if tok.pad_token is None:
        logger.info("tokenizer has no pad token: using its eos token %r as pad", tok.eos_token)
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def check_vocab(model, tokenizer) -> None:
    """Refuse a tokenizer whose ids do not fit the model's embedding matrix."""
    n_embed = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > n_embed:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model embeds only {n_embed}; "
            "use the tokenizer the model was trained with (--tokenizer)"
        )


def load_hub_dataset(name: str, config: str | None, expected: str):
    """``datasets.load_dataset(name, config)``; any failure becomes one ``FileNotFoundError`` naming ``expected``."""
    import datasets

    try:
        return datasets.load_dataset(name, config)
    except Exception as err:  # datasets raises many types for a missing dataset
        raise FileNotFoundError(f"dataset {name!r} is neither {expected} nor a loadable Hub dataset ({err})") from err
