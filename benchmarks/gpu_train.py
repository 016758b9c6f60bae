"""Training throughput and MFU of ScratchGPT: GPT-2 124M, bf16 autocast, SDPA attention, torch.compile.

One model step is forward + backward + fused AdamW on random tokens (batch x context), timed after warmup
steps (compilation included in warmup), with the device synchronised around the timed steps. MFU is the
model FLOPs per second over the device's dense bf16 peak: FLOPs per token = 6 x parameters (embeddings
excluded as lookups, the tied LM head counted as a matmul) + 12 x layers x width x context (attention scores
and their weighted sum, forward and backward), the PaLM-paper count that llm.c and nanoGPT report.

    python benchmarks/gpu_train.py                 # on a GPU: 124M, bf16, sdpa, compile
    python benchmarks/gpu_train.py --dry-run       # a CPU-sized version of the same step (seconds)

Prints one JSON object (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE_124M = dict(vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, context=1024)
SHAPE_DRY = dict(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, context=32)

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets; matched on the name.
BF16_PEAK_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0),
    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0),
)


def bf16_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by its name (None when unknown: MFU is then not reported)."""
    for key, peak in BF16_PEAK_TFLOPS:
        if key in device_name:
            return peak
    return None


def flops_per_token(model: torch.nn.Module, layers: int, width: int, context: int) -> float:
    """6 x non-embedding parameters (+ the LM head) + 12 x layers x width x context."""
    params = sum(p.numel() for p in model.parameters())
    positions = model.transformer.wpe.weight.numel() if hasattr(model.transformer, "wpe") else 0
    return 6.0 * (params - positions) + 12.0 * layers * width * context


def build(shape: dict, device: str, compile_model: bool):
    """The model in train mode on ``device``, compiled when asked, and its fused AdamW."""
    from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM

    config = ScratchGPTConfig(
        vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"], num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"], max_position_embeddings=shape["context"],
        attention_dropout=0.0, resid_dropout=0.0, embd_dropout=0.0,
        cpu_fast_paths=device != "cpu",  # the dry run: no per-shape kernel timing on the first calls
    )
    config._attn_implementation = "sdpa"
    model = ScratchGPTForCausalLM(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), fused=True)
    step_model = torch.compile(model) if compile_model else model
    return model, step_model, optimizer


def measure(ns: argparse.Namespace) -> dict:
    """Tokens/s and MFU of the training step."""
    from training.shared.hardware import auto_mixed_precision

    device = "cuda" if torch.cuda.is_available() and not ns.dry_run else "cpu"
    shape = SHAPE_DRY if ns.dry_run else SHAPE_124M
    torch.manual_seed(0)
    model, step_model, optimizer = build(shape, device, ns.compile)
    ids = torch.randint(0, shape["vocab_size"], (ns.batch, shape["context"]), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    bf16 = device == "cuda" or auto_mixed_precision("cpu")[0] == "bf16"  # an emulated bf16 CPU runs fp32

    def step() -> float:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = step_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    t0 = time.perf_counter()
    for _ in range(ns.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(ns.steps):
        loss = step()
    sync()
    elapsed = time.perf_counter() - t0
    tokens_per_s = ns.steps * ns.batch * shape["context"] / elapsed
    per_token = flops_per_token(model, shape["num_hidden_layers"], shape["hidden_size"], shape["context"])
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = bf16_peak_tflops(name) if device == "cuda" else None
    return {
        "device": name, "shape": shape, "parameters": sum(p.numel() for p in model.parameters()),
        "batch": ns.batch, "dtype": "bf16 autocast" if bf16 else "fp32 (this CPU emulates bf16)",
        "attn_implementation": "sdpa", "compile": ns.compile,
        "warmup_steps": ns.warmup, "warmup_s": round(warmup_s, 2), "steps": ns.steps, "step_s": elapsed / ns.steps,
        "tokens_per_s": round(tokens_per_s, 1), "model_tflops_per_s": round(tokens_per_s * per_token / 1e12, 3),
        "bf16_peak_tflops": peak, "mfu": None if peak is None else round(tokens_per_s * per_token / (peak * 1e12), 4),
        "final_loss": float(loss), "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true",
                   help="a tiny model on the CPU, no compile, bf16 only where the CPU has bf16 units (seconds)")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default: 16 on a GPU, 2 dry)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on a GPU, 2 dry)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 on a GPU, 1 dry)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="eager model (default on --dry-run)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ns = p.parse_args(argv)
    if not ns.dry_run and not torch.cuda.is_available():
        p.error("no GPU visible; pass --dry-run for the CPU-sized version")
    ns.batch = ns.batch or (2 if ns.dry_run else 16)
    ns.steps = ns.steps or (2 if ns.dry_run else 20)
    ns.warmup = ns.warmup or (1 if ns.dry_run else 5)
    ns.compile = ns.compile and not ns.dry_run
    text = json.dumps(measure(ns), indent=2)
    if ns.out:
        ns.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
