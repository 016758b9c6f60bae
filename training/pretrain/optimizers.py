"""The pretraining optimizers: AdamW alone, or Muon for the hidden matrices with AdamW for the rest.

``--optimizer adamw`` (the default) is one AdamW over every parameter: weight decay on the matrices, none on
norms, biases and (unless ``--decay-embeddings``) the embeddings. ``--optimizer muon`` is modded-nanogpt's
split: ``torch.optim.Muon`` (momentum, then Newton-Schulz orthogonalisation of the update) for the 2-D weight
matrices inside the transformer blocks (attention and MLP projections), and AdamW, as above, for the
embeddings, the LM head, norms and biases. Each parameter group carries its own peak learning rate
(``peak_lr``: ``--learning-rate`` for AdamW, ``--muon-lr`` for Muon); the loop's one warmup + cosine schedule
multiplies both. Both optimizers go through ``accelerator.prepare``, so ``save_state`` / ``load_state`` keep
their state (``optimizer.bin``, ``optimizer_1.bin``) and a resumed run continues exactly. Under DDP the
gradients are all-reduced before the step, so Muon computes the same update on every process; FSDP and
DeepSpeed shard the matrices Muon must see whole, and are refused.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "MUON_TORCH", "OPTIMIZER_CHOICES", "build_optimizers", "hidden_matrices", "muon_class", "param_groups",
    "set_learning_rates",
]

OPTIMIZER_CHOICES = ("adamw", "muon")
MUON_TORCH = "2.9"  # the first torch with torch.optim.Muon
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def muon_class() -> type[torch.optim.Optimizer]:
    """``torch.optim.Muon``, or ValueError in one line naming the torch it needs."""
    muon = getattr(torch.optim, "Muon", None)
    if muon is None:
        raise ValueError(
            f"--optimizer muon needs torch >= {MUON_TORCH} (torch.optim.Muon); this is torch {torch.__version__}: "
            "pip install -U torch, or use --optimizer adamw"
        )
    return muon


def _embedding_ids(model: torch.nn.Module) -> set[int]:
    """Ids of the input embeddings (token and position tables) and the output embeddings (the LM head)."""
    ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters(recurse=False)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        ids.update(id(p) for p in head.parameters(recurse=False))
    return ids


def _trained(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Trained parameters, each once (tied weights appear once)."""
    seen: set[int] = set()
    out = []
    for param in model.parameters():
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            out.append(param)
    return out


def hidden_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What Muon trains: the 2-D weights that are neither an embedding nor the LM head."""
    embeddings = _embedding_ids(model)
    return [p for p in _trained(model) if p.ndim == 2 and id(p) not in embeddings]


def param_groups(
    model: torch.nn.Module, weight_decay: float, decay_embeddings: bool = False, exclude: set[int] | None = None
) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices of Linear layers (and the embeddings with ``decay_embeddings``); none on
    norms and biases. Parameters whose id is in ``exclude`` (Muon's) are left out."""
    embedding_params = set() if decay_embeddings else {
        id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters(recurse=False)
    }
    exclude = exclude or set()
    decay, no_decay = [], []
    for param in _trained(model):
        if id(param) in exclude:
            continue
        (no_decay if param.ndim < 2 or id(param) in embedding_params else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fused_adamw(device: torch.device | str, model: torch.nn.Module) -> dict[str, bool]:
    """``{"fused": True}`` where PyTorch has a fused AdamW kernel for ``device`` and every trained parameter is
    floating point, else ``{}`` (torch's default). One pass per tensor and no temporaries: on a 2-core CPU, 75 ms
    instead of 227 ms per step for 135M parameters, and two parameter-sized temporaries fewer at the step's peak."""
    floating = all(p.is_floating_point() for p in model.parameters() if p.requires_grad)
    return {"fused": True} if torch.device(device).type in FUSED_ADAMW_DEVICES and floating else {}


def build_optimizers(args, model: torch.nn.Module, device: torch.device | str) -> list[torch.optim.Optimizer]:
    """``[AdamW]`` for ``--optimizer adamw``; ``[AdamW, Muon]`` for ``--optimizer muon``. Every group holds its
    peak learning rate as ``peak_lr`` (see :func:`set_learning_rates`)."""
    muon = muon_class() if args.optimizer == "muon" else None
    matrices = hidden_matrices(model) if muon is not None else []
    groups = param_groups(model, args.weight_decay, args.decay_embeddings, exclude={id(p) for p in matrices})
    groups = [{**g, "peak_lr": args.learning_rate} for g in groups]
    adamw = torch.optim.AdamW(
        groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
        **fused_adamw(device, model),
    )
    if muon is None:
        return [adamw]
    if not matrices:
        raise ValueError("--optimizer muon found no hidden weight matrices in this model; use --optimizer adamw")
    hidden = muon([{"params": matrices, "peak_lr": args.muon_lr}], lr=args.muon_lr,
                  weight_decay=args.weight_decay, momentum=args.muon_momentum)
    return [adamw, hidden]


def set_learning_rates(optimizers: list[torch.optim.Optimizer], multiplier: float) -> None:
    """Each group's learning rate: its peak times the schedule's ``multiplier``."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * multiplier
