"""How fast one decoding token's weight products can run on this CPU: the floor under batch-1 decoding.

At batch 1 every decoding step reads every weight once, so the products of a 124M-shape model are bounded by
memory bandwidth, not arithmetic. This prints, as JSON with the CPU (``cpu``), the time of one token's products
(12 layers: qkv 768x2304, attention out 768x768, MLP 768x3072 and 3072x768, all with biases; weights laid out as
separate tensors the way a model holds them) through each kernel torch offers for fp32 and bf16, and the time to
read the same bytes with a plain reduction (``read_fp32``, the bandwidth reference). Interleaved rounds, medians,
every round kept in ``runs_ms``.

    python benchmarks/bench_products.py                 # 2 threads (torch's default here), 15 rounds
    python benchmarks/bench_products.py --threads 1 --rounds 9

What it tells (docs/benchmarks.md): fp32 products at or near the read bandwidth leave only the non-product part
of a step to win back against transformers; bf16 products faster by less than 2x (kernels that are compute-bound
at one row) cap what ``--dtype bf16`` can gain over fp32 end to end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_info import cpu_info  # noqa: E402

SHAPES = ((2304, 768), (768, 768), (3072, 768), (768, 3072))  # (out, in) per layer, GPT-2 124M
LAYERS = 12


def _weights(dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(o, i, generator=gen).to(dtype), torch.randn(o, generator=gen).to(dtype))
            for _ in range(LAYERS) for (o, i) in SHAPES]


def _runners(dtype: torch.dtype) -> dict[str, Callable[[], None]]:
    """One token's products per kernel for ``dtype`` (``packed``: oneDNN with weights reordered once)."""
    weights = _weights(dtype)
    xs = {i: torch.randn(1, i).to(dtype) for _, i in SHAPES}
    name = "fp32" if dtype == torch.float32 else "bf16"
    pointwise = torch.ops.mkldnn._linear_pointwise if hasattr(torch.ops.mkldnn, "_linear_pointwise") else None
    runners = {
        f"{name}_f_linear": lambda: [F.linear(xs[w.shape[1]], w, b) for w, b in weights],
        f"{name}_addmv": lambda: [torch.addmv(b, w, xs[w.shape[1]][0]) for w, b in weights],
    }
    if pointwise is not None and torch.backends.mkldnn.is_available():
        runners[f"{name}_onednn"] = lambda: [pointwise(xs[w.shape[1]], w, b, "none", [], "") for w, b in weights]
        if dtype == torch.bfloat16 and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
            packed = [(torch.ops.mkldnn._reorder_linear_weight(w), b, w.shape[1]) for w, b in weights]
            runners[f"{name}_onednn_packed"] = lambda: [pointwise(xs[i], p, b, "none", [], "") for p, b, i in packed]
    if dtype == torch.float32:
        flat = torch.randn(sum(w.numel() + b.numel() for w, b in weights))
        runners["read_fp32"] = lambda: flat.sum()
    return runners


def measure(rounds: int, bf16: bool) -> dict:
    runners = _runners(torch.float32)
    if bf16:
        runners.update(_runners(torch.bfloat16))
    for run in runners.values():
        run()  # warm-up (primitive creation, page faults)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1e3)
    fp32_bytes = sum(o * i + o for o, i in SHAPES) * LAYERS * 4
    report = {}
    for name, ts in times.items():
        ms = statistics.median(ts)
        nbytes = fp32_bytes // (2 if name.startswith("bf16") else 1)
        report[name] = {"median_ms": round(ms, 3), "gb_per_s": round(nbytes / ms / 1e6, 1),
                        "runs_ms": [round(t, 3) for t in ts]}
    best = {dt: min((v["median_ms"], k) for k, v in report.items() if k.startswith(dt + "_")) for dt in ("fp32", "bf16")
            if any(k.startswith(dt + "_") for k in report)}
    if "bf16" in best:
        report["best_bf16_vs_best_fp32"] = round(best["fp32"][0] / best["bf16"][0], 3)
    report["best_fp32_vs_read"] = round(report["read_fp32"]["median_ms"] / best["fp32"][0], 3)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timed rounds (default 15)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 kernels")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = not args.no_bf16
    result = {"cpu": cpu_info(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "shape": "gpt2-124m products of one token (12 layers)", "rounds": args.rounds,
              "products": measure(args.rounds, bf16)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
