"""A fused, chunked LM-head cross-entropy that never materialises the full ``(tokens, vocab)`` logits.

The usual causal-LM loss builds fp32 logits for every position, a log-softmax of them, and in backward a
gradient of the same size: three ``tokens x vocab`` tensors, the largest activations of a small GPT. Here the
head and the loss run together over chunks of positions; each chunk's gradient with respect to its logits
(``softmax - onehot``) is turned at once into gradients for the hidden states and the head weight, and only
those (``tokens x hidden`` and ``vocab x hidden``) are kept for backward. Same matmuls as the plain path, no
recomputation, a fraction of the memory. Semantics equal transformers' ``ForCausalLMLoss``: labels are shifted
inside, ``-100`` is ignored, the sum is divided by ``num_items_in_batch`` when given, else by the number of
real targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
_CHUNK_ELEMENTS = 1 << 23  # ~32 MiB of fp32 logits per chunk (measured: smaller chunks cost speed at vocab 50k)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, divisor, compute_dtype):
        # hidden (n, h), weight (v, h), targets (n,), divisor: 0-dim float tensor
        n, vocab = hidden.shape[0], weight.shape[0]
        chunk = max(1, _CHUNK_ELEMENTS // vocab)
        w = weight.to(compute_dtype)
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk):
            h = hidden[start : start + chunk].to(compute_dtype)  # (c, h)
            y = targets[start : start + chunk]
            valid = y != IGNORE_INDEX
            y_safe = y.clamp(min=0)
            logits = (h @ w.t()).float()  # (c, v)
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, y_safe[:, None]).squeeze(1)
            total += ((lse - picked) * valid).sum()
            if needs_grad:
                probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                probs[torch.arange(len(y), device=y.device), y_safe] -= 1.0
                probs *= (valid.float() / divisor)[:, None]
                g = probs.to(compute_dtype)
                if compute_dtype == grad_hidden.dtype:
                    torch.mm(g, w, out=grad_hidden[start : start + chunk])
                else:
                    grad_hidden[start : start + chunk] = (g @ w).to(hidden.dtype)
                if compute_dtype == torch.float32:
                    grad_weight.addmm_(g.t(), h)  # accumulate inside the GEMM, no (vocab, hidden) temporary
                else:
                    grad_weight += (g.t() @ h).float()
        if needs_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total / divisor

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, grad_weight * grad_output, None, None, None


def fused_causal_lm_loss(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """Shifted cross-entropy of ``hidden_states @ weight.T`` against ``labels`` without full logits.

    ``hidden_states`` is ``(batch, seq, hidden)`` (the final-norm output), ``weight`` the LM head ``(vocab, hidden)``,
    ``labels`` ``(batch, seq)`` with ``-100`` for ignored positions. Under CPU/GPU autocast the matmuls run in the
    autocast dtype and the softmax in fp32, like the plain path.
    """
    device_type = hidden_states.device.type
    compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:].reshape(-1).to(hidden_states.device)
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    if num_items_in_batch is None:
        divisor = (targets != IGNORE_INDEX).sum().clamp(min=1).float()
    else:
        divisor = torch.as_tensor(num_items_in_batch, device=hidden.device).float()
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, divisor, compute_dtype)


__all__ = ["fused_causal_lm_loss"]
