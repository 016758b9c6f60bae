"""Running on the user's own CPU: decoding speed at fp32 / bf16 / int8, memory of a loaded model, GGUF export.

All in one JSON object, with the CPU it ran on (``cpu``: model, flags, cores, threads, load):

- ``decode``: greedy decoding tokens/s with the KV cache (``prompt`` tokens in, ``new_tokens`` out, EOS off) per
  shape and batch, for scratch-gpt at fp32, bf16 (only on CPUs with bf16 units) and int8
  (:func:`training.generate.precision.quantize_int8`), and transformers' ``GPT2LMHeadModel`` in fp32 with the
  same weights, interleaved in one process (order alternating per repetition), medians, each ratio to GPT-2's.
  When ``llama-cpp-python`` is installed, llama.cpp's f32 and q8_0 runs of our GGUF export join at batch 1.
- ``memory``: each model loaded for generation in a fresh subprocess (``load_for_generation`` /
  ``GPT2LMHeadModel.from_pretrained``), RSS above the after-imports baseline once loaded and after a short
  generation (freed memory returned to the OS first; transformers maps safetensors weights lazily, so the
  after-generation figure is the comparable one), the high-water mark including loading (int8 loads fp32
  first), and ratios to GPT-2's fp32.
- ``gguf_export``: time and peak RSS of ``export_gguf`` at each quantization, with the model's fp32 size.

    python benchmarks/bench_local.py --shapes tiny --reps 1 --new-tokens 16 --skip-memory   # smoke run
    python benchmarks/bench_local.py --shapes tiny,gpt2-124m --reps 3 --out local.json          # the real table

Random weights (speed does not depend on them). ``--vocab`` overrides the vocabulary (the issue's llama.cpp
reference used 4,096 at the 124M shape).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from cpu_info import cpu_info, kernel_choices  # noqa: E402

SHAPES = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=256, n_positions=256, vocab_size=8192),
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, n_positions=256, vocab_size=50257),
}


def _rss_mib(field: str) -> float:
    with open("/proc/self/status", encoding="utf-8") as fh:
        line = next(line for line in fh if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


# --------------------------------------------------------------------------------------------- models


def gpt2_config(shape: str, vocab: int | None) -> Any:
    from transformers import GPT2Config

    dims = dict(SHAPES[shape], vocab_size=vocab or SHAPES[shape]["vocab_size"])
    return GPT2Config(**dims, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)


def build_models(shape: str, vocab: int | None) -> dict[str, Any]:
    """GPT-2 fp32 and scratch-gpt fp32 / bf16 / int8 with the same random weights."""
    from transformers import GPT2LMHeadModel

    from scratch_gpt.convert import gpt2_to_scratch
    from training.generate.precision import cpu_has_bf16_units, quantize_int8

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(gpt2_config(shape, vocab)).eval()
    gpt2.config._attn_implementation = "sdpa"
    ours = gpt2_to_scratch(gpt2).eval()
    models = {"gpt2_fp32": gpt2, "fp32": ours, "int8": quantize_int8(copy.deepcopy(ours))}
    if cpu_has_bf16_units():
        models["bf16"] = copy.deepcopy(ours).to(torch.bfloat16)
    return models


@torch.inference_mode()
def generate_seconds(model: Any, ids: torch.Tensor, new_tokens: int) -> float:
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                  do_sample=False, eos_token_id=None, pad_token_id=0)
    start = time.perf_counter()
    out = model.generate(ids, **kwargs)
    elapsed = time.perf_counter() - start
    assert out.shape[1] == ids.shape[1] + new_tokens
    return elapsed


def llama_cpp_runner(gguf_path: Path, prompt_ids: list[int], new_tokens: int, threads: int) -> Callable[[], float]:
    """Seconds for llama.cpp (llama-cpp-python) to decode ``new_tokens`` greedily after the prompt."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), n_ctx=len(prompt_ids) + new_tokens + 8, n_threads=threads,
                n_batch=len(prompt_ids), verbose=False)

    def run() -> float:
        llm.reset()
        start = time.perf_counter()
        for count, _ in enumerate(llm.generate(prompt_ids, temp=0.0, top_k=1), start=1):
            if count == new_tokens:
                break
        return time.perf_counter() - start

    return run


# --------------------------------------------------------------------------------------------- decode table


def interleaved(runners: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
    """Seconds per run for each runner, alternating the order every repetition (after one warm-up each)."""
    for run in runners.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            times[name].append(runners[name]())
    return times


def summarise(times: dict[str, list[float]], tokens: int) -> dict[str, Any]:
    med = {name: statistics.median(t) for name, t in times.items()}
    out: dict[str, Any] = {f"{name}_tok_s": round(tokens / m, 2) for name, m in med.items()}
    out.update({f"{name}_vs_gpt2_fp32": round(med["gpt2_fp32"] / m, 3) for name, m in med.items()
                if name != "gpt2_fp32"})
    out["runs_s"] = {name: [round(x, 4) for x in t] for name, t in times.items()}
    return out


def decode_table(shape: str, args: argparse.Namespace, gguf_files: dict[str, Path]) -> dict[str, Any]:
    models = build_models(shape, args.vocab)
    vocab = models["fp32"].config.vocab_size
    result: dict[str, Any] = {"variants": sorted(models), "bf16": "bf16" in models or "skipped: no bf16 units"}
    for batch in args.batches:
        ids = torch.randint(0, vocab, (batch, args.prompt), generator=torch.Generator().manual_seed(1))
        runners = {name: (lambda m=m: generate_seconds(m, ids, args.new_tokens)) for name, m in models.items()}
        if batch == 1:
            runners.update({f"llama_cpp_{q}": llama_cpp_runner(p, ids[0].tolist(), args.new_tokens, args.threads)
                            for q, p in gguf_files.items()})
        print(f"[bench_local] decode {shape} batch {batch}", file=sys.stderr, flush=True)
        result[f"batch_{batch}"] = summarise(interleaved(runners, args.reps), batch * args.new_tokens)
    return result


# --------------------------------------------------------------------------------------------- subprocesses


def save_model(shape: str, vocab: int | None, folder: Path) -> None:
    """A random scratch-gpt model (+ a byte-level BPE tokenizer) and the same weights as a GPT-2 folder."""
    from transformers import GPT2LMHeadModel

    from scratch_gpt.convert import gpt2_to_scratch
    from training.data.tokenizer import train_tokenizer

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(gpt2_config(shape, vocab))
    gpt2.save_pretrained(folder / "gpt2")
    gpt2_to_scratch(gpt2).save_pretrained(folder / "ours")
    text = [line for line in Path(torch.__file__).read_text(encoding="utf-8").splitlines() if line.strip()]
    train_tokenizer(text, vocab_size=min(gpt2.config.vocab_size, 1024)).save_pretrained(folder / "ours")


def _import_all() -> None:
    """Import everything a child uses before its baseline, so the figures are the model's, not the imports'."""
    import gguf  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel  # noqa: F401

    import hub_export.gguf  # noqa: F401
    import scratch_gpt  # noqa: F401
    import training.generate.precision  # noqa: F401


def memory_child(folder: Path, variant: str, new_tokens: int) -> dict[str, float]:
    """In a fresh process: RSS (MiB) above the after-imports baseline once loaded, and the peak with generation."""
    from transformers import GPT2LMHeadModel

    from training.generate.precision import load_for_generation

    _import_all()
    base = _rss_mib("VmRSS")
    if variant == "gpt2_fp32":
        model = GPT2LMHeadModel.from_pretrained(folder / "gpt2").eval()
    else:
        model = load_for_generation(folder / "ours", variant)
    loaded = _settled_rss() - base
    generate_seconds(model, torch.zeros(1, 32, dtype=torch.long), new_tokens)
    return {"loaded_mib": round(loaded, 1), "after_generate_mib": round(_settled_rss() - base, 1),
            "peak_incl_load_mib": round(_rss_mib("VmHWM") - base, 1)}


def _settled_rss() -> float:
    """RSS once freed memory went back to the OS (gc, then glibc's malloc_trim where present)."""
    import ctypes
    import ctypes.util

    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc and hasattr(ctypes.CDLL(libc), "malloc_trim"):
        ctypes.CDLL(libc).malloc_trim(0)
    return _rss_mib("VmRSS")


def gguf_child(folder: Path, quant: str) -> dict[str, float]:
    """In a fresh process: seconds and peak RSS (MiB, above the baseline) of one GGUF export."""
    from hub_export.gguf import export_gguf

    _import_all()
    base = _rss_mib("VmRSS")
    start = time.perf_counter()
    out = folder / f"gguf-{quant}"
    export_gguf(folder / "ours", out, quant=quant, overwrite=True)
    return {"seconds": round(time.perf_counter() - start, 2), "peak_mib": round(_rss_mib("VmHWM") - base, 1),
            "file_mib": round((out / "model.gguf").stat().st_size / 2**20, 1)}


def run_child(*child_args: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", *child_args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_table(folder: Path, variants: list[str]) -> dict[str, Any]:
    result = {variant: run_child("memory", str(folder), variant) for variant in variants}
    ref = result["gpt2_fp32"]
    for row in result.values():
        row["after_generate_vs_gpt2_fp32"] = round(row["after_generate_mib"] / ref["after_generate_mib"], 3)
        row["peak_incl_load_vs_gpt2_fp32"] = round(row["peak_incl_load_mib"] / ref["peak_incl_load_mib"], 3)
    return result


def gguf_table(folder: Path) -> dict[str, Any]:
    model_mib = (folder / "ours" / "model.safetensors").stat().st_size / 2**20
    result: dict[str, Any] = {"model_fp32_mib": round(model_mib, 1)}
    for quant in ("f32", "q8_0"):
        row = run_child("gguf", str(folder), quant)
        row["peak_vs_model_size"] = round(row["peak_mib"] / model_mib, 3)
        result[quant] = row
    return result


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="tiny,gpt2-124m", help="comma-separated: " + ", ".join(SHAPES))
    p.add_argument("--batches", default="1,8", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens (default 32)")
    p.add_argument("--new-tokens", type=int, default=224, help="tokens decoded per run (default 224)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--vocab", type=int, default=None, help="override the vocabulary size of every shape")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and llama.cpp threads")
    p.add_argument("--memory-shape", default="gpt2-124m", help="shape for the memory and GGUF export tables")
    p.add_argument("--skip-memory", action="store_true", help="skip the memory and GGUF export tables")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _llama_cpp_files(shape: str, vocab: int | None, folder: Path) -> dict[str, Path]:
    """GGUF exports of the model for llama.cpp's runs, when llama-cpp-python is installed."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return {}
    from hub_export.gguf import export_gguf

    save_model(shape, vocab, folder)

    return {q: export_gguf(folder / "ours", folder / f"llama-{q}", quant=q).out_dir / "model.gguf"
            for q in ("f32", "q8_0")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        kind, folder, arg = args.child[0], Path(args.child[1]), args.child[2]
        row = memory_child(folder, arg, 16) if kind == "memory" else gguf_child(folder, arg)
        print(json.dumps(row))
        return 0
    from training.generate.precision import cpu_has_bf16_units

    result: dict[str, Any] = {"cpu": cpu_info(), "threads": args.threads, "prompt": args.prompt,
                              "new_tokens": args.new_tokens,
                              "torch": torch.__version__, "cpu_bf16_units": cpu_has_bf16_units(), "decode": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            files = _llama_cpp_files(shape, args.vocab, Path(tmp) / shape)
            result["decode"][shape] = decode_table(shape, args, files)
        if not args.skip_memory:
            folder = Path(tmp) / f"mem-{args.memory_shape}"
            save_model(args.memory_shape, args.vocab, folder)
            variants = ["gpt2_fp32", "fp32", "int8"] + (["bf16"] if cpu_has_bf16_units() else [])
            result["memory"] = {args.memory_shape: memory_table(folder, variants)}
            result["gguf_export"] = {args.memory_shape: gguf_table(folder)}
    result["kernel_choices"] = kernel_choices()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
