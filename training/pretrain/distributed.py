"""FSDP2 on CPU-only machines, and which checkpoints a launch can resume.

Accelerate turns FSDP on only for accelerator back ends (``AcceleratorState`` switches ``MULTI_GPU`` and
friends to ``FSDP``, never ``MULTI_CPU``), so ``accelerate launch --config_file configs/fsdp.yaml`` on a
machine without a GPU would silently run plain DDP over gloo. ``fully_shard`` itself works on CPU with gloo
(torch >= 2.6), and so do Accelerate's FSDP2 preparation, sharded ``save_state``/``load_state`` and the full
state dict gather. :func:`enable_cpu_fsdp` makes the same switch Accelerate makes on GPUs (the distributed
type in both shared states, the plugin on the accelerator state); it is the one place that touches
Accelerate's private state (tested with accelerate 1.16; refused where the shape differs).

Checkpoints: an FSDP checkpoint holds ``pytorch_model_fsdp_0/`` (torch.distributed.checkpoint shards that
load into any number of FSDP processes), a DDP or single-process one ``model.safetensors``. Each loads only
into a run of its own kind; :func:`check_resume` refuses the other with one line saying what to run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

FSDP_MODEL_DIR = "pytorch_model_fsdp_0"


def fsdp_requested() -> bool:
    """Whether the launch asked for FSDP (``accelerate launch`` with ``distributed_type: FSDP`` / ``--use_fsdp``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("true", "1", "yes")


def multi_process_launch() -> bool:
    """Whether this process is one of several started by ``accelerate launch`` / ``torchrun``."""
    return int(os.environ.get("LOCAL_RANK", -1)) != -1 or int(os.environ.get("WORLD_SIZE", 1)) > 1


def cpu_fsdp_plugin(has_accelerator: bool, mixed_precision: str):
    """The FSDP plugin (from the launcher's ``FSDP_*`` variables) for an FSDP launch on a CPU-only machine,
    else None (on GPUs Accelerate does it all). FSDP on CPU is FSDP2 in fp32: anything else is refused."""
    if has_accelerator or not fsdp_requested() or not multi_process_launch():
        return None
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # fills itself from FSDP_VERSION, FSDP_STATE_DICT_TYPE, ...
    if plugin.fsdp_version != 2:
        raise ValueError(
            f"FSDP on CPU needs FSDP2, but the launch asked for fsdp_version {plugin.fsdp_version}; "
            "set fsdp_version: 2 in the accelerate config (see configs/fsdp.yaml)"
        )
    if mixed_precision not in ("no", "auto"):
        raise ValueError(
            f"FSDP on CPU trains in fp32, but --mixed-precision is {mixed_precision}; pass --mixed-precision no"
        )
    return plugin


def enable_cpu_fsdp(accelerator, plugin) -> None:
    """Switch a gloo (``MULTI_CPU``) accelerator to FSDP with ``plugin``, as Accelerate does on GPUs."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    state = accelerator.state
    if not isinstance(state, AcceleratorState) or "distributed_type" not in PartialState._shared_state:
        raise RuntimeError(
            f"FSDP on CPU: accelerate {_accelerate_version()} keeps its process state differently from 1.16 (the "
            "version this was tested with); pip install -U accelerate, or train with configs/ddp.yaml"
        )
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # AcceleratorState() re-reads this
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    if accelerator.is_main_process:
        logger.info("FSDP2 on CPU over gloo: %d processes, %s checkpoints", accelerator.num_processes,
                    plugin.state_dict_type.name if hasattr(plugin.state_dict_type, "name") else plugin.state_dict_type)


def _accelerate_version() -> str:
    from importlib.metadata import version

    return version("accelerate")


def is_fsdp(accelerator) -> bool:
    """Whether the run shards its model with FSDP."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def check_checkpoint_kind(checkpoint: Path, accelerator, saved: dict[str, Any]) -> None:
    """Refuse, with one line, a checkpoint of the other kind: FSDP shards without FSDP, or one full model
    (DDP, one process) under FSDP. Checked before any data is loaded."""
    sharded, fsdp = (checkpoint / FSDP_MODEL_DIR).is_dir(), is_fsdp(accelerator)
    if sharded and not fsdp:
        raise ValueError(
            f"{checkpoint} holds FSDP shards ({saved.get('num_processes') or 'several'} processes); resume it "
            "under FSDP: accelerate launch --config_file configs/fsdp.yaml --num_processes N "
            "-m scratch_gpt_cli train --resume"
        )
    if fsdp and not sharded:
        raise ValueError(
            f"{checkpoint} holds one full model (a DDP or single-process run); resume it without FSDP "
            "(plain `scratch-gpt train --resume`, or accelerate launch --config_file configs/ddp.yaml)"
        )


def check_resume(checkpoint: Path, accelerator, saved: dict[str, Any], tokens_per_step: int) -> None:
    """Refuse, with one line, a checkpoint this launch cannot continue exactly: another kind (see
    :func:`check_checkpoint_kind`), or other tokens per step (data position and learning rate follow the step;
    FSDP shards themselves re-split to any number of processes)."""
    check_checkpoint_kind(checkpoint, accelerator, saved)
    saved_tokens = saved.get("tokens_per_step")
    if saved_tokens is not None and saved_tokens != tokens_per_step:
        raise ValueError(
            f"{checkpoint} was trained with {saved_tokens} tokens per step ({saved.get('num_processes')} processes) "
            f"but this launch takes {tokens_per_step} ({accelerator.num_processes} processes); set "
            "--per-device-batch-size or --gradient-accumulation-steps so batch x processes x accumulation is unchanged"
        )


def full_state_dict(accelerator, model, unwrapped) -> dict[str, Any]:
    """The whole model's state dict on the main process (gathered from the shards under FSDP), tied weights
    once, under the source name: FSDP's gather returns a tied pair (``lm_head.weight``, ``transformer.wte.weight``)
    as two separate tensors, which ``save_pretrained`` would write twice; the folder must match any other run's."""
    state_dict = accelerator.get_state_dict(model)
    tied = getattr(unwrapped, "_tied_weights_keys", None)
    if not (isinstance(tied, dict) and state_dict and getattr(unwrapped.config, "tie_word_embeddings", True)):
        return state_dict
    for target, source in tied.items():
        if target not in state_dict:
            continue
        if source not in state_dict:
            state_dict[source] = state_dict.pop(target)
        elif torch.equal(state_dict[source], state_dict[target]):
            del state_dict[target]
    return state_dict
