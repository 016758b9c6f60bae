"""Data-pipeline benchmark on the python-stdlib corpus; prints JSON.

Measures tokenizer training time, then, interleaved over several rounds, the raw ``tokenizers``
throughput (``encode_batch`` and ``encode_batch_fast`` on the whole train split in one call, i.e. the
Rust thread pool on every core) against the pipeline (``pack_dataset``: ``Dataset.map`` tokenisation +
packing into blocks, written to a fresh datasets cache) with 1 and 2 processes, and the time of an
identical second preparation served from the cache. Reports medians and the per-round ratio
pipeline / raw (target >= 0.70).

    python benchmarks/bench_data.py                       # full corpus, 3 rounds
    python benchmarks/bench_data.py --max-documents 300 --rounds 2
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _median(xs):
    return round(statistics.median(xs), 4) if xs else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size")
    parser.add_argument("--block-size", type=int, default=256, help="tokens per packed block")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument("--num-procs", default="1,2", help="comma-separated num_proc values for the pipeline")
    parser.add_argument("--max-documents", type=int, default=None, help="limit the corpus (quick runs)")
    parser.add_argument("--tokenizer", default=None, help="reuse this tokenizer folder instead of training one")
    return parser.parse_args(argv)


def load_corpus_and_tokenizer(args: argparse.Namespace) -> tuple:
    """(train split, its texts, tokenizer, result dict with the loading and tokenizer-training figures)."""
    from training.data.corpus import DataArguments, load_text_splits
    from training.data.tokenizer import load_tokenizer, train_tokenizer

    t0 = time.perf_counter()
    train = load_text_splits(DataArguments(max_documents=args.max_documents))["train"]
    result: dict = {
        "corpus": "python-stdlib", "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "load_seconds": round(time.perf_counter() - t0, 2), "max_documents": args.max_documents,
        "block_size": args.block_size,
        "note": "shared 2-core machine: absolute figures are noisy, compare the interleaved ratios",
    }
    texts = list(train["text"])
    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
    else:
        t0 = time.perf_counter()
        tok = train_tokenizer(iter(texts), vocab_size=args.vocab_size, length=len(texts))
        result["tokenizer_training_seconds"] = round(time.perf_counter() - t0, 2)
        result["tokenizer_training_MB_per_s"] = round(sum(len(t.encode()) for t in texts) / 1e6
                                                      / result["tokenizer_training_seconds"], 3)
    result["vocab_size"] = len(tok)
    return train, texts, tok, result


def raw_round(backend, nonempty: list[str], series: dict[str, list[float]]) -> int:
    """Tokens/s of the bare encoders; returns the token count the pipeline must produce (ids + one EOS each)."""
    t0 = time.perf_counter()
    enc = backend.encode_batch(nonempty, add_special_tokens=False)
    raw_s = time.perf_counter() - t0
    n_tokens = sum(len(e.ids) for e in enc) + len(nonempty)
    del enc
    t0 = time.perf_counter()
    backend.encode_batch_fast(nonempty, add_special_tokens=False)
    raw_fast_s = time.perf_counter() - t0
    series["raw_encode_batch"].append(n_tokens / raw_s)
    series["raw_encode_batch_fast"].append(n_tokens / raw_fast_s)
    return n_tokens


def pipeline_round(train, tok, args, n: int, n_tokens: int, series: dict[str, list[float]]) -> dict:
    """Tokens/s of the datasets pipeline with ``num_proc=n`` (fresh), then its cached re-run; returns stats."""
    from training.data.packing import pack_with_stats

    cache_dir = os.path.dirname(train.cache_files[0]["filename"])
    before = set(glob.glob(os.path.join(cache_dir, "cache-*")))
    t0 = time.perf_counter()
    _, stats = pack_with_stats(train, tok, args.block_size, num_proc=n)
    pipe_s = time.perf_counter() - t0
    assert stats["tokens"] == n_tokens, (stats["tokens"], n_tokens)
    t0 = time.perf_counter()
    pack_with_stats(train, tok, args.block_size, num_proc=n)  # identical: served from the cache
    series[f"cached_seconds_np{n}"].append(time.perf_counter() - t0)
    for f in set(glob.glob(os.path.join(cache_dir, "cache-*"))) - before:
        os.remove(f)
    series[f"pipeline_np{n}"].append(n_tokens / pipe_s)
    series[f"ratio_np{n}_vs_encode_batch"].append(n_tokens / pipe_s / series["raw_encode_batch"][-1])
    series[f"ratio_np{n}_vs_encode_batch_fast"].append(n_tokens / pipe_s / series["raw_encode_batch_fast"][-1])
    return stats


def summarise(result: dict, series: dict[str, list[float]], stats: dict | None) -> dict:
    result["train_split_stats"] = stats
    result["tokens_per_s_median"] = {k: round(_median(v)) for k, v in series.items()
                                     if k.startswith(("raw", "pipeline"))}
    result["ratio_median"] = {k: _median(v) for k, v in series.items() if k.startswith("ratio")}
    result["cached_preparation_seconds_median"] = {k: _median(v) for k, v in series.items()
                                                   if k.startswith("cached")}
    result["rounds"] = {k: [round(x, 3) for x in v] for k, v in series.items()}
    result["target_ratio"] = 0.70
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import datasets

    datasets.disable_progress_bars()
    cache = tempfile.mkdtemp(prefix="bench_data_cache_")
    datasets.config.HF_DATASETS_CACHE = cache  # a fresh cache: the first preparation really computes
    train, texts, tok, result = load_corpus_and_tokenizer(args)
    nonempty = [t for t in texts if t]
    num_procs = [int(x) for x in args.num_procs.split(",")]
    kinds = ("pipeline_np{}", "cached_seconds_np{}", "ratio_np{}_vs_encode_batch", "ratio_np{}_vs_encode_batch_fast")
    series: dict[str, list[float]] = {"raw_encode_batch": [], "raw_encode_batch_fast": []}
    series.update({kind.format(n): [] for n in num_procs for kind in kinds})
    stats = None
    for _ in range(args.rounds):
        n_tokens = raw_round(tok.backend_tokenizer, nonempty, series)
        for n in num_procs:
            stats = pipeline_round(train, tok, args, n, n_tokens, series)
        print(json.dumps({"round": {k: round(v[-1], 3) for k, v in series.items()}}), file=sys.stderr)
    print(json.dumps(summarise(result, series, stats), indent=2))
    shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
