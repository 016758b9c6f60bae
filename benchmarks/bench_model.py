"""ScratchGPTForCausalLM vs transformers' GPT2LMHeadModel of the same shape and the same weights.

Measured in one process, interleaved (ours, GPT-2, GPT-2, ours, ...), medians over repetitions:
training tokens/s (forward + backward + AdamW step; fp32 and bf16 autocast; interleaved step by step, so
the machine's drift hits both alike; `paired_ratio` is the median of the per-step ratios), generation
tokens/s with the KV cache (greedy; batch 1 and 8; 32-token prompt), time to first token, and peak
training memory (each model in a fresh subprocess: peak RSS minus the RSS after imports). A third model,
ours with ``cpu_fast_paths=False`` (plain torch kernels), joins the interleaving: ``vs_plain`` is what the
kernels chosen on this CPU gain over it. Prints one JSON object, with the CPU it ran on.

    python benchmarks/bench_model.py --shape tiny
    python benchmarks/bench_model.py --shape gpt2-124m --reps 3 --train-steps 7 --skip bf16

For speed, start Python with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 (see DESIGN.md section 6);
the ratios are what matter: both models run under the same allocator in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_info import cpu_info, kernel_choices  # noqa: E402

SHAPES = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=256, n_positions=256, vocab_size=8192),
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, n_positions=256, vocab_size=50257),
}
TRAIN_BATCH = {"tiny": 8, "gpt2-124m": 2}
NAMES = ("scratch_gpt", "gpt2")  # ours, then the reference
PLAIN = "scratch_gpt_plain"  # the same model with cpu_fast_paths=False (F.linear only), joins unless --no-plain


def build_models(shape: str):
    from transformers import GPT2Config, GPT2LMHeadModel

    from scratch_gpt.convert import gpt2_to_scratch

    torch.manual_seed(0)
    config = GPT2Config(
        **SHAPES[shape], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0
    )
    gpt2 = GPT2LMHeadModel(config)
    gpt2.config._attn_implementation = "sdpa"
    ours = gpt2_to_scratch(gpt2)
    return {"scratch_gpt": ours, "gpt2": gpt2}


def plain_twin(model):
    """The same model (same weights) built with ``cpu_fast_paths=False``: plain ``F.linear`` and torch products."""
    import copy

    config = copy.deepcopy(model.config)
    config.cpu_fast_paths = False
    twin = type(model)(config)
    twin.load_state_dict(model.state_dict())
    twin.config._attn_implementation = model.config._attn_implementation
    return twin.train(model.training)


def with_plain_twin(models: dict, plain: bool) -> dict:
    """``models`` plus :data:`PLAIN` (the twin of ``models["scratch_gpt"]``) when ``plain``."""
    return {**models, PLAIN: plain_twin(models["scratch_gpt"])} if plain else models


ADAMW: dict = {}  # extra torch.optim.AdamW options for every model (--optimizer; {"fused": True} for "fused")


def make_train_step(model, batch: int, seq: int, vocab: int, bf16: bool):
    """A closure running one optimizer step (forward + backward + AdamW) of ``model`` on a fixed batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **ADAMW)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)

    def step():
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def train_steps(model, batch: int, seq: int, vocab: int, steps: int, bf16: bool) -> None:
    """One warm-up step, then ``steps`` optimizer steps (the memory run)."""
    step = make_train_step(model, batch, seq, vocab, bf16)
    for _ in range(steps + 1):
        step()


def seconds(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


@torch.inference_mode()
def generate_time(model, batch: int, prompt: int, new_tokens: int, vocab: int) -> float:
    model.eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, prompt), generator=gen)
    kwargs = dict(
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    start = time.perf_counter()
    out = model.generate(ids, **kwargs)
    elapsed = time.perf_counter() - start
    assert out.shape[1] == prompt + new_tokens
    return elapsed


def train_interleaved(models: dict, batch: int, seq: int, vocab: int, steps: int, bf16: bool) -> dict:
    """Seconds per optimizer step for each model, stepping the models alternately (after a warm-up step)."""
    train_step = {name: make_train_step(model, batch, seq, vocab, bf16) for name, model in models.items()}
    for step in train_step.values():
        step()
    return interleaved(train_step, seconds, steps)


def interleaved(models: dict, fn, reps: int) -> dict[str, list[float]]:
    times = {name: [] for name in models}
    names = list(models)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            times[name].append(fn(models[name]))
    print(f"  {fn.__name__ if hasattr(fn, '__name__') else fn}: {times}", file=sys.stderr, flush=True)
    return times


def summarise(times: dict[str, list[float]], work: float, unit: str, reference: str = "gpt2") -> dict:
    """Work per second of each model (medians), the ratio of medians and the median of per-run ratios
    (``reference`` / ours, so above 1 means scratch-gpt is faster)."""
    med = {name: statistics.median(t) for name, t in times.items()}
    out = {
        f"scratch_gpt_{unit}": round(work / med["scratch_gpt"], 2),
        f"{reference}_{unit}": round(work / med[reference], 2),
        "ratio": round(med[reference] / med["scratch_gpt"], 3),
        "paired_ratio": round(statistics.median(r / o for r, o in zip(times[reference], times["scratch_gpt"])), 3),
    }
    if PLAIN in times:  # ours / ours with cpu_fast_paths=False: above 1 means the chosen kernels help
        out[f"{PLAIN}_{unit}"] = round(work / med[PLAIN], 2)
        out["vs_plain"] = round(med[PLAIN] / med["scratch_gpt"], 3)
        out["paired_vs_plain"] = round(statistics.median(p / o for p, o in zip(times[PLAIN], times["scratch_gpt"])), 3)
    out["runs"] = {name: [round(x, 4) for x in t] for name, t in times.items()}
    return out


def peak_rss_added(run: Callable[[], object]) -> float:
    """MiB of peak RSS that ``run()`` adds above the RSS before it, sampled every millisecond by a thread (psutil).

    Called with the model built, the figure is what training adds: activations, logits, gradients, optimizer state.
    """
    import psutil

    proc = psutil.Process()
    base = proc.memory_info().rss
    peak, done = [base], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    run()
    done.set()
    sampler.join()
    return round((peak[0] - base) / 2**20, 1)


def peak_memory_child(shape: str, which: str, steps: int) -> None:
    """Run in a subprocess: print the peak RSS (MiB) that training adds above the RSS with the model built."""
    model = build_models(shape)[which]
    cfg = SHAPES[shape]
    batch, seq, vocab = TRAIN_BATCH[shape], cfg["n_positions"], cfg["vocab_size"]
    print(json.dumps({"peak_mib": peak_rss_added(lambda: train_steps(model, batch, seq, vocab, steps, bf16=False))}))


def peak_memory(shape: str, steps: int, script: str = __file__, names: tuple[str, ...] = NAMES) -> dict:
    """Peak training RSS of each model, each in a fresh ``script --memory-child`` process, and ours / reference."""
    result = {}
    optimizer = ["--optimizer", "fused" if ADAMW.get("fused") else "default"]
    for which in names:
        out = subprocess.run(
            [sys.executable, script, "--shape", shape, "--memory-child", which, "--memory-steps", str(steps),
             *optimizer],
            capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        result[f"{which}_peak_train_mib"] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
    result["ratio"] = round(result[f"{names[0]}_peak_train_mib"] / result[f"{names[1]}_peak_train_mib"], 3)
    return result


def comparison_parser(
    description: str | None, shapes: dict, default_shape: str, names: tuple[str, ...], skip: str, reps: str,
    optimizer: str = "default",
) -> argparse.ArgumentParser:
    """The options of a scratch-gpt vs reference benchmark (this one, bench_family); the caller adds its own."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(shapes), default=default_shape, help="model shape to compare")
    parser.add_argument("--reps", type=int, default=5, help=f"interleaved repetitions per {reps}")
    parser.add_argument("--train-steps", type=int, default=15, help="timed fp32 optimizer steps per model")
    parser.add_argument("--memory-steps", type=int, default=3, help="optimizer steps in the memory run")
    parser.add_argument("--prompt", type=int, default=32, help="prompt length for generation")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help="tokens generated per generation run (default: 256, capped so that prompt + new fits "
                        "the context)")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to skip: {skip}")
    parser.add_argument("--optimizer", choices=("default", "fused"), default=optimizer,
                        help="AdamW for both models in the training and memory parts: torch's default "
                        "implementation, or fused=True (what `scratch-gpt train` uses on CPU and CUDA)")
    parser.add_argument("--no-plain", action="store_true",
                        help="leave out the third model, ours with cpu_fast_paths=False (the vs_plain ratios)")
    parser.add_argument("--memory-child", choices=names, help=argparse.SUPPRESS)
    return parser


def parse_comparison(parser: argparse.ArgumentParser, memory_child: Callable[[str, str, int], None]
                     ) -> tuple[argparse.Namespace, set[str]] | None:
    """The options and the parts to skip; ``None`` once ``memory_child`` has run (the subprocess of
    :func:`peak_memory`, started with ``--memory-child NAME``)."""
    args = parser.parse_args()
    ADAMW.clear()
    ADAMW.update({"fused": True} if args.optimizer == "fused" else {})
    if args.memory_child:
        memory_child(args.shape, args.memory_child, args.memory_steps)
        return None
    return args, set(filter(None, args.skip.split(",")))


def environment() -> dict:
    """What the figures depend on besides the shape: the CPU, torch, its threads, the allocator tuning."""
    return {
        "cpu": cpu_info(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "malloc_tuned": os.environ.get("MALLOC_MMAP_MAX_") == "0",
    }


def main() -> None:
    parser = comparison_parser(__doc__, SHAPES, "tiny", NAMES, "train,bf16,generate,memory", "measurement")
    parser.add_argument("--bf16-steps", type=int, default=3, help="timed bf16-autocast steps per model")
    parsed = parse_comparison(parser, peak_memory_child)
    if parsed is None:
        return
    args, skip = parsed
    cfg = SHAPES[args.shape]
    if args.new_tokens is None:
        args.new_tokens = min(256, cfg["n_positions"] - args.prompt)
    models = with_plain_twin(build_models(args.shape), not args.no_plain)
    batch, seq, vocab = TRAIN_BATCH[args.shape], cfg["n_positions"], cfg["vocab_size"]
    report = {
        "shape": {**cfg, "train_batch": batch},
        **environment(),
        "generation": {"prompt": args.prompt, "new_tokens": args.new_tokens},
    }
    tokens = batch * seq
    if "train" not in skip:
        report["train_fp32"] = summarise(
            train_interleaved(models, batch, seq, vocab, args.train_steps, False), tokens, "tokens_per_s"
        )
    if "bf16" not in skip:
        report["train_bf16_autocast"] = summarise(
            train_interleaved(models, batch, seq, vocab, args.bf16_steps, True), tokens, "tokens_per_s"
        )
    if "generate" not in skip:
        for gen_batch in (1, 8):
            report[f"generate_batch{gen_batch}"] = summarise(
                interleaved(
                    models, lambda m: generate_time(m, gen_batch, args.prompt, args.new_tokens, vocab), args.reps
                ),
                gen_batch * args.new_tokens,
                "tokens_per_s",
            )
        ttft = interleaved(models, lambda m: generate_time(m, 1, args.prompt, 1, vocab), args.reps)
        report["time_to_first_token_ms"] = {
            name: round(1000 * statistics.median(t), 2) for name, t in ttft.items()
        } | {"ratio": round(statistics.median(ttft["gpt2"]) / statistics.median(ttft["scratch_gpt"]), 3)}
        if PLAIN in ttft:
            report["time_to_first_token_ms"]["vs_plain"] = round(
                statistics.median(ttft[PLAIN]) / statistics.median(ttft["scratch_gpt"]), 3)
    if "memory" not in skip:
        report["peak_train_memory"] = peak_memory(args.shape, args.memory_steps)
    report["kernel_choices"] = kernel_choices()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
