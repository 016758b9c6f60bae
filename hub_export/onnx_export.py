"""`scratch-gpt export MODEL OUT --format onnx [--quant int8]`: an ONNX decoder with a KV cache in the layout
transformers.js (and onnxruntime-based loaders) read, verified with onnxruntime before it appears.

The folder::

    OUT/config.json             a plain gpt2 / llama / qwen3 config (the model_type transformers.js maps)
    OUT/generation_config.json
    OUT/tokenizer.json, tokenizer_config.json, ...
    OUT/onnx/model.onnx          fp32; inputs input_ids, attention_mask, position_ids, past_key_values.{i}.key|value
                                 outputs logits, present.{i}.key|value
    OUT/onnx/model_quantized.onnx  with --quant int8: int8 weights (onnxruntime quantize_dynamic), transformers.js
                                 dtype "q8"

Choices:

- **Exporter:** ``torch.onnx.export(..., dynamo=True)`` (torch.export, then onnxscript). It traces our forward
  unchanged: under torch.export ``torch.compiler.is_compiling()`` is true, so the model takes transformers'
  ``create_causal_mask`` path, which is export-safe and keeps the padding mask symbolic. The TorchScript
  exporter is deprecated in torch 2.13 and was not needed.
- **The cache at the boundary:** :class:`OnnxDecoder` takes the past keys and values as flat tensors, builds a
  ``DynamicCache`` from them, calls the model and returns the logits and the grown cache flat again, so
  ``scratch_gpt`` needs no change. The model is loaded with ``cpu_fast_paths=False`` (plain ``nn.Linear`` math;
  the CPU kernel tuner times kernels at run time, which a trace must not capture).
- **Dynamic axes carry the names transformers.js resolves:** it builds the first (empty) past from the session's
  input metadata, replacing the symbol ``batch_size`` with the batch and any other symbol with 0; so the past is
  ``[batch_size, kv_heads, past_sequence_length, head_dim]`` with the heads and head size fixed numbers.
- **config.json** is the one ``--format gpt2`` / ``llama`` / ``qwen3`` would write (learned positions: gpt2;
  RoPE family: qwen3 with QK-norm, else llama), so a model either library cannot express is refused up front.
- **Verification** (:mod:`hub_export.onnx_verify`) runs the written files in onnxruntime (no scratch_gpt code is
  in them): logits within the fp32 tolerance with and without past keys, and the same greedy tokens with the
  KV cache; the int8 file by next-token agreement (see there).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

ONNX_DIR = "onnx"
MODEL_FILE = "model.onnx"
QUANTIZED_FILE = "model_quantized.onnx"
QUANTS = ("int8",)
OPSET = 18
# Example sizes for tracing: above 1 so that torch.export keeps every dynamic axis symbolic.
_TRACE_BATCH, _TRACE_SEQ, _TRACE_PAST = 2, 3, 4


@dataclass
class OnnxExportResult:
    """What an ONNX export wrote and how its self-check went."""

    out_dir: Path
    quant: str | None
    model_type: str
    files: list[str]
    verification: dict[str, Any]
    seconds: float
    warnings: list[str] = field(default_factory=list)


class OnnxDecoder(torch.nn.Module):
    """A causal LM with a flat KV cache at its boundary: ``(ids, mask, positions, *past) -> (logits, *present)``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.num_layers = model.config.num_hidden_layers

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, past: list
    ) -> tuple[torch.Tensor, ...]:
        """``past`` is ``[key_0, value_0, key_1, ...]``, each ``(batch, kv_heads, past_len, head_dim)``."""
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache()
        for i in range(self.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache, use_cache=True
        )
        present = []
        for layer in out.cache.layers:
            present += [layer.keys, layer.values]  # (b, kv_heads, past + t, d)
        return (out.logits, *present)


def cache_names(num_layers: int, prefix: str) -> list[str]:
    """``{prefix}.{i}.key``, ``{prefix}.{i}.value`` for every layer, in the order :class:`OnnxDecoder` uses."""
    return [f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def check_onnx_dependencies() -> None:
    """Raise ``ValueError`` (one line, with the install command) when onnx, onnxruntime or onnxscript is missing."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(
            f"--format onnx needs {', '.join(missing)}: install them with pip install 'scratch-gpt[onnx]'"
        )


def check_quant(quant: str | None) -> str | None:
    """``None`` (fp32 only) or ``int8``; anything else is a ``ValueError`` naming the choices."""
    if quant is not None and quant not in QUANTS:
        raise ValueError(f"--format onnx takes --quant int8 (or none for fp32 only), not {quant!r}")
    return quant


def plain_config(config: Any) -> Any:
    """The transformers config transformers.js reads for ``config`` (gpt2, llama or qwen3), or a ``ValueError``.

    Learned positions map to GPT-2; RoPE models to Qwen3 with QK-norm, else Llama. The converters refuse, naming
    the setting, what the target cannot express; that becomes one line saying what ONNX export supports.
    """
    from scratch_gpt.convert import gpt2_config_from_scratch
    from scratch_gpt.convert_family import family_config_from_scratch

    learned = config.position_embedding_type == "learned"
    target = "gpt2" if learned else ("qwen3" if config.qk_norm else "llama")
    try:
        plain = gpt2_config_from_scratch(config) if learned else family_config_from_scratch(config, target)
    except ValueError as err:
        raise ValueError(
            f"--format onnx writes a {target} config for transformers.js and this model does not fit it: {err}"
        ) from err
    plain.architectures = [{"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}.get(target, "Qwen3ForCausalLM")]
    plain.use_cache = True
    return plain


def _trace_inputs(config: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Example inputs (every dynamic axis above 1) and their dynamic shapes, by transformers.js's axis names."""
    b, t, p = _TRACE_BATCH, _TRACE_SEQ, _TRACE_PAST
    kv_heads, head_dim, layers = config.num_key_value_heads, config.head_dim, config.num_hidden_layers
    ids = torch.randint(0, config.vocab_size, (b, t))
    mask = torch.ones(b, p + t, dtype=torch.long)
    positions = torch.arange(p, p + t).expand(b, t)
    past = [torch.zeros(b, kv_heads, p, head_dim) for _ in range(2 * layers)]
    dynamic = {
        "input_ids": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
        "position_ids": {0: "batch_size", 1: "sequence_length"},
        "past": [{0: "batch_size", 2: "past_sequence_length"} for _ in range(2 * layers)],
    }
    return (ids, mask, positions, past), dynamic


def export_decoder(model: Any, path: Path) -> None:
    """Trace ``model`` (a causal LM loaded with ``cpu_fast_paths=False``) to an ONNX file at ``path``."""
    import warnings

    layers = model.config.num_hidden_layers
    args, dynamic = _trace_inputs(model.config)
    inputs = ["input_ids", "attention_mask", "position_ids", *cache_names(layers, "past_key_values")]
    outputs = ["logits", *cache_names(layers, "present")]
    for name in ("onnx_ir", "onnxscript", "torch.onnx._internal.exporter._registration"):  # chatter at INFO/WARNING
        logging.getLogger(name).setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            OnnxDecoder(model).eval(), args, dynamo=True, dynamic_shapes=dynamic, input_names=inputs,
            output_names=outputs, opset_version=OPSET, optimize=True, verbose=False,
        )
    for node in program.model.graph.all_nodes():  # the tracer's stack traces and module paths: most of a small file
        node.metadata_props.clear()
    path.parent.mkdir(parents=True, exist_ok=True)
    big = sum(p.numel() * p.element_size() for p in model.parameters()) >= 2**31 - 2**26
    program.save(str(path), external_data=big)  # one file below protobuf's 2 GB limit
    logger.info("wrote %s (opset %d)", path, OPSET)


def untie_transposed_weights(model: Any) -> int:
    """Give every MatMul that reads a transposed initializer (the tied LM head: ``x @ wte.T``) its own transposed
    copy, so that the quantizer sees a constant weight; returns how many were untied. In place on ``model``."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    untied = 0
    for node in graph.node:
        source = producer.get(node.input[1]) if node.op_type == "MatMul" else None
        if source is None or source.op_type != "Transpose" or source.input[0] not in inits:
            continue
        perm = next((list(a.ints) for a in source.attribute if a.name == "perm"), None)
        array = numpy_helper.to_array(inits[source.input[0]]).transpose(perm)
        name = f"{source.input[0]}.transposed"
        if name not in inits:
            inits[name] = numpy_helper.from_array(array.copy(), name)
            graph.initializer.append(inits[name])
        node.input[1] = name
        untied += 1
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node if n.op_type == "Transpose" and not any(o in used for o in n.output)]
    for node in dead:
        graph.node.remove(node)
    onnx.checker.check_model(model)
    return untied


def quantize_int8(source: Path, target: Path) -> None:
    """Write ``target``: ``source`` with int8 weights (MatMul, and the embedding Gathers as weight-only int8;
    activations are quantized at run time). The tied LM head gets its own transposed copy first."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    untie_transposed_weights(model)
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # the quantizer logs a line per tensor (and advice) on the root logger
    try:
        quantize_dynamic(
            model, str(target), weight_type=QuantType.QInt8, per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm", "Gather"],
        )
    finally:
        root.setLevel(level)
    logger.info("wrote %s (int8 weights, %.2fx the fp32 file)", target, target.stat().st_size / source.stat().st_size)


def _load(model_dir: Path, has_tokenizer: bool) -> tuple[Any, Any]:
    """The source model in fp32 with the plain kernels (``cpu_fast_paths=False``), and its tokenizer or None."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, cpu_fast_paths=False, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_dir) if has_tokenizer else None


def _plan(model_dir: Path, out_dir: Path, quant: str | None, overwrite: bool) -> tuple[Any, bool, list[str]]:
    """Validate before loading: dependencies, quant, a causal LM folder with intact weights, OUT_DIR, the config."""
    from scratch_gpt import ScratchGPTConfig
    from scratch_gpt.safe_output import check_output

    from .export import check_tokenizer, check_weights, read_model_config, task_of

    check_onnx_dependencies()
    check_quant(quant)
    config = read_model_config(model_dir)
    if task_of(config) != "text-generation":
        raise ValueError(f"--format onnx exports text-generation models and {model_dir} is a {task_of(config)} "
                         "model; export it with --format remote-code")
    check_weights(model_dir)
    check_output(out_dir, overwrite=overwrite, inputs=[model_dir])
    plain = plain_config(ScratchGPTConfig.from_pretrained(model_dir))
    has_tokenizer = check_tokenizer(model_dir, require=False)
    warnings = [] if has_tokenizer else [
        f"{model_dir} has no tokenizer: transformers.js's pipeline() needs tokenizer files beside the model"]
    return plain, has_tokenizer, warnings


def write_side_files(stage: Path, model: Any, tokenizer: Any, plain: Any) -> None:
    """config.json (plain), generation_config.json and the tokenizer files transformers.js reads."""
    plain.save_pretrained(stage)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(stage)
    if tokenizer is not None:
        tokenizer.save_pretrained(stage)


def export_onnx(
    model_dir: str | Path, out_dir: str | Path, quant: str | None = None, overwrite: bool = False,
    web: bool = False, web_assets: str | Path | None = None,
) -> OnnxExportResult:
    """Write and verify OUT_DIR (config, tokenizer, ``onnx/model.onnx`` and with ``quant="int8"`` the int8 file).

    ``web=True`` adds ``index.html`` and ``web/`` (:mod:`hub_export.web_page`: transformers.js in the browser, its
    files copied from ``web_assets`` or the npm package found on this machine).

    Raises ``ValueError`` / ``FileNotFoundError`` for bad input or missing onnx packages (one line with the fix) and
    :class:`hub_export.verify.ExportVerificationError` when onnxruntime does not reproduce the model; OUT_DIR is
    then left as it was.
    """
    from scratch_gpt.safe_output import staged_output

    from .onnx_verify import PROMPT, verify_onnx
    from .web_page import find_web_assets, write_web_page

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    start = time.perf_counter()
    plain, has_tokenizer, warnings = _plan(model_dir, out_dir, quant, overwrite)
    assets = find_web_assets(web_assets) if web else None
    if web and not has_tokenizer:
        raise ValueError(f"--web needs tokenizer files in {model_dir}: the page tokenizes the prompt in the browser")
    model, tokenizer = _load(model_dir, has_tokenizer)
    with staged_output(out_dir, overwrite=overwrite, inputs=[model_dir]) as stage:
        fp32 = stage / ONNX_DIR / MODEL_FILE
        export_decoder(model, fp32)
        if quant == "int8":
            quantize_int8(fp32, stage / ONNX_DIR / QUANTIZED_FILE)
        write_side_files(stage, model, tokenizer, plain)
        verification = verify_onnx(stage, model, tokenizer, quantized=quant == "int8")
        if assets is not None:
            write_web_page(stage, assets, title=model_dir.resolve().name, prompt=PROMPT,
                           dtype="q8" if quant == "int8" else "fp32")
        files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
    for warning in warnings:
        logger.warning(warning)
    logger.info("exported ONNX (%s) to %s", plain.model_type, out_dir)
    return OnnxExportResult(out_dir, quant, plain.model_type, files, verification, time.perf_counter() - start,
                            warnings)


__all__ = [
    "MODEL_FILE",
    "ONNX_DIR",
    "QUANTIZED_FILE",
    "QUANTS",
    "OnnxDecoder",
    "OnnxExportResult",
    "cache_names",
    "check_quant",
    "export_decoder",
    "export_onnx",
    "plain_config",
    "quantize_int8",
]
