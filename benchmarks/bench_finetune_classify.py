"""Spam classification quality: a pretrained model finetuned vs the same shape from random initialisation.

The book's chapter 6 experiment on the SMS Spam Collection (``label<TAB>text`` lines; ham/spam), balanced to
equal classes and split 70/10/20. The book reports 95.67% test accuracy for GPT-2 124M finetuned from its
pretrained weights and 93.67% from random initialisation.

    python benchmarks/bench_finetune_classify.py SMSSpamCollection --pretrained runs/tiny

``--pretrained`` is a scratch-gpt model folder (a ``scratch-gpt train`` run folder, or ``convert-gpt2`` output);
the random-init model has the same config and tokenizer with fresh weights. Runs are interleaved
(pretrained, random, pretrained, ...) and medians reported. ``--make-synthetic N`` writes an SMS-format file
of N synthetic messages to SMS_PATH first when no real copy is at hand (the figures are then NOT comparable
with the book's). Prints JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HAM = [
    "ok i'll {v} you at {t}", "are you coming {d}? we're at the {p}", "sorry i missed your call, {v} you {d}",
    "can you pick up {o} on the way home", "haha that's so {a}, see you {d}", "i'm at the {p} now, where are you",
    "did you finish the {o}? mum wants it {d}", "lunch at {t}? the {p} is {a}", "just woke up lol, {v} you later",
    "happy birthday! hope you have a {a} day", "traffic is {a}, i'll be late by {n} min", "k. i'll text you {d}",
    "call me when you're free {d}", "did you win the quiz? {n} points lol", "free for {o} at the {p} {d}?",
    "mum says claim the {o} from the {p} {d}", "won {n} at bingo!! drinks on me {d}", "text me the {u} link",
]
SPAM = [
    "URGENT! you have won a {n} cash prize. call 09{n}{n} now to claim", "FREE entry to win a {o}! text WIN to 8{n}",
    "congratulations! your mobile number won {n} pounds. claim at {u}", "you have been selected for a {a} {o}. reply YES",
    "WINNER!! claim your {o} voucher now, call 08{n}{n} before {t}", "SIX chances to win CASH! text {o} to 8{n} now",
    "your account has a {n} reward pending. visit {u} to claim", "final notice: call 09{n}{n} to claim your free {o}",
    "get {n}% off {o} today only! reply STOP to opt out", "you are a lucky winner of a {o}. txt CLAIM to 8{n}",
    "hey its jess, {v} me on 09{n}{n} for a {a} chat", "your {o} is ready, see {u} {d}", "i'm at the {p}, free {o} for you at {u}",
    "{a} {o} deals {d}, text {o} to 8{n}",
]
FILL = {
    "v": ["call", "see", "meet", "text", "ring"], "t": ["5", "noon", "7pm", "half 6", "8.30"],
    "d": ["tomorrow", "tonight", "later", "on monday", "this weekend"], "p": ["pub", "library", "station", "cafe"],
    "o": ["milk", "tickets", "ipod", "holiday", "camera", "the report", "bread", "mobile"],
    "a": ["great", "funny", "busy", "awful", "nice", "new"], "n": ["100", "250", "1000", "50", "2000", "7"],
    "u": ["www.claim-now.co", "prize.example.com", "win.example.net"],
}


def make_synthetic(path: str, n: int, seed: int = 0, spam_fraction: float = 0.134) -> None:
    """Write ``n`` synthetic SMS-Spam-Collection lines (ham/spam with the real set's 13.4% spam rate)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            spam = rng.random() < spam_fraction
            text = rng.choice(SPAM if spam else HAM)
            text = text.format(**{k: rng.choice(v) for k, v in FILL.items()})
            if rng.random() < 0.2:  # some hard cases: ham mentioning prizes, spam in lower case
                text = (text.lower() if spam else text + " won " + rng.choice(FILL["n"]) + " at quiz lol")
            fh.write(f"{'spam' if spam else 'ham'}\t{text}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sms_path", help="SMS Spam Collection file (label<TAB>text per line)")
    ap.add_argument("--pretrained", required=True, help="scratch-gpt model folder (e.g. a `scratch-gpt train` run)")
    ap.add_argument("--workdir", default="bench_runs/finetune_classify", help="where the runs are written")
    ap.add_argument("--epochs", type=float, default=5.0, help="finetuning epochs (the book: 5)")
    ap.add_argument("--learning-rate", type=float, default=3e-4, help="peak learning rate")
    ap.add_argument("--batch-size", type=int, default=8, help="batch size (the book: 8)")
    ap.add_argument("--max-length", type=int, default=0, help="truncate messages to this many tokens (0: context)")
    ap.add_argument("--train-last-blocks", type=int, default=None,
                    help="finetune only the last N blocks + norm + head of the PRETRAINED model (default: all)")
    ap.add_argument("--no-balance", action="store_true", help="keep the class imbalance (the book balances)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per variant (interleaved; medians reported)")
    ap.add_argument("--seed", type=int, default=123, help="seed of splits, head init and shuffling")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--make-synthetic", type=int, default=0, metavar="N",
                    help="first write N synthetic messages to SMS_PATH (figures then not comparable with the book)")
    return ap.parse_args(argv)


def make_variants(args: argparse.Namespace) -> tuple[dict[str, str], object]:
    """The pretrained model and a randomly initialised copy of its shape (same tokenizer); and its config."""
    import torch

    from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
    from training.finetune.source import load_tokenizer_for, resolve_model_source

    pretrained = resolve_model_source(args.pretrained).name_or_path
    random_dir = os.path.join(args.workdir, "random_init")
    config = ScratchGPTConfig.from_pretrained(pretrained)
    torch.manual_seed(args.seed)
    ScratchGPTForCausalLM(config).save_pretrained(random_dir)
    load_tokenizer_for(pretrained).save_pretrained(random_dir)
    return {"pretrained": pretrained, "random_init": random_dir}, config


def run_once(args: argparse.Namespace, name: str, model_dir: str, rep: int) -> tuple[dict, dict]:
    """One finetuning run of a variant; (the figures kept, the split sizes)."""
    from training.finetune.arguments import ClassifyArguments, TrainerOptions
    from training.finetune.classify import finetune_classifier

    opts = TrainerOptions(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size,
                          weight_decay=0.1, eval_strategy="no", save_strategy="no", seed=args.seed,
                          logging_steps=50, disable_tqdm=True)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its logs; stdout is the JSON only
        result = finetune_classifier(ClassifyArguments(
            model=model_dir, dataset=args.sms_path, output_dir=os.path.join(args.workdir, f"{name}-{rep}"),
            balance=not args.no_balance, validation_fraction=0.1, test_fraction=0.2, max_length=args.max_length,
            overwrite=True, train_last_blocks=args.train_last_blocks if name == "pretrained" else None,
        ), opts)
    test, val, train = (result.results[k] for k in ("test", "eval", "train"))
    print(f"# {name} run {rep}: test accuracy {test['test_accuracy']:.4f}", file=sys.stderr)
    sizes = {"train": train["train_samples"], "validation": val["eval_samples"], "test": test["test_samples"]}
    return {
        "test_accuracy": test["test_accuracy"], "test_f1_macro": test["test_f1_macro"],
        "validation_accuracy": val["eval_accuracy"], "train_seconds": train["train_runtime"],
        "total_seconds": time.perf_counter() - t0, "method": result.method,
        "confusion_matrix": test["test_confusion_matrix"]["rows_true_columns_predicted"],
    }, sizes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    import scratch_gpt  # noqa: F401

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.make_synthetic:
        make_synthetic(args.sms_path, args.make_synthetic, seed=args.seed)
    os.makedirs(args.workdir, exist_ok=True)
    variants, config = make_variants(args)
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    for rep in range(args.repeats):
        for name, model_dir in variants.items():  # interleaved
            figures, sizes = run_once(args, name, model_dir, rep)
            runs[name].append(figures)
    result = {
        "data": {"path": args.sms_path, "synthetic": bool(args.make_synthetic), "split_sizes": sizes,
                 "balanced": not args.no_balance},
        "model": {"pretrained": variants["pretrained"], "hidden_size": config.hidden_size,
                  "layers": config.num_hidden_layers, "context": config.max_position_embeddings,
                  "vocab_size": config.vocab_size},
        "options": {"epochs": args.epochs, "learning_rate": args.learning_rate, "batch_size": args.batch_size,
                    "train_last_blocks": args.train_last_blocks, "threads": torch.get_num_threads()},
        "book_reference_test_accuracy": {"gpt2_124m_pretrained": 0.9567, "gpt2_124m_random_init": 0.9367},
    }
    for name, rs in runs.items():
        result[name] = {
            "test_accuracy_median": statistics.median(r["test_accuracy"] for r in rs),
            "train_seconds_median": statistics.median(r["train_seconds"] for r in rs),
            "runs": rs,
        }
    print(json.dumps(result, indent=2))
    return 0

if __name__ == "__main__":
    sys.exit(main())
