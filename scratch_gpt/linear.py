"""``nn.Linear`` whose CPU products run through whichever kernel is fastest on the running machine.

A linear layer's product can be computed several ways on CPU, and which is fastest depends on the CPU, the
thread count, the shape and the dtype, so it is measured, never assumed (:mod:`kernel_choice`: the first call
per key times the candidates in place and keeps the fastest for the process). The candidates:

- ``f_linear``: ``F.linear``, the plain torch path; always a candidate.
- ``onednn``: oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``, the kernel torch's inductor uses on CPU).
- ``transposed`` (at most :data:`FEW_ROWS` rows, no autograd): the product written the other way round,
  ``(W @ x.T).T``, a GEMM with a long M instead of a GEMV-like kernel; its transposing copy is chosen too
  (:func:`_transposed`).
- ``row_blocks`` (one row, no autograd): a batched product over four row blocks of ``W``, with the bias added
  inside (``baddbmm``); the blocks are views made once per weight version.
- ``onednn_packed`` (bfloat16, no autograd, through a :class:`Linear`): oneDNN's linear with the weight
  reordered once into oneDNN's blocked layout (``torch.ops.mkldnn._reorder_linear_weight``), kept beside the
  parameter and remade when the weight changes. This is how bf16 decoding uses a CPU's bf16 units.

With autograd recording (training), the forward is chosen between ``f_linear`` and ``onednn`` by timing the
forward under ``torch.no_grad`` once per key; the oneDNN forward runs inside :class:`_OneDNNLinear`, whose
input gradient goes through :func:`matmul_weight` (itself chosen between MKL's ``grad @ W`` and oneDNN).

Choices are made only on CPU, for float32 or bfloat16 tensors of one dtype, contiguous weights, without
autocast and outside ``torch.compile``; everything else, and layers built with ``cpu_fast_paths=False``
(``ScratchGPTConfig.cpu_fast_paths``), uses ``F.linear``. Every candidate equals ``F.linear`` up to float
rounding. Measured choices and speeds per machine: docs/backends.md and benchmarks/bench_model.py.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .kernel_choice import CHOOSER, PLAIN, STEPS

FEW_ROWS = 8  # the most rows for which the few-rows candidates (transposed, row_blocks) are timed at all
_ROW_BLOCKS = 4
_TUNED_DTYPES = (torch.float32, torch.bfloat16)
_MAX_PLANS = 256  # memoised input shapes per layer (prompts of many lengths): beyond, start over


def _onednn_available() -> bool:
    # A private op: builds (or future torch versions) without it fall back to F.linear.
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


_ONEDNN = _onednn_available()
_PACKING = _ONEDNN and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _tunable(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """CPU, one float32/bfloat16 dtype, contiguous weight, no autocast, not compiling: a kernel may be chosen."""
    dtype = weight.dtype
    return (
        x.is_cpu
        and x.dtype is dtype
        and dtype in _TUNED_DTYPES
        and (bias is None or bias.dtype is dtype)
        and weight.is_contiguous()
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


def _needs_grad(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether autograd records this product (grad mode on and an input that requires grad)."""
    return torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )


def onednn_matmul_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T (+ bias)`` for 2D CPU tensors through oneDNN (no autograd)."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


def onednn_eligible(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether :func:`onednn_matmul_nt` may compute ``F.linear(x, weight, bias)``: float32 on CPU, no autocast."""
    return _ONEDNN and weight.dtype == torch.float32 and _tunable(x, weight, bias)


def _choose(key: tuple, candidates: dict) -> tuple[str, torch.Tensor]:
    """``CHOOSER.run`` over ``{name: (function, *args)}`` (closures made only when measuring or forced)."""
    return CHOOSER.run(key, {name: functools.partial(*call) for name, call in candidates.items()})


def matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` for 2D tensors (no autograd): on CPU in float32 the faster of MKL and oneDNN, measured."""
    eligible = _ONEDNN and a.dim() == 2 and a.is_cpu and a.dtype is b.dtype is torch.float32
    if not (eligible and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()):
        return a @ b.t()  # (b may be a transposed view: oneDNN takes either layout)
    key = ("matmul_nt", a.shape[0], a.shape[1], b.shape[0], a.dtype, torch.get_num_threads())
    name = CHOOSER.choice(key)
    if name == "mm":
        return a @ b.t()
    if name == "onednn":
        return onednn_matmul_nt(a, b)
    return _choose(key, {"mm": (torch.mm, a, b.t()), "onednn": (onednn_matmul_nt, a, b)})[1]


def matmul_weight(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``grad @ weight`` for a 2D ``grad`` and an ``(out, in)`` weight: a linear layer's input gradient. On CPU in
    float32, the faster (measured per shape) of MKL's product and oneDNN's with the weight's transposed view."""
    return matmul_nt(grad, weight.t())


class _OneDNNLinear(torch.autograd.Function):
    """Forward through oneDNN; the input gradient through :func:`matmul_weight`, the weight gradient ``grad.T @ x``."""

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


def _f_linear(
    x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, module: Linear | None
) -> torch.Tensor:
    return F.linear(x2d, weight, bias)


def _onednn(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, module: Linear | None) -> torch.Tensor:
    return onednn_matmul_nt(x2d.contiguous(), weight, bias)


def _transposed_product(
    x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, module: Linear | None
) -> torch.Tensor:
    """``(W @ x.T).T``: for a few rows, a GEMM with the long dimension on the weight's side."""
    xt = x2d.t()  # (in, rows)
    return _transposed(torch.mm(weight, xt) if bias is None else torch.addmm(bias.unsqueeze(1), weight, xt))


def _row_block_product(
    x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, module: Linear | None
) -> torch.Tensor:
    """One row times ``_ROW_BLOCKS`` row blocks of the weight as one batched product, bias added inside."""
    w_blocks, b_blocks = module._row_block_views() if module is not None else _row_blocks(weight, bias)
    out_features, in_features = weight.shape
    block = out_features // _ROW_BLOCKS
    out = x2d.new_empty(1, out_features)
    xt = x2d.t().expand(_ROW_BLOCKS, in_features, 1)
    if b_blocks is None:
        torch.bmm(w_blocks, xt, out=out.view(_ROW_BLOCKS, block, 1))
    else:
        torch.baddbmm(b_blocks, w_blocks, xt, out=out.view(_ROW_BLOCKS, block, 1))
    return out


def _packed_product(
    x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, module: Linear | None
) -> torch.Tensor:
    """oneDNN's linear with the weight pre-packed once per weight version (see :meth:`Linear._packed_weight`)."""
    return onednn_matmul_nt(x2d.contiguous(), module._packed_weight(), bias)


_KERNELS = {
    "f_linear": _f_linear,
    "onednn": _onednn,
    "transposed": _transposed_product,
    "row_blocks": _row_block_product,
    "onednn_packed": _packed_product,
}


def _candidate_names(rows: int, weight: torch.Tensor, module: Linear | None, grad: bool) -> tuple[str, ...]:
    """The kernels timed for one key (a function of the key's fields only), the plain one first."""
    names = ["f_linear"]
    if _ONEDNN:
        names.append("onednn")
    if grad:
        return tuple(names) if weight.dtype == torch.float32 else ("f_linear",)
    if weight.dtype == torch.bfloat16:
        if _PACKING and module is not None and module._packable():
            names.append("onednn_packed")
        return tuple(names)
    if rows <= FEW_ROWS:
        names.append("transposed")
        if rows == 1 and weight.shape[0] % _ROW_BLOCKS == 0:
            names.append("row_blocks")
    return tuple(names)


def _linear_key(rows: int, weight: torch.Tensor, bias: torch.Tensor | None, grad: bool, packable: bool) -> tuple:
    out_features, in_features = weight.shape
    return ("linear", rows, in_features, out_features, bias is not None, weight.dtype, grad, packable,
            torch.get_num_threads())


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, module: Linear | None = None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` through the fastest measured CPU kernel (see module doc). ``module``, the
    :class:`Linear` holding ``weight``, lets the candidates keep derived weights (row-block views, packing)."""
    return _linear(x, weight, bias, module)[0]


def _linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, module: Linear | None
) -> tuple[torch.Tensor, tuple | None]:
    """:func:`linear`'s product and the key its kernel is chosen under (None: not tunable, always ``F.linear``)."""
    out_features, in_features = weight.shape
    rows = x.numel() // in_features if in_features else 0
    if not rows or not _tunable(x, weight, bias):
        return F.linear(x, weight, bias), None
    grad = _needs_grad(x, weight, bias)
    key = _linear_key(rows, weight, bias, grad, module is not None and weight.dtype is torch.bfloat16)
    name = CHOOSER.choice(key)
    x2d = x.reshape(rows, in_features)
    if name is None or CHOOSER.forcing() is not None:
        names = _candidate_names(rows, weight, module, grad)
        candidates = {n: (_KERNELS[n], x2d, weight, bias, module) for n in names}
        if grad:  # time the forwards only, without recording; the chosen one runs below with autograd
            with torch.no_grad():
                name = _choose(key, {n: (_KERNELS[n], x2d.detach(), weight.detach(), bias, None)
                                     for n in names})[0]
        else:
            name, out = _choose(key, candidates)
            return out.view(*x.shape[:-1], out_features), key
    if name == "f_linear":
        return F.linear(x, weight, bias), key
    if grad:  # only f_linear and onednn are candidates with autograd
        out = _OneDNNLinear.apply(x2d.contiguous(), weight, bias)
    else:
        out = _KERNELS[name](x2d, weight, bias, module)
    return out.view(*x.shape[:-1], out_features), key


def tuned_step(forward):
    """Decorator for a model's ``forward``: repeated inference steps of one shape (decoding) are timed end to
    end on the tuned kernels and on the plain path, and the faster is kept (:class:`kernel_choice.StepChooser`).
    Training, ``cpu_fast_paths=False``, non-CPU inputs and compilation call ``forward`` directly."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if (
            ids is None
            or torch.is_grad_enabled()
            or not ids.is_cpu
            or not getattr(self.config, "cpu_fast_paths", False)
            or torch.compiler.is_compiling()
        ):
            return forward(self, *args, **kwargs)
        dims = self.__dict__.get("_step_dims")
        if dims is None:  # the model's shape, read once (config reads are slow in transformers 5)
            dims = self._step_dims = (self.config.hidden_size, self.config.num_hidden_layers)
        weight = getattr(self.get_output_embeddings(), "weight", None)  # a method on quantized layers
        key = (id(self), *dims, ids.shape[0], ids.shape[1] if ids.dim() > 1 else 1, getattr(weight, "dtype", None),
               torch.is_autocast_enabled("cpu"), torch.get_num_threads())
        return STEPS.run(key, functools.partial(forward, self, *args, **kwargs))

    return wrapper


def _transposed(out: torch.Tensor) -> torch.Tensor:
    """``out.t().contiguous()`` for an ``(out_features, rows)`` product, by the faster of torch's 2D transposing
    copy and its general strided copy through a leading unit dimension (measured per shape)."""
    key = ("transposed_copy", out.shape[0], out.shape[1], out.dtype, torch.get_num_threads())
    name = CHOOSER.choice(key)
    if name == "plain_copy":
        return out.t().contiguous()
    if name == "unit_dim_copy":
        return out.t().unsqueeze(0).contiguous()[0]
    return _choose(key, {"plain_copy": (_plain_copy, out), "unit_dim_copy": (_unit_dim_copy, out)})[1]


def _plain_copy(out: torch.Tensor) -> torch.Tensor:
    return out.t().contiguous()


def _unit_dim_copy(out: torch.Tensor) -> torch.Tensor:
    return out.t().unsqueeze(0).contiguous()[0]


def _row_blocks(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    """``(weight blocks, bias blocks)``: ``(_ROW_BLOCKS, out / _ROW_BLOCKS, in)`` and ``(..., 1)`` views."""
    out_features, in_features = weight.shape
    block = out_features // _ROW_BLOCKS
    blocks = weight.detach().view(_ROW_BLOCKS, block, in_features)
    return blocks, None if bias is None else bias.detach().view(_ROW_BLOCKS, block, 1)


def _weight_key(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple | None:
    """Identity and version of the weight and bias (derived copies are remade when it changes); None for inference
    tensors (made under inference_mode: no version counter) and tensor subclasses."""
    if type(weight.data) is not torch.Tensor or (bias is not None and type(bias.data) is not torch.Tensor):
        return None
    try:
        return (weight.data_ptr(), weight._version) + ((bias.data_ptr(), bias._version) if bias is not None else ())
    except RuntimeError:
        return None


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict, ``isinstance`` holds) using :func:`linear`.

    ``cpu_fast_paths=False`` makes it a plain ``nn.Linear`` (``F.linear``), for portability checks.
    """

    def __init__(self, *args, cpu_fast_paths: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.cpu_fast_paths = cpu_fast_paths
        self._derived: dict[str, tuple] = {}  # name -> (weight key, value): row-block views, packed weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._weight_and_bias()
        if not self.cpu_fast_paths:
            return F.linear(x, weight, bias)
        forcing = CHOOSER.forcing()
        if forcing is PLAIN:  # a model step measured or decided on the plain path (kernel_choice.StepChooser)
            return F.linear(x, weight, bias)
        if forcing is not None or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return linear(x, weight, bias, self)
        # Inference: the decision for this input shape, memoised on the layer, so that a decoding step pays a
        # dict lookup per layer rather than the key building of linear() (microseconds per product add up).
        plan_key = (x.shape, x.dtype, x.is_cpu, torch.get_num_threads())
        plan = self.__dict__.get("_plan")
        name = plan[1].get(plan_key) if plan is not None and plan[0] is CHOOSER.decisions else None
        if name == "f_linear":
            return F.linear(x, weight, bias)
        if name is not None and not torch.is_autocast_enabled("cpu"):
            CHOOSER.note_tuned()
            out = _KERNELS[name](x.reshape(-1, weight.shape[1]), weight, bias, self)
            return out.view(*x.shape[:-1], weight.shape[0])
        out, key = _linear(x, weight, bias, self)
        decided = "f_linear" if key is None else CHOOSER.decisions.get(key)
        if decided is not None and decided != "f_linear":
            CHOOSER.note_tuned()
        self._remember(plan_key, decided)
        return out

    def _weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``self.weight`` and ``self.bias`` read from ``_parameters`` where they live there: ``nn.Module``'s
        ``__getattr__`` costs ~0.4 µs a lookup, which a decoding step of a small model pays ~100 times. A
        parametrization (its property) or anything else that moved them is read through the attributes."""
        params = self._parameters
        weight = params.get("weight")
        if weight is None:
            weight = self.weight
        return weight, params["bias"] if "bias" in params else self.bias

    def _remember(self, plan_key: tuple, name: str | None) -> None:
        """Memoise the decided kernel ``name`` (None: not decided yet) for an inference input shape (see
        :meth:`forward`)."""
        if name is not None:
            plan = self.__dict__.get("_plan")
            if plan is None or plan[0] is not CHOOSER.decisions or len(plan[1]) >= _MAX_PLANS:
                plan = self._plan = (CHOOSER.decisions, {})
            plan[1][plan_key] = name
            if "onednn_packed" not in plan[1].values():  # packing lost where decided: free the weight's copy
                self.__dict__.get("_derived", {}).pop("onednn_packed", None)

    def _cached(self, name: str, make) -> object:
        """``make()`` kept until the weight or bias changes (an in-place optimizer step bumps its version)."""
        key = _weight_key(self.weight, self.bias)
        derived = self.__dict__.setdefault("_derived", {})  # modules unpickled from before this attribute
        entry = derived.get(name)
        if entry is not None and key is not None and entry[0] == key:
            return entry[1]
        value = make()
        if key is not None:
            derived[name] = (key, value)
        return value

    def _row_block_views(self) -> tuple:
        return self._cached("row_blocks", lambda: _row_blocks(self.weight, self.bias))

    def _packable(self) -> bool:
        """Whether the weight can be packed and kept (a plain tensor with a version counter)."""
        return _weight_key(self.weight, None) is not None

    def _packed_weight(self) -> torch.Tensor:
        """The weight reordered into oneDNN's blocked layout (a second copy of the weight, made once)."""
        return self._cached("onednn_packed", lambda: torch.ops.mkldnn._reorder_linear_weight(self.weight.detach()))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_derived"] = {}  # views and packed copies of the weight: never copied or pickled with the module
        state.pop("_plan", None)  # decisions of this process only
        return state


__all__ = ["FEW_ROWS", "Linear", "linear", "tuned_step", "matmul_nt", "matmul_weight", "onednn_eligible", "onednn_matmul_nt"]
