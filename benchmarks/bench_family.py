"""ScratchGPT with the Llama switches vs transformers' LlamaForCausalLM of the same shape and the same weights.

The Llama model is built first (random init) and converted with ``scratch_gpt.convert_family.family_to_scratch``,
so both hold identical weights. Measured as benchmarks/bench_model.py measures GPT-2 (the same step, timing and
interleaving helpers): training tokens/s in fp32 (forward + backward + AdamW, interleaved step by step),
generation tokens/s with the KV cache at batch 1 and 8 (greedy, 32-token prompt), and peak training memory
(each model in a fresh subprocess: peak RSS above the RSS with the model built). Prints one JSON object.

    python benchmarks/bench_family.py --shape tiny-llama
    python benchmarks/bench_family.py --shape smollm-135m --reps 3 --train-steps 5

Shapes: ``tiny-llama`` (4 layers, 4 query / 2 key-value heads, width 256, context 256, vocab 8192) and
``smollm-135m`` (SmolLM-135M's shape at context 256: 30 layers, width 576, 9 query / 3 key-value heads,
MLP 1536, vocab 49152, tied embeddings). Start Python with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000
for speed (DESIGN.md section 6); the ratios are what matter.
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

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_model import generate_time, interleaved, make_train_step, seconds  # noqa: E402

SHAPES = {
    "tiny-llama": dict(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, hidden_size=256,
                       intermediate_size=688, max_position_embeddings=256, vocab_size=8192,
                       tie_word_embeddings=False),
    "smollm-135m": dict(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576,
                        intermediate_size=1536, max_position_embeddings=256, vocab_size=49152,
                        tie_word_embeddings=True),
}
TRAIN_BATCH = {"tiny-llama": 8, "smollm-135m": 2}
NAMES = ("scratch_gpt", "llama")


def build_models(shape: str) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from scratch_gpt.convert_family import family_to_scratch

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(**SHAPES[shape], bos_token_id=0, eos_token_id=0, pad_token_id=0))
    llama.config._attn_implementation = "sdpa"
    return {"scratch_gpt": family_to_scratch(llama), "llama": llama}


def summarise(times: dict[str, list[float]], work: float) -> dict:
    """Tokens/s per model (medians), the ratio of medians and the median of per-run ratios (ours / Llama)."""
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        **{f"{name}_tokens_per_s": round(work / med[name], 2) for name in NAMES},
        "ratio": round(med["llama"] / med["scratch_gpt"], 3),
        "paired_ratio": round(statistics.median(b / a for a, b in zip(times["scratch_gpt"], times["llama"])), 3),
        "runs": {name: [round(x, 4) for x in t] for name, t in times.items()},
    }


def train_interleaved(models: dict, shape: str, steps: int) -> dict:
    cfg = SHAPES[shape]
    batch, seq, vocab = TRAIN_BATCH[shape], cfg["max_position_embeddings"], cfg["vocab_size"]
    step = {name: make_train_step(model, batch, seq, vocab, False) for name, model in models.items()}
    for warm in step.values():
        warm()
    return summarise(interleaved(step, seconds, steps), batch * seq)


def peak_memory_child(shape: str, which: str, steps: int) -> None:
    """In a subprocess: the peak RSS (MiB) that training adds above the RSS with the model built."""
    import psutil

    proc = psutil.Process()
    model = build_models(shape)[which]
    cfg = SHAPES[shape]
    step = make_train_step(model, TRAIN_BATCH[shape], cfg["max_position_embeddings"], cfg["vocab_size"], False)
    base = proc.memory_info().rss
    peak, done = [base], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for _ in range(steps + 1):
        step()
    done.set()
    sampler.join()
    print(json.dumps({"peak_mib": round((peak[0] - base) / 2**20, 1)}))


def peak_memory(shape: str, steps: int) -> dict:
    result = {}
    for which in NAMES:
        out = subprocess.run(
            [sys.executable, __file__, "--shape", shape, "--memory-child", which, "--memory-steps", str(steps)],
            capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        result[f"{which}_peak_train_mib"] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
    result["ratio"] = round(result["scratch_gpt_peak_train_mib"] / result["llama_peak_train_mib"], 3)
    return result


def generation(models: dict, shape: str, reps: int, prompt: int, new_tokens: int) -> dict:
    vocab = SHAPES[shape]["vocab_size"]
    report = {}
    for batch in (1, 8):
        times = interleaved(models, lambda m: generate_time(m, batch, prompt, new_tokens, vocab), reps)
        report[f"generate_batch{batch}"] = summarise(times, batch * new_tokens)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny-llama", help="model shape to compare")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions per generation measurement")
    parser.add_argument("--train-steps", type=int, default=15, help="timed fp32 optimizer steps per model")
    parser.add_argument("--memory-steps", type=int, default=3, help="optimizer steps in the memory run")
    parser.add_argument("--prompt", type=int, default=32, help="prompt length for generation")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help="tokens per generation run (default: fill the context, at most 256)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: train,generate,memory")
    parser.add_argument("--memory-child", choices=NAMES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(args.shape, args.memory_child, args.memory_steps)
        return
    skip = set(filter(None, args.skip.split(",")))
    cfg = SHAPES[args.shape]
    new_tokens = args.new_tokens or min(256, cfg["max_position_embeddings"] - args.prompt)
    models = build_models(args.shape)
    report = {
        "shape": {**cfg, "name": args.shape, "train_batch": TRAIN_BATCH[args.shape]},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "malloc_tuned": os.environ.get("MALLOC_MMAP_MAX_") == "0",
        "generation": {"prompt": args.prompt, "new_tokens": new_tokens},
    }
    if "train" not in skip:
        report["train_fp32"] = train_interleaved(models, args.shape, args.train_steps)
    if "generate" not in skip:
        report.update(generation(models, args.shape, args.reps, args.prompt, new_tokens))
    if "memory" not in skip:
        report["peak_train_memory"] = peak_memory(args.shape, args.memory_steps)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
