"""`scratch-gpt export MODEL OUT --format executorch [--quant int8]`: one ``.pte`` program for ExecuTorch (phones,
embedded), a static KV cache, delegated to XNNPACK, verified with ExecuTorch's Python runtime before it appears.

The folder::

    OUT/model.pte                 method ``forward(tokens (1, t) int64, input_pos (t,) int64) -> logits (1, t, V)``
                                  (the signature of ExecuTorch's LLM runner), plus constant methods
                                  get_max_seq_len, get_vocab_size, get_bos_id, get_eos_ids, use_kv_cache, ...
    OUT/config.json, generation_config.json, tokenizer.json, ...   (the source's, for the runner's tokenizer)

Choices:

- **Static cache as buffers of the program:** :class:`ExecuTorchDecoder` holds ``k{i}``/``v{i}`` buffers of
  ``(1, kv_heads, max_cache_len, head_dim)`` and writes the new keys at ``input_pos`` (``index_copy_``; ExecuTorch
  keeps mutated buffers between calls). The model gets ``position_ids = input_pos`` and a 4D boolean mask
  ``key_position <= input_pos`` over the whole buffer, so nothing depends on data (``_past_length`` takes the
  positions as given when a 4D mask comes with them). transformers' ``StaticCache`` is not used: its
  ``cumulative_length`` counter makes torch 2.13's ``run_decompositions`` fail ("expected compiled_fn to be
  GraphModule, got <class 'function'>"), which ExecuTorch's lowering calls.
- **The cache starts at zero:** ExecuTorch does not serialize a mutated buffer's contents unless asked, and an
  unwritten slot holding NaN would poison attention (``0 * NaN``) even though the mask hides it; so the program
  stores the zeros (``InitializedMutableBufferPass``): the file grows by the cache's size.
- **tanh GELU (GPT-2) stays out of XNNPACK:** executorch 1.5.1's XNNPACK GELU ignores ``approximate="tanh"``
  (it computes the erf GELU: logits 4e-5 relative off, far above rounding), so that op runs in the portable kernel.
- **int8** (``--quant int8``): XNNPACK's quantizer (pt2e; per-channel int8 weights, int8 activations quantized
  at run time), the linear layers only; checked by next-token agreement with fp32, as the ONNX int8 file is.
- **Verification** runs the written ``.pte`` in ExecuTorch's runtime (``executorch.runtime``): the prompt's
  logits within the fp32 tolerance, then greedy tokens one step at a time equal ScratchGPT's with its own cache.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

PTE_FILE = "model.pte"
QUANTS = ("int8",)
INSTALL = ("pip install executorch==1.5.1 (it installs beside torch 2.13; add -c with your torch pin so pip "
           "keeps it)")


@dataclass
class ExecuTorchExportResult:
    """What an ExecuTorch export wrote and how its self-check went."""

    out_dir: Path
    quant: str | None
    files: list[str]
    verification: dict[str, Any]
    seconds: float
    warnings: list[str] = field(default_factory=list)
    model_type: str = "executorch"


class _BufferCache:
    """The duck-typed cache the model's attention writes to: ``update`` stores keys/values at the current positions
    in the owner's buffers and returns the whole buffers (the mask hides the unwritten tail)."""

    def __init__(self, owner: torch.nn.Module):
        self.owner = owner
        self.positions: torch.Tensor | None = None

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, **_: Any):
        """Write ``key``/``value`` ``(1, kv_heads, t, d)`` at ``self.positions``; the full cache of that layer."""
        keys, values = getattr(self.owner, f"k{layer_idx}"), getattr(self.owner, f"v{layer_idx}")
        keys.index_copy_(2, self.positions, key)
        values.index_copy_(2, self.positions, value)
        return keys, values


class ExecuTorchDecoder(torch.nn.Module):
    """``(tokens (1, t), input_pos (t,)) -> logits (1, t, V)`` over a static cache held in buffers."""

    def __init__(self, model: torch.nn.Module, max_cache_len: int):
        super().__init__()
        self.model = model
        self.max_cache_len = max_cache_len
        config = model.config
        for i in range(config.num_hidden_layers):
            for kind in ("k", "v"):
                shape = (1, config.num_key_value_heads, max_cache_len, config.head_dim)
                self.register_buffer(f"{kind}{i}", torch.zeros(shape), persistent=False)
        self.cache = _BufferCache(self)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """Logits of ``tokens`` at positions ``input_pos``, their keys and values written into the cache."""
        self.cache.positions = input_pos
        mask = torch.arange(self.max_cache_len, device=tokens.device)[None, :] <= input_pos[:, None]
        out = self.model(input_ids=tokens, attention_mask=mask[None, None], position_ids=input_pos[None],
                         cache=self.cache, use_cache=True)
        return out.logits


def check_executorch_dependencies() -> None:
    """Raise ``ValueError`` (one line, with the install command) when executorch is not importable."""
    if importlib.util.find_spec("executorch") is None:
        raise ValueError(f"--format executorch needs the executorch package: {INSTALL}")


def export_decoder_program(decoder: torch.nn.Module, max_cache_len: int) -> torch.export.ExportedProgram:
    """``torch.export`` of ``decoder`` (or its quantized graph) with a dynamic token count (1 .. max_cache_len)."""
    seq = torch.export.Dim("seq", min=1, max=max_cache_len)
    example = (torch.zeros(1, 2, dtype=torch.long), torch.arange(2))
    with torch.no_grad():
        return torch.export.export(decoder, example, dynamic_shapes={"tokens": {1: seq}, "input_pos": {0: seq}},
                                   strict=False)


def quantize_int8(decoder: ExecuTorchDecoder, calibration: list[int]) -> torch.nn.Module:
    """The decoder with XNNPACK's dynamic int8 linear layers (pt2e), calibrated on ``calibration`` tokens."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    prepared = prepare_pt2e(export_decoder_program(decoder, decoder.max_cache_len).module(), quantizer)
    with torch.no_grad():
        prepared(torch.tensor([calibration]), torch.arange(len(calibration)))
    return convert_pt2e(prepared)


def lower_to_pte(program: torch.export.ExportedProgram, config: Any, max_cache_len: int, eos: list[int]) -> bytes:
    """XNNPACK-delegated ExecuTorch program bytes, the cache buffers stored as zeros, with the runner's metadata."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

    metadata = {
        "get_max_seq_len": max_cache_len, "get_max_context_len": max_cache_len, "get_vocab_size": config.vocab_size,
        "get_bos_id": config.bos_token_id if config.bos_token_id is not None else eos[0], "get_eos_ids": eos,
        "use_kv_cache": True, "use_sdpa_with_kv_cache": False, "enable_dynamic_shape": True,
    }
    partitioner = XnnpackPartitioner(configs=_xnnpack_configs(program))
    edge = to_edge_transform_and_lower(program, partitioner=[partitioner], constant_methods=metadata)
    delegated = sum(1 for n in edge.exported_program().graph.nodes if "call_delegate" in str(n.target))
    if delegated == 0:
        raise RuntimeError("XNNPACK took no part of the graph")
    pattern = [f"{kind}{i}" for i in range(config.num_hidden_layers) for kind in ("k", "v")]
    backend = ExecutorchBackendConfig(passes=[InitializedMutableBufferPass(pattern)])
    logger.info("ExecuTorch program: %d XNNPACK delegate calls", delegated)
    return edge.to_executorch(backend).buffer


def _xnnpack_configs(program: torch.export.ExportedProgram) -> list:
    """XNNPACK's partitioner configs, without GELU when the graph has a tanh GELU: executorch 1.5.1's XNNPACK
    visitor drops ``approximate="tanh"`` and runs the exact (erf) GELU, 4.7e-4 away; ExecuTorch's portable kernel
    then runs it as written."""
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS

    tanh = any(node.target == torch.ops.aten.gelu.default and node.kwargs.get("approximate") == "tanh"
               for node in program.graph.nodes)
    return [c for c in ALL_PARTITIONER_CONFIGS if not (tanh and c.__name__ == "GeluConfig")]


class PteDecoder:
    """A ``.pte`` written by this module, run by ExecuTorch's Python runtime."""

    def __init__(self, path: Path):
        from executorch.runtime import Runtime

        started = time.perf_counter()
        self.method = Runtime.get().load_program(str(path)).load_method("forward")
        self.load_seconds = time.perf_counter() - started

    def step(self, tokens: list[int], start: int) -> torch.Tensor:
        """Logits ``(1, len(tokens), V)`` of ``tokens`` placed after ``start`` cached positions."""
        out = self.method.execute([torch.tensor([tokens]), torch.arange(start, start + len(tokens))])
        return out[0]

    def greedy(self, prompt: list[int], steps: int) -> list[int]:
        """``steps`` greedy tokens: the prompt in one call, then one token per call."""
        tokens = [int(self.step(prompt, 0)[0, -1].argmax())]
        for _ in range(steps - 1):
            tokens.append(int(self.step([tokens[-1]], len(prompt) + len(tokens) - 1)[0, -1].argmax()))
        return tokens


def verify_pte(path: Path, model: Any, tokenizer: Any, max_cache_len: int,
               fp32_tokens: list[int] | None = None) -> dict[str, Any]:
    """fp32 (``fp32_tokens`` None): prompt logits within tolerance and equal greedy tokens; int8: next-token
    agreement with ``fp32_tokens`` (teacher forced) >= the ONNX rule's. Raises ExportVerificationError."""
    from .onnx_verify import GREEDY_TOKENS, INT8_MIN_AGREEMENT, prompt_ids, source_greedy
    from .verify import ExportVerificationError, logits_tolerance

    prompt = prompt_ids(tokenizer, model.config)[: max(2, max_cache_len - GREEDY_TOKENS)]
    if len(prompt) + GREEDY_TOKENS > max_cache_len:
        raise ValueError(f"the cache ({max_cache_len}) is too short for the check ({GREEDY_TOKENS} tokens + a prompt)")
    program = PteDecoder(path)
    if fp32_tokens is not None:
        predicted = program.step(prompt + fp32_tokens[:-1], 0)[0, len(prompt) - 1:].argmax(-1).tolist()
        agreement = sum(int(a == b) for a, b in zip(predicted, fp32_tokens)) / len(fp32_tokens)
        if agreement < INT8_MIN_AGREEMENT:
            raise ExportVerificationError(f"the int8 program picks fp32's next token at {agreement:.0%} of "
                                          f"{len(fp32_tokens)} positions; export without --quant")
        return {"int8_next_token_agreement": agreement, "prompt_ids": prompt}
    with torch.no_grad():
        reference = model(input_ids=torch.tensor([prompt]), use_cache=False).logits
    atol = max(1e-4, logits_tolerance(model.config, reference))
    diff = float((program.step(prompt, 0) - reference).abs().max())
    if diff > atol:
        raise ExportVerificationError(f"ExecuTorch logits differ from the model's by {diff:.3g}, above {atol:.3g}")
    expected, got = source_greedy(model, prompt, GREEDY_TOKENS), PteDecoder(path).greedy(prompt, GREEDY_TOKENS)
    if got != expected:
        raise ExportVerificationError(f"greedy tokens differ: ExecuTorch {got}, model {expected}")
    return {"max_abs_diff": diff, "tolerance": atol, "greedy_tokens": got, "prompt_ids": prompt}


def _plan(model_dir: Path, out_dir: Path, quant: str | None, overwrite: bool) -> bool:
    """Validate before loading (dependencies, quant, a causal LM folder, OUT_DIR); whether it has a tokenizer."""
    from scratch_gpt.safe_output import check_output

    from .export import check_tokenizer, check_weights, read_model_config, task_of

    if quant is not None and quant not in QUANTS:
        raise ValueError(f"--format executorch takes --quant int8 (or none for fp32), not {quant!r}")
    check_executorch_dependencies()
    config = read_model_config(model_dir)
    if task_of(config) != "text-generation":
        raise ValueError(f"--format executorch exports text-generation models and {model_dir} is a "
                         f"{task_of(config)} model; export it with --format remote-code")
    check_weights(model_dir)
    check_output(out_dir, overwrite=overwrite, inputs=[model_dir])
    return check_tokenizer(model_dir, require=False)


def export_executorch(
    model_dir: str | Path, out_dir: str | Path, quant: str | None = None, overwrite: bool = False,
    max_cache_len: int | None = None,
) -> ExecuTorchExportResult:
    """Write and verify OUT_DIR (``model.pte`` + config + tokenizer); ``max_cache_len`` defaults to the context.

    ``ValueError`` for bad input or a missing executorch (one line with the fix);
    :class:`hub_export.verify.ExportVerificationError` when the runtime does not reproduce the model (OUT_DIR is
    then left as it was).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scratch_gpt.safe_output import staged_output

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    start = time.perf_counter()
    has_tokenizer = _plan(model_dir, out_dir, quant, overwrite)
    model = AutoModelForCausalLM.from_pretrained(model_dir, cpu_fast_paths=False, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir) if has_tokenizer else None
    length = min(max_cache_len or model.config.max_position_embeddings, model.config.max_position_embeddings)
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    eos = [eos] if isinstance(eos, int) else list(eos or [model.config.eos_token_id or 0])
    with staged_output(out_dir, overwrite=overwrite, inputs=[model_dir]) as stage:
        decoder = ExecuTorchDecoder(model, length).eval()
        (stage / PTE_FILE).write_bytes(lower_to_pte(export_decoder_program(decoder, length), model.config, length, eos))
        report = verify_pte(stage / PTE_FILE, model, tokenizer, length)
        if quant == "int8":
            quantized = quantize_int8(ExecuTorchDecoder(model, length).eval(), report["prompt_ids"] + report[
                "greedy_tokens"])
            program = export_decoder_program(quantized, length)
            fp32_bytes = (stage / PTE_FILE).stat().st_size
            (stage / PTE_FILE).write_bytes(lower_to_pte(program, model.config, length, eos))
            tokens = report["greedy_tokens"]
            report.update(verify_pte(stage / PTE_FILE, model, tokenizer, length, fp32_tokens=tokens))
            report["int8_size_ratio"] = round((stage / PTE_FILE).stat().st_size / fp32_bytes, 3)
        model.config.save_pretrained(stage)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(stage)
        if tokenizer is not None:
            tokenizer.save_pretrained(stage)
        files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
    warnings = [] if has_tokenizer else [f"{model_dir} has no tokenizer: ExecuTorch's runner needs tokenizer.json"]
    return ExecuTorchExportResult(out_dir, quant, files, report, time.perf_counter() - start, warnings)


__all__ = [
    "PTE_FILE",
    "ExecuTorchDecoder",
    "ExecuTorchExportResult",
    "PteDecoder",
    "check_executorch_dependencies",
    "export_executorch",
    "verify_pte",
]
