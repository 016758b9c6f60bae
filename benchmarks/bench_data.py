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
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _median(xs):
    return round(statistics.median(xs), 4) if xs else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size")
    parser.add_argument("--block-size", type=int, default=256, help="tokens per packed block")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument("--num-procs", default="1,2", help="comma-separated num_proc values for the pipeline")
    parser.add_argument("--max-documents", type=int, default=None, help="limit the corpus (quick runs)")
    parser.add_argument("--tokenizer", default=None, help="reuse this tokenizer folder instead of training one")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import datasets

    from training.data.corpus import DataArguments, load_text_splits
    from training.data.packing import pack_with_stats
    from training.data.tokenizer import load_tokenizer, train_tokenizer

    datasets.disable_progress_bars()
    cache = tempfile.mkdtemp(prefix="bench_data_cache_")
    datasets.config.HF_DATASETS_CACHE = cache  # a fresh cache: the first preparation really computes

    t0 = time.perf_counter()
    splits = load_text_splits(DataArguments(max_documents=args.max_documents))
    load_s = time.perf_counter() - t0
    train = splits["train"]
    texts = list(train["text"])

    result: dict = {
        "corpus": "python-stdlib", "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "load_seconds": round(load_s, 2), "max_documents": args.max_documents, "block_size": args.block_size,
        "note": "shared 2-core machine: absolute figures are noisy, compare the interleaved ratios",
    }
    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
    else:
        t0 = time.perf_counter()
        tok = train_tokenizer(iter(texts), vocab_size=args.vocab_size, length=len(texts))
        result["tokenizer_training_seconds"] = round(time.perf_counter() - t0, 2)
        result["tokenizer_training_MB_per_s"] = round(sum(len(t.encode()) for t in texts) / 1e6
                                                      / result["tokenizer_training_seconds"], 3)
    result["vocab_size"] = len(tok)
    backend = tok.backend_tokenizer
    nonempty = [t for t in texts if t]
    cache_dir = os.path.dirname(train.cache_files[0]["filename"])

    num_procs = [int(x) for x in args.num_procs.split(",")]
    series: dict[str, list[float]] = {"raw_encode_batch": [], "raw_encode_batch_fast": []}
    for n in num_procs:
        series[f"pipeline_np{n}"] = []
        series[f"cached_seconds_np{n}"] = []
        series[f"ratio_np{n}_vs_encode_batch"] = []
        series[f"ratio_np{n}_vs_encode_batch_fast"] = []
    stats = None
    for _ in range(args.rounds):
        # Same token count for every variant: the stream the pipeline packs (ids + one EOS per document).
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
        for n in num_procs:
            before = set(glob.glob(os.path.join(cache_dir, "cache-*")))
            t0 = time.perf_counter()
            blocks, stats = pack_with_stats(train, tok, args.block_size, num_proc=n)
            pipe_s = time.perf_counter() - t0
            assert stats["tokens"] == n_tokens, (stats["tokens"], n_tokens)
            t0 = time.perf_counter()
            pack_with_stats(train, tok, args.block_size, num_proc=n)  # identical: served from the cache
            series[f"cached_seconds_np{n}"].append(time.perf_counter() - t0)
            for f in set(glob.glob(os.path.join(cache_dir, "cache-*"))) - before:
                os.remove(f)
            series[f"pipeline_np{n}"].append(n_tokens / pipe_s)
            series[f"ratio_np{n}_vs_encode_batch"].append(n_tokens / pipe_s / series["raw_encode_batch"][-1])
            series[f"ratio_np{n}_vs_encode_batch_fast"].append(
                n_tokens / pipe_s / series["raw_encode_batch_fast"][-1])
        print(json.dumps({"round": {k: round(v[-1], 3) for k, v in series.items()}}), file=sys.stderr)

    result["train_split_stats"] = stats
    result["tokens_per_s_median"] = {k: round(_median(v)) for k, v in series.items()
                                     if k.startswith(("raw", "pipeline"))}
    result["ratio_median"] = {k: _median(v) for k, v in series.items() if k.startswith("ratio")}
    result["cached_preparation_seconds_median"] = {k: _median(v) for k, v in series.items()
                                                   if k.startswith("cached")}
    result["rounds"] = {k: [round(x, 3) for x in v] for k, v in series.items()}
    result["target_ratio"] = 0.70
    print(json.dumps(result, indent=2))
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
