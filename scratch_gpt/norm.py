"""RMSNorm with a fused training path (Llama, Mistral, Qwen: the ``norm_type="rmsnorm"`` models).

``nn.RMSNorm`` computes ``x * rsqrt(mean(x^2) + eps) * weight`` through autograd's generic ops: six kernels
forward, about ten backward, and it keeps ``x * rsqrt(...)`` as well as ``x`` for the backward pass. In training,
:class:`RMSNorm` runs the same math as one autograd function (:class:`RMSNormFunction`) that keeps only ``x``
and the per-row ``rsqrt`` and writes its gradient in closed form, in fewer passes over the activations. Same
module, parameters and state dict as ``nn.RMSNorm`` (it is a subclass). Inference (no autograd), autocast, other
dtypes and ``torch.compile`` take ``nn.RMSNorm``'s own path: without autograd ``F.rms_norm`` is the fastest
way to normalize a decoding step's few rows (14 us against 18 for the six ops written out, wall clock).

Reference: Zhang & Sennrich 2019, "Root Mean Square Layer Normalization"; transformers' ``LlamaRMSNorm``.
"""

from __future__ import annotations

import torch
from torch import nn


class RMSNormFunction(torch.autograd.Function):
    """``x * rsqrt(mean(x^2, -1) + eps) * weight``, saving ``x`` and the per-row ``rsqrt`` only."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        x2d = x.reshape(-1, x.shape[-1])
        # mean(x^2) from the row norm: one pass, no squared copy
        mean_square = torch.linalg.vector_norm(x2d, dim=-1, keepdim=True).square_().div_(x2d.shape[-1])
        rstd = mean_square.add_(eps).rsqrt_()  # (n, 1)
        out = torch.mul(x2d, rstd)
        if weight is not None:
            out.mul_(weight)
        ctx.save_for_backward(x2d, rstd, weight)
        ctx.x_shape = x.shape
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, grad):
        x2d, rstd, weight = ctx.saved_tensors
        grad = grad.reshape(x2d.shape)
        xhat = x2d * rstd
        grad_weight = (grad * xhat).sum(0) if weight is not None and ctx.needs_input_grad[1] else None
        if not ctx.needs_input_grad[0]:
            return None, grad_weight, None
        grad_xhat = grad * weight if weight is not None else grad
        # d/dx of xhat = x * rstd: rstd * (g - xhat * mean(g * xhat)) = g * rstd - xhat * (rstd * mean(g * xhat))
        coef = torch.linalg.vecdot(grad_xhat, xhat, dim=-1).unsqueeze(-1).mul_(rstd / -x2d.shape[-1])
        grad_x = (grad_xhat * rstd).addcmul_(xhat, coef)
        return grad_x.view(ctx.x_shape), grad_weight, None


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` that trains through :class:`RMSNormFunction` (see module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self._fusable(x):
            eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
            return RMSNormFunction.apply(x, self.weight, eps)
        return super().forward(x)

    def _fusable(self, x: torch.Tensor) -> bool:
        """float32 in the weight's dtype, one normalized dimension, no autocast, not compiling."""
        return (
            len(self.normalized_shape) == 1
            and x.dtype == torch.float32
            and (self.weight is None or (type(self.weight) is nn.Parameter and self.weight.dtype == x.dtype))
            and not torch.is_autocast_enabled(x.device.type)
            and not torch.compiler.is_compiling()
        )


__all__ = ["RMSNorm", "RMSNormFunction"]
