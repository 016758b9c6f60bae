"""Pretraining-loop benchmarks; prints JSON.

``--part overhead``: the loop's training tokens/s against a bare ``forward + backward + AdamW step`` loop on the
same model shape and batch (the loop adds data loading, LR schedule, loss reduction, NaN check, clipping,
logging and the progress bar). Interleaved repeats, medians, ratio. Target: ratio >= 0.95.

``--part gpt2``: ScratchGPT and transformers' ``GPT2LMHeadModel`` of the same shape trained by the same loop
(same data, same seed, same steps and settings); compares final validation loss (target: within 2%) and
throughput. Data: python-stdlib through training.data.corpus (or synthetic blocks with ``--synthetic``).

Run with the allocator tuning the CLI uses, e.g.:
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 python benchmarks/bench_train_loop.py --part all
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.pretrain.arguments import resolve_arguments  # noqa: E402
from scratch_gpt.run_folder import load_log_history, load_results  # noqa: E402
from training.pretrain.loop import train  # noqa: E402
from training.pretrain.setup import build_model, param_groups  # noqa: E402


def synthetic_blocks(n_train: int, n_val: int, block: int, vocab: int, seed: int = 0):
    from datasets import Dataset, DatasetDict

    g = torch.Generator().manual_seed(seed)
    return DatasetDict(
        train=Dataset.from_dict({"input_ids": torch.randint(0, vocab, (n_train, block), generator=g).tolist()}),
        validation=Dataset.from_dict({"input_ids": torch.randint(0, vocab, (n_val, block), generator=g).tolist()}),
    )


class _Tok:
    """The loop needs only len() and a few ids when samples are off and nothing is saved to the Hub."""

    def __init__(self, vocab: int) -> None:
        self.vocab, self.eos_token_id, self.bos_token_id, self.pad_token_id = vocab, 0, 0, 1

    def __len__(self) -> int:
        return self.vocab

    def save_pretrained(self, *a, **k) -> None:
        pass

    def decode(self, ids, **k) -> str:  # the default sample prompt; samples are off
        return ""


def bare_tokens_per_s(args, tok, blocks, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model(args, tok)
    model.train()
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.learning_rate,
                            betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    data = torch.tensor(blocks["train"]["input_ids"][: args.per_device_batch_size * (steps + 2)])
    bs = args.per_device_batch_size

    def step(i: int) -> None:
        ids = data[i * bs : (i + 1) * bs]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(0)  # warm-up
    t = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    return steps * bs * args.block_size / (time.perf_counter() - t)


def steady_tokens_per_s(run_dir: Path) -> float:
    """From the first logged window to the last one (startup, evaluation and saving excluded)."""
    rec = [r for r in load_log_history(run_dir) if "loss" in r]
    if len(rec) < 2:  # too short a run for two log windows: the whole run's rate
        return load_results(run_dir)["train"]["train_tokens_per_second"]
    first, last = rec[0], rec[-1]
    return (last["num_input_tokens_seen"] - first["num_input_tokens_seen"]) / (last["elapsed_s"] - first["elapsed_s"])


def loop_tokens_per_s(args, tok, blocks, out: Path) -> float:
    return steady_tokens_per_s(train(args, datasets=blocks, tokenizer=tok).run_dir)


def part_overhead(ns) -> dict:
    vocab = 4096
    base = dict(max_steps=ns.steps + 10, log_every=10, eval_every=10**6, eval_batches=1, num_samples=0,
                checkpoint_every=0, vocab_size=vocab, seed=0)
    tok = _Tok(vocab)
    args0 = resolve_arguments(preset=ns.preset, overrides={**base, "output_dir": "unused"})
    blocks = synthetic_blocks(args0.per_device_batch_size * (ns.steps + 20), 64, args0.block_size, vocab)
    bare, loop = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(ns.repeats):
            bare.append(bare_tokens_per_s(args0, tok, blocks, ns.steps))
            out = Path(tmp) / f"loop{r}"
            args = resolve_arguments(preset=ns.preset, overrides={**base, "output_dir": str(out)})
            loop.append(loop_tokens_per_s(args, tok, blocks, out))
    return {
        "part": "overhead",
        "preset": ns.preset,
        "shape": {"hidden": args0.hidden_size, "layers": args0.num_hidden_layers, "block": args0.block_size,
                  "batch": args0.per_device_batch_size, "vocab": vocab},
        "steps_per_measure": ns.steps,
        "bare_tokens_per_s": [round(x) for x in bare],
        "loop_tokens_per_s": [round(x) for x in loop],
        "bare_median": round(statistics.median(bare)),
        "loop_median": round(statistics.median(loop)),
        "ratio_loop_over_bare": round(statistics.median(loop) / statistics.median(bare), 3),
        "ratios_per_repeat": [round(a / b, 3) for a, b in zip(loop, bare)],
    }


def part_gpt2(ns) -> dict:
    from transformers import GPT2LMHeadModel

    from scratch_gpt.convert import gpt2_config_from_scratch

    base = dict(max_steps=ns.gpt2_steps, log_every=10, eval_every=10**6, eval_batches=ns.eval_batches,
                num_samples=0, checkpoint_every=0, seed=0)
    args0 = resolve_arguments(preset=ns.preset, overrides={**base, "output_dir": "unused"})
    if ns.synthetic:
        tok = _Tok(args0.vocab_size)
        blocks = synthetic_blocks(4096, 256, args0.block_size, args0.vocab_size)
    else:
        from training.data.corpus import DataArguments, prepare_datasets

        blocks, tok, _ = prepare_datasets(DataArguments(dataset="python-stdlib", seed=0), args0.block_size,
                                          vocab_size=args0.vocab_size)
    results = {"scratch_gpt": [], "gpt2": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(ns.repeats_gpt2):
            for name in ("scratch_gpt", "gpt2"):  # interleaved
                out = Path(tmp) / f"{name}{r}"
                args = resolve_arguments(preset=ns.preset, overrides={**base, "output_dir": str(out), "seed": r})
                torch.manual_seed(r)
                scratch = build_model(args, tok)
                model = scratch if name == "scratch_gpt" else GPT2LMHeadModel(gpt2_config_from_scratch(scratch.config))
                if name == "gpt2":  # same shape and init scheme (not the same initial weights)
                    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in scratch.parameters())
                t = time.perf_counter()
                res = train(args, datasets=blocks, tokenizer=tok, model=model)
                wall = time.perf_counter() - t
                results[name].append({
                    "val_loss": res.metrics["eval_loss"],
                    "tokens_per_s": round(steady_tokens_per_s(out)),
                    "wall_s": round(wall, 1),
                })
    med = {k: statistics.median(x["val_loss"] for x in v) for k, v in results.items()}
    tps = {k: statistics.median(x["tokens_per_s"] for x in v) for k, v in results.items()}
    return {
        "part": "gpt2",
        "preset": ns.preset,
        "data": "synthetic" if ns.synthetic else "python-stdlib",
        "steps": ns.gpt2_steps,
        "tokens": args0.per_device_batch_size * args0.block_size * args0.gradient_accumulation_steps * ns.gpt2_steps,
        "runs": results,
        "val_loss_median": {k: round(v, 4) for k, v in med.items()},
        "val_loss_rel_diff": round(med["scratch_gpt"] / med["gpt2"] - 1, 4),
        "tokens_per_s_median": tps,
        "speed_ratio_scratch_over_gpt2": round(tps["scratch_gpt"] / tps["gpt2"], 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["overhead", "gpt2", "all"], default="all")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=60, help="timed steps per overhead measurement")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats for the overhead part")
    p.add_argument("--gpt2-steps", type=int, default=300, help="training steps per model in the gpt2 part")
    p.add_argument("--repeats-gpt2", type=int, default=1, help="seeds per model in the gpt2 part")
    p.add_argument("--eval-batches", type=int, default=40, help="validation micro-batches for the final loss")
    p.add_argument("--synthetic", action="store_true", help="gpt2 part on random blocks instead of python-stdlib")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ns = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    import os

    env = {k: os.environ.get(k) for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")}
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "malloc_env": env, "results": []}
    if ns.part in ("overhead", "all"):
        out["results"].append(part_overhead(ns))
    if ns.part in ("gpt2", "all"):
        out["results"].append(part_gpt2(ns))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
