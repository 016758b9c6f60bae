"""Low-precision CPU decoding: load a causal LM for generation in fp32, bf16 or int8.

Decoding one token streams every weight once, so on a CPU its speed is set by the bytes of weights read per
token. ``bf16`` halves them, ``int8`` quarters them:

- ``bf16``: the whole model in bfloat16, only where it is faster than fp32 on the running CPU: the CPU must
  have bf16 units (AVX512-BF16 or AMX; elsewhere PyTorch emulates bf16 and is many times slower), and a short
  probe (:func:`bf16_decode_speedup`, decoding-shaped products, ~0.2 s once per process) must show bf16 beating
  scratch-gpt's fp32 products. Both go through :class:`scratch_gpt.linear.Linear`, whose kernel is measured per
  shape and dtype on the running CPU; for bf16 the candidates include oneDNN's linear with the weight pre-packed
  once into its blocked layout (``torch.ops.mkldnn._reorder_linear_weight``), the form that uses AMX tiles.
  Otherwise the request falls back to fp32 with a warning saying why. (On the 2-core AMD EPYC this project was
  first developed on, which has AVX512-BF16 but no AMX, bf16 decoding measured slower than our fp32: 26 vs 31
  tokens/s at the 124M shape, one thread, CPU time; figures per CPU in docs/benchmarks.md.)
- ``int8``: every linear layer stored as 8-bit integers with one float scale per output row, through PyTorch's
  own quantized kernels (fbgemm: ``torch.ao.quantization.quantize_dynamic``). Loaded from a local
  ``model.safetensors``, the token and position embeddings stay in the file, memory-mapped
  (:func:`_mapped_embedding`): a lookup reads only the rows of its tokens, exact, so a tied LM head costs one int8
  copy, not two; elsewhere (a Hub id, an in-memory model) they are int8 too. Activations are quantized per call
  on the fly, so the matrix products run as int8 GEMMs. Measured at GPT-2 124M's shapes on this project's 2-core AVX-512 CPU (one
  thread, CPU time of one pass over all linear weights; ``benchmarks/bench_local.py`` measures decoding end to
  end): fbgemm int8 105-110 passes/s at batch 1 and ~89 at batch 8, plain fp32 ``nn.Linear`` 25 / 12, bf16 31-33
  / 26, torchao 0.18's ``Int8WeightOnlyConfig`` 8 / 6 and ``torch._weight_int8pack_mm`` 9 / 1 (both without a
  fused CPU kernel here, so they dequantize and lose to fp32). That is why int8 goes through fbgemm.

scratch-gpt's :class:`scratch_gpt.linear.Linear` (an ``nn.Linear`` subclass with fast fp32 CPU paths) is
first turned back into a plain ``nn.Linear`` holding the same parameters, since the quantizer swaps modules by
exact type.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

from training.shared.hardware import cpu_has_bf16_units

logger = logging.getLogger(__name__)

DTYPES = ("fp32", "bf16", "int8")
BF16_MIN_SPEEDUP = 1.1  # bf16 must beat fp32 by this much in the probe to be used


@functools.lru_cache(maxsize=None)
def bf16_decode_speedup(width: int = 768, matrices: int = 8, repeats: int = 12) -> float:
    """fp32 time / bf16 time of decoding-shaped products on this CPU (one row through ``matrices`` weights of
    ``(4 * width, width)``, together larger than the caches, as decoding streams them); > 1 means bf16 wins.

    Both run through scratch-gpt's :class:`~scratch_gpt.linear.Linear`, as a loaded model does: each dtype takes
    the kernel measured fastest on this CPU (for bf16, oneDNN with pre-packed weights where that wins).
    """
    import torch

    from scratch_gpt.linear import Linear

    layers = [Linear(width, 4 * width, bias=False).requires_grad_(False) for _ in range(matrices)]
    halves = [Linear(width, 4 * width, bias=False, dtype=torch.bfloat16).requires_grad_(False)
              for _ in range(matrices)]
    x = torch.randn(1, width)
    xb = x.bfloat16()

    def best(step: Any) -> float:
        step()  # the first call per shape chooses the kernel
        times = []
        for _ in range(repeats):
            start = time.process_time()  # CPU time of this process: other jobs on the machine do not count
            step()
            times.append(time.process_time() - start)
        return min(times)

    with torch.no_grad():
        fp32 = best(lambda: [layer(x) for layer in layers])
        bf16 = best(lambda: [layer(xb) for layer in halves])
    return fp32 / bf16


def _bf16_refusal() -> str | None:
    """Why bf16 would not be faster than fp32 on this CPU, or None when it is."""
    if not cpu_has_bf16_units():
        return "this CPU has no bf16 units (AVX512-BF16 / AMX), so bf16 would be emulated and slower than fp32"
    speedup = bf16_decode_speedup()
    if speedup < BF16_MIN_SPEEDUP:
        return (f"bf16 decoding measured {speedup:.2f}x the speed of fp32 on this CPU (needs "
                f"{BF16_MIN_SPEEDUP}x), so it would not help")
    return None


def resolve_dtype(dtype: str, device: str = "cpu") -> str:
    """The precision to use: ``dtype``, or fp32 (with a warning) for bf16 on a CPU where it is not faster."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown --dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if dtype == "int8" and not str(device).startswith("cpu"):
        raise ValueError(f"--dtype int8 runs on the CPU only (fbgemm kernels); got --device {device}")
    reason = _bf16_refusal() if dtype == "bf16" and str(device).startswith("cpu") else None
    if reason:
        message = f"{reason}; falling back to --dtype fp32"
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        logger.warning(message)
        return "fp32"
    return dtype


def _plain_linear(module: Any) -> Any:
    """A plain ``nn.Linear`` sharing ``module``'s parameters (the quantizer matches modules by exact type)."""
    from torch import nn

    plain = nn.Linear(1, 1, bias=module.bias is not None, device="meta")
    plain.in_features, plain.out_features = module.in_features, module.out_features
    plain.weight = module.weight
    plain.bias = module.bias
    return plain


def _as_plain_linears(model: Any) -> int:
    """Replace every ``nn.Linear`` subclass by a plain ``nn.Linear`` in place; returns the number of linears."""
    from torch import nn

    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                count += 1
                if type(child) is not nn.Linear:
                    setattr(parent, name, _plain_linear(child))
    return count


def quantize_int8(model: Any) -> Any:
    """Quantize ``model``'s linear layers and embeddings to int8 in place (fbgemm, per-row scales); returns it.

    ValueError when the model has no linear layer (nothing to quantize, or already quantized).
    """
    if _as_plain_linears(model) == 0:
        raise ValueError(
            f"--dtype int8 quantizes linear layers, but this {type(model).__name__} has none (already quantized, "
            "or not a transformer); use --dtype fp32 or bf16"
        )
    return _quantize_modules(model)


def _quantize_modules(model: Any, embeddings: bool = True) -> Any:
    """``quantize_dynamic`` in place: linear layers per output channel, embeddings per row (fbgemm)."""
    import torch
    from torch import nn
    from torch.ao.quantization import float_qparams_weight_only_qconfig, per_channel_dynamic_qconfig

    torch.backends.quantized.engine = "fbgemm" if "fbgemm" in torch.backends.quantized.supported_engines else "x86"
    spec = {nn.Linear: per_channel_dynamic_qconfig}
    if embeddings:
        spec[nn.Embedding] = float_qparams_weight_only_qconfig
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated.*")  # torch.ao's eager API; see module doc
        torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
    return model


def load_for_generation(path: str | Path, dtype: str = "fp32", device: str = "cpu", **kwargs: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained(path, **kwargs)`` in eval mode at ``dtype`` (fp32 | bf16 | int8).

    bf16 falls back to fp32 with a warning on CPUs without bf16 units; int8 quantizes every linear layer and
    embedding (CPU only). ``kwargs`` go to ``from_pretrained`` (e.g. ``trust_remote_code``, ``revision``).
    """
    import torch
    from transformers import AutoModelForCausalLM

    import scratch_gpt  # noqa: F401  (registers the architecture with the Auto classes)

    precision = resolve_dtype(dtype, device)
    torch_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    if precision == "int8":
        streamed = _load_int8_streaming(Path(path), kwargs)
        if streamed is not None:
            return streamed
        kwargs.setdefault("disable_mmap", True)  # read, not mapped: mapped fp32 pages would stay resident
    model = AutoModelForCausalLM.from_pretrained(os.fspath(path), dtype=torch_dtype, **kwargs).eval()
    if precision == "int8":
        return _own_memory(quantize_int8(model))
    return model.to(device)


def _load_int8_streaming(folder: Path, kwargs: dict[str, Any]) -> Any | None:
    """The int8 model built one layer at a time from a local ``model.safetensors``, or None where that does not
    apply (a Hub id, sharded or other weight files, extra ``from_pretrained`` options, names that do not match).

    The model is created on the meta device; each linear layer is read from the file (plain reads, no memory
    map, so pages read do not stay in the process), quantized and swapped in, so at most one fp32 layer is in
    memory at a time: the loaded model's footprint is its int8 weights, not a full fp32 copy (and the heap it
    leaves fragmented) first. Embeddings become :func:`_mapped_embedding` views of the file.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    weights = folder / "model.safetensors"
    if not weights.is_file() or set(kwargs) - {"trust_remote_code"}:
        return None
    header = _safetensors_header(weights)
    if header is None:
        return None
    config = AutoConfig.from_pretrained(os.fspath(folder), **kwargs)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, **kwargs)
    names = _checkpoint_names(model, set(header) - {"__metadata__", "__data_start__"})
    quantizable = _quantizable(model)
    if names is None or not any(isinstance(m, torch.nn.Linear) for _, m in quantizable):
        return None
    if any(header[key].get("dtype") not in _SAFETENSORS_DTYPES for key in set(names.values())):
        return None
    with open(weights, "rb") as file:
        read = functools.partial(_read_tensor, file, header)
        for module_name, module in quantizable:
            mapped = _mapped_embedding(weights, header, module_name, module, names)
            if mapped is not None:
                _replace_module(model, module_name, mapped)
            else:
                _swap_quantized(model, module_name, module, names, read)
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if tensor.is_meta:
                _set_tensor(model, name, read(names[name]).to(tensor.dtype))
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(os.fspath(folder))
    return model.eval()


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _tensor_location(header: dict[str, Any], key: str) -> tuple[Any, tuple[int, ...], int, int]:
    """``(dtype, shape, byte offset in the file, byte count)`` of tensor ``key``; ValueError for a dtype we do not
    read or a byte count that does not match the shape."""
    import math

    import torch

    entry = header[key]
    if entry["dtype"] not in _SAFETENSORS_DTYPES:
        raise ValueError(f"{key}: safetensors dtype {entry['dtype']} is not supported by the int8 loader")
    dtype, shape = getattr(torch, _SAFETENSORS_DTYPES[entry["dtype"]]), tuple(entry["shape"])
    begin, end = entry["data_offsets"]
    if end - begin != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"{key}: {end - begin} bytes in the file for shape {list(shape)}")
    return dtype, shape, header["__data_start__"] + begin, end - begin


def _read_tensor(file: Any, header: dict[str, Any], key: str) -> Any:
    """Tensor ``key`` of a safetensors file, read into fresh memory (ValueError: see :func:`_tensor_location`)."""
    import torch

    dtype, shape, offset, size = _tensor_location(header, key)
    out = torch.empty(shape, dtype=dtype)
    file.seek(offset)
    if size and file.readinto(memoryview(out.reshape(-1).view(torch.uint8).numpy())) != size:
        raise ValueError(f"{key}: the file ends early")
    return out


@functools.cache
def _mapped_embedding_class() -> type:
    """The ``MappedEmbedding`` module class (defined on first use: this module imports torch lazily)."""
    import torch
    from torch import nn

    class MappedEmbedding(nn.Module):
        """An embedding whose table stays in the weights file, memory-mapped (copy-on-write, read-only use).

        A lookup reads only the rows of the tokens it is given, so only their pages become resident: decoding
        touches a few hundred rows of a 50,257-row table. The rows are the stored float values, exact.
        """

        def __init__(self, weight: torch.Tensor, padding_idx: int | None = None):
            super().__init__()
            self.num_embeddings, self.embedding_dim = weight.shape
            self.padding_idx = padding_idx
            self.register_buffer("weight", weight, persistent=False)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.embedding(input_ids, self.weight).float()

        def extra_repr(self) -> str:
            return f"{self.num_embeddings}, {self.embedding_dim}, memory-mapped {self.weight.dtype}"

    return MappedEmbedding


def _safetensors_header(path: Path) -> dict[str, Any] | None:
    """The JSON header of a safetensors file plus ``__data_start__`` (byte offset of the data), or None."""
    import json
    import struct

    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return None
    header["__data_start__"] = 8 + size
    return header


def _mapped_embedding(path: Path, header: dict, module_name: str, module: Any, names: dict[str, str]) -> Any:
    """``module`` (an ``nn.Embedding``) as a ``MappedEmbedding`` over its table in ``path``, or None where the
    table is not a 16- or 32-bit float tensor of the module's shape (then it is quantized like the rest)."""
    import numpy as np
    import torch
    from torch import nn

    if not isinstance(module, nn.Embedding):
        return None
    dtype, shape, offset, _ = _tensor_location(header, names[f"{module_name}.weight" if module_name else "weight"])
    if not dtype.is_floating_point or dtype.itemsize not in (2, 4) or shape != tuple(module.weight.shape):
        return None
    if offset % dtype.itemsize:
        return None  # a misaligned table: the lookup would read unaligned values
    # numpy has no bfloat16: map raw 16-bit words and view them as the torch dtype.
    table = np.memmap(path, dtype=np.uint16 if dtype.itemsize == 2 else np.float32, mode="c", offset=offset,
                      shape=shape)
    weight = torch.from_numpy(table)
    if dtype.itemsize == 2:
        weight = weight.view(dtype)
    return _mapped_embedding_class()(weight, module.padding_idx)


def _checkpoint_names(model: Any, keys: set[str]) -> dict[str, str] | None:
    """Every parameter and buffer name of ``model`` -> its key in the file (tied weights -> the stored copy);
    None when one is missing or a meta buffer is not stored (it would need the model's own init)."""
    names = {name: name for name, _ in model.named_parameters(remove_duplicate=False)}
    tied = _tied_aliases(model)
    for name in list(names):
        if name not in keys:
            alias = tied.get(name)
            if alias not in keys:
                return None
            names[name] = alias
    for name, buffer in model.named_buffers():
        if buffer.is_meta:
            if name not in keys:
                return None
            names[name] = name
    return names


def _tied_aliases(model: Any) -> dict[str, str]:
    """Parameter names that share one tensor -> the first name of that tensor (the tied LM head -> embedding)."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, tensor in model.named_parameters(remove_duplicate=False):
        key = id(tensor)
        if key in first:
            aliases[name] = first[key]
            aliases.setdefault(first[key], name)
        else:
            first[key] = name
    return aliases


def _quantizable(model: Any) -> list[tuple[str, Any]]:
    from torch import nn

    return [(name, module) for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Embedding))]


def _swap_quantized(model: Any, module_name: str, module: Any, names: dict[str, str], read: Any) -> None:
    """Read ``module``'s weights (``read(key)``), quantize them to int8, and put the result in its place."""
    import torch
    from torch import nn

    prefix = f"{module_name}." if module_name else ""
    weight = read(names[prefix + "weight"]).float()
    if isinstance(module, nn.Embedding):
        plain = nn.Embedding(*weight.shape, padding_idx=module.padding_idx, _weight=weight)
    else:
        plain = nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None, device="meta")
        plain.weight = nn.Parameter(weight, requires_grad=False)
        if module.bias is not None:
            bias = read(names[prefix + "bias"]).float()
            plain.bias = nn.Parameter(bias, requires_grad=False)
    _replace_module(model, module_name, _quantize_modules(nn.Sequential(plain))[0])


def _replace_module(model: Any, name: str, module: Any) -> None:
    """Put ``module`` in place of ``model``'s submodule ``name``."""
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name), leaf, module)


def _set_tensor(model: Any, name: str, value: Any) -> None:
    from torch import nn

    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[leaf] = value


def _own_memory(model: Any) -> Any:
    """Copy the float tensors left after quantization (norms, biases) out of the weights file's memory map.

    ``from_pretrained`` may leave parameters as views of the mmapped safetensors file; one such view keeps the
    whole mapping, with every page quantization touched, resident.
    """
    for tensors in (model.parameters(), model.buffers()):
        for tensor in tensors:
            tensor.data = tensor.data.clone()
    return model


def weight_bytes(model: Any) -> int:
    """Bytes of weights a forward pass reads (parameters, buffers and packed quantized weights; a memory-mapped
    embedding table is not counted: a lookup reads one row per token)."""
    import torch

    total = sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
    for module in model.modules():
        packed = getattr(module, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            weight, bias = packed._weight_bias()
            total += weight.numel() * weight.element_size() + (0 if bias is None else bias.numel() * 4)
    return total


__all__ = ["DTYPES", "bf16_decode_speedup", "cpu_has_bf16_units", "load_for_generation", "quantize_int8", "resolve_dtype", "weight_bytes"]
