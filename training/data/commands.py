"""CLI subcommands of the data side: ``train-tokenizer`` and ``corpus-stats``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

from .corpus import add_data_arguments, data_arguments_from_namespace


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train-tokenizer`` and ``corpus-stats`` to the ``scratch-gpt`` dispatcher."""
    p = subparsers.add_parser(
        "train-tokenizer",
        help="Train a byte-level BPE tokenizer on a corpus and save it as a transformers tokenizer folder.",
        description="Train a byte-level BPE tokenizer (tokenizers) on the train split of --dataset and save it "
        "with save_pretrained, so AutoTokenizer.from_pretrained(OUT_DIR) loads it. <|endoftext|> is bos/eos "
        "(id 0) and <|pad|> the pad token (id 1).",
    )
    p.add_argument("out_dir", help="folder to write the tokenizer into (must not exist unless --overwrite)")
    add_data_arguments(p)
    p.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size, special tokens included")
    p.add_argument("--min-frequency", type=int, default=2, help="minimum pair frequency for a merge")
    p.add_argument("--model-max-length", type=int, default=1024,
                   help="context length recorded in the tokenizer (set it to the model's)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    p.set_defaults(func=cmd_train_tokenizer)

    s = subparsers.add_parser(
        "corpus-stats",
        help="Print documents, characters, tokens, bytes per token and blocks of a corpus.",
        description="Load --dataset, tokenise it (with --tokenizer, or a BPE trained on its train split) and "
        "pack it into blocks of --block-size tokens, then print per-split statistics. The tokenised and "
        "packed data stay in the datasets cache: a later run with the same corpus, tokenizer and block size "
        "(e.g. `scratch-gpt train`) reuses them.",
    )
    add_data_arguments(s)
    s.add_argument("--tokenizer", default=None,
                   help="tokenizer folder or Hub id; default: train a byte-level BPE of --vocab-size tokens")
    s.add_argument("--vocab-size", type=int, default=8192,
                   help="vocabulary size of the tokenizer to train (or the model's, checked against --tokenizer)")
    s.add_argument("--min-frequency", type=int, default=2, help="minimum pair frequency for a merge")
    s.add_argument("--block-size", type=int, default=256, help="context length: tokens per packed block")
    s.add_argument("--stride", type=int, default=None,
                   help="distance between block starts in the train split (default: --block-size, no overlap)")
    s.add_argument("--json", action="store_true", help="print the statistics as JSON")
    s.set_defaults(func=cmd_corpus_stats)


def _atomic_save(tokenizer, out_dir: str, overwrite: bool) -> None:
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass --overwrite to replace it or choose another folder")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(tmp)
    if os.path.exists(out_dir):
        old = os.path.join(parent, f".{os.path.basename(out_dir)}.old-{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def _bytes_per_token(tokenizer, texts: list[str]) -> float | None:
    texts = [t for t in texts if t]
    if not texts:
        return None
    n_tokens = sum(len(e.ids) for e in tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False))
    return round(sum(len(t.encode("utf-8")) for t in texts) / max(1, n_tokens), 4)


def cmd_train_tokenizer(args: argparse.Namespace) -> int:
    from .corpus import load_text_splits
    from .tokenizer import train_tokenizer

    data_args = data_arguments_from_namespace(args)
    if data_args.streaming:
        raise ValueError("train-tokenizer reads the corpus once; drop --streaming "
                         "(or limit it with --max-documents)")
    if os.path.exists(args.out_dir) and not args.overwrite:
        raise FileExistsError(f"{args.out_dir} exists; pass --overwrite to replace it or choose another folder")
    splits = load_text_splits(data_args)
    train = splits["train"]
    t0 = time.perf_counter()
    texts = (t for batch in train.iter(batch_size=1000) for t in batch["text"])
    tok = train_tokenizer(texts, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                          show_progress=True, model_max_length=args.model_max_length, length=len(train))
    seconds = time.perf_counter() - t0
    _atomic_save(tok, args.out_dir, args.overwrite)
    val_texts = list(splits["validation"]["text"][:2000])
    summary = {
        "out_dir": os.path.abspath(args.out_dir),
        "dataset": data_args.dataset,
        "train_documents": len(train),
        "vocab_size": len(tok),
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "training_seconds": round(seconds, 2),
        "validation_bytes_per_token": _bytes_per_token(tok, val_texts),
    }
    print(json.dumps(summary, indent=2))
    return 0


def cmd_corpus_stats(args: argparse.Namespace) -> int:
    from .corpus import prepare_datasets
    from .tokenizer import load_tokenizer

    data_args = data_arguments_from_namespace(args)
    if data_args.streaming:
        raise ValueError("corpus-stats counts the whole corpus; drop --streaming (or add --max-documents)")
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    _, tokenizer, stats = prepare_datasets(data_args, block_size=args.block_size, tokenizer=tokenizer,
                                           vocab_size=args.vocab_size, stride=args.stride,
                                           min_frequency=args.min_frequency)
    stats = {"dataset": data_args.dataset, **stats}
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    keys = ("documents", "characters", "bytes", "tokens", "bytes_per_token", "blocks")
    print(f"dataset: {data_args.dataset}   vocab size: {stats['vocab_size']}   block size: {stats['block_size']}")
    print(f"{'split':<12}" + "".join(f"{k:>17}" for k in keys))
    for split in ("train", "validation"):
        row = stats[split]
        print(f"{split:<12}" + "".join(f"{'-' if row[k] is None else row[k]:>17}" for k in keys))
    return 0
