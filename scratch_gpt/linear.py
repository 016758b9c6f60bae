"""``nn.Linear`` with faster float32 CPU paths: few-row inference (decoding) and oneDNN for the rest.

Decoding multiplies a handful of rows (one per sequence) by every weight matrix. On CPU that is memory-bound:
what matters is how fast the BLAS streams the weight. ``F.linear`` takes a GEMV-like kernel for a few rows;
the same product written the other way round, ``(W @ x.T).T``, is a GEMM with a long M, and for a single row a
batched product over four row blocks of ``W`` (one per thread) streams the weight faster still.

The path is taken only without autograd, on CPU, in float32 without autocast, for contiguous weights,
outside ``torch.compile``, and for at most :func:`few_rows_limit` rows (8 for weights with up to 512 inputs, else 4:
beyond that oneDNN's linear is faster).

Everything else in float32 on CPU (training, prefill) runs its forward through oneDNN's linear
(``torch.ops.mkldnn._linear_pointwise``, the kernel torch's inductor uses on CPU); the backward stays on
``grad @ W`` and ``grad.T @ x``. Autocast, other dtypes and devices, builds without oneDNN, and layers built
with ``cpu_fast_paths=False`` (``ScratchGPTConfig.cpu_fast_paths``) use ``F.linear``. Results equal
``F.linear`` up to float rounding. Measured speed-ups per machine: docs/backends.md and benchmarks/bench_model.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEW_ROWS = 8  # the most rows the few-rows path takes (weights with at most _NARROW inputs), else 4
_WIDE_FEW_ROWS = 4
_NARROW = 512
_ROW_BLOCKS = 4
_PLAIN_TRANSPOSE_MAX = 1024  # outputs below which torch's 2D transposing copy is the faster one


def few_rows_limit(in_features: int) -> int:
    """The most rows the few-rows path takes for a weight with ``in_features`` inputs; from there on oneDNN
    streams the weight faster (measured: docs/backends.md)."""
    return FEW_ROWS if in_features <= _NARROW else _WIDE_FEW_ROWS


def _cpu_float32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """The condition both fast paths share: float32 on CPU, contiguous weight, no autocast, not compiling."""
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and weight.is_contiguous()
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


def _needs_grad(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether autograd records this product (grad mode on and an input that requires grad)."""
    return torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )


def _few_rows_eligible(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rows: int) -> bool:
    if not 0 < rows <= few_rows_limit(weight.shape[1]) or not _cpu_float32(x, weight, bias):
        return False
    return not _needs_grad(x, weight, bias)  # training keeps autograd's own linear


def _onednn_available() -> bool:
    # A private op: builds (or future torch versions) without it fall back to F.linear.
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


_ONEDNN = _onednn_available()


def onednn_matmul_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T (+ bias)`` for 2D float32 CPU tensors through oneDNN (no autograd)."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


def onednn_eligible(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether :func:`onednn_matmul_nt` may compute ``F.linear(x, weight, bias)``: float32 on CPU, no autocast."""
    return _ONEDNN and _cpu_float32(x, weight, bias)


def matmul_weight(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``grad @ weight`` for a 2D ``grad`` and an ``(out, in)`` weight: a linear layer's input gradient. On CPU in
    float32 through oneDNN, with the weight passed as its transposed view: 20-35% faster than MKL's ``grad @
    weight`` at the model's training shapes (docs/backends.md); elsewhere the plain product."""
    if grad.dim() == 2 and onednn_eligible(grad, weight, None):
        return onednn_matmul_nt(grad, weight.t())
    return grad @ weight


class _OneDNNLinear(torch.autograd.Function):
    """Forward and input gradient through oneDNN (faster than MKL here); the weight gradient through MKL's
    ``grad.T @ x`` (faster than oneDNN for it)."""

    @staticmethod
    def forward(ctx, x2d, weight, bias):
        ctx.save_for_backward(x2d, weight)
        ctx.has_bias = bias is not None
        return onednn_matmul_nt(x2d, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x2d, weight = ctx.saved_tensors
        grad_x = matmul_weight(grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = grad.t() @ x2d if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, with faster CPU float32 paths (see module doc)."""
    out_features, in_features = weight.shape
    rows = x.numel() // in_features if in_features else 0
    if not _few_rows_eligible(x, weight, bias, rows):
        if rows and onednn_eligible(x, weight, bias):
            x2d = x.reshape(rows, in_features).contiguous()
            if _needs_grad(x, weight, bias):
                out = _OneDNNLinear.apply(x2d, weight, bias)
            else:  # inference (prefill, decoding beyond the few-rows limit): no autograd function to set up
                out = onednn_matmul_nt(x2d, weight, bias)
            return out.view(*x.shape[:-1], out_features)
        return F.linear(x, weight, bias)
    xt = x.reshape(rows, in_features).t()  # (in, rows)
    if rows == 1:
        result = x.new_empty(out_features)
        main = out_features - out_features % _ROW_BLOCKS
        if main:
            block = main // _ROW_BLOCKS
            torch.bmm(
                weight[:main].view(_ROW_BLOCKS, block, in_features),
                xt.expand(_ROW_BLOCKS, in_features, 1),
                out=result[:main].view(_ROW_BLOCKS, block, 1),
            )
        if main < out_features:
            torch.mv(weight[main:], xt[:, 0], out=result[main:])
        out = result.view(1, out_features)
        if bias is not None:
            out += bias
    else:
        out = _transposed(torch.mm(weight, xt) if bias is None else torch.addmm(bias.unsqueeze(1), weight, xt))
    return out.view(*x.shape[:-1], out_features)


def _transposed(out: torch.Tensor) -> torch.Tensor:
    """``out.t().contiguous()`` for an ``(out_features, rows)`` product. Beyond about a thousand outputs the
    copy goes through a leading unit dimension: torch's 2D transposing copy moves a (49152, 8) result at a
    fifth of the speed of its general strided copy (measured: docs/backends.md)."""
    if out.shape[0] < _PLAIN_TRANSPOSE_MAX:
        return out.t().contiguous()
    return out.t().unsqueeze(0).contiguous()[0]


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict, ``isinstance`` holds) using :func:`linear`.

    ``cpu_fast_paths=False`` makes it a plain ``nn.Linear`` (``F.linear``), for portability checks.
    """

    def __init__(self, *args, cpu_fast_paths: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.cpu_fast_paths = cpu_fast_paths
        self._row_views: tuple | None = None  # (key, weight blocks, bias blocks): see _one_row

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cpu_fast_paths:
            return F.linear(x, self.weight, self.bias)
        if x.numel() == self.in_features and not torch.is_grad_enabled():  # decoding one token
            out = self._one_row(x)
            if out is not None:
                return out
        return linear(x, self.weight, self.bias)

    def _one_row(self, x: torch.Tensor) -> torch.Tensor | None:
        """:func:`linear`'s single-row product with the weight's row-block views (and the bias added inside
        the same batched product) made once per weight version: the same numbers, half the per-call
        overhead, which is a sizeable share of a decoding step. None where :func:`linear` must decide."""
        weight, bias = self.weight, self.bias
        if not _cpu_float32(x, weight, bias):
            return None
        try:
            key = (weight.data_ptr(), weight._version) + ((bias.data_ptr(), bias._version) if bias is not None else ())
        except RuntimeError:  # inference tensors (made under inference_mode) have no version counter
            return None
        views = self._row_views
        if views is None or views[0] != key:
            views = self._row_views = (key, *_row_blocks(weight, bias))
        if views[1] is None:
            return None
        block = views[1].shape[1]
        out = x.new_empty(self.out_features)
        xt = x.reshape(1, self.in_features).t().expand(_ROW_BLOCKS, self.in_features, 1)
        if views[2] is None:
            torch.bmm(views[1], xt, out=out.view(_ROW_BLOCKS, block, 1))
        else:
            torch.baddbmm(views[2], views[1], xt, out=out.view(_ROW_BLOCKS, block, 1))
        return out.view(*x.shape[:-1], self.out_features)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_row_views"] = None  # views of the weight: never copied or pickled with the module
        return state


def _row_blocks(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    """``(weight blocks, bias blocks)`` for :meth:`Linear._one_row`, or ``(None, None)`` where it does not apply
    (dtype, device and weight layout are :func:`_cpu_float32`'s, checked on every call)."""
    plain = type(weight.data) is torch.Tensor and (bias is None or type(bias.data) is torch.Tensor)
    out_features, in_features = weight.shape
    if not (plain and out_features % _ROW_BLOCKS == 0 and (bias is None or bias.is_contiguous())):
        return None, None
    block = out_features // _ROW_BLOCKS
    blocks = weight.detach().view(_ROW_BLOCKS, block, in_features)
    return blocks, None if bias is None else bias.detach().view(_ROW_BLOCKS, block, 1)


__all__ = ["FEW_ROWS", "Linear", "few_rows_limit", "linear", "matmul_weight", "onednn_eligible", "onednn_matmul_nt"]
