"""Shared pieces of the model tests: padded batches, an uncached greedy reference, gradient, Trainer and
compile checks that run the same way on the GPT-2 shape and on the Llama/Qwen switches."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from datasets import Dataset
from transformers import CompileConfig, Trainer, TrainingArguments


def left_padded(rows: list[list[int]], pad_id: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` as one left-padded batch: ``(input_ids, attention_mask)``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


def random_left_padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three random rows of 12 (seed 1): one unpadded, one with 4 pads, one with 9 (pad id 1)."""
    torch.manual_seed(1)
    ids = torch.randint(2, 320, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :9] = 0
    ids[mask == 0] = 1
    return ids, mask


def manual_greedy(model, row: list[int], new_tokens: int) -> list[int]:
    """Arg-max decoding by re-running the whole sequence each step: no cache, no padding."""
    seq = torch.tensor([row])
    for _ in range(new_tokens):
        with torch.no_grad():
            logits = model(seq, use_cache=False).logits[:, -1]
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    return seq[0, len(row) :].tolist()


def grads(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gradients of the causal-LM loss on ``ids``, by parameter name."""
    model.zero_grad()
    model(ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_checkpointing_keeps_gradients(model, ids: torch.Tensor) -> None:
    """Gradient checkpointing (enabled here) changes no gradient beyond float noise."""
    plain = grads(model, ids)
    model.gradient_checkpointing_enable()
    checkpointed = grads(model, ids)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5)


class CaptureGrads(Trainer):
    """Record the accumulated gradients just before the first optimizer step."""

    captured = None

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        original_step = optimizer.step

        def step(*a, **k):
            if CaptureGrads.captured is None:
                CaptureGrads.captured = {n: p.grad.clone() for n, p in self.model.named_parameters()}
            return original_step(*a, **k)

        optimizer.step = step
        return optimizer


def uneven_label_rows() -> Dataset:
    """Four rows of 16 tokens (seed 0) with 16, 3, 9 and 12 real labels (the rest -100)."""
    torch.manual_seed(0)
    rows = []
    for n_real in (16, 3, 9, 12):
        ids = torch.randint(2, 320, (16,))
        labels = ids.clone()
        labels[n_real:] = -100
        rows.append({"input_ids": ids.tolist(), "labels": labels.tolist()})
    return Dataset.from_list(rows)


def big_and_accumulated_grads(model, data: Dataset, out_dir) -> tuple[dict, dict]:
    """Trainer's gradients before its first step, from the same start: one batch of 4, then 4 batches of 1
    accumulated (the model is left at the start's weights)."""
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def run(batch_size, accumulation):
        model.load_state_dict(start)
        CaptureGrads.captured = None
        args = TrainingArguments(
            output_dir=str(out_dir / f"run{batch_size}"), per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=1e-3, report_to=[], use_cpu=True,
            save_strategy="no", logging_strategy="no", dataloader_drop_last=False, seed=0, data_seed=0,
        )
        CaptureGrads(model=model, args=args, train_dataset=data).train()
        return CaptureGrads.captured

    big, accumulated = run(4, 1), run(1, 4)
    model.load_state_dict(start)
    assert big is not None and accumulated is not None
    return big, accumulated


def compiled_static_and_eager_generation(model) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Greedy generation of a left-padded batch with a fullgraph-compiled static cache and without:
    ``(graphs compiled, compiled tokens, eager tokens)``."""
    ids = torch.tensor([[5, 6, 7, 8, 9], [1, 1, 1, 10, 11]])
    kwargs = dict(attention_mask=(ids != 1).long(), max_new_tokens=6, do_sample=False, eos_token_id=None)
    graphs = []

    def counting_backend(graph_module, example_inputs, **options):
        graphs.append(graph_module)
        return graph_module.forward

    compile_config = CompileConfig(fullgraph=True, backend=counting_backend, dynamic=False)
    compile_config._compile_all_devices = True  # generate() compiles only on accelerators unless told
    eager = model.generate(ids, pad_token_id=1, **kwargs)
    compiled = model.generate(ids, pad_token_id=1, cache_implementation="static", compile_config=compile_config,
                              **kwargs)
    return len(graphs), compiled, eager


@contextlib.contextmanager
def counting_applies(function: type[torch.autograd.Function]) -> Iterator[list[int]]:
    """Count the calls of ``function.apply`` inside the block (to check that a fused path really ran)."""
    calls: list[int] = []
    original = function.apply
    function.apply = lambda *args: calls.append(1) or original(*args)
    try:
        yield calls
    finally:
        function.apply = original
