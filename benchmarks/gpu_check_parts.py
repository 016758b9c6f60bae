"""The Python parts of ``benchmarks/gpu_check.sh``: a small local corpus, and the merged JSON report.

    python benchmarks/gpu_check_parts.py corpus DIR          # ~150 KB of text files for the FSDP run
    python benchmarks/gpu_check_parts.py report WORK OUT     # merge the steps' results into OUT
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STEPS = ("train", "quality", "fsdp")


def write_corpus(folder: Path, documents: int = 400) -> None:
    """Deterministic Python-like documents (no download, no dependency on the interpreter's files)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(documents):
        body = "".join(f"    value_{j} = x * {i + j} + {j % 7}\n" for j in range(8))
        text = f'def function_{i}(x):\n    """Return a number from x."""\n{body}    return value_7\n'
        (folder / f"doc_{i:04d}.py.txt").write_text(text * 3)


def _step(work: Path, name: str) -> dict[str, Any]:
    """Exit status, time and (on failure) the log tail of one step."""
    rc_file, ms_file = work / f"{name}.rc", work / f"{name}.ms"
    rc = int(rc_file.read_text()) if rc_file.exists() else None
    out: dict[str, Any] = {"ok": rc == 0, "returncode": rc,
                           "seconds": round(int(ms_file.read_text()) / 1000, 1) if ms_file.exists() else None}
    if rc not in (0, None):
        out["log_tail"] = (work / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
    return out


def _fsdp_result(run: Path) -> dict[str, Any]:
    """What the FSDP run left: its results, sharded checkpoints, and whether the final folder loads and generates."""
    from scratch_gpt import run_folder

    if not run_folder.file(run, run_folder.ALL_RESULTS_FILE).exists():
        return {}
    results = run_folder.load_results(run)
    checkpoints = run_folder.list_checkpoints(run)
    out: dict[str, Any] = {
        "global_step": results["train"]["global_step"], "num_processes": results["train"]["num_processes"],
        "train_loss": results["train"]["train_loss"], "eval_loss": results["eval"].get("eval_loss"),
        "checkpoint_names": [p.name for p in checkpoints],
        "sharded_checkpoints": bool(checkpoints) and all((p / "pytorch_model_fsdp_0").is_dir() for p in checkpoints),
    }
    from transformers import AutoModelForCausalLM

    import scratch_gpt  # noqa: F401 (registers the Auto classes)

    model = AutoModelForCausalLM.from_pretrained(run)
    generated = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    out["final_folder_generates"] = tuple(generated.shape) == (1, 7)
    return out


def report(work: Path, out_file: Path, dry_run: bool) -> int:
    """Merge the steps' JSON into ``out_file``; 1 when a step's output is missing or the FSDP run is incomplete."""
    result: dict[str, Any] = {
        "dry_run": dry_run, "torch": torch.__version__, "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu": platform.processor() or platform.machine(),
    }
    for name in STEPS:
        result[name] = _step(work, name)
    for name in ("train", "quality"):
        path = work / f"{name}.json"
        if path.exists():
            result[name]["result"] = json.loads(path.read_text())
    result["fsdp"]["result"] = _fsdp_result(work / "fsdp_run")
    fsdp = result["fsdp"]["result"]
    complete = fsdp.get("global_step") == 2 and fsdp.get("sharded_checkpoints") and fsdp.get("final_folder_generates")
    result["ok"] = bool(complete) and all(result[n]["ok"] and (n == "fsdp" or "result" in result[n]) for n in STEPS)
    text = json.dumps(result, indent=2)
    out_file.write_text(text + "\n")
    print(text)
    return 0 if result["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("corpus").add_argument("folder", type=Path)
    r = sub.add_parser("report")
    r.add_argument("work", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--dry-run", type=int, default=0)
    ns = p.parse_args(argv)
    if ns.command == "corpus":
        write_corpus(ns.folder)
        return 0
    return report(ns.work, ns.out, bool(ns.dry_run))


if __name__ == "__main__":
    sys.exit(main())
