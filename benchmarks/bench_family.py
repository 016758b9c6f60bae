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

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_model import (  # noqa: E402
    comparison_parser,
    environment,
    generate_time,
    interleaved,
    make_train_step,
    parse_comparison,
    peak_memory,
    peak_rss_added,
    summarise,
    with_plain_twin,
)
from bench_model import train_interleaved as train_steps_interleaved  # noqa: E402
from cpu_info import kernel_choices  # noqa: E402

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


def train_interleaved(models: dict, shape: str, steps: int) -> dict:
    cfg = SHAPES[shape]
    batch, seq, vocab = TRAIN_BATCH[shape], cfg["max_position_embeddings"], cfg["vocab_size"]
    times = train_steps_interleaved(models, batch, seq, vocab, steps, False)
    return summarise(times, batch * seq, "tokens_per_s", "llama")


def peak_memory_child(shape: str, which: str, steps: int) -> None:
    """In a subprocess: the peak RSS (MiB) that training adds above the RSS with the model built."""
    model = build_models(shape)[which]
    cfg = SHAPES[shape]
    step = make_train_step(model, TRAIN_BATCH[shape], cfg["max_position_embeddings"], cfg["vocab_size"], False)
    print(json.dumps({"peak_mib": peak_rss_added(lambda: [step() for _ in range(steps + 1)])}))


def generation(models: dict, shape: str, reps: int, prompt: int, new_tokens: int) -> dict:
    vocab = SHAPES[shape]["vocab_size"]
    report = {}
    for batch in (1, 8):
        times = interleaved(models, lambda m: generate_time(m, batch, prompt, new_tokens, vocab), reps)
        report[f"generate_batch{batch}"] = summarise(times, batch * new_tokens, "tokens_per_s", "llama")
    return report


def main() -> None:
    parser = comparison_parser(__doc__, SHAPES, "tiny-llama", NAMES, "train,generate,memory", "generation measurement",
                               optimizer="fused")
    parsed = parse_comparison(parser, peak_memory_child)
    if parsed is None:
        return
    args, skip = parsed
    cfg = SHAPES[args.shape]
    new_tokens = args.new_tokens or min(256, cfg["max_position_embeddings"] - args.prompt)
    models = with_plain_twin(build_models(args.shape), not args.no_plain)
    report = {
        "shape": {**cfg, "name": args.shape, "train_batch": TRAIN_BATCH[args.shape]},
        **environment(),
        "optimizer": args.optimizer,
        "generation": {"prompt": args.prompt, "new_tokens": new_tokens},
    }
    if "train" not in skip:
        report["train_fp32"] = train_interleaved(models, args.shape, args.train_steps)
    if "generate" not in skip:
        report.update(generation(models, args.shape, args.reps, args.prompt, new_tokens))
    if "memory" not in skip:
        report["peak_train_memory"] = peak_memory(args.shape, args.memory_steps, __file__, NAMES)
    report["kernel_choices"] = kernel_choices()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
