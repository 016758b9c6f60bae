"""Validation loss and sampled continuations during pretraining."""

from __future__ import annotations

import torch

from .records import perplexity


@torch.no_grad()
def evaluate(model: torch.nn.Module, eval_dl, accelerator) -> float:
    """Mean validation loss over ``eval_dl`` (gathered over processes, duplicates from padding dropped)."""
    model.eval()
    losses = []
    for batch in eval_dl:
        ids = batch["input_ids"]
        loss = model(input_ids=ids, labels=ids).loss.detach().float()
        losses.append(accelerator.gather_for_metrics(loss.repeat(ids.shape[0])))
    model.train()
    if not losses:
        return float("nan")
    return torch.cat(losses).mean().item()


@torch.no_grad()
def sample_continuations(
    model: torch.nn.Module,
    tokenizer,
    prompt: str,
    num_samples: int,
    max_new_tokens: int,
    seed: int,
) -> list[str]:
    """Sample continuations with a private RNG (the training RNG stream is left untouched)."""
    if num_samples == 0 or tokenizer is None:
        return []
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt").input_ids if prompt else None
    if ids is None or ids.shape[1] == 0:
        ids = torch.tensor([[tokenizer.eos_token_id]])
    limit = getattr(model.config, "max_position_embeddings", None) or ids.shape[1] + max_new_tokens
    ids = ids[:, -max(1, limit // 2) :].to(device)  # keep room to continue
    max_new_tokens = min(max_new_tokens, limit - ids.shape[1])
    was_training = model.training
    model.eval()
    fork_devices = [] if device.type == "cpu" else None
    with torch.random.fork_rng(devices=fork_devices, device_type=device.type):
        torch.manual_seed(seed)
        out = model.generate(
            ids.repeat(num_samples, 1),
            attention_mask=torch.ones_like(ids).repeat(num_samples, 1),
            do_sample=True,
            temperature=0.8,
            top_k=50,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
    model.train(was_training)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


def evaluate_and_sample(
    model, unwrapped, eval_dl, accelerator, tokenizer, args, prompt: str | None = None
) -> tuple[dict[str, float], list[str]]:
    """``{"eval_loss", "eval_perplexity"}`` over the validation loader, and samples (main process only) from
    ``prompt`` (default: ``args.sample_prompt``)."""
    from accelerate.utils import DistributedType

    loss = evaluate(model, eval_dl, accelerator)
    metrics = {"eval_loss": loss, "eval_perplexity": perplexity(loss)}
    # sharded models cannot generate from one process; their samples come from `scratch-gpt generate`
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    samples: list[str] = []
    if accelerator.is_main_process and args.num_samples and not sharded:
        samples = sample_continuations(
            unwrapped, tokenizer, args.sample_prompt if prompt is None else prompt, args.num_samples,
            args.sample_max_new_tokens, args.seed,
        )
    accelerator.wait_for_everyone()
    return metrics, samples
