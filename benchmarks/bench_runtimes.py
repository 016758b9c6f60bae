"""One model, every local runtime: file size, load time and greedy decode tokens/s, as one JSON object.

The same random-init GPT-2-shaped model (a BPE tokenizer trained on this Python's standard library, so that
transformers.js and llama.cpp get real text) is exported once per format and run in:

- ``scratch-gpt`` (PyTorch eager, the reference), ``onnxruntime`` (Python; fp32 and int8 files),
- ``transformers.js`` in Node (onnxruntime-node; fp32 and q8) and in headless chromium (the ``--web`` page,
  onnxruntime-web WASM, one thread; fp32 and q8),
- ``llama.cpp`` through node-llama-cpp (``.ci/node``; GGUF f32 and q8_0),
- ``ExecuTorch`` (``.pte``, XNNPACK; fp32 and int8) with ``--executorch-python`` (a Python that has executorch:
  it is not a dependency), else the row says why it is missing.

Each runtime gets one thread (the browser page runs one WASM thread anyway; on a shared 2-core machine more
threads only contend). ``load_s``: files to a ready session, the runtime already imported (the browser: the
page's ``pipeline()`` call, the WASM download from the loopback server included). ``decode_tokens_per_s``: the
``new_tokens - 1`` tokens after the first, one forward each with the KV cache, ``prompt`` tokens in, no EOS stop.
Medians of ``--reps`` runs. The CPU and its load average come with the numbers (``cpu``).

    python benchmarks/bench_runtimes.py --shape tiny --out rt.json   # --executorch-python PY where this one lacks executorch
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from cpu_info import cpu_info  # noqa: E402

SHAPES = {  # GPT-2 shapes (learned positions, LayerNorm, tanh GELU), tied embeddings
    "tiny": dict(num_hidden_layers=4, num_attention_heads=4, hidden_size=256, max_position_embeddings=256),
    "small": dict(num_hidden_layers=6, num_attention_heads=8, hidden_size=512, max_position_embeddings=512),
    "gpt2-124m": dict(num_hidden_layers=12, num_attention_heads=12, hidden_size=768, max_position_embeddings=1024),
}
RUNNER = ROOT / "tests" / "hub_export" / "runtime_bench.mjs"
PROMPT = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):"


def build_model(path: Path, shape: str, vocab: int) -> Path:
    """A random-init scratch-gpt model of ``shape`` with a ``vocab``-token BPE tokenizer from the stdlib sources."""
    import sysconfig

    from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
    from training.data.tokenizer import train_tokenizer

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:400]
    tokenizer = train_tokenizer((f.read_text(errors="ignore") for f in files), vocab_size=vocab)
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(ScratchGPTConfig(vocab_size=len(tokenizer), **SHAPES[shape]))
    model.generation_config.eos_token_id = None  # decode the full count in every runtime
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def export_all(src: Path, root: Path, et_python: str | None) -> dict[str, Any]:
    """Every export the runtimes read; ``{name: path or an error string}`` and the seconds each took."""
    from hub_export.gguf import export_gguf
    from hub_export.onnx_export import export_onnx

    made: dict[str, Any] = {}
    for name, make in [
        ("onnx", lambda: export_onnx(src, root / "onnx", quant="int8", web=True)),
        ("gguf-f32", lambda: export_gguf(src, root / "gguf-f32")),
        ("gguf-q8_0", lambda: export_gguf(src, root / "gguf-q8_0", quant="q8_0")),
    ]:
        start = time.perf_counter()
        made[name] = make().out_dir
        print(f"[bench_runtimes] exported {name} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    for quant in (None, "int8"):
        name = f"pte-{quant or 'fp32'}"
        if et_python is None:
            made[name] = "executorch is not importable here; pass --executorch-python"
            continue
        code = ("import sys; sys.path.insert(0, sys.argv[1]); from hub_export.executorch_export import "
                "export_executorch as e; e(sys.argv[2], sys.argv[3], quant=sys.argv[4] or None)")
        run = subprocess.run([et_python, "-c", code, str(ROOT), str(src), str(root / name), quant or ""],
                             capture_output=True, text=True)
        made[name] = root / name if run.returncode == 0 else run.stderr.strip().splitlines()[-1]
    return made


def _size_mb(path: Path) -> float:
    return round(path.stat().st_size / 1e6, 2)


def _timed_greedy(step, prompt: list[int], n: int) -> dict[str, float]:
    """Greedy decoding through ``step(ids, start) -> last logits`` (1-D); first-token and decode timings."""
    start = time.perf_counter()
    token = int(step(prompt, 0).argmax())
    first = time.perf_counter()
    for i in range(n - 1):
        token = int(step([token], len(prompt) + i).argmax())
    end = time.perf_counter()
    return {"first_token_s": first - start, "decode_tokens_per_s": (n - 1) / (end - first), "tokens": n}


def run_scratchgpt(src: Path, prompt: list[int], n: int) -> dict[str, Any]:
    """PyTorch eager with the model's own KV cache."""
    from transformers import AutoModelForCausalLM

    import scratch_gpt  # noqa: F401

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(src).eval()
    load = time.perf_counter() - start
    cache = [None]

    def step(ids, _start):
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), cache=cache[0], use_cache=True)
        cache[0] = out.cache
        return out.logits[0, -1]

    return {"load_s": load, **_timed_greedy(step, prompt, n)}


def run_onnxruntime(path: Path, prompt: list[int], n: int) -> dict[str, Any]:
    """onnxruntime (Python), one intra-op thread, the past fed back as transformers.js does."""
    import numpy as np
    import onnxruntime as ort

    start = time.perf_counter()
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    load = time.perf_counter() - start
    pasts = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    state = [[np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=np.float32) for i in pasts]]

    def step(ids, begin):
        feeds = {"input_ids": np.array([ids]), "attention_mask": np.ones((1, begin + len(ids)), dtype=np.int64),
                 "position_ids": np.arange(begin, begin + len(ids))[None], **dict(zip((p.name for p in pasts),
                                                                                     state[0]))}
        logits, *state[0] = session.run(None, feeds)
        return logits[0, -1]

    return {"load_s": load, **_timed_greedy(step, prompt, n)}


def run_executorch(et_python: str, pte: Path, prompt: list[int], n: int) -> dict[str, Any]:
    """ExecuTorch's Python runtime in ``et_python`` (a subprocess), XNNPACK's thread pool at one thread."""
    code = f"""
import json, sys, time
sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'benchmarks')!r})
try:
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    _unsafe_reset_threadpool(1)
except ImportError:
    pass
from hub_export.executorch_export import PteDecoder
from bench_runtimes import _timed_greedy
program = PteDecoder(__import__('pathlib').Path({str(pte)!r}))
print(json.dumps({{"load_s": program.load_seconds, **_timed_greedy(lambda ids, s: program.step(ids, s)[0, -1],
                                                                  {prompt!r}, {n})}}))
"""
    run = subprocess.run([et_python, "-c", code], capture_output=True, text=True, cwd=str(ROOT))
    if run.returncode != 0:
        raise RuntimeError(run.stderr.strip().splitlines()[-1])
    return json.loads(run.stdout.strip().splitlines()[-1])


def run_node(args: list[str]) -> dict[str, Any]:
    """tests/hub_export/runtime_bench.mjs with ``args`` (llama.cpp or transformers.js in Node)."""
    run = subprocess.run(["node", str(RUNNER), *args], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if run.returncode != 0:
        raise RuntimeError((run.stderr.strip().splitlines() or ["node failed"])[-1])
    return json.loads(run.stdout.strip().splitlines()[-1])


def run_browser(site: Path, dtype: str, n: int) -> dict[str, Any]:
    """The ``--web`` page in Debian's headless chromium, served by a loopback static server."""
    import shutil
    from urllib.parse import urlencode

    from playwright.sync_api import sync_playwright

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    query = urlencode({"prompt": PROMPT, "max_new_tokens": n, "autorun": 1, "dtype": dtype})
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                        args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{httpd.server_address[1]}/index.html?{query}")
            page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=600_000)
            data = page.evaluate("() => ({...document.body.dataset})")
            browser.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
    if data.get("state") != "done":
        raise RuntimeError(f"the page ended in state {data.get('state')}")
    return {"load_s": float(data["loadSeconds"]), **json.loads(data["speed"])}


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(runs[-1])
    for key in ("load_s", "first_token_s", "decode_tokens_per_s"):
        out[key] = round(statistics.median(r[key] for r in runs), 4)
    out["reps"] = len(runs)
    return out


def plan(src: Path, made: dict[str, Any], prompt: list[int], n: int, et_python: str | None) -> list[tuple]:
    """``(runtime, precision, file, call)`` for every row; ``file`` None and ``call`` a string when missing."""
    onnx = made["onnx"]
    rows = [("scratch-gpt (PyTorch eager)", "fp32", src / "model.safetensors",
             lambda: run_scratchgpt(src, prompt, n))]
    for precision, name, dtype in (("fp32", "model.onnx", "fp32"), ("int8", "model_quantized.onnx", "q8")):
        rows += [
            ("onnxruntime (Python)", precision, onnx / "onnx" / name,
             lambda name=name: run_onnxruntime(onnx / "onnx" / name, prompt, n)),
            ("transformers.js (Node, onnxruntime-node)", precision, onnx / "onnx" / name,
             lambda dtype=dtype: run_node(["transformersjs", str(onnx), dtype, str(n), PROMPT])),
            ("transformers.js (chromium, onnxruntime-web WASM)", precision, onnx / "onnx" / name,
             lambda dtype=dtype: run_browser(onnx, dtype, n)),
        ]
    for precision, name in (("fp32", "gguf-f32"), ("int8 (q8_0)", "gguf-q8_0")):
        gguf = made[name] / "model.gguf"
        rows.append(("llama.cpp (node-llama-cpp)", precision, gguf,
                     lambda gguf=gguf: run_node(["llama-cpp", str(gguf), str(n), ",".join(map(str, prompt))])))
    for precision, name in (("fp32", "pte-fp32"), ("int8", "pte-int8")):
        if isinstance(made[name], str):
            rows.append(("ExecuTorch (XNNPACK)", precision, None, made[name]))
        else:
            pte = made[name] / "model.pte"
            rows.append(("ExecuTorch (XNNPACK)", precision, pte,
                         lambda pte=pte: run_executorch(et_python, pte, prompt, n)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="tiny")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--executorch-python", default=None,
                        help="a Python with executorch installed (default: this one if it has it)")
    parser.add_argument("--work-dir", default=None, help="keep the model and exports here (default: a temp dir)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import importlib.util

    et_python = args.executorch_python or (sys.executable if importlib.util.find_spec("executorch") else None)
    torch.set_num_threads(1)
    root = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-runtimes-"))
    src = build_model(root / "model", args.shape, args.vocab)
    from transformers import AutoTokenizer

    prompt = AutoTokenizer.from_pretrained(src)(PROMPT)["input_ids"]
    made = export_all(src, root, et_python)
    rows = []
    for runtime, precision, file, call in plan(src, made, prompt, args.new_tokens, et_python):
        row = {"runtime": runtime, "precision": precision, "file_mb": _size_mb(file) if file else None}
        if isinstance(call, str):
            row["missing"] = call
        else:
            try:
                row.update(_median([call() for _ in range(args.reps)]))
            except Exception as err:  # one failing runtime must not hide the others' numbers
                row["error"] = f"{type(err).__name__}: {err}"
        print(f"[bench_runtimes] {json.dumps(row)}", file=sys.stderr)
        rows.append(row)
    params = sum(p.numel() for p in __import__("safetensors.torch").torch.load_file(src / "model.safetensors")
                 .values())
    result = {"cpu": cpu_info(), "shape": {"name": args.shape, **SHAPES[args.shape], "vocab": len(
        AutoTokenizer.from_pretrained(src)), "parameters": params}, "prompt_tokens": len(prompt),
        "new_tokens": args.new_tokens, "threads": 1, "rows": rows}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
