"""Shared pieces of the model tests: fp32 tolerances derived from the arithmetic, padded batches, an uncached
greedy reference, gradient, Trainer and compile checks that run the same way on the GPT-2 shape and on the
Llama/Qwen switches."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from datasets import Dataset
from transformers import CompileConfig, Trainer, TrainingArguments

def fused_loss_inputs(vocab: int = 3000, width: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded ``(hidden (2, 20, width), head weight (vocab, width), labels (2, 20))`` for the fused LM-head loss
    tests: both leaves require grad, and six labels of the first row are ignored (-100)."""
    torch.manual_seed(0)
    hidden = torch.randn(2, 20, width, requires_grad=True)
    weight = (0.3 * torch.randn(vocab, width)).requires_grad_()
    labels = torch.randint(0, vocab, (2, 20))
    labels[0, 3:9] = -100
    return hidden, weight, labels


# -- fp32 tolerances from the arithmetic ------------------------------------------------------------------
#
# Two fp32 computations of one value that differ only in how sums are ordered (our kernels against torch's or
# transformers', a backend, a converted copy, one GEMM shape against another; AVX2 / AVX-512 / AMX blocking,
# FMA, threads) round differently, and by how much depends on the CPU. Each addition rounds by at most half an
# ulp of the running sum; with those errors behaving as independent signs (blocked and pairwise kernels with
# fp32 accumulators never approach the worst case of K half-ulps), a K-term sum is off by about
# eps/2 * sqrt(K) * |running sum|, and so is the other side. A model chains its reductions: each layer adds its
# relative error (LayerNorm keeps the stream's scale), so ``depth`` multiplies. ``FP32_SAFETY`` = 4 covers the
# two sides and the largest of thousands of outputs (a Gaussian tail, sqrt(2 ln N) ~ 4 at N = 1e4).
#
# What the tolerance still catches: with K = 128 and depth 3 it is 4 * 1.2e-7 * 11.3 * 3 ~ 1.6e-5 of the
# outputs' largest magnitude (measured differences on the tiny models are ~50x below it), while a wrong weight,
# a lost mask, an off-by-one position or a missing scale moves outputs by a sizeable fraction of their own size
# (>= 1e-2 of it): three orders of magnitude above the tolerance.

EPS32 = torch.finfo(torch.float32).eps  # 2**-23 ~ 1.19e-7: the fp32 spacing at 1 (twice the unit roundoff)
FP32_SAFETY = 4.0


def fp32_tol(reduction_len: int, magnitude: float = 1.0, depth: int = 1, safety: float = FP32_SAFETY) -> float:
    """Absolute tolerance between two fp32 computations of a value made of ``depth`` chained sums of
    ``reduction_len`` terms whose running sums stay below ``magnitude``: ``safety * eps * sqrt(K) * magnitude
    * depth`` (the reasoning is in the comment above)."""
    return safety * EPS32 * math.sqrt(max(reduction_len, 1)) * magnitude * depth


def matmul_tol(a: torch.Tensor, b: torch.Tensor, safety: float = FP32_SAFETY) -> float:
    """:func:`fp32_tol` for ``a @ b``: K is the inner size and the magnitude the largest ``|a| @ |b|``, a bound
    on every running sum of every output (exact, so cancellation in the result cannot hide a large sum)."""
    bound = (a.detach().double().abs() @ b.detach().double().abs()).max().item()
    return fp32_tol(a.shape[-1], bound, safety=safety)


def logits_tol(config, reference: torch.Tensor, seq_len: int | None = None) -> float:
    """:func:`fp32_tol` for one model's fp32 logits reached by two kernel paths.

    K is the longest reduction of a forward pass: the hidden size (projections, LM head), the MLP width, or the
    sequence (attention's weighted sum; ``seq_len``, default the logits' second dimension); the depth is the
    layers plus the head; the magnitude is the reference's largest |logit|.
    """
    hidden = config.hidden_size
    if seq_len is None:
        seq_len = reference.shape[1] if reference.dim() == 3 else 1
    width = getattr(config, "intermediate_size", None) or 4 * hidden
    k = max(hidden, width, seq_len)
    return fp32_tol(k, reference.detach().abs().max().item(), depth=config.num_hidden_layers + 1)


def assert_logits_close(actual: torch.Tensor, expected: torch.Tensor, config, seq_len: int | None = None) -> None:
    """``actual`` equals the fp32 logits ``expected`` to :func:`logits_tol` (absolute; rtol 0)."""
    torch.testing.assert_close(actual, expected, atol=logits_tol(config, expected, seq_len), rtol=0)



def assert_grads_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], reduction_len: int,
                       depth: int = 1) -> None:
    """Gradients reached by two fp32 paths agree per tensor to ``fp32_tol(reduction_len, max |want|, depth)``:
    ``reduction_len`` the longest sum behind them (tokens, vocabulary or width), ``depth`` the chained layers."""
    assert got.keys() == want.keys()
    for name, grad in want.items():
        tol = fp32_tol(reduction_len, grad.abs().max().item(), depth)
        torch.testing.assert_close(got[name], grad, atol=tol, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


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
