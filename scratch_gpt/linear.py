"""``nn.Linear`` with a faster few-rows inference path on CPU (the decoding step).

Decoding multiplies a handful of rows (one per sequence) by every weight matrix. On CPU that is memory-bound:
what matters is how fast the BLAS streams the weight. Measured on the 2-core AMD EPYC this project is developed
on (torch 2.13, MKL; ``benchmarks/bench_model.py`` shows the end-to-end effect), ``F.linear`` streams a cold
weight at 4-10 GB/s for 1-64 rows, while the same product written the other way round, ``(W @ x.T).T``,
reaches 9-14 GB/s (a GEMM with a long M instead of a GEMV-like kernel), and for a single row a batched
product over four row blocks of ``W`` (one per thread) does best: 1.2-4x faster per call overall.

The path is taken only without autograd, on CPU, in float32, for contiguous weights, outside
``torch.compile``, and for at most :data:`FEW_ROWS` rows; everything else is ``F.linear``. Results equal
``F.linear`` up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEW_ROWS = 64
_ROW_BLOCKS = 4


def _few_rows_eligible(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rows: int) -> bool:
    if not 0 < rows <= FEW_ROWS or x.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or not weight.is_contiguous():
        return False
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return False  # training keeps autograd's own linear
    return bias is None or bias.dtype == torch.float32


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, computed for few float32 rows on CPU as ``W @ x.T`` (see module doc)."""
    out_features, in_features = weight.shape
    rows = x.numel() // in_features if in_features else 0
    if not _few_rows_eligible(x, weight, bias, rows):
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
    elif bias is None:
        out = torch.mm(weight, xt).t().contiguous()
    else:
        out = torch.addmm(bias.unsqueeze(1), weight, xt).t().contiguous()  # (out, rows) -> (rows, out)
    return out.view(*x.shape[:-1], out_features)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict, ``isinstance`` holds) using :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


__all__ = ["FEW_ROWS", "Linear", "linear"]
