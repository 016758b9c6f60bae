"""Benchmark: export + self-check of a GPT-2 124M-shaped scratch-gpt model (random init).

Measures, in fresh processes (one per repeat, medians reported):
- wall time of ``export_model`` (load, save, copy remote code, card, self-check in a fresh process, move);
- the self-check's share of that time;
- peak memory of the exporting process (VmHWM above its RSS after imports) and of the self-check process
  (its peak above its RSS after imports), each as a multiple of the model's size (fp32 weights).
Target: <= 60 s and <= 2x the model size. Prints one JSON object.

    python benchmarks/bench_export.py [--repeats 3] [--format remote-code|gpt2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scratch_gpt import run_folder

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "the-verdict.txt"  # ../shared beside the project


def _rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def setup(model_dir: Path) -> None:
    """Save a random-init GPT-2 124M-shaped model and a small BPE tokenizer into ``model_dir``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM

    text = CORPUS.read_text() if CORPUS.is_file() else Path(json.__file__).read_text()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        text.splitlines(),
        trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = ScratchGPTConfig(vocab_size=50257, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                           max_position_embeddings=1024, bos_token_id=0, eos_token_id=0)
    ScratchGPTForCausalLM(cfg).save_pretrained(model_dir)
    fast.save_pretrained(model_dir)


def measure(model_dir: Path, out_dir: Path, export_format: str) -> dict:
    """One export in this (fresh) process."""
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import pipeline  # noqa: F401  (imported by the export; count it in the baseline)

    import scratch_gpt  # noqa: F401
    from hub_export.export import export_model

    import resource

    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    baseline = _rss_mb()
    cpu0 = cpu()
    start = time.perf_counter()
    result = export_model(model_dir, out_dir, export_format=export_format)
    seconds = time.perf_counter() - start
    cpu_seconds = cpu() - cpu0
    peak = _rss_mb("VmHWM")
    v = result.verification
    return {
        "export_seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "self_check_seconds": v["seconds"],
        "parent_baseline_mb": baseline,
        "parent_peak_mb": peak,
        "parent_extra_mb": peak - baseline,
        "child_peak_mb": v["child_peak_rss_mb"],
        "child_extra_mb": v["child_peak_rss_mb"] - v["child_rss_after_imports_mb"],
        "num_parameters": result.num_parameters,
        "max_abs_diff": v["max_abs_diff"],
        "files": result.files,
    }


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process exports to take the median of")
    parser.add_argument("--format", default="remote-code", choices=("remote-code", "gpt2"), help="export format")
    parser.add_argument("--keep", default=None, help="keep the model and exports in this folder")
    parser.add_argument("--_setup", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_measure", nargs=3, default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def run_repeats(model_dir: Path, work: Path, args: argparse.Namespace, env: dict) -> list[dict]:
    """One fresh-process export per repeat; each measurement is the child's JSON line."""
    runs = []
    for i in range(args.repeats):
        out = work / f"export-{i}"
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.run([sys.executable, __file__, "--_measure", str(model_dir), str(out), args.format],
                              check=True, env=env, capture_output=True, text=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    return runs


def summarize(runs: list[dict], model_mb: float, args: argparse.Namespace) -> dict:
    """Medians over the repeats, memory as multiples of the model's size, and the targets met."""

    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 2)

    report = {
        "benchmark": "export + self-check, GPT-2 124M shape (random init, fp32)",
        "format": args.format,
        "repeats": args.repeats,
        "num_parameters": runs[0]["num_parameters"],
        "model_size_mb": round(model_mb, 1),
        "export_seconds_median": med("export_seconds"),
        "export_seconds_all": [round(r["export_seconds"], 2) for r in runs],
        "cpu_seconds_median": med("cpu_seconds"),
        "self_check_seconds_median": med("self_check_seconds"),
        "parent_peak_rss_mb_median": med("parent_peak_mb"),
        "parent_extra_mb_median": med("parent_extra_mb"),
        "parent_extra_x_model": round(med("parent_extra_mb") / model_mb, 2),
        "child_peak_rss_mb_median": med("child_peak_mb"),
        "child_extra_mb_median": med("child_extra_mb"),
        "child_extra_x_model": round(med("child_extra_mb") / model_mb, 2),
        "max_abs_diff": max(r["max_abs_diff"] for r in runs),
        "files": runs[0]["files"],
        "target": {"seconds": 60, "memory_x_model": 2.0},
        "load_average": os.getloadavg(),
        "cpu_count": os.cpu_count(),
    }
    report["meets_time_target"] = report["export_seconds_median"] <= 60
    report["meets_memory_target"] = max(report["parent_extra_x_model"], report["child_extra_x_model"]) <= 2.0
    return report


def main() -> None:
    args = _parse_args()
    if args._setup:
        setup(Path(args._setup))
        return
    if args._measure:
        model_dir, out_dir, fmt = args._measure
        print(json.dumps(measure(Path(model_dir), Path(out_dir), fmt)))
        return
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    try:
        model_dir = work / "gpt2-124m-random"
        if not run_folder.has_config(model_dir):
            subprocess.run([sys.executable, __file__, "--_setup", str(model_dir)], check=True, env=env)
        model_mb = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 2**20
        runs = run_repeats(model_dir, work, args, env)
        print(json.dumps(summarize(runs, model_mb, args), indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
