"""Instruction-finetuning quality on the book's chapter 7 data: validation loss and a few generated answers.

    python benchmarks/bench_finetune_instruct.py --model runs/tiny \
        --dataset ../shared/data/instruction-data.json

The split is the book's: the first 85% of the records in file order train, the next 10% test, the last 5%
validate (935/110/55 for the 1,100 records). ``--model`` is a scratch-gpt model folder or a GPT-2 checkpoint
(converted on the fly). For reference, the book's GPT-2 355M finetuned 2 epochs at lr 5e-5 ends at train /
validation loss 0.30 / 0.66. Prints JSON: split sizes, validation loss before and after, train loss, timings,
and the first ``--show`` test answers next to the reference outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="scratch-gpt model folder or GPT-2 checkpoint")
    ap.add_argument("--dataset", default="../shared/data/instruction-data.json", help="Alpaca-style JSON records")
    ap.add_argument("--output-dir", default="bench_runs/finetune_instruct", help="where the finetuned model goes")
    ap.add_argument("--epochs", type=float, default=2.0, help="epochs (the book: 2)")
    ap.add_argument("--learning-rate", type=float, default=5e-5, help="peak learning rate (the book: 5e-5)")
    ap.add_argument("--batch-size", type=int, default=8, help="batch size (the book: 8)")
    ap.add_argument("--max-length", type=int, default=0, help="truncate records to this many tokens (0: context)")
    ap.add_argument("--lora", action="store_true", help="LoRA (r=16, alpha=32) instead of full finetuning, merged")
    ap.add_argument("--max-test-answers", type=int, default=20, help="generate answers for this many test records")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit")
    ap.add_argument("--show", type=int, default=3, help="answers to print")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=123, help="random seed")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from scratch_gpt import run_folder
    from training.finetune.arguments import InstructArguments, TrainerOptions
    from training.finetune.instruct import finetune_instruct
    from training.finetune.lora import LoraOptions

    if args.threads:
        torch.set_num_threads(args.threads)
    opts = TrainerOptions(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size,
                          weight_decay=0.1, eval_strategy="no", save_strategy="no", seed=args.seed,
                          logging_steps=20, disable_tqdm=True)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its logs; stdout is the JSON only
        run = finetune_instruct(InstructArguments(
            model=args.model, dataset=args.dataset, output_dir=args.output_dir, max_length=args.max_length,
            lora=args.lora, merge=args.lora, max_new_tokens=args.max_new_tokens,
            max_test_answers=args.max_test_answers, overwrite=True,
        ), opts, lora=LoraOptions(lora_rank=16, lora_alpha=32) if args.lora else None)
    total = time.perf_counter() - t0
    answers = run_folder.read_json(args.output_dir, run_folder.PREDICTIONS_FILE, [])
    train, val, test = (run.results.get(k, {}) for k in ("train", "eval", "test"))
    result = {
        "model": args.model,
        "dataset": args.dataset,
        "method": run.method,
        "split_sizes": {"train": train.get("train_samples"), "validation": val.get("eval_samples"),
                        "test": test.get("test_samples")},
        "truncated": {"train": train.get("train_truncated"), "validation": val.get("eval_truncated")},
        "trainable_parameters": train["trainable_parameters"],
        "initial_validation_loss": val.get("eval_initial_loss"),
        "validation_loss": val.get("eval_loss"),
        "train_loss": train["train_loss"],
        "train_seconds": train["train_runtime"],
        "answer_seconds": test.get("test_runtime"),
        "total_seconds": total,
        "options": {"epochs": args.epochs, "learning_rate": args.learning_rate, "batch_size": args.batch_size,
                    "threads": torch.get_num_threads()},
        "book_reference": {"gpt2_355m_train_loss": 0.30, "gpt2_355m_validation_loss": 0.66},
        "answers": [
            {k: a[k] for k in ("instruction", "input", "output", "model_response")} for a in answers[: args.show]
        ],
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
