"""A fused LM-head cross-entropy that keeps no ``(tokens, vocab)`` tensor for backward.

The usual causal-LM loss builds fp32 logits for every position, a log-softmax of them, and in backward a
gradient of the same size: three ``tokens x vocab`` tensors, the largest activations of a small GPT. Here the
head and the loss run together over chunks of positions (at most ``_CHUNK_ELEMENTS`` logits each); one buffer
per chunk holds the logits, then in place their log-softmax and their gradient (``softmax - onehot``), which
is turned at once into gradients for the hidden states and the head weight; only those (``tokens x hidden``
and ``vocab x hidden``) are kept for backward. Same matmuls as the plain path, no recomputation, a fraction
of the memory. Semantics equal transformers' ``ForCausalLMLoss``: labels are shifted
inside, ``-100`` is ignored, the sum is divided by ``num_items_in_batch`` when given, else by the number of
real targets. With ``softcap`` (``config.final_logit_softcapping``) the logits are first capped as Gemma 2 does,
``cap * tanh(logits / cap)``, and the gradient gets the cap's derivative ``1 - tanh²`` (one more chunk buffer).
"""

from __future__ import annotations

import functools
import platform

import torch
import torch.nn.functional as F

from .linear import matmul_nt, matmul_weight

IGNORE_INDEX = -100
_CHUNK_ELEMENTS = 1 << 24  # 64 MiB of fp32 logits per chunk: a second chunk re-reads and re-writes the whole
# (vocab, hidden) weight gradient (see docs/backends.md)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, divisor, compute_dtype, cpu_fast_paths=True, softcap=None):
        # hidden (n, h), weight (v, h), targets (n,), divisor: 0-dim float tensor
        n, vocab = hidden.shape[0], weight.shape[0]
        chunk = max(1, _CHUNK_ELEMENTS // vocab)
        w = weight.to(compute_dtype)
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        fp32 = compute_dtype == torch.float32
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        if needs_grad:  # in fp32 the first chunk's GEMM overwrites it (beta=0): no zero-filling
            alloc = torch.empty if fp32 else torch.zeros
            grad_weight = alloc(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # With the fast paths, the logits and input-gradient products take the faster of MKL and oneDNN (measured
        # per chunk shape on the running CPU, linear.matmul_nt); without, plain torch products only.
        tuned = cpu_fast_paths and fp32
        for start in range(0, n, chunk):
            h = hidden[start : start + chunk].to(compute_dtype)  # (c, h)
            y = targets[start : start + chunk]
            valid = y != IGNORE_INDEX
            y_safe = y.clamp(min=0)
            logits = (matmul_nt(h, w) if tuned else h @ w.t()).float()  # (c, v); no-op cast in fp32
            if softcap is not None:  # tanh(z / cap) in place, kept for the gradient; the capped logits beside it
                tanh = logits.div_(softcap).tanh_()
                logits = tanh * softcap
            logp = torch.log_softmax(logits, dim=-1, out=logits)  # in place: one (c, v) buffer per chunk
            total -= (logp.gather(1, y_safe[:, None]).squeeze(1) * valid).sum()
            if not needs_grad:
                continue
            probs = logp.exp_()  # softmax, in place
            probs[torch.arange(len(y), device=y.device), y_safe] -= 1.0  # d(loss)/d(logits), unscaled
            if softcap is not None:
                probs.mul_(tanh.square_().neg_().add_(1.0))  # through the cap: d(cap tanh(z / cap))/dz = 1 - tanh²
            g = probs.to(compute_dtype)
            # Ignored rows and 1/divisor are applied on the narrow (c, h) side, never on (c, v).
            row_scale = (valid.float() / divisor)[:, None]
            gh = grad_hidden[start : start + chunk]
            if tuned:
                torch.mul(matmul_weight(g, w), row_scale, out=gh)
            elif compute_dtype == grad_hidden.dtype:
                torch.mm(g, w, out=gh)
                gh.mul_(row_scale)
            else:
                gh.copy_((g @ w).float() * row_scale)
            h_scaled = h * row_scale.to(compute_dtype)
            if fp32:  # accumulate inside the GEMM, no (vocab, hidden) temporary
                grad_weight.addmm_(g.t(), h_scaled, beta=0.0 if start == 0 else 1.0)
            else:
                grad_weight += (g.t() @ h_scaled).float()
        if needs_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total / divisor

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_output.device.type == "cpu" and grad_output.item() == 1.0:  # the usual case: skip two passes
            return grad_hidden, grad_weight, None, None, None, None, None
        return grad_hidden * grad_output, grad_weight * grad_output, None, None, None, None, None


@functools.cache
def _cpu_has_native_matmul(dtype: torch.dtype) -> bool:
    """Whether this CPU multiplies ``dtype`` matrices in hardware (AVX512-BF16 / AMX), not by emulation.

    On an x86 CPU without it, oneDNN emulates bf16/fp16 GEMMs, many times slower than fp32 (figures in
    docs/backends.md). The LM head is the largest GEMM of a small GPT, so under
    CPU autocast on such a CPU the fused loss keeps its head in the weight's precision, which is also the
    more accurate choice (logits and their gradients in fp32). Other CPUs and GPUs keep the autocast dtype.
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    probes = {  # private torch probes: where one is missing, assume native (the plain autocast behaviour)
        torch.bfloat16: ("_is_avx512_bf16_supported", "_is_amx_tile_supported"),
        torch.float16: ("_is_amx_fp16_supported",),
    }.get(dtype)
    if probes is None or not all(hasattr(torch.cpu, name) for name in probes):
        return True
    return any(getattr(torch.cpu, name)() for name in probes)


def fused_causal_lm_loss(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    cpu_fast_paths: bool = True,
    softcap: float | None = None,
) -> torch.Tensor:
    """Shifted cross-entropy of ``hidden_states @ weight.T`` against ``labels`` without full logits.

    ``hidden_states`` is ``(batch, seq, hidden)`` (the final-norm output), ``weight`` the LM head ``(vocab, hidden)``,
    ``labels`` ``(batch, seq)`` with ``-100`` for ignored positions. Under autocast the matmuls run in the
    autocast dtype and the softmax in fp32, like the plain path, except on a CPU that would emulate that dtype
    (see :func:`_cpu_has_native_matmul`). ``cpu_fast_paths=False`` skips that CPU branch and the measured choice
    of kernels (plain torch products only). ``softcap``: Gemma 2's final-logit soft-capping, ``cap * tanh(z / cap)``
    on the logits before the loss (``None``: none).
    """
    device_type = hidden_states.device.type
    compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
    emulated = cpu_fast_paths and device_type == "cpu" and not _cpu_has_native_matmul(compute_dtype)
    if compute_dtype != weight.dtype and emulated:
        compute_dtype = weight.dtype  # emulated low precision: fp32 is both faster and exact (see below)
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:].reshape(-1).to(hidden_states.device)
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    if num_items_in_batch is None:
        divisor = (targets != IGNORE_INDEX).sum().clamp(min=1).float()
    else:
        divisor = torch.as_tensor(num_items_in_batch, device=hidden.device).float()
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, divisor, compute_dtype, cpu_fast_paths, softcap)


__all__ = ["fused_causal_lm_loss"]
