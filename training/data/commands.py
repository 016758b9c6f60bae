"""CLI subcommands of the data side: ``train-tokenizer`` and ``corpus-stats``."""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field

from training.shared.arguments import add_command, arg, from_namespace

from .corpus import DataArguments


@dataclass
class BpeArguments:
    """The byte-level BPE trained on the corpus."""

    _argument_group_name = "tokenizer"

    vocab_size: int = field(default=8192, metadata={
        "help": "vocabulary size, special tokens included (with --tokenizer: the model's, checked against it)"})
    min_frequency: int = field(default=2, metadata={"help": "minimum pair frequency for a merge"})


@dataclass
class TokenizerOutputArguments(BpeArguments):
    """What ``train-tokenizer`` writes."""

    _argument_group_name = "tokenizer"

    model_max_length: int = field(default=1024, metadata={
        "help": "context length recorded in the tokenizer (set it to the model's)"})
    overwrite: bool = field(default=False, metadata={"help": "replace OUT_DIR if it exists"})


@dataclass
class CorpusStatsArguments(BpeArguments):
    """How ``corpus-stats`` tokenises and packs."""

    _argument_group_name = "tokenizer and packing"

    tokenizer: str | None = field(default=None, metadata={
        "help": "tokenizer folder or Hub id; default: train a byte-level BPE of --vocab-size tokens"})
    block_size: int = field(default=256, metadata={"help": "context length: tokens per packed block"})
    stride: int | None = field(default=None, metadata={
        "help": "distance between block starts in the train split (default: --block-size, no overlap)"})
    json: bool = field(default=False, metadata={"help": "print the statistics as JSON"})


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train-tokenizer`` and ``corpus-stats`` to the ``scratch-gpt`` dispatcher."""
    add_command(
        subparsers, "train-tokenizer", cmd_train_tokenizer, parts=(DataArguments, TokenizerOutputArguments),
        arguments=[arg("out_dir", help="folder to write the tokenizer into (must not exist unless --overwrite)")],
        help="Train a byte-level BPE tokenizer on a corpus and save it as a transformers tokenizer folder.",
        description="Train a byte-level BPE tokenizer (tokenizers) on the train split of --dataset and save it "
        "with save_pretrained, so AutoTokenizer.from_pretrained(OUT_DIR) loads it. <|endoftext|> is bos/eos "
        "(id 0) and <|pad|> the pad token (id 1).",
    )
    add_command(
        subparsers, "corpus-stats", cmd_corpus_stats, parts=(DataArguments, CorpusStatsArguments),
        help="Print documents, characters, tokens, bytes per token and blocks of a corpus.",
        description="Load --dataset, tokenise it (with --tokenizer, or a BPE trained on its train split) and "
        "pack it into blocks of --block-size tokens, then print per-split statistics. The tokenised and "
        "packed data stay in the datasets cache: a later run with the same corpus, tokenizer and block size "
        "(e.g. `scratch-gpt train`) reuses them.",
    )


def _check_tokenizer_output(out_dir: str, overwrite: bool, dataset: str | None) -> None:
    """Everything about OUT_DIR that can fail, checked before the corpus is read (nothing written yet)."""
    from scratch_gpt.safe_output import check_output

    check_output(out_dir, overwrite=overwrite, inputs=[dataset])
    if os.path.isfile(out_dir):
        raise FileExistsError(
            f"{out_dir} is a file, but train-tokenizer writes a folder; choose another OUT_DIR (nothing was changed)"
        )


def _bytes_per_token(tokenizer, texts: list[str]) -> float | None:
    texts = [t for t in texts if t]
    if not texts:
        return None
    n_tokens = sum(len(e.ids) for e in tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False))
    return round(sum(len(t.encode("utf-8")) for t in texts) / max(1, n_tokens), 4)


def cmd_train_tokenizer(args: argparse.Namespace) -> int:
    from .corpus import load_text_splits
    from .tokenizer import train_tokenizer

    data_args = from_namespace(DataArguments, args)
    if data_args.streaming:
        raise ValueError("train-tokenizer reads the corpus once; drop --streaming "
                         "(or limit it with --max-documents)")
    if args.model_max_length < 1:
        raise ValueError(f"--model-max-length must be >= 1 (the model's context), got {args.model_max_length}")
    _check_tokenizer_output(args.out_dir, args.overwrite, data_args.dataset)
    splits = load_text_splits(data_args)
    train = splits["train"]
    t0 = time.perf_counter()
    texts = (t for batch in train.iter(batch_size=1000) for t in batch["text"])
    tok = train_tokenizer(texts, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                          show_progress=True, model_max_length=args.model_max_length, length=len(train))
    seconds = time.perf_counter() - t0
    from scratch_gpt.safe_output import staged_output

    with staged_output(args.out_dir, overwrite=args.overwrite, inputs=[data_args.dataset]) as stage:
        tok.save_pretrained(stage)
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

    data_args = from_namespace(DataArguments, args)
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
